"""Gallery index: cold-start build time, 1:N search latency, and top-1 agreement with brute force.

Galleries of N simulated shoppers (`bench/simulated.py`: the gallery simulator calibrated to the
default pack), each enrolled from 3 frames of one visit and kept as the server keeps them: one
fused row per shopper (`server.matching.index.fuse`, the unit mean), bulk-loaded into
`GalleryIndex` as the server's cold start does once the templates are decrypted. Probes:

- genuine: a new visit of an enrolled shopper (one capture), about 0.97 to their fused row,
  while two different people score 0.83 +/- 0.034 (with a heavy upper tail: some faces
  resemble everyone more), so in a large gallery an impostor can outscore the shopper;
- impostor: a capture of a person never enrolled.

Search latency is `search(probe, k=2)` per probe, one at a time, single caller. Top-1 (and
top-2) are compared with an exact brute-force search in numpy (every row scored) for every
genuine probe, and so is top-1 with `exhaustive_below` set to the pack's base threshold, as
the service searches at the face rung. At the largest N the shortlist is also measured at
larger sizes (`--shortlists`), and on noisier captures (stress). `--quick` runs a small
version. Prints a markdown section.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import simulated
from bench.machine import cpu_model, memory_gib
from server.config import Settings
from server.matching import index as index_module
from server.matching.index import GalleryIndex
from server.matching.service import known_packs

PACK = "dlib-resnet-v1@1"
STRESS_NOISE = 1.5  # stress: every probe capture's noise scaled by this


def base_threshold() -> float:
    """The pack's threshold at the default FMR: the lowest any rung matches at."""
    return known_packs()[PACK].calibration.threshold(Settings.match_fmr)


def brute_force_top2(rows: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) shopper numbers of the two best shoppers per probe and their scores, exactly
    (every fused row scored, float32 GEMM)."""
    found = np.empty((probes.shape[0], 2), np.int64)
    found_scores = np.empty((probes.shape[0], 2), np.float32)
    for start in range(0, probes.shape[0], 64):
        scores = probes[start : start + 64] @ rows.T
        top = np.argpartition(-scores, 1, axis=1)[:, :2]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        found[start : start + 64] = np.take_along_axis(top, order, axis=1)
        found_scores[start : start + 64] = np.take_along_axis(
            scores, found[start : start + 64], axis=1
        )
    return found, found_scores


def ms(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e3, p95 * 1e3


def timed_searches(
    index: GalleryIndex, probes: np.ndarray, exhaustive_below: float | None = None
) -> tuple[list[float], list[str], list[str], list[float], list[float]]:
    """Latencies, top-1 and top-2 shoppers, their scores."""
    for probe in probes[:5]:  # warm up
        index.search(probe, k=2, exhaustive_below=exhaustive_below)
    latencies, first, second, first_scores, second_scores = [], [], [], [], []
    for probe in probes:
        started = time.perf_counter()
        found = index.search(probe, k=2, exhaustive_below=exhaustive_below)
        latencies.append(time.perf_counter() - started)
        first.append(found[0].shopper_id)
        second.append(found[1].shopper_id)
        first_scores.append(found[0].score)
        second_scores.append(found[1].score)
    return latencies, first, second, first_scores, second_scores


def numpy_latency(rows: np.ndarray, probes: np.ndarray) -> float:
    latencies = []
    for probe in probes[:30]:
        started = time.perf_counter()
        scores = rows @ probe
        np.argpartition(scores, scores.size - 2)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1e3


def agreeing(found: list[str], reference: np.ndarray) -> int:
    return sum(f == f"shopper-{r}" for f, r in zip(found, reference, strict=True))


def machine_facts() -> list[str]:
    import faiss

    load = os.getloadavg()
    return [
        f"- nproc: {os.cpu_count()}; CPU: {cpu_model()}; memory: {memory_gib():.0f} GiB; "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        f"- numpy {np.__version__}, faiss-cpu {faiss.__version__}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        "(another process may hold a core)",
        f"- index: exhaustive below {index_module.EXACT_MAX_TEMPLATES:,} rows, else "
        f"PQ fast-scan shortlist of {index_module.SHORTLIST} rows + exact re-rank",
    ]


def shortlist_sensitivity(
    index: GalleryIndex, probes: np.ndarray, reference: np.ndarray, sizes: list[int]
) -> list[str]:
    """Top-1 agreement and latency with other shortlist sizes (the module constant, swapped
    for the measurement and put back)."""
    notes = []
    kept = index_module.SHORTLIST
    try:
        for size in sizes:
            index_module.SHORTLIST = size  # type: ignore[misc]
            latencies, first, *_ = timed_searches(index, probes)
            median, p95 = ms(latencies)
            notes.append(
                f"- Shortlist of {size:,} rows instead of {kept}: top-1 equal to brute force "
                f"for {agreeing(first, reference[:, 0])} / {len(first)}, genuine median "
                f"{median:.2f} ms, p95 {p95:.2f} ms."
            )
    finally:
        index_module.SHORTLIST = kept  # type: ignore[misc]
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, fewer probes")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--sizes", help="shoppers per gallery, e.g. 10000,100000 (default 10k, 100k, 1M)"
    )
    parser.add_argument(
        "--shortlists",
        default="2048,8192",
        help="other shortlist sizes tried at the largest gallery (empty: none)",
    )
    args, _ = parser.parse_known_args()  # run_all.py passes every script the same arguments
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    checked = 300 if args.quick else 1_000
    threshold = base_threshold()
    rng = np.random.default_rng(args.seed)
    sim = simulated.simulator()
    noisy = simulated.simulator(STRESS_NOISE)
    facts = machine_facts()
    rows_out: list[str] = []
    notes: list[str] = []
    for size in sizes:
        gallery = simulated.enrolled(sim, size, rng, keep_frames=False)
        rows, centres = gallery.fused, gallery.centres
        ids = [f"shopper-{i}" for i in range(size)]
        owners = np.arange(size, dtype=np.int64)
        index = GalleryIndex(rows.shape[1])
        builds = []
        for _ in range(1 if args.quick or size < sizes[-1] else 2):
            started = time.perf_counter()
            index.bulk_load(ids, rows, owners)
            builds.append(time.perf_counter() - started)
        largest = size == sizes[-1]
        count = checked if largest else 300
        picks = rng.choice(size, count, replace=False)
        probes = simulated.probes(sim, centres[picks], rng)
        latencies, first, second, first_scores, second_scores = timed_searches(index, probes)
        _, served, *_ = timed_searches(index, probes, threshold)
        impostors = simulated.strangers(sim, 200, rng)
        impostor_latencies, _, _, impostor_best, _ = timed_searches(index, impostors)
        # A search redone exhaustively: the shortlist's best below the threshold.
        fallbacks = sum(1 for score in impostor_best[:50] if score < threshold)
        redone = f"{fallbacks} of 50" if index.approximate else "exhaustive anyway"
        fallback_latencies, *_ = timed_searches(index, impostors[:50], threshold)
        reference, reference_scores = brute_force_top2(rows, probes)
        top1 = agreeing(first, reference[:, 0])
        top2 = agreeing(second, reference[:, 1])
        top1_served = agreeing(served, reference[:, 0])
        source = int(np.sum(reference[:, 0] == picks))
        median, p95 = ms(latencies)
        impostor_median, impostor_p95 = ms(impostor_latencies)
        fallback_median, _ = ms(fallback_latencies)
        rows_out.append(
            f"| {size:,} | {'PQ shortlist' if index.approximate else 'exhaustive'} "
            f"| {' / '.join(f'{b:.2f}' for b in builds)} | {median:.2f} | {p95:.2f} "
            f"| {impostor_median:.2f} / {impostor_p95:.2f} | {fallback_median:.1f} ({redone}) "
            f"| {numpy_latency(rows, probes):.1f} | {top1} / {count} | {top1_served} / {count} "
            f"| {top2} / {count} | {source} / {count} |"
        )
        own = np.einsum("ij,ij->i", probes, rows[picks])
        differs = [i for i in range(count) if first[i] != f"shopper-{reference[i, 0]}"]
        if differs:
            lost = sum(1 for i in differs if reference[i, 0] == picks[i])
            gap = max(float(reference_scores[i, 0]) - first_scores[i] for i in differs)
            notes.append(
                f"- {size:,} shoppers: where the shortlist's top-1 differs from brute force "
                f"({len(differs)} probes), brute force's top-1 is the probe's own shopper in "
                f"{lost} (the shortlist lost them) and an impostor in {len(differs) - lost}; "
                f"the shortlist's top-1 scores at most {gap:.4f} below brute force's."
            )
        shortfall = max(
            float(r) - f for r, f in zip(reference_scores[:, 1], second_scores, strict=True)
        )
        if top2 < count:
            notes.append(
                f"- {size:,} shoppers: where the runner-up differs from brute force "
                f"({count - top2} probes), the runner-up found scores at most "
                f"{shortfall:.4f} below the true one."
            )
        if largest:
            notes.append(
                f"- {size:,} shoppers: genuine probes score {float(own.mean()):.3f} +/- "
                f"{float(own.std()):.3f} to their own row (1% below {np.quantile(own, 0.01):.3f}); "
                f"the best impostor row of each scores {float(np.mean(np.where(reference[:, 0] == picks, reference_scores[:, 1], reference_scores[:, 0]))):.3f} "
                "on average."
            )
        if largest and not args.quick:
            shortlists = [int(s) for s in args.shortlists.split(",") if s]
            notes += shortlist_sensitivity(index, probes, reference, shortlists)
            stress = simulated.probes(noisy, centres[picks], rng)
            _, stress_first, *_ = timed_searches(index, stress)
            stress_reference, _ = brute_force_top2(rows, stress)
            stress_own = np.einsum("ij,ij->i", stress, rows[picks])
            notes.append(
                f"- Stress, noisier captures (capture noise x{STRESS_NOISE}, genuine "
                f"{float(stress_own.mean()):.3f} +/- {float(stress_own.std()):.3f}) at "
                f"{size:,} shoppers: top-1 equal to brute force for "
                f"{agreeing(stress_first, stress_reference[:, 0])} / {count}; brute force's "
                f"top-1 is the shopper for {int(np.sum(stress_reference[:, 0] == picks))} / "
                f"{count}."
            )
        print(f"[done {size:,}]", file=sys.stderr, flush=True)
        del index, rows, centres, gallery
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print("## Gallery index: build, search latency, agreement with brute force\n")
    print("\n".join(facts))
    print(
        f"- {simulated.describe()}; one fused row per shopper (3 frames of one visit); "
        "genuine probes: a new visit of an enrolled shopper; impostor probes: people never "
        f"enrolled; latency over the genuine probes ({checked if args.quick else '300 below the largest size, 1,000 at it'}) "
        f"and 200 impostor probes, one search at a time; peak RSS of the run {peak:.1f} GiB\n"
    )
    print(
        "| shoppers (fused rows) | path | build s (bulk_load) | genuine median ms "
        "| genuine p95 ms | impostor median / p95 ms | impostor + exhaustive_below ms (searches redone exhaustively) "
        "| numpy brute force ms | top-1 = brute force | top-1 = brute force, with "
        "exhaustive_below | top-2 = brute force | brute force top-1 = the shopper |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows_out))
    if notes:
        print()
        print("\n".join(notes))
    print(
        "\n`exhaustive_below`: the search is redone exhaustively when the shortlist's best "
        f"is below {threshold} (the pack's base threshold, the lowest any rung matches at), "
        "as the service searches at the face rung: an impostor whose best is below it costs a "
        "full scan (in a small gallery; in a large one some impostor face scores above it). "
        "Below 20,000 rows every search is exhaustive. *brute force top-1 = the shopper*: how often the "
        "best-scoring row of the whole gallery is the probe's own shopper (an open search's "
        "ceiling, whatever the index)."
    )


if __name__ == "__main__":
    main()
