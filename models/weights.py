"""Where the weight files that installed packages ship are found, without importing them.

`face_recognition_models` imports the deprecated `pkg_resources` when imported; we only need
its data folder, so we look the package up without running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from models.errors import PackError

DLIB_MODELS_PACKAGE = "face_recognition_models"


def dlib_model_file(name: str) -> Path:
    """Path of one of the CC0 dlib model files shipped by `face_recognition_models`."""
    spec = importlib.util.find_spec(DLIB_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PackError(
            f"the Python package {DLIB_MODELS_PACKAGE} is not installed; "
            f"`pip install {DLIB_MODELS_PACKAGE}` provides the dlib model files",
            code="pack_source_missing",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise PackError(f"{DLIB_MODELS_PACKAGE} has no file {name}", code="pack_source_missing")
    return path
