"""Cold start of one kept instance, alternately by another checkout of the code and by this
one, each a fresh process: the ratio of two versions measured in the same run.

    git archive REV | tar -x -C /tmp/facepay-REV
    python bench/compare_cold_start.py --other /tmp/facepay-REV --instance DIR --shoppers N

The instance (made by `bench_gallery.kept_instance` on first use) must be one both versions can
load. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ONCE = """
import json, sys
from pathlib import Path
import numpy as np
from bench.bench_gallery import kept_instance, time_cold_start
instance = kept_instance(Path(sys.argv[1]), int(sys.argv[2]), np.random.default_rng(0))
print(json.dumps(list(time_cold_start(instance))))
"""


def cold_start(tree: Path, instance: Path, shoppers: int) -> tuple[float, float, float]:
    """(searchable s, quantised s, CPU s of the process and its workers) in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-c", ONCE, str(instance), str(shoppers)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    searchable, quantised = json.loads(done.stdout.strip().splitlines()[-1])
    return searchable, quantised, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--other", type=Path, required=True, help="the other checkout")
    parser.add_argument("--instance", type=Path, required=True)
    parser.add_argument("--shoppers", type=int, default=333_334)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    trees = {"other": args.other, "this": HERE}
    cold_start(HERE, args.instance, args.shoppers)  # builds the instance if it is not there
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            run = cold_start(tree, args.instance, args.shoppers)
            times[name].append(run)
            print(
                f"{name}: searchable {run[0]:.2f} s, quantised {run[1]:.2f} s, CPU {run[2]:.1f} s,"
                f" load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    medians = {name: statistics.median(t[0] for t in runs) for name, runs in times.items()}
    for name, runs in times.items():
        cpu = statistics.median(t[2] for t in runs)
        print(f"{name}: median searchable {medians[name]:.2f} s, median CPU {cpu:.1f} s")
    print(f"this / other (median searchable): {medians['this'] / medians['other']:.2f}")


if __name__ == "__main__":
    main()
