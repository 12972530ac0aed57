"""Synthetic inputs for tests, ``xaibatch bench`` and benchmarks/: deterministic images and a tiny checkpoint.

The same arguments give the same pixels, on any machine and in any thread. Three kinds of picture:

- ``noise``: uniform random pixels, the worst case for PNG and what most tests run on;
- ``smooth``: a low-frequency colour field plus a little noise, closer to a photo (SLIC finds real superpixels,
  PNG compresses it as it compresses photos);
- ``patches``: blocky colour patches plus noise, as arrays, for the method tests' batches;

and ``solid`` files of one colour, which a test recognises by any one pixel. No torch unless a checkpoint is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

CLASSES = ("FAKE", "REAL")


def noise(rng: np.random.Generator, height: int, width: int | None = None) -> np.ndarray:
    """(height, width, 3) uint8 of uniform random pixels, drawn from ``rng`` (square when no width)."""
    return rng.integers(0, 256, size=(height, height if width is None else width, 3), dtype=np.uint8)


def smooth(i: int, size: int, seed: int = 0) -> np.ndarray:
    """Image ``i``: (size, size, 3) uint8, a bicubic upsampling of a random 8-pixel grid plus noise of +-8.

    The same for the same ``(i, size, seed)`` whatever else was drawn before, so images can be made in parallel.
    """
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    cells = max(2, size // 8)
    low = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.int16)
    return np.clip(a + rng.integers(-8, 9, a.shape, dtype=np.int16), 0, 255).astype(np.uint8)


def patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: a 4x4 grid of colour patches per image, plus 20 % uniform noise."""
    rng = np.random.default_rng(seed)
    cells = rng.random((n, 4, 4, 3))
    big = np.kron(cells, np.ones((1, size // 4, size // 4, 1)))
    return (np.clip(big * 0.8 + rng.random(big.shape) * 0.2, 0, 1) * 255).astype(np.uint8)


def save(array: np.ndarray, path: Path, quality: int | None = None, compress_level: int | None = None) -> Path:
    """Write ``array`` as the file's suffix says (``.jpg``/``.jpeg``: JPEG, else Pillow's choice); Pillow's
    defaults unless ``quality`` (JPEG) or ``compress_level`` (PNG) are given."""
    from PIL import Image

    kw = {}
    if path.suffix.lower() in (".jpg", ".jpeg"):
        if quality is not None:
            kw["quality"] = quality
    elif compress_level is not None and path.suffix.lower() == ".png":
        kw["compress_level"] = compress_level
    Image.fromarray(array).save(path, **kw)
    return path


def solid(path: Path, colour: Sequence[int] = (200, 30, 30), size: tuple[int, int] = (12, 10)) -> Path:
    """A (width, height) picture of one colour at ``path`` (parents made): JPEG for ``.jpg``, else PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(colour)).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def write_images(
    folder: Path,
    n: int,
    size: int = 32,
    seed: int = 0,
    ext: str = "png",
    digits: int = 3,
    compress_level: int | None = None,
) -> list[Path]:
    """``img_000.<ext>``, ... (``digits`` wide): ``n`` noise images drawn one after another from one generator."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(save(noise(rng, size), folder / f"img_{i:0{digits}d}.{ext}", compress_level=compress_level))
    return paths


def write_classes(root: Path, per_class: int, size: int = 32, seed: int = 0, classes=CLASSES) -> Path:
    """``root/<class>/img_000.png``, ...: ``per_class`` noise images per class folder, class ``k`` from seed
    ``seed + k``; returns ``root``."""
    for k, name in enumerate(classes):
        write_images(root / name, per_class, size, seed + k)
    return root


def tiny_checkpoint(
    path: Path, arch: str = "test_resnet", size: int | None = 32, classes=CLASSES, seed: int = 0, **kwargs
) -> Path:
    """A randomly initialised timm model (``pretrained=False``) saved in xaibatch's checkpoint format: the tests'
    tiny one by default, any ``arch`` for the bench (``size`` None: the architecture's own input size)."""
    import torch

    from ..imports import import_timm
    from ..model.loading import save_checkpoint
    from ..preprocess import Preprocess

    torch.manual_seed(seed)
    model = import_timm().create_model(arch, pretrained=False, num_classes=len(classes), **kwargs)
    pre = Preprocess.for_model(model, size)  # the architecture's own mean and std, as xaibatch train writes them
    save_checkpoint(path, model, arch, list(classes), pre.image_size, pre.mean, pre.std)
    return path
