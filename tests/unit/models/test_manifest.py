"""Manifests: the bundled ones parse and say what they must; malformed ones are refused."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest

from models.errors import PackError
from models.manifest import bundled_manifests, parse_manifest


def _document(pack: str) -> dict[str, Any]:
    text = resources.files("models.manifests").joinpath(f"{pack}.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def test_bundled_packs_and_licences() -> None:
    packs = bundled_manifests()
    assert set(packs) == {"dlib-resnet-v1", "buffalo_l", "buffalo_s"}
    default = packs["dlib-resnet-v1"]
    assert default.licence.commercial_use and default.licence.spdx == "CC0-1.0"
    assert default.ref == "dlib-resnet-v1@1"
    for name in ("buffalo_l", "buffalo_s"):
        assert not packs[name].licence.commercial_use
        assert packs[name].preprocessing.alignment == "arcface"
        assert packs[name].embedding_size == 512


def test_default_pack_pins_every_file_and_is_calibrated() -> None:
    default = bundled_manifests()["dlib-resnet-v1"]
    assert all(entry.sha256 for entry in default.files)
    assert {entry.role for entry in default.files} == {"source", "landmarks", "recognition"}
    # Never the 68-point predictor: its training data excludes commercial use.
    assert not any("68" in entry.name for entry in default.files)
    calibration = default.calibration
    assert calibration is not None
    assert {p.fmr for p in calibration.points} == {1e-3, 1e-4, 1e-5}
    thresholds = [p.threshold for p in sorted(calibration.points, key=lambda p: -p.fmr)]
    assert thresholds == sorted(thresholds), "a stricter FMR needs a higher threshold"
    assert calibration.dataset


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("id",), "../evil"),
        (("preprocessing", "mean"), [1.0, 2.0]),
        (("preprocessing", "alignment"), "guess"),
        (("files", 0, "sha256"), "abc"),
        (("files", 0, "name"), "../../etc/passwd"),
        (("embedding_size",), 0),
        (("engine",), "tensorflow"),
    ],
)
def test_malformed_manifests_are_refused(path: tuple[Any, ...], value: Any) -> None:
    document = copy.deepcopy(_document("dlib-resnet-v1"))
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(PackError):
        parse_manifest(document)


def test_missing_field_is_a_pack_error() -> None:
    document = _document("buffalo_l")
    del document["preprocessing"]
    with pytest.raises(PackError):
        parse_manifest(document)


def test_unknown_operating_point() -> None:
    calibration = bundled_manifests()["dlib-resnet-v1"].calibration
    assert calibration is not None
    with pytest.raises(PackError):
        calibration.threshold(0.5)
