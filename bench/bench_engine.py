"""Face engine speed on a 640x480 frame with one face: the kiosk's per-frame cost.

Prints a markdown section. Medians over repeated runs, after a warm-up; the frame is a photo
from the shared face set, scaled so the face is about 200 px wide, as at a till.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe
from models import packs
from models.images import load_image

FACES = Path(
    os.environ.get("FACEPAY_FACES_DIR", Path(__file__).resolve().parents[2] / "shared" / "faces")
)


def till_frame(photo: Path) -> np.ndarray:
    """A 640x480 frame holding the photo's face at about 200 px wide."""
    engine = packs.open_engine()
    image = load_image(photo)
    face = engine.analyse(image)[0]
    scale = 200 / (face.box[2] - face.box[0])
    scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cx = int((face.box[0] + face.box[2]) / 2 * scale)
    cy = int((face.box[1] + face.box[3]) / 2 * scale)
    frame = np.full((480, 640, 3), 90, np.uint8)
    left, top = cx - 320, cy - 240
    src = scaled[max(0, top) : top + 480, max(0, left) : left + 640]
    frame[
        max(0, -top) : max(0, -top) + src.shape[0], max(0, -left) : max(0, -left) + src.shape[1]
    ] = src
    return frame


def timed(function: Callable[[], object], runs: int) -> list[float]:
    for _ in range(5):
        function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def row(name: str, samples: list[float], per: int = 1, target: str = "") -> str:
    median = statistics.median(samples) / per
    p95 = sorted(samples)[int(len(samples) * 0.95) - 1] / per
    return f"| {name} | {median:.2f} | {p95:.2f} | {target} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    engine = packs.open_engine()
    frame = till_frame(FACES / "images" / "img1.jpg")
    (face,) = engine.analyse(frame)
    chip = engine.chip(frame, face)
    chips8 = np.stack([chip] * 8)
    flip_engine = packs.open_engine(flip_average=True)

    rows = [
        row(
            "detect + landmarks + quality (analyse)",
            timed(lambda: engine.analyse(frame), args.runs),
        ),
        row("align (150x150 chip)", timed(lambda: engine.chip(frame, face), args.runs)),
        row(
            "embed, batch 1", timed(lambda: engine.embed_chips(chip[None]), args.runs), target="≤ 6"
        ),
        row(
            "embed, batch 8, per face",
            timed(lambda: engine.embed_chips(chips8), args.runs),
            per=8,
            target="≤ 4",
        ),
        row(
            "whole frame: detect + landmarks + align + embed",
            timed(lambda: engine.embed(frame, engine.analyse(frame)[0]), args.runs),
            target="≤ 25",
        ),
        row(
            "whole frame, mirrored-chip averaging on",
            timed(lambda: flip_engine.embed(frame, flip_engine.analyse(frame)[0]), args.runs),
        ),
    ]
    print("## Face engine speed (`bench/bench_engine.py`)\n")
    print(f"Machine: {describe()}. onnxruntime on the CPU, {os.cpu_count()} threads.")
    print(f"A 640x480 frame with one face {face.quality.face_px} px wide; {args.runs} runs each.\n")
    print("| step | median ms | p95 ms | target ms |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    print()


if __name__ == "__main__":
    main()
