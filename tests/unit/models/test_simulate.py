"""The gallery simulator: fitted to the labelled set, seeded, and its curves well formed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.manifest import bundled_manifests
from models.simulate import (
    CURVE_POINTS,
    FitTargets,
    GallerySimulator,
    SimulatorModel,
    draw_curves,
    fit,
    fit_loss,
    genuine_scores,
    impostor_scores,
    labelled_scores,
)

CALIBRATION = bundled_manifests()["dlib-resnet-v1"].calibration
assert CALIBRATION is not None and CALIBRATION.simulator is not None
SHIPPED = SimulatorModel.from_mapping(CALIBRATION.simulator)


def test_the_shipped_simulator_matches_the_labelled_set(
    labelled_vectors: tuple[np.ndarray, list[str]],
) -> None:
    impostor, genuine = labelled_scores(*labelled_vectors)
    assert impostor.size == 1690 and genuine.size == 140
    simulator = GallerySimulator(SHIPPED, seed=21)  # not the seed it was fitted with
    rng = np.random.default_rng(22)
    simulated_impostor = impostor_scores(simulator, 2_000, rng)
    simulated_genuine = genuine_scores(simulator, 20_000, rng)
    # The bar: mean within 0.03 and spread within 0.015 of the labelled set's.
    assert abs(simulated_impostor.mean() - impostor.mean()) <= 0.03
    assert abs(simulated_impostor.std() - impostor.std()) <= 0.015
    # Closer than the bar in fact, and the genuine side and the anchored tail too.
    assert abs(simulated_impostor.mean() - impostor.mean()) <= 0.005
    assert abs(simulated_impostor.std() - impostor.std()) <= 0.003
    assert abs(simulated_genuine.mean() - genuine.mean()) <= 0.005
    assert 0.5e-3 <= np.mean(simulated_impostor >= 0.9307) <= 3e-3


def test_random_vectors_would_never_collide_but_simulated_faces_do() -> None:
    rng = np.random.default_rng(3)
    random_rows = rng.standard_normal((2_000, 128))
    random_rows /= np.linalg.norm(random_rows, axis=1, keepdims=True)
    random_scores = (random_rows @ random_rows.T)[np.triu_indices(2_000, 1)]
    simulated = impostor_scores(GallerySimulator(SHIPPED), 2_000, rng)
    assert random_scores.max() < 0.6
    assert np.sum(simulated >= 0.9307) > 100


def test_the_same_seed_draws_the_same_gallery() -> None:
    first = GallerySimulator(SHIPPED, seed=5).identities(50, np.random.default_rng(9))
    again = GallerySimulator(SHIPPED, seed=5).identities(50, np.random.default_rng(9))
    other = GallerySimulator(SHIPPED, seed=6).identities(50, np.random.default_rng(9))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_fusing_a_visits_frames_scores_the_same_face_higher() -> None:
    simulator = GallerySimulator(SHIPPED, seed=2)
    rng = np.random.default_rng(4)
    centres = simulator.identities(2_000, rng)
    enrolled_frames = simulator.captures(centres, rng, frames=3)
    probes = simulator.probes(centres, rng)
    single = np.einsum("ij,ij->i", probes, enrolled_frames[:, 0, :])
    fused = np.einsum("ij,ij->i", probes, simulator.fuse(enrolled_frames))
    assert fused.mean() > single.mean()


@pytest.mark.parametrize(
    "change",
    [
        {"mean_weight": 0.0},
        {"capture_noise": -1.0},
        {"session_share": 1.0},
        {"lookalike_share": -0.1},
        {"spectrum_decay": float("nan")},
        {"dimension": 1},
    ],
)
def test_invalid_parameters_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        replace(SHIPPED, **change)


def test_the_fit_moves_a_misfitted_model_towards_the_targets(
    labelled_vectors: tuple[np.ndarray, list[str]],
) -> None:
    targets = FitTargets.of(*labelled_scores(*labelled_vectors))
    off = replace(SHIPPED, capture_noise=SHIPPED.capture_noise * 1.3, lookalike_share=0.3)
    before = fit_loss(off, targets)
    after = fit_loss(fit(targets, 128, start_from=off, evaluations=30), targets)
    assert after < before / 2
    assert fit_loss(SHIPPED, targets) < before


def test_curves_are_monotonic_shares_with_a_stated_resolution() -> None:
    curves = draw_curves(GallerySimulator(SHIPPED, seed=1), identities=1_500)
    assert len(curves.impostor_survival) == CURVE_POINTS
    assert curves.resolution == pytest.approx(3 / (1_500 * 1_499 / 2))
    assert np.all(np.diff(curves.impostor_survival) <= 0)
    assert np.all(np.diff(curves.duplicate_survival) <= 0)
    assert np.all(np.diff(curves.genuine_below) >= 0)
    assert curves.impostor_survival[0] > 0.5 and curves.genuine_below[0] < 0.01
