"""The default pack end to end on real photos: accuracy bars, agreement with dlib, odd inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from models import evaluate, packs
from models.detect import THOROUGH_HOG_PASSES, HogPass
from models.engine import FaceEngine
from models.images import load_image
from models.reference import agreement


@pytest.fixture(scope="session")
def report(engine: FaceEngine, faces_dir: Path) -> evaluate.Report:
    pairs = evaluate.pairs_from_identities(evaluate.read_identities(faces_dir / "identities.csv"))
    return evaluate.evaluate(engine, faces_dir / "images", pairs)


def test_default_pack_builds_and_verifies(engine: FaceEngine) -> None:
    manifest = packs.get_manifest(packs.DEFAULT_PACK)
    assert all(check.status == "ok" for check in packs.verify(manifest))
    assert engine.pack == "dlib-resnet-v1@1"


def test_a_face_on_every_labelled_photo(report: evaluate.Report) -> None:
    assert report.photos == 61
    assert report.detection_failures == {}
    assert (report.genuine_pairs, report.impostor_pairs) == (140, 1690)


def test_accuracy_bars(report: evaluate.Report) -> None:
    assert report.roc_auc >= 0.999
    assert report.at_default is not None
    assert report.at_default["impostors_accepted"] == 0
    assert report.at_default["fnmr"] <= 0.02


def test_embeddings_are_unit_float32_and_batches_agree(engine: FaceEngine, faces_dir: Path) -> None:
    image = load_image(faces_dir / "images" / "couple.jpg")
    faces = engine.analyse(image)
    assert len(faces) == 2
    assert faces[0].area >= faces[1].area
    batch = engine.embed_faces(image, faces)
    single = [engine.embed(image, face) for face in faces]
    for together, alone in zip(batch, single, strict=True):
        assert together.vector.dtype == np.float32 and together.vector.shape == (128,)
        assert np.linalg.norm(together.vector) == pytest.approx(1.0, abs=1e-5)
        assert float(together.vector @ alone.vector) > 0.99999
    assert (
        batch[0].similarity(batch[1])
        < packs.get_manifest(packs.DEFAULT_PACK).calibration.default_threshold
    )  # type: ignore[union-attr]


def test_crowd_and_no_face(engine: FaceEngine, faces_dir: Path) -> None:
    crowd_photo = load_image(faces_dir / "images" / "selfie-many-people.jpg")
    # The till's fast scan stops at the first scale that finds faces: the larger ones.
    crowd = engine.analyse(crowd_photo)
    assert len(crowd) >= 2
    assert [f.area for f in crowd] == sorted((f.area for f in crowd), reverse=True)
    thorough = packs.open_engine(hog_passes=THOROUGH_HOG_PASSES).analyse(crowd_photo)
    assert len(thorough) > len(crowd)
    blank = np.full((480, 640, 3), 127, np.uint8)
    assert engine.analyse(blank) == []


def test_odd_frames_are_handled(engine: FaceEngine, faces_dir: Path) -> None:
    rgb = load_image(faces_dir / "images" / "img1.jpg")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert len(engine.analyse(grey)) == 1
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert len(engine.analyse(rgba)) == 1
    deep = rgb.astype(np.uint16) * 257
    assert len(engine.analyse(deep)) == 1
    tiny = cv2.resize(rgb, (12, 9))
    assert engine.analyse(tiny) == []


def test_quality_on_a_real_face(engine: FaceEngine, faces_dir: Path) -> None:
    rgb = load_image(faces_dir / "images" / "img1.jpg")
    (face,) = engine.analyse(rgb)
    blurred = engine.analyse(cv2.GaussianBlur(rgb, (0, 0), 6))
    assert face.quality.face_px > 100
    assert abs(face.quality.yaw) < 25 and abs(face.quality.pitch) < 25
    assert 40 < face.quality.brightness < 220
    if blurred:
        assert blurred[0].quality.sharpness < face.quality.sharpness
    mirrored = engine.analyse(np.ascontiguousarray(rgb[:, ::-1]))
    assert mirrored[0].quality.yaw == pytest.approx(-face.quality.yaw, abs=3)


@pytest.fixture(scope="session")
def full_size_engine() -> FaceEngine:
    """The same pipeline, scanning for faces at full size as dlib's own detector call does."""
    return packs.open_engine(
        packs.DEFAULT_PACK, hog_passes=(HogPass(1 << 30), HogPass(1 << 30, upsample=1))
    )


def test_whole_pipeline_agrees_with_dlib(full_size_engine: FaceEngine, faces_dir: Path) -> None:
    """Every face of every photo: our detect, align and embed against dlib's, cosine >= 0.9999."""
    cosines = list(agreement(full_size_engine, sorted((faces_dir / "images").glob("*.jpg"))))
    for name, cosine in cosines:
        assert cosine >= 0.9999, f"{name}: cosine {cosine:.6f}"
    assert len(cosines) >= 61


def test_cli_embed_json_lines_in_order(faces_dir: Path, tmp_path: Path) -> None:
    from models.cli import models_group

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    images = [faces_dir / "images" / "couple.jpg", empty, faces_dir / "images" / "img1.jpg"]
    result = CliRunner().invoke(models_group, ["embed", "--json", *map(str, images)])
    assert result.exit_code == 1  # one image failed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    assert lines[0]["face_count"] == 2 and len(lines[0]["faces"][0]["embedding"]) == 128
    assert lines[1]["error"]["code"] == "image_empty"
    face = lines[2]["faces"][0]
    assert set(face) == {"box", "landmarks", "det_score", "quality", "embedding"}
    assert set(face["quality"]) == {"face_px", "sharpness", "brightness", "yaw", "pitch"}


def test_cli_compare(faces_dir: Path) -> None:
    from models.cli import models_group

    identities = evaluate.read_identities(faces_dir / "identities.csv")
    same = [f for f, who in identities.items() if who == "p01"][:2]
    other = next(f for f, who in identities.items() if who != "p01")
    runner = CliRunner()
    result = runner.invoke(
        models_group, ["compare", "--json", *(str(faces_dir / "images" / f) for f in same)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["same_person"] is True
    result = runner.invoke(
        models_group,
        [
            "compare",
            "--json",
            str(faces_dir / "images" / same[0]),
            str(faces_dir / "images" / other),
        ],
    )
    assert json.loads(result.stdout)["same_person"] is False
