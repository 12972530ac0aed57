"""Where a method's maps point, on average: each gallery group's maps averaged, one small heatmap a group.

A shortcut shows here first: a detector that looks at a corner, a border or a watermark's place looks there in
every group, correct or not; one that looks at the object moves with it. Each map counts as its overlay shows
it (divided by its display scale and clipped: full colour is 1, whatever the map's own units), so a few maps of
large values do not outweigh the rest. Averaged from the grid stored with each map (MapRow.view "grid",
overlay.grids_batch: GRID x GRID cells of the display copy), never from the ``.npy`` files; maps stored by an
older xaibatch have none and are counted as left out. Images whose predictions an earlier model made are left
out as the summary's numbers leave them (data.earlier_summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import targets
from ..manifest import MapRow
from .model import Group, MethodInfo
from .text import fmt_num

MOST_GROUPS = 12  # groups shown per method: the largest (an unlabeled folder of a 1000-class model has many)


@dataclass
class MeanMap:
    """One group's mean map of one method."""

    group: str  # the gallery group's key ("wrong-0")
    title: str  # "Misclassified, true FAKE"
    url: str  # the group's first gallery page
    maps: int  # how many maps are averaged
    without: int  # the group's images whose map has no grid (stored by an older xaibatch): left out
    cells: list[list[float]]  # GRID x GRID means in [-1, 1] (unsigned maps: [0, 1]), 4 decimals
    where: str  # where its strongest cell lies, in words ("top left")
    figure: str = ""  # its name in ReportData.figures (linked.write_figures)


@dataclass
class MethodMeans:
    """One method's mean maps, drawn on one colour scale: full colour at ``top``."""

    method: str
    title: str
    signed: bool
    top: float  # the largest mean (signed: |mean|) of its groups' cells
    groups: list[MeanMap] = field(default_factory=list)
    hidden: int = 0  # groups not shown (beyond MOST_GROUPS, the smallest)
    ticks: list[str] = field(default_factory=list)  # the numbers under its colour bar, left to right
    without: int = 0  # maps left out for want of a grid, over its groups
    explains: str = "the predicted class"  # what the averaged maps explain, in words
    grid: int = 16  # the cells of a side (overlay.GRID)


def map_grids(maps: dict[tuple[str, str], MapRow], methods: list[MethodInfo]) -> dict[tuple[str, str], str | None]:
    """(image, method) -> its map's stored grid (None: none stored), taken before the cards consume the rows."""
    names = {m.name for m in methods}
    return {
        key: (row.view or {}).get("grid") if isinstance(row.view, dict) else None
        for key, row in maps.items()
        if key[1] in names and not targets.is_label_key(key[1])
    }


def mean_maps(
    groups: list[Group], grids: dict[tuple[str, str], str | None], methods: list[MethodInfo], target: str = "pred"
) -> list[MethodMeans]:
    """Per method with maps, its mean map per gallery group (paginated: their section titles and first pages set),
    in gallery order; the largest MOST_GROUPS groups. A method none of whose maps has a grid (all stored by an
    xaibatch before the mean maps: ``xaibatch report`` adds them) has no groups, only its count of maps without.
    ``target``: the run's --target (the maps of the true class that ``pred,label`` adds are not averaged)."""
    from ..overlay import GRID, read_grids

    explains = "the folder's label" if targets.by_label(target) else "the predicted class"
    out = []
    for m in methods:
        found = []
        missing = 0
        for g in groups:
            # the maps this method has in the group: an image it has not explained yet (a method added, a run
            # interrupted: the coverage the overview states) is not a map without a grid
            stored = [grids[c.rel, m.name] for c in g.cards if not c.earlier and (c.rel, m.name) in grids]
            have = [s for s in stored if isinstance(s, str)]
            missing += len(stored) - len(have)
            if not have:
                continue
            try:
                mean = read_grids(have).mean(axis=0, dtype=np.float64)
            except ValueError:  # a grid that is not one (a manifest edited by hand): the method has no mean maps
                found = []
                break
            title = _title(g)
            cells = [[round(float(v), 4) for v in row] for row in mean]
            found.append(MeanMap(g.key, title, g.start_url, len(have), len(stored) - len(have), cells, where(mean)))
        if not found:
            if missing:
                out.append(MethodMeans(m.name, m.title, m.signed, 0.0, [], 0, [], missing, explains, GRID))
            continue
        shown = sorted(sorted(found, key=lambda f: -f.maps)[:MOST_GROUPS], key=found.index)
        top = max(float(np.abs(np.asarray(f.cells)).max()) for f in shown)
        t = fmt_num(top)
        ticks = [f"−{t}", "0", f"+{t}"] if m.signed else ["0", fmt_num(top / 2), t]
        without = sum(f.without for f in shown)
        hidden = len(found) - len(shown)
        out.append(MethodMeans(m.name, m.title, m.signed, top, shown, hidden, ticks, without, explains, GRID))
    return out


def _title(g: Group) -> str:
    """A group's name under its mean map: "Misclassified, true FAKE", "predicted FAKE", "no label, predicted FAKE"."""
    if g.section in ("wrong", "right"):
        return f"{g.section_title}, {g.title}"
    return f"no label, {g.title}" if g.section == "nolabel" else g.title


def where(cells: Any) -> str:
    """Where the strongest cell of a mean map lies (signed: its strongest positive one), in words."""
    a = np.asarray(cells, dtype=np.float64)
    if not a.size or a.max() <= 0:
        return "nowhere"
    y, x = np.unravel_index(int(np.argmax(a)), a.shape)
    row = ("top", "middle", "bottom")[min(2, 3 * y // a.shape[0])]
    col = ("left", "centre", "right")[min(2, 3 * x // a.shape[1])]
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"
