"""Write files so a crash never leaves a half-written one, and never outside the output folder."""

from __future__ import annotations

import errno
import io
import itertools
import hashlib
import os
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import UsageError


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing anything that would land outside ``root``.

    ``rel`` must be a plain relative POSIX path: not absolute, no ``..`` part, no NUL byte; and the
    result, symlinks resolved, must still be under ``root`` (so a symlink planted inside the output
    folder cannot redirect a write either).
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise UsageError(f"refusing to write {rel!r}: not a plain relative path")
    pure = PurePosixPath(rel)
    parts = pure.parts
    if not parts or pure.is_absolute() or any(p in ("..", "") for p in parts):
        raise UsageError(f"refusing to write {rel!r}: not a plain relative path")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"refusing to write {rel!r}: it resolves outside {root}")
    return path


_tmp_counter = itertools.count()


def make_dirs(path: Path) -> None:
    """``mkdir -p`` without recursion: ``Path.mkdir(parents=True)`` and ``os.makedirs`` recurse once per
    missing level and hit Python's recursion limit past about 1000 (deeply nested input folders)."""
    missing = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over the target.

    The temporary name is short (a 250-byte file name must still leave room for it), created
    exclusively (never follows a symlink left at that name), and removed when the write fails, so
    a full disk leaves neither a truncated target nor a stray temporary file.
    """
    make_dirs(path.parent)
    for _ in range(1000):  # a stale temporary file (same pid after a crash) is skipped, not reused
        # ".<name>.<pid>.tmp" with the pid last: the form a sweep of stale temporary files looks for.
        tmp = path.with_name(f".{path.name[:32]}.{next(_tmp_counter)}.{os.getpid()}.tmp")
        try:
            f = open(tmp, "xb")
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))
    try:
        with f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
