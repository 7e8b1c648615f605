"""insightface packs, exercised on tiny models the tests build (no download is possible here).

Covers: insightface's own downloader and unzip (fed a local zip), pinning on first pull,
checksum failures, loading through insightface's model zoo, our preprocessing against
insightface's, and the non-commercial licence warning.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from models import align, packs
from models.embedder import Embedder, make_session
from models.errors import ChecksumError, PackError
from tests.unit.models.tiny_models import tiny_arcface

# Five ArcFace-order landmarks (eyes, nose, mouth corners) of a face in a 400x300 frame.
LANDMARKS = np.array(
    [[170.0, 130.0], [232.0, 128.0], [200.0, 165.0], [176.0, 200.0], [226.0, 198.0]]
)


@pytest.fixture
def fake_zoo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """insightface's download_file, answering with a zip of tiny models instead of the network."""
    from insightface.utils import storage

    fetched: list[str] = []
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("w600k_r50.onnx", tiny_arcface(seed=1))
        bundle.writestr("det_10g.onnx", b"detector weights stand-in")

    def download_file(url: str, path: str, overwrite: bool = False, sha1_hash: Any = None) -> str:
        fetched.append(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(archive.getvalue())
        return path

    monkeypatch.setattr(storage, "download_file", download_file)
    monkeypatch.setenv("FACEPAY_INSIGHTFACE_ROOT", str(tmp_path / "insightface"))
    return fetched


def test_pull_uses_insightface_download_and_pins(fake_zoo: list[str]) -> None:
    manifest = packs.get_manifest("buffalo_l")
    folder = packs.pull(manifest)
    assert fake_zoo == [
        "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip"
    ]
    assert folder == packs.pack_dir(manifest)
    pins = packs.read_lock(manifest)
    assert set(pins) == {"w600k_r50.onnx", "det_10g.onnx"}
    assert all(check.status == "ok" for check in packs.verify(manifest))


def test_tampered_file_fails_closed(fake_zoo: list[str]) -> None:
    manifest = packs.get_manifest("buffalo_l")
    packs.pull(manifest)
    model = packs.pack_dir(manifest) / "w600k_r50.onnx"
    model.write_bytes(tiny_arcface(seed=2))
    assert {c.name: c.status for c in packs.verify(manifest)}["w600k_r50.onnx"] == "mismatch"
    with pytest.raises(ChecksumError):
        packs.checked_path(manifest, manifest.file("recognition"))
    with pytest.raises(ChecksumError):
        packs.open_engine("buffalo_l")


def test_unpulled_pack_is_missing(fake_zoo: list[str]) -> None:
    manifest = packs.get_manifest("buffalo_s")
    assert {check.status for check in packs.verify(manifest)} == {"missing"}
    with pytest.raises(PackError) as error:
        packs.open_engine("buffalo_s")
    assert error.value.code == "pack_missing"


def test_unpinned_file_is_refused(fake_zoo: list[str]) -> None:
    manifest = packs.get_manifest("buffalo_l")
    packs.pull(manifest)
    (packs.pack_dir(manifest) / packs.LOCK_FILE).unlink()
    with pytest.raises(ChecksumError):
        packs.checked_path(manifest, manifest.file("recognition"))


def test_recognition_model_loads_through_insightface_and_matches_its_preprocessing(
    fake_zoo: list[str],
) -> None:
    from insightface.model_zoo import model_zoo
    from insightface.utils import face_align

    manifest = packs.get_manifest("buffalo_l")
    packs.pull(manifest)
    path = packs.checked_path(manifest, manifest.file("recognition"))
    theirs = model_zoo.get_model(str(path))
    assert theirs.taskname == "recognition"
    assert (theirs.input_mean, theirs.input_std) == (127.5, 127.5)

    rng = np.random.default_rng(3)
    frame_rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    ours = Embedder(make_session(path, threads=1), manifest.preprocessing, manifest.embedding_size)
    chip = align.extract_arcface_chip(frame_rgb, LANDMARKS, size=112)
    with warnings.catch_warnings():
        # skimage, which insightface's norm_crop calls, warns about its own API's future.
        warnings.simplefilter("ignore", FutureWarning)
        their_chip_bgr = face_align.norm_crop(
            frame_rgb[:, :, ::-1].copy(), landmark=LANDMARKS, image_size=112
        )
    assert np.abs(chip.astype(int) - their_chip_bgr[:, :, ::-1].astype(int)).max() <= 1

    our_vector = ours.infer(chip[None])[0]
    their_raw = theirs.get_feat(their_chip_bgr)[0]
    their_vector = their_raw / np.linalg.norm(their_raw)
    assert float(our_vector @ their_vector) > 0.9999
    assert np.linalg.norm(our_vector) == pytest.approx(1.0, abs=1e-5)


def test_batches_match_single_faces(fake_zoo: list[str]) -> None:
    manifest = packs.get_manifest("buffalo_l")
    packs.pull(manifest)
    path = packs.checked_path(manifest, manifest.file("recognition"))
    embedder = Embedder(
        make_session(path, threads=1), manifest.preprocessing, manifest.embedding_size
    )
    chips = np.random.default_rng(5).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
    batch = embedder.infer(chips)
    singles = np.stack([embedder.infer(chip[None])[0] for chip in chips])
    assert batch.shape == (4, 512) and batch.dtype == np.float32
    assert np.allclose(batch, singles, atol=1e-5)


def test_wrong_signature_is_refused(tmp_path: Path) -> None:
    manifest = packs.get_manifest("dlib-resnet-v1")  # expects 150x150 input and 128-d output
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_arcface())
    with pytest.raises(PackError):
        Embedder(make_session(path, threads=1), manifest.preprocessing, manifest.embedding_size)


def test_corrupted_model_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(PackError) as error:
        make_session(path)
    assert error.value.code == "pack_corrupted"


def test_licence_shown_and_non_commercial_warned(
    fake_zoo: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    from models.cli import models_group

    result = CliRunner().invoke(models_group, ["list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "NON-COMMERCIAL ONLY" in lines["buffalo_l@0.7"]
    assert (
        "commercial use OK" in lines["dlib-resnet-v1@1"] and "CC0-1.0" in lines["dlib-resnet-v1@1"]
    )

    pulled = CliRunner().invoke(models_group, ["pull", "buffalo_s"])
    assert "non-commercial research only" in pulled.output
    with caplog.at_level(logging.WARNING), pytest.raises(PackError):
        packs.open_engine("buffalo_s")
    assert "non-commercial" in caplog.text
