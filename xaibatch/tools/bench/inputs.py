"""The bench's inputs, made once: smooth random images (``tools/synth.py``) as arrays, their PNG files, subsets
and JPEG copies.

Each image is made and encoded (PNG, and JPEG when the loader rows need it) in one pass of a thread pool
(Pillow's resize and encoders release the GIL). The arrays
are what the runs' DataLoader decodes from the files (PNG is lossless and the files are at the model's input
size, so nothing is resized: tests/test_bench.py checks it), so no file is read back to get the tensors.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...defaults import cpu_count
from ...errors import UsageError
from .. import synth

JPEG_QUALITY = 90  # 4:2:0, as most cameras and sites save them


def _save(array: np.ndarray, path: Path) -> None:
    synth.save(array, path, quality=JPEG_QUALITY, compress_level=1)


KEEP_MARK = ".xaibatch-bench"  # in a folder the bench generated its files into: a later bench may use it again


def keep_folder_problem(folder: Path) -> str | None:
    """Why ``--keep`` may not use ``folder`` (None: it may). The bench writes ``model.pt``, ``all/``, ... there and
    removes its scratch folders (``out-*``, ``writer-*``, ...), so it takes only a new or empty folder, or one an
    earlier bench marked as its own (:data:`KEEP_MARK`); never the user's (their ``model.pt`` was overwritten)."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if not names or KEEP_MARK in names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"it holds files ({shown}) and is not an earlier bench's folder: name a new or empty folder"


def work_folder(keep: str | Path | None, prefix: str) -> Path:
    """The bench's folder: ``keep`` (--keep), else a new temporary one, claimed (:func:`claim_folder`)."""
    import tempfile

    if keep:
        return claim_folder(Path(keep))
    try:
        return claim_folder(Path(tempfile.mkdtemp(prefix=prefix)))
    except FileNotFoundError:  # a read-only container without TMPDIR: Python's message names no way out
        raise UsageError(
            "no writable temporary folder (TMPDIR, /tmp) for the bench's files: give one with --keep DIR"
        ) from None


def claim_folder(folder: Path) -> Path:
    """``folder``, created if need be and marked as the bench's (:data:`KEEP_MARK`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / KEEP_MARK).touch()
    return folder


def _current(path: Path, size: int) -> bool:
    """Whether ``path`` is a readable image of ``size`` x ``size`` already (``--keep``: an earlier bench's file at
    this size is reused; one of another ``--image-size`` is written again)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size == (size, size)
    except (OSError, ValueError):
        return False


def _threads() -> int:
    return max(1, min(16, cpu_count()))


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_threads())


def write_files(images: np.ndarray, folder: Path, ext: str = "png") -> list[Path]:
    """``img_000000.<ext>``, ... in ``folder``, encoded in parallel; existing files of this size are kept
    (``--keep``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:06d}.{ext}" for i in range(len(images))]
    size = images.shape[1]
    with _pool() as pool:
        list(pool.map(lambda i: _current(paths[i], size) or _save(images[i], paths[i]), range(len(paths))))
    return paths


def write_images(
    folder: Path, n: int, size: int, seed: int = 0, jpeg_folder: Path | None = None
) -> tuple[np.ndarray, list[Path]]:
    """Make ``n`` images (``synth.smooth``) and write them as PNGs (and JPEGs into ``jpeg_folder``), in one
    parallel pass: the arrays and the PNGs' paths."""
    folder.mkdir(parents=True, exist_ok=True)
    if jpeg_folder is not None:
        jpeg_folder.mkdir(parents=True, exist_ok=True)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    paths = [folder / f"img_{i:06d}.png" for i in range(n)]

    def one(i: int) -> None:
        images[i] = synth.smooth(i, size, seed)
        for path in (paths[i], None if jpeg_folder is None else jpeg_folder / f"img_{i:06d}.jpg"):
            if path is not None and not _current(path, size):
                _save(images[i], path)

    with _pool() as pool:
        list(pool.map(one, range(n)))
    return images, paths


def subset(src: list[Path], folder: Path) -> Path:
    """A folder holding (hard links to) these files; a file of an earlier ``--keep`` bench that is not this one's
    (a copy, or another size's) is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in src:
        dst = folder / p.name
        if dst.exists() and not os.path.samefile(p, dst):
            dst.unlink()
        if not dst.exists():
            try:
                os.link(p, dst)
            except OSError:
                shutil.copy2(p, dst)
    return folder


@dataclass
class Inputs:
    """The generated images (arrays and PNG files) and folders of their first ``k``."""

    root: Path
    images: np.ndarray  # (N, S, S, 3) uint8: what the DataLoader decodes from ``paths``
    paths: list[Path]
    folders: dict[int, Path] = field(default_factory=dict)
    jpeg_folders: dict[int, Path] = field(default_factory=dict)
    _jpeg_paths: list[Path] = field(default_factory=list)

    def first(self, k: int) -> Path:
        """A folder of the first ``k`` PNGs (``all/`` itself for all of them)."""
        if k not in self.folders:
            self.folders[k] = (
                self.paths[0].parent if k == len(self.paths) else subset(self.paths[:k], self.root / f"first-{k}")
            )
        return self.folders[k]

    def jpegs(self, k: int) -> Path:
        """A folder of JPEG copies of the first ``k`` images (``jpeg-<N>/`` holds all N, the others link there)."""
        if k not in self.jpeg_folders:
            n = len(self.paths)
            if n not in self.jpeg_folders:
                self.jpeg_folders[n] = self.root / f"jpeg-{n}"
                self._jpeg_paths = write_files(self.images, self.jpeg_folders[n], "jpg")
            if k != n:
                self.jpeg_folders[k] = subset(self._jpeg_paths[:k], self.root / f"jpeg-{k}")
        return self.jpeg_folders[k]


def make_inputs(
    root: Path, n: int, size: int, log: Callable[[str], None] = lambda s: None, jpeg: bool = False
) -> Inputs:
    """The images, their PNGs in ``root/all`` and, with ``jpeg``, their JPEGs in ``root/jpeg-<n>``, made once."""
    log(f"bench: generating {n} {size}x{size} PNGs{' and JPEGs' if jpeg else ''} in {root} ({_threads()} threads)")
    jpegs = root / f"jpeg-{n}" if jpeg else None
    inputs = Inputs(root, *write_images(root / "all", n, size, jpeg_folder=jpegs))
    if jpegs is not None:
        inputs.jpeg_folders[n] = jpegs
        inputs._jpeg_paths = [jpegs / p.name.replace(".png", ".jpg") for p in inputs.paths]
    return inputs
