"""Simulated faces for the benchmarks: the default pack's gallery simulator (`models.simulate`).

Random 128-d unit vectors have cosine 0 +/- 0.09 to each other, so a gallery of them never
produces a false match and its genuine probes stand far above every impostor: it measures the
speed of arithmetic, not search. The simulator is calibrated to the default pack
(`dlib-resnet-v1`, manifest calibration.simulator): two different people score 0.83 +/- 0.034,
a new capture of an enrolled shopper about 0.97 to their fused enrolment.

Enrolled shoppers are 3 frames of one visit each (`enrolled`, what enrollment sends); the
server fuses them into one row (`server.matching.index.fuse`, the unit mean). A probe is a new
visit (`probes`). Everything is drawn from the caller's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from models.manifest import bundled_manifests
from models.packs import DEFAULT_PACK
from models.simulate import GallerySimulator, SimulatorModel

Vectors = npt.NDArray[np.float32]

FRAMES = 3  # enrolment frames per shopper, one visit
GEOMETRY_SEED = 0  # the simulator's mean direction and identity basis
_CHUNK = 100_000  # shoppers drawn at a time (bounds the float64 temporaries)


def model(pack: str = DEFAULT_PACK) -> SimulatorModel:
    """The pack's fitted simulator parameters."""
    manifest = bundled_manifests()[pack]
    if manifest.calibration is None or manifest.calibration.simulator is None:
        raise SystemExit(f"pack {pack} has no gallery simulator: run `facepay models calibrate`")
    return SimulatorModel.from_mapping(manifest.calibration.simulator)


def simulator(noise_scale: float = 1.0, pack: str = DEFAULT_PACK) -> GallerySimulator:
    """The pack's simulator; `noise_scale` > 1 makes every capture noisier (same faces: the
    geometry depends on the seed alone)."""
    fitted = model(pack)
    if noise_scale != 1.0:
        fitted = replace(fitted, capture_noise=fitted.capture_noise * noise_scale)
    return GallerySimulator(fitted, seed=GEOMETRY_SEED)


def describe(pack: str = DEFAULT_PACK) -> str:
    """One sentence for a benchmark's caption."""
    fitted = model(pack)
    return (
        f"simulated faces: the gallery simulator calibrated to the default pack "
        f"(`models/simulate.py`, {pack} calibration.simulator; impostor cosine about "
        f"0.83 +/- 0.034, a new visit about 0.97 to its shopper's fused enrolment; frames of "
        f"one visit share {fitted.session_share:.0%} of their noise, an assumption)"
    )


@dataclass
class Enrolled:
    """Shoppers as enrollment leaves them: their identity centres (to draw new visits from)
    and their enrolment frames, or the fused row the server keeps for each."""

    centres: Vectors  # (n, d)
    frames: Vectors | None  # (n, FRAMES, d), or None when only fused rows were kept
    fused: Vectors  # (n, d)


def enrolled(
    sim: GallerySimulator, count: int, rng: np.random.Generator, *, keep_frames: bool = True
) -> Enrolled:
    """`count` shoppers, each enrolled from `FRAMES` frames of one visit."""
    d = sim.model.dimension
    centres = np.empty((count, d), np.float32)
    fused = np.empty((count, d), np.float32)
    frames = np.empty((count, FRAMES, d), np.float32) if keep_frames else None
    for first in range(0, count, _CHUNK):
        size = min(_CHUNK, count - first)
        block = sim.identities(size, rng)
        captured = sim.captures(block, rng, frames=FRAMES)
        centres[first : first + size] = block
        fused[first : first + size] = sim.fuse(captured)
        if frames is not None:
            frames[first : first + size] = captured
    return Enrolled(centres, frames, fused)


def probes(sim: GallerySimulator, centres: Vectors, rng: np.random.Generator) -> Vectors:
    """A new visit of each of these shoppers (one capture each)."""
    out = np.empty(centres.shape, np.float32)
    for first in range(0, centres.shape[0], _CHUNK):
        out[first : first + _CHUNK] = sim.probes(centres[first : first + _CHUNK], rng)
    return out


def strangers(sim: GallerySimulator, count: int, rng: np.random.Generator) -> Vectors:
    """A capture each of `count` people never enrolled (impostor probes)."""
    return probes(sim, sim.identities(count, rng), rng)
