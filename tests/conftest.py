"""Fixtures shared by every test package: the shared face set and an isolated model cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def faces_root() -> Path:
    """The labelled face photos: FACEPAY_FACES_DIR, default ../shared/faces beside the repo."""
    return Path(os.environ.get("FACEPAY_FACES_DIR", REPO.parent / "shared" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    root = faces_root()
    if not (root / "images").is_dir():
        pytest.fail(f"the shared face set is missing at {root} (set FACEPAY_FACES_DIR)")
    return root


@pytest.fixture(scope="session", autouse=True)
def isolated_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Builds and downloads of the test run go to a fresh folder, never the user's cache."""
    cache = tmp_path_factory.mktemp("model-cache")
    saved = {
        key: os.environ.get(key) for key in ("FACEPAY_MODEL_CACHE", "FACEPAY_INSIGHTFACE_ROOT")
    }
    os.environ["FACEPAY_MODEL_CACHE"] = str(cache / "facepay")
    os.environ["FACEPAY_INSIGHTFACE_ROOT"] = str(cache / "insightface")
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def engine() -> Any:
    """The default pack's face engine, built once per test run (offline, from installed files)."""
    from models import packs

    return packs.open_engine()


@pytest.fixture(scope="session")
def face_vectors(faces_dir: Path, engine: Any) -> dict[str, list[np.ndarray]]:
    """Real embeddings of the default pack, by identity (largest face of each labelled photo)."""
    from models import evaluate

    identities = evaluate.read_identities(faces_dir / "identities.csv")
    wanted = {"p01", "p02", "p03", "p04", "p11", "p12"}
    files = [f for f, who in sorted(identities.items()) if who in wanted]
    embedded = evaluate.embed_files(engine, faces_dir / "images", files)
    vectors: dict[str, list[np.ndarray]] = {}
    for name, embedding in sorted(embedded.embeddings.items()):
        vectors.setdefault(identities[name], []).append(embedding.vector)
    return vectors


@pytest.fixture(scope="session")
def labelled_vectors(faces_dir: Path, engine: Any) -> tuple[np.ndarray, list[str]]:
    """Every labelled photo's embedding (default pack) and its identity, in file order."""
    from models import evaluate

    identities = evaluate.read_identities(faces_dir / "identities.csv")
    embedded = evaluate.embed_files(engine, faces_dir / "images", list(identities))
    names = sorted(embedded.embeddings)
    vectors = np.stack([embedded.embeddings[name].vector for name in names])
    return vectors, [identities[name] for name in names]
