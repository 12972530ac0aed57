"""Find the packaged templates/ and models/ folders, from a wheel or a checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent

DEFAULT_MODEL_NAME = "xaibatch-demo.pt"
DEFAULT_MODEL_IMAGE_SIZE = 32  # the bundled model is trained on the 32x32 demo set (`xaibatch demo-data`)


def _find(installed: str, checkout: str) -> Path:
    # A wheel carries them inside the package (see pyproject's force-include);
    # a checkout or an editable install has them at the repository root.
    for candidate in (_PKG / installed, _PKG.parent / checkout):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"xaibatch's {checkout}/ folder is missing from {_PKG}")


def templates_dir() -> Path:
    return _find("_templates", "templates")


def models_dir() -> Path:
    return _find("_models", "models")


def default_checkpoint() -> Path:
    return models_dir() / DEFAULT_MODEL_NAME
