"""The gallery index (exhaustive and inverted-file paths) and the match decision rules."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from server.matching import index as index_module
from server.matching.decision import decide
from server.matching.index import Candidate, GalleryIndex


def _units(rng: np.random.Generator, count: int, dimension: int = 128) -> np.ndarray:
    rows = rng.standard_normal((count, dimension), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _genuine(rng: np.random.Generator, sources: np.ndarray, cosine: float = 0.8) -> np.ndarray:
    noise = _units(rng, sources.shape[0], sources.shape[1])
    noise -= (noise * sources).sum(axis=1, keepdims=True) * sources
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    probes = cosine * sources + np.sqrt(1 - cosine**2) * noise
    return (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)


def _loaded(
    rng: np.random.Generator, templates: int, per_shopper: int = 3
) -> tuple[GalleryIndex, np.ndarray, np.ndarray]:
    vectors = _units(rng, templates)
    owners = np.arange(templates) // per_shopper
    index = GalleryIndex(128)
    index.bulk_load([f"s{i}" for i in range(int(owners[-1]) + 1)], vectors, owners)
    # Exhaustive until the inverted file is ready: a search right away must already be right.
    probe = _genuine(rng, vectors[:1])[0]
    assert index.search(probe)[0].shopper_id == "s0"
    if index.ivf_thread is not None:
        index.ivf_thread.join()
    return index, vectors, owners


@pytest.mark.parametrize("templates", [3_000, 60_000])
def test_top1_matches_exhaustive_search_for_genuine_probes(templates: int) -> None:
    rng = np.random.default_rng(templates)
    index, vectors, owners = _loaded(rng, templates)
    assert (index._ivf is not None) == (templates >= index_module.IVF_MIN_TEMPLATES)
    picks = rng.choice(templates, 200, replace=False)
    for probe, source in zip(_genuine(rng, vectors[picks]), picks, strict=True):
        found = index.search(probe, k=2, exhaustive_below=0.6)
        assert (
            found[0].shopper_id
            == f"s{owners[int(np.argmax(vectors @ probe))]}"
            == f"s{owners[source]}"
        )
        assert found[0].score == pytest.approx(float(vectors[source] @ probe), abs=1e-5)
        assert len(found) == 2 and found[0].shopper_id != found[1].shopper_id


def test_best_score_per_shopper_and_restrict_to() -> None:
    rng = np.random.default_rng(7)
    base = _units(rng, 1)[0]
    index = GalleryIndex(128)
    near = _genuine(rng, np.stack([base] * 3), 0.95)
    index.add("alice", near)
    index.add("bob", _genuine(rng, base[None], 0.7))
    index.add("carol", _units(rng, 3))
    found = index.search(base, k=2)
    assert [c.shopper_id for c in found] == ["alice", "bob"]
    assert found[0].score == pytest.approx(float(np.max(near @ base)), abs=1e-6)
    only = index.search(base, k=2, restrict_to={"bob", "carol"})
    assert only[0].shopper_id == "bob"
    assert index.search(base, restrict_to={"nobody"}) == []


@pytest.mark.parametrize("templates", [3_000, 60_000])
def test_removals_and_additions_take_effect_at_once(templates: int) -> None:
    rng = np.random.default_rng(templates + 1)
    index, vectors, _ = _loaded(rng, templates)
    probe = _genuine(rng, vectors[:1])[0]
    assert index.search(probe, exhaustive_below=0.6)[0].shopper_id == "s0"
    assert index.remove("s0") and "s0" not in index
    assert all(c.shopper_id != "s0" for c in index.search(probe, exhaustive_below=0.6))
    index.add("newcomer", vectors[:1])
    assert index.search(probe, exhaustive_below=0.6)[0].shopper_id == "newcomer"
    assert not index.remove("s0")


def test_bulk_load_equals_adding() -> None:
    rng = np.random.default_rng(9)
    loaded, vectors, owners = _loaded(rng, 300)
    added = GalleryIndex(128)
    for shopper in range(100):
        added.add(f"s{shopper}", vectors[owners == shopper])
    for probe in _units(rng, 20):
        assert loaded.search(probe) == added.search(probe)
    assert len(loaded) == len(added) == 100 and loaded.template_count == 300


@pytest.mark.parametrize("bad", [np.full(128, np.nan, np.float32), np.ones(64, np.float32)])
def test_bad_vectors_are_refused(bad: np.ndarray) -> None:
    index = GalleryIndex(128)
    with pytest.raises(ValueError):
        index.add("x", bad[None])
    with pytest.raises(ValueError):
        index.search(bad)


def test_concurrent_searches_while_adding() -> None:
    rng = np.random.default_rng(10)
    index, _, _ = _loaded(rng, 3_000)
    errors: list[BaseException] = []

    def searching() -> None:
        try:
            for probe in _units(np.random.default_rng(11), 200):
                assert len(index.search(probe)) == 2
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=searching) for _ in range(3)]
    for thread in threads:
        thread.start()
    for number, vector in enumerate(_units(rng, 300)):
        index.add(f"late{number}", vector[None])
    for thread in threads:
        thread.join()
    assert errors == [] and len(index) == 1_000 + 300


def _c(*pairs: tuple[str, float]) -> list[Candidate]:
    return [Candidate(s, v) for s, v in pairs]


def test_decision_rules() -> None:
    policy = {"threshold": 0.9, "margin": 0.05, "fmr": 1e-3, "target_fpir": 1e-2}
    assert decide([], gallery_size=0, **policy).reason == "empty_gallery"
    assert decide(_c(("a", 0.85)), gallery_size=5, **policy).outcome == "no_match"
    matched = decide(_c(("a", 0.97), ("b", 0.80)), gallery_size=5, **policy)
    assert (matched.outcome, matched.shopper_id) == ("match", "a")
    thin = decide(_c(("a", 0.95), ("b", 0.93)), gallery_size=5, **policy)
    assert (thin.outcome, thin.reason, thin.shopper_id) == ("step_up", "thin_margin", None)
    crowded = decide(_c(("a", 0.97), ("b", 0.80)), gallery_size=50, **policy)
    assert (crowded.outcome, crowded.reason) == ("step_up", "fpir_above_target")
    narrowed = decide(_c(("a", 0.95), ("b", 0.93)), gallery_size=2, restricted=True, **policy)
    assert (narrowed.outcome, narrowed.reason) == ("no_match", "ambiguous")
    assert decide(_c(("a", 0.97)), gallery_size=2, restricted=True, **policy).outcome == "match"
    # After step-up the narrowed gallery is the mitigation: the FPIR target no longer applies.
    assert decide(_c(("a", 0.97)), gallery_size=50, restricted=True, **policy).outcome == "match"
    assert not hasattr(matched, "score")
