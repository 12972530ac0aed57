"""Write a deterministic CIFAKE-style demo set whose "fake" evidence has a known location.

REAL images are 32x32 crops of real photographs that ship inside installed
packages (scikit-image, scikit-learn, matplotlib). FAKE images are such crops
with one synthesized rectangle (a smooth colour field carrying a period-2
checkerboard, the upsampling artefact generators leave) blended in at a random
place; the rectangle's mask is saved beside the image as ``<name>.mask.npy``
(ignored by ``xaibatch run``, which reads only image extensions). An
explanation of a good model should therefore point into the mask.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..scan import MASK_SUFFIX
from ..resources import DEFAULT_MODEL_IMAGE_SIZE
from ..scan import printable

SIZE = DEFAULT_MODEL_IMAGE_SIZE  # CIFAKE's size, and the bundled model's

# Photographs only (no drawings, logos, charts): (package, path inside its data folder).
_PHOTOS = [
    ("skimage", "astronaut.png"),
    ("skimage", "brick.png"),
    ("skimage", "camera.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "coins.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "moon.png"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "motorcycle_right.png"),
    ("skimage", "retina.jpg"),
    ("skimage", "rocket.jpg"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
]


# Where each package keeps its sample photographs, below its own folder
_DATA_DIRS = {"skimage": "data", "sklearn": "datasets/images", "matplotlib": "mpl-data/sample_data"}


def _data_dir(package: str) -> Path | None:
    """The package's folder of sample photographs, found without importing the package: importing matplotlib
    writes its config and cache folders under $HOME (with a read-only or missing HOME, two warning lines and a
    folder in the temporary one, or the working one), and scikit-learn's import takes seconds."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / _DATA_DIRS[package]


def source_photos() -> list[tuple[str, np.ndarray]]:
    """The bundled photographs found in this environment, as (name, RGB uint8 array)."""
    out = []
    for package, name in _PHOTOS:
        d = _data_dir(package)
        if d is None or not (d / name).is_file():
            continue
        with Image.open(d / name) as im:
            out.append((f"{package}/{name}", np.asarray(im.convert("RGB"))))
    if len(out) < 3:
        raise UsageError("demo-data needs scikit-image, scikit-learn or matplotlib sample photographs; none found")
    return out


def _crop(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(rng.integers(max(24, min(h, w) // 10), max(25, min(h, w) // 3)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)


def _synth_patch(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    fy, fx = rng.uniform(0.2, 0.6, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    field = np.stack([base[c] + 35 * np.sin(fy * yy + fx * xx + phase[c]) for c in range(3)], axis=-1)
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None] * rng.uniform(18, 30)
    return field + checker


def make_fake(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend one synthesized rectangle into ``img``; return the image and its boolean mask."""
    h, w = int(rng.integers(9, 15)), int(rng.integers(9, 15))
    y, x = int(rng.integers(0, SIZE - h + 1)), int(rng.integers(0, SIZE - w + 1))
    alpha = rng.uniform(0.6, 0.85)
    out = img.copy()
    out[y : y + h, x : x + w] = (1 - alpha) * out[y : y + h, x : x + w] + alpha * _synth_patch(rng, h, w)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y : y + h, x : x + w] = True
    return out, mask


@dataclass
class DemoCounts:
    train: int
    test: int


SPLITS = ("train", "test")
CLASSES = ("REAL", "FAKE")
_OURS = re.compile(r"(real|fake)_(\d{5,})(\.png|" + re.escape(MASK_SUFFIX) + ")")  # the names write_demo_data gives


def _name(kind: str, i: int, suffix: str = ".png") -> str:
    return f"{kind}_{i:05d}{suffix}"


def survey(out: Path) -> tuple[list[Path], Path | None]:
    """The files a previous demo-data run left in ``out``, and the first entry that is not one of them (None:
    ``out`` is new, empty or a previous demo-data output). Hidden entries (``.git``, ``.DS_Store``) do not
    count and are never touched."""
    ours: list[Path] = []
    if not out.is_dir():
        return ours, None
    for root, dirs, files in os.walk(out):
        here = Path(root)
        depth = len(here.relative_to(out).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        allowed = SPLITS if depth == 0 else CLASSES if depth == 1 else ()
        for d in dirs:
            if d not in allowed or os.path.islink(here / d):  # a link: writing through it would leave out
                return ours, here / d
        for f in sorted(files):
            if f.startswith("."):
                continue
            m = _OURS.fullmatch(f)
            if depth != 2 or m is None or m.group(1) != here.name.lower() or os.path.islink(here / f):
                return ours, here / f
            ours.append(here / f)
    return ours, None


def write_demo_data(
    out: Path, train_per_class: int = 1000, test_per_class: int = 250, seed: int = 0, force: bool = False
) -> DemoCounts:
    """Write ``out/{train,test}/{REAL,FAKE}/*.png`` (+ masks for FAKE); same seed, same bytes.

    ``out`` must be new, empty, or a previous demo-data output (then the new set replaces it: the files of
    the old one the new one does not have are removed, nothing else is); with ``force`` any folder, where
    train/ and test/ are written beside what is there and nothing is removed.
    """
    out = Path(out)
    previous, foreign = survey(out)
    if foreign is not None and not force:
        raise UsageError(
            f"{printable(str(out))} is not empty and not a previous demo-data output (it holds {printable(str(foreign.relative_to(out)))}): "
            "choose a new or empty folder, or pass --force to write train/ and test/ beside what is there"
        )
    if foreign is not None:
        previous = []  # --force: nothing is removed from a folder that is not all ours
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {printable(str(out))}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {printable(str(out))}: Permission denied")
    photos = source_photos()
    written: set[Path] = set()
    for split, n, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        rng = np.random.default_rng(split_seed)
        real_dir, fake_dir = out / split / "REAL", out / split / "FAKE"
        real_dir.mkdir(parents=True, exist_ok=True)
        fake_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _, photo = photos[int(rng.integers(len(photos)))]
            Image.fromarray(_crop(rng, photo).clip(0, 255).astype(np.uint8)).save(real_dir / _name("real", i))
            _, photo = photos[int(rng.integers(len(photos)))]
            fake, mask = make_fake(rng, _crop(rng, photo))
            Image.fromarray(fake.clip(0, 255).astype(np.uint8)).save(fake_dir / _name("fake", i))
            np.save(fake_dir / _name("fake", i, MASK_SUFFIX), mask)
            written.update(
                (real_dir / _name("real", i), fake_dir / _name("fake", i), fake_dir / _name("fake", i, MASK_SUFFIX))
            )
    for stale in previous:  # a smaller set over a bigger one: the old set's surplus, never a user's file
        if stale not in written:
            stale.unlink(missing_ok=True)
    return DemoCounts(2 * train_per_class, 2 * test_per_class)
