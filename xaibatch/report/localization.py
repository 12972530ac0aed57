"""Check maps against ground-truth masks: the pointing game (Zhang et al., 2016).

A map "hits" when its maximum (MapRow.view's peak) falls inside the mask. Chance is the share of
the image the mask covers: a map that points at random hits that often. A map that always points at the
centre (Zhang et al.'s "center" baseline; the peak of faithfulness' centred blob) is scored on the same images
too: where the regions lie anywhere in the image, as the demo's patches do, the centre pixel is covered more
often than the average pixel (29 % of the 10,000 demo test FAKEs against a mean area of 13 %), so beating the
area alone says little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .. import layout
from .text import fmt_pct


@dataclass
class PointingGame:
    """One method's pointing game over images with a ground-truth mask (the summary page's: those whose maps
    explain their true class): its hits against the two chance rates, on the same images."""

    method: str
    title: str
    images: int
    hits: int
    nowhere: int  # maps that point nowhere (zero, or no evidence for the class): counted as misses
    chance: float  # the masks' mean area: how often a map pointing at random hits
    centre: int  # how many of the images' masks cover the centre pixel (a map that always points there)

    @property
    def rate(self) -> float:
        return self.hits / self.images if self.images else 0.0

    @property
    def centre_rate(self) -> float:
        return self.centre / self.images if self.images else 0.0

    @property
    def margin(self) -> float:
        """Two standard errors of the hit rate (binomial, the rate taken as (hits + 1) / (images + 2) so that all or
        no hits on a few images still leave a margin): the rate is read as above a baseline only beyond it."""
        p = (self.hits + 1) / (self.images + 2)
        return 2 * math.sqrt(p * (1 - p) / self.images) if self.images else 0.0

    @property
    def good(self) -> bool | None:
        """True: clearly above both baselines; None: above the area's chance only; False: not clearly above it."""
        low = self.rate - self.margin
        return True if low > max(self.chance, self.centre_rate) else None if low > self.chance else False

    @property
    def verdict(self) -> str:
        head = f"{self.title}: {fmt_pct(self.rate)} ± {fmt_pct(self.margin)} of its maps' maxima fall in the region"
        if self.good:
            return f"{head}, clearly more often than chance ({fmt_pct(self.chance)}) and the centre point"
        if self.good is None:
            return (
                f"{head}: more often than chance ({fmt_pct(self.chance)}), but not clearly more often than a map "
                f"that always points at the centre ({fmt_pct(self.centre_rate)})"
            )
        return f"{head}: not clearly more often than chance ({fmt_pct(self.chance)})"

    def __str__(self) -> str:
        return (
            f"{self.rate:.1%} hits on {self.images} images (chance {self.chance:.1%}; "
            f"the centre point {self.centre_rate:.1%})"
        )


def tally(cards: Iterable[Any], truths: dict[str, Any]) -> list[PointingGame]:
    """Each method's :class:`PointingGame` from the detail view's ground-truth records (``truths``: image -> [key,
    detail.truth_record]), over the ``cards`` whose maps explain their true class (a misclassified image's maps
    explain another class, whose evidence need not lie in the region). Maps scored as the detail view scores them:
    a map pointing nowhere is a miss, one whose size or view is unknown is not scored."""
    rows: dict[str, PointingGame] = {}
    areas: dict[str, float] = {}
    for c in cards:
        truth = (truths.get(c.rel) or [None, None])[1]
        if c.label is None or c.target != c.label or not isinstance(truth, dict) or "area" not in truth:
            continue
        for pt in truth["points"]:
            if "hit" not in pt and not pt.get("nowhere"):
                continue  # unreadable, or another size than the mask
            row = rows.setdefault(pt["m"], PointingGame(pt["m"], pt["title"], 0, 0, 0, 0.0, 0))
            row.images += 1
            row.hits += bool(pt.get("hit"))
            row.nowhere += bool(pt.get("nowhere"))
            row.centre += bool(truth["centre"])
            areas[pt["m"]] = areas.get(pt["m"], 0.0) + truth["area"]
    for m, row in rows.items():
        row.chance = areas[m] / row.images
    return list(rows.values())


def pointing_game(out_dir: Path, input_dir: Path, method: str, rels: list[str]) -> PointingGame:
    """Score ``method``'s maps for the images in ``rels`` that have a mask beside them, as the report's detail
    view does: by the peak each map's stored view records (MapRow.view, overlay.views_batch: signed maps by
    their strongest evidence *for* the class), the manifest read through Manifest and the masks through the
    report's safe reader. A map that points nowhere (zero everywhere, or signed with no positive value) is a
    miss, also counted in ``nowhere``; a map without a view that has a peak (unreadable, or written before
    views: ``xaibatch report`` stores them) is not scored."""
    from ..errors import UsageError
    from ..manifest import Manifest
    from ..scan import mask_rel
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
    return PointingGame(method, method, n, hits, nowhere, float(np.mean(areas)) if areas else 0.0, centre)
