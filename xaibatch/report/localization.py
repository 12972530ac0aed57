"""Check maps against ground-truth masks: the pointing game (Zhang et al., 2016).

A map "hits" when its maximum (MapRow.view's peak) falls inside the mask. Chance is the share of
the image the mask covers: a map that points at random hits that often. A map that always points at the
centre (Zhang et al.'s "center" baseline; the peak of faithfulness' centred blob) is scored on the same images
too: where the regions lie anywhere in the image, as the demo's patches do, the centre pixel is covered more
often than the average pixel (29 % of the 10,000 demo test FAKEs against a mean area of 13 %), so beating the
area alone says little.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layout


@dataclass
class PointingGame:
    images: int
    hits: int
    chance: float  # mean mask area fraction
    nowhere: int = 0  # maps that point nowhere (zero, or no evidence for the class): misses
    centre: int = 0  # hits of a map that always points at the centre pixel, on the same images

    @property
    def centre_rate(self) -> float:
        return self.centre / self.images if self.images else 0.0

    @property
    def rate(self) -> float:
        return self.hits / self.images if self.images else 0.0

    def __str__(self) -> str:
        return (
            f"{self.rate:.1%} hits on {self.images} images (chance {self.chance:.1%}; "
            f"the centre point {self.centre_rate:.1%})"
        )


MASK_SUFFIX = ".mask.npy"  # the ground truth beside an image: <name>.mask.npy (written by `xaibatch demo-data`)


def pointing_game(out_dir: Path, input_dir: Path, method: str, rels: list[str]) -> PointingGame:
    """Score ``method``'s maps for the images in ``rels`` that have a mask beside them, as the report's detail
    view does: by the peak each map's stored view records (MapRow.view, overlay.views_batch: signed maps by
    their strongest evidence *for* the class), the manifest read through Manifest and the masks through the
    report's safe reader. A map that points nowhere (zero everywhere, or signed with no positive value) is a
    miss, also counted in ``nowhere``; a map without a view that has a peak (unreadable, or written before
    views: ``xaibatch report`` stores them) is not scored."""
    from ..errors import UsageError
    from ..manifest import Manifest
    from .cards import mask_rel
    from .detail import load_array

    path = Path(out_dir) / layout.MANIFEST
    if not path.is_file():  # Manifest() would make an empty one
        raise UsageError(f"{out_dir} is not an xaibatch output folder (no xaibatch manifest, {layout.MANIFEST})")
    manifest = Manifest(path)
    try:
        maps = manifest.maps()
    finally:
        manifest.close()
    hits = n = nowhere = centre = 0
    areas = []
    for rel in rels:
        row = maps.get((rel, method))
        view = (row.view if row is not None else None) or {}
        if not view.get("nowhere") and view.get("peak") is None:
            continue
        mask = load_array(Path(input_dir), mask_rel(rel))
        if mask is None:
            continue
        mask = mask != 0
        if view.get("nowhere"):
            nowhere += 1
        elif tuple(view["shape"]) != mask.shape:
            raise ValueError(f"{rel}: map {tuple(view['shape'])} and mask {mask.shape} differ in size")
        else:
            y, x = view["peak"]
            hits += bool(mask[y, x])
        n += 1
        areas.append(mask.mean())
        centre += bool(mask[(mask.shape[0] - 1) // 2, (mask.shape[1] - 1) // 2])  # the centred blob's first peak
    return PointingGame(n, hits, float(np.mean(areas)) if areas else 0.0, nowhere, centre)
