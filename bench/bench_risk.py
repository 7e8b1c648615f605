"""Identification risk at a chain's scale: the gallery simulator's fit to the labelled set, and
`facepay server risk`'s figures at 1,000, 100,000 and 1,000,000 simulated shoppers for the
default pack. Prints a markdown section (docs/identification-risk.md).

Data: the fit compares the 61 labelled photos of ../shared/faces (1,690 impostor and 140
genuine pairs) with the simulator's scores; the gallery figures come from simulated shoppers
only (the simulator calibrated to the pack), run through the server's decision code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe
from models import evaluate, packs
from models.manifest import bundled_manifests
from models.simulate import (
    GENUINE_QUANTILES,
    IMPOSTOR_QUANTILES,
    GallerySimulator,
    SimulatorModel,
    genuine_scores,
    impostor_scores,
    labelled_scores,
    summarize,
)
from server.matching.risk import RiskTargets
from server.matching.simulation import Trials, risk_report

FACES = Path(
    os.environ.get("FACEPAY_FACES_DIR", Path(__file__).resolve().parents[2] / "shared" / "faces")
)
ANCHORS = ((0.9307, 0.0), (0.9578, 0.0))  # scores whose tail shares are printed


def labelled() -> tuple[np.ndarray, list[str]]:
    identities = evaluate.read_identities(FACES / "identities.csv")
    embedded = evaluate.embed_files(packs.open_engine(), FACES / "images", list(identities))
    names = sorted(embedded.embeddings)
    return np.stack([embedded.embeddings[n].vector for n in names]), [identities[n] for n in names]


def fit_table(model: SimulatorModel) -> str:
    impostor, genuine = labelled_scores(*labelled())
    simulator = GallerySimulator(model, seed=21)
    rng = np.random.default_rng(22)
    real = summarize(impostor, genuine, ANCHORS)
    simulated = summarize(
        impostor_scores(simulator, 3_000, rng), genuine_scores(simulator, 50_000, rng), ANCHORS
    )
    rows = [
        ("impostor mean", real.impostor_mean, simulated.impostor_mean),
        ("impostor standard deviation", real.impostor_sd, simulated.impostor_sd),
        *(
            (f"impostor {q:g} quantile", a, b)
            for q, a, b in zip(
                IMPOSTOR_QUANTILES,
                real.impostor_quantiles,
                simulated.impostor_quantiles,
                strict=True,
            )
        ),
        ("genuine mean", real.genuine_mean, simulated.genuine_mean),
        ("genuine standard deviation", real.genuine_sd, simulated.genuine_sd),
        *(
            (f"genuine {q:g} quantile", a, b)
            for q, a, b in zip(
                GENUINE_QUANTILES, real.genuine_quantiles, simulated.genuine_quantiles, strict=True
            )
        ),
    ]
    lines = [
        "| figure | labelled set (1,690 impostor, 140 genuine pairs) | simulator (4.5M impostor, 50k genuine pairs) |",
        "| --- | --- | --- |",
        *(f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows),
    ]
    for (score, _), a, b in zip(ANCHORS, real.tail, simulated.tail, strict=True):
        lines.append(f"| impostors at or above {score} | {a:.2e} | {b:.2e} |")
    return "\n".join(lines)


def _cell(figure: dict[str, Any]) -> str:
    measured = f"{figure['hits']} of {figure['trials']}"
    if figure["hits"] == 0 and figure.get("upper_95"):
        measured += f" (< {figure['upper_95']:.1g})"
    else:
        measured += f" ({figure['measured']:.2g})"
    return f"{measured}; computed {figure['computed']:.2g}"


def risk_table(report: dict[str, Any]) -> str:
    lines = [
        "| shoppers | rung asked | threshold | honest completion | honest wrong wallet / payment | "
        "stranger success / attempt | targeted success / victim / day | false duplicate / enrollment |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for gallery in report["galleries"]:
        lines.append(
            f"| {gallery['gallery']:,} | {gallery['rung']} | {gallery['threshold']} | "
            f"{_cell(gallery['honest_completion'])} | "
            f"{_cell(gallery['honest_wrong_wallet_per_payment'])} | "
            f"{_cell(gallery['stranger_success_per_attempt'])} | "
            f"{_cell(gallery['targeted_success_per_day'])} | "
            f"{_cell(gallery['false_duplicate_per_enrollment'])} |"
        )
    return "\n".join(lines)


def rung_table(report: dict[str, Any]) -> str:
    lines = [
        "| shoppers | rung | threshold | completion (computed) | wrong wallet | stranger | targeted |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for gallery in report["galleries"]:
        for rung, figures in gallery["per_rung"].items():
            if not figures["available"]:
                lines.append(
                    f"| {gallery['gallery']:,} | {rung} | none meets the targets | | | | |"
                )
                continue
            lines.append(
                f"| {gallery['gallery']:,} | {rung} | {figures['threshold']} | "
                f"{figures['honest_completion']['computed']:.3f} | "
                f"{figures['honest_wrong_wallet_per_payment']['computed']:.2g} | "
                f"{figures['stranger_success_per_attempt']['computed']:.2g} | "
                f"{figures['targeted_success_per_day']['computed']:.2g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--honest", type=int, default=300_000)
    parser.add_argument("--strangers", type=int, default=300_000)
    parser.add_argument("--victims", type=int, default=20_000)
    parser.add_argument("--enrollments", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    calibration = bundled_manifests()["dlib-resnet-v1"].calibration
    assert calibration is not None and calibration.simulator is not None
    model = SimulatorModel.from_mapping(calibration.simulator)
    started = time.perf_counter()
    report = risk_report(
        calibration,
        RiskTargets(),
        args.sizes,
        base_threshold=calibration.threshold(1e-3),
        trials=Trials(args.honest, args.strangers, args.victims, args.enrollments),
        seed=args.seed,
    )
    elapsed = time.perf_counter() - started
    print(f"Machine: {describe()}. Default pack `dlib-resnet-v1`, default risk targets.\n")
    print("### The simulator against the labelled set\n")
    print(fit_table(model))
    print(
        f"\n### Identification risk, measured on simulated galleries (`bench/bench_risk.py`, "
        f"seed {args.seed}, {elapsed:.0f} s)\n"
    )
    print(risk_table(report))
    print("\n### Every rung at each size (computed by the risk rule)\n")
    print(rung_table(report))


if __name__ == "__main__":
    main()
