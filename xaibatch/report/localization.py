"""Check maps against ground-truth masks: the pointing game (Zhang et al., 2016).

A map "hits" when its maximum falls inside the mask. Chance is the share of
the image the mask covers: a map that points at random hits that often.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PointingGame:
    images: int
    hits: int
    chance: float  # mean mask area fraction

    @property
    def rate(self) -> float:
        return self.hits / self.images if self.images else 0.0

    def __str__(self) -> str:
        return f"{self.rate:.1%} hits on {self.images} images (chance {self.chance:.1%})"


MASK_SUFFIX = ".mask.npy"  # the ground truth beside an image: <name>.mask.npy (written by `xaibatch demo-data`)


def mask_for(image_path: Path) -> np.ndarray | None:
    """The ground-truth mask saved beside an image, if there is one."""
    p = Path(image_path)
    m = p.with_name(p.name.rsplit(".", 1)[0] + MASK_SUFFIX)
    return np.load(m) if m.is_file() else None


def peak(saliency: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's first maximum: where the map points."""
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return int(y), int(x)


def hit(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """True when the map's (first) maximum lies inside the mask."""
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in size")
    return bool(mask[peak(saliency)])


def pointing_game(out_dir: Path, input_dir: Path, method: str, rels: list[str]) -> PointingGame:
    """Score ``method``'s saved maps for the images in ``rels`` that have a mask beside them."""
    import sqlite3

    db = sqlite3.connect(Path(out_dir) / "xaibatch.sqlite")
    try:
        npy = dict(db.execute("SELECT rel, npy FROM maps WHERE method = ?", (method,)))
    finally:
        db.close()
    hits = n = 0
    areas = []
    for rel in rels:
        mask = mask_for(Path(input_dir) / rel)
        if mask is None or rel not in npy:
            continue
        m = np.load(Path(out_dir) / npy[rel])
        if method == "lime":  # signed: the strongest evidence *for* the class
            m = np.where(m > 0, m, 0)
        hits += hit(m, mask)
        n += 1
        areas.append(mask.mean())
    return PointingGame(n, hits, float(np.mean(areas)) if areas else 0.0)
