"""Model pack manifests: what a pack is made of, how to feed it, and where to set its threshold.

A manifest is data (one JSON file per pack in `models/manifests/`); this module only parses and
validates it. Every template carries `PackManifest.ref` ("id@version"), so templates of
different packs are never compared.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from models.errors import PackError

Alignment = Literal["dlib-chip", "arcface"]
Engine = Literal["dlib-resnet", "insightface"]
FileRole = Literal["source", "recognition", "detection", "landmarks", "extra"]

_PACK_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Licence:
    spdx: str
    commercial_use: bool
    summary: str
    url: str = ""


@dataclass(frozen=True)
class PackFile:
    name: str
    role: FileRole
    # None means "pinned at first download" (recorded in the pack's lock file), for packs whose
    # publisher ships no checksums we could verify when the manifest was written.
    sha256: str | None
    size: int | None = None
    source: str = ""
    built_from: str | None = None


@dataclass(frozen=True)
class Preprocessing:
    """How an aligned face chip becomes the network's input tensor: (pixel - mean) * scale."""

    alignment: Alignment
    input_size: int
    channel_order: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    scale: float
    padding: float = 0.0
    # Average the embeddings of the chip and its mirror image (one batch of two).
    flip_average: bool = False


@dataclass(frozen=True)
class OperatingPoint:
    fmr: float
    threshold: float
    # "empirical": enough impostor pairs to observe this FMR; "extrapolated": set from a fitted
    # tail of the impostor scores, because the data set is too small to observe it directly.
    method: Literal["empirical", "extrapolated"]


@dataclass(frozen=True)
class ScoreCurves:
    """Score distributions of the pack's gallery simulator, on a grid of thresholds: what the
    server's risk rule reads (`server.matching.risk`). `thresholds[i] = start + i * step`.

    - `impostor_survival[i]`: share of (probe, another person's enrolled template) pairs
      scoring at or above threshold i: the false match rate of one shopper compared;
    - `genuine_below[i]`: share of (probe, own enrolled template) pairs scoring below it;
    - `duplicate_survival[i]`: share of (enrolled template, another person's) pairs at or
      above it: the false match rate of one comparison of the duplicate check.

    A probe is one capture; an enrolled template is the mean of one visit's frames (the
    gallery keeps one fused row per shopper). `resolution` is the smallest rate the curves can
    show (3 / pairs counted: the 95% bound at zero seen); a rate below it is unknown, and the
    risk rule treats it as `resolution`.
    """

    start: float
    step: float
    impostor_survival: tuple[float, ...]
    genuine_below: tuple[float, ...]
    duplicate_survival: tuple[float, ...]
    resolution: float
    source: str = ""

    def __post_init__(self) -> None:
        count = len(self.impostor_survival)
        if count < 2 or len(self.genuine_below) != count or len(self.duplicate_survival) != count:
            raise PackError("score curves need matching arrays of at least two points")
        if not (self.step > 0 and 0 < self.resolution < 1 and math.isfinite(self.start)):
            raise PackError("score curves need a positive step and a resolution in (0, 1)")
        for curve in (self.impostor_survival, self.genuine_below, self.duplicate_survival):
            if not all(0.0 <= value <= 1.0 for value in curve):
                raise PackError("score curve values must be shares in [0, 1]")

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.start + i * self.step for i in range(len(self.impostor_survival)))


@dataclass(frozen=True)
class Calibration:
    """Operating points measured on a named labelled set.

    `default_threshold` is the lowest threshold at which no impostor pair of that set is
    accepted: with a set of a few thousand impostor pairs, that is the strictest claim the
    data supports directly; the FMR points below it in the list are what the server picks from
    for its configured FMR.
    """

    dataset: str
    date: str
    genuine_pairs: int
    impostor_pairs: int
    points: tuple[OperatingPoint, ...]
    default_threshold: float
    default_rule: str = "no_impostor"
    # The fitted gallery simulator's parameters (`models.simulate.SimulatorModel`) and the
    # score curves drawn from it; None for a pack calibrated without one.
    simulator: Mapping[str, Any] | None = None
    curves: ScoreCurves | None = None

    def threshold(self, fmr: float) -> float:
        for point in self.points:
            if math.isclose(point.fmr, fmr, rel_tol=1e-9):
                return point.threshold
        known = ", ".join(f"{p.fmr:g}" for p in self.points)
        raise PackError(f"no operating point at FMR {fmr:g} (known: {known})")


@dataclass(frozen=True)
class PackManifest:
    id: str
    version: str
    title: str
    engine: Engine
    detector: str
    embedding_size: int
    similarity: Literal["cosine"]
    licence: Licence
    preprocessing: Preprocessing
    files: tuple[PackFile, ...]
    calibration: Calibration | None
    download: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """The id that travels with every template: pack id and version."""
        return f"{self.id}@{self.version}"

    def file(self, role: FileRole) -> PackFile:
        for entry in self.files:
            if entry.role == role:
                return entry
        raise PackError(f"pack {self.id} has no {role} file")


def parse_manifest(document: Mapping[str, Any]) -> PackManifest:
    """Validate a manifest document; any missing or malformed field is a PackError."""
    try:
        return _parse(document)
    except PackError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        name = document.get("id", "?") if isinstance(document, Mapping) else "?"
        raise PackError(f"manifest {name!s}: invalid ({exc!r})") from exc


def _parse(doc: Mapping[str, Any]) -> PackManifest:
    pack_id = str(doc["id"])
    if not _PACK_ID.fullmatch(pack_id):
        raise PackError(f"manifest id {pack_id!r} is not a valid pack id")
    pre = doc["preprocessing"]
    mean = tuple(float(v) for v in pre["mean"])
    if len(mean) != 3:
        raise PackError(f"manifest {pack_id}: preprocessing.mean needs 3 values")
    preprocessing = Preprocessing(
        alignment=_choice(pre["alignment"], ("dlib-chip", "arcface")),
        input_size=_positive_int(pre["input_size"]),
        channel_order=_choice(pre["channel_order"], ("RGB", "BGR")),
        mean=(mean[0], mean[1], mean[2]),
        scale=float(pre["scale"]),
        padding=float(pre.get("padding", 0.0)),
        flip_average=bool(pre.get("flip_average", False)),
    )
    files = tuple(_parse_file(pack_id, f) for f in doc["files"])
    calibration = _parse_calibration(doc["calibration"]) if doc.get("calibration") else None
    return PackManifest(
        id=pack_id,
        version=str(doc["version"]),
        title=str(doc["title"]),
        engine=_choice(doc["engine"], ("dlib-resnet", "insightface")),
        detector=str(doc["detector"]),
        embedding_size=_positive_int(doc["embedding_size"]),
        similarity=_choice(doc["similarity"], ("cosine",)),
        licence=Licence(
            spdx=str(doc["licence"]["spdx"]),
            commercial_use=bool(doc["licence"]["commercial_use"]),
            summary=str(doc["licence"]["summary"]),
            url=str(doc["licence"].get("url", "")),
        ),
        preprocessing=preprocessing,
        files=files,
        calibration=calibration,
        download={str(k): str(v) for k, v in doc.get("download", {}).items()},
    )


def _parse_file(pack_id: str, raw: Mapping[str, Any]) -> PackFile:
    sha = raw.get("sha256")
    if sha is not None and not _SHA256.fullmatch(str(sha)):
        raise PackError(f"manifest {pack_id}: file {raw.get('name')!r} has a malformed sha256")
    name = str(raw["name"])
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise PackError(f"manifest {pack_id}: file name {name!r} must be a plain file name")
    return PackFile(
        name=name,
        role=_choice(raw["role"], ("source", "recognition", "detection", "landmarks", "extra")),
        sha256=None if sha is None else str(sha),
        size=None if raw.get("size") is None else int(raw["size"]),
        source=str(raw.get("source", "")),
        built_from=None if raw.get("built_from") is None else str(raw["built_from"]),
    )


def _parse_calibration(raw: Mapping[str, Any]) -> Calibration:
    points = tuple(
        OperatingPoint(
            fmr=float(p["fmr"]),
            threshold=float(p["threshold"]),
            method=_choice(p["method"], ("empirical", "extrapolated")),
        )
        for p in raw["points"]
    )
    return Calibration(
        dataset=str(raw["dataset"]),
        date=str(raw["date"]),
        genuine_pairs=int(raw["genuine_pairs"]),
        impostor_pairs=int(raw["impostor_pairs"]),
        points=points,
        default_threshold=float(raw["default_threshold"]),
        default_rule=str(raw.get("default_rule", "no_impostor")),
        simulator=dict(raw["simulator"]) if raw.get("simulator") else None,
        curves=_parse_curves(raw["curves"]) if raw.get("curves") else None,
    )


def _parse_curves(raw: Mapping[str, Any]) -> ScoreCurves:
    return ScoreCurves(
        start=float(raw["start"]),
        step=float(raw["step"]),
        impostor_survival=tuple(float(v) for v in raw["impostor_survival"]),
        genuine_below=tuple(float(v) for v in raw["genuine_below"]),
        duplicate_survival=tuple(float(v) for v in raw["duplicate_survival"]),
        resolution=float(raw["resolution"]),
        source=str(raw.get("source", "")),
    )


def _choice(value: Any, allowed: tuple[str, ...]) -> Any:
    text = str(value)
    if text not in allowed:
        raise PackError(f"{text!r} is not one of {', '.join(allowed)}")
    return text


def _positive_int(value: Any) -> int:
    number = int(value)
    if number <= 0:
        raise PackError(f"{value!r} must be a positive integer")
    return number


def bundled_manifests() -> dict[str, PackManifest]:
    """The manifests shipped in this package, by pack id."""
    found: dict[str, PackManifest] = {}
    for entry in sorted(resources.files("models.manifests").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            manifest = parse_manifest(json.loads(entry.read_text(encoding="utf-8")))
            found[manifest.id] = manifest
    return found


def manifest_to_dict(manifest: PackManifest) -> dict[str, Any]:
    """The manifest as JSON-ready data (for `models list --json` and calibration writes)."""
    from dataclasses import asdict

    data = asdict(manifest)
    data["download"] = dict(manifest.download)
    return data
