"""Write files so a crash never leaves a half-written one, and never outside the output folder."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .errors import UsageError


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing anything that would land outside ``root``."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", "") for p in parts):
        raise UsageError(f"refusing to write {rel!r}: not a plain relative path")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"refusing to write {rel!r}: it resolves outside {root}")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def save_png(path: Path, image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=3)
    atomic_write_bytes(path, buf.getvalue())


def save_jpeg(path: Path, image: Image.Image, quality: int = 85) -> None:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    atomic_write_bytes(path, buf.getvalue())
