"""The bench's inputs, made once: smooth random images as arrays, their PNG files, subsets and JPEG copies.

The arrays are generated in one vectorized pass and the files encoded in a thread pool (Pillow's encoders
release the GIL). The arrays are what the runs' DataLoader decodes from the files (PNG is lossless and the
files are at the model's input size, so nothing is resized: tests/test_bench.py checks it), so no file is
read back to get the tensors.
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

JPEG_QUALITY = 90  # 4:2:0, as most cameras and sites save them


def generate(n: int, size: int, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """``n`` smooth random RGB images as (n, size, size, 3) uint8: low-frequency colour fields (bicubic from an
    8-pixel grid) plus a little noise, so SLIC finds real superpixels rather than collapsing on pure noise."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    cells = max(2, size // 8)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for a in range(0, n, chunk):  # bounded memory at any size
        k = min(chunk, n - a)
        low = torch.from_numpy(rng.integers(0, 256, (k, 3, cells, cells), dtype=np.uint8)).float()
        smooth = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        noisy = smooth.permute(0, 2, 3, 1).round_() + torch.from_numpy(rng.integers(-8, 9, (k, size, size, 3),
                                                                                     dtype=np.int8))
        out[a:a + k] = noisy.clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    if path.suffix == ".png":
        Image.fromarray(array).save(path, compress_level=1)
    else:
        Image.fromarray(array).save(path, quality=JPEG_QUALITY)


def write_files(images: np.ndarray, folder: Path, ext: str = "png") -> list[Path]:
    """``img_000000.<ext>``, ... in ``folder``, encoded in parallel; existing files are kept (``--keep``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:06d}.{ext}" for i in range(len(images))]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    with ThreadPoolExecutor(max(1, min(16, cpu_count()))) as pool:
        list(pool.map(lambda i: _save(images[i], paths[i]), todo))
    return paths


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Generate and write ``n`` PNGs (see :func:`generate`)."""
    return write_files(generate(n, size, seed), folder)


def subset(src: list[Path], folder: Path) -> Path:
    """A folder holding (hard links to) these files."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in src:
        dst = folder / p.name
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
            self.folders[k] = (self.paths[0].parent if k == len(self.paths) else
                               subset(self.paths[:k], self.root / f"first-{k}"))
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


def make_inputs(root: Path, n: int, size: int, log: Callable[[str], None] = lambda s: None) -> Inputs:
    log(f"bench: generating {n} {size}x{size} PNGs in {root}")
    images = generate(n, size)
    return Inputs(root, images, write_files(images, root / "all"))
