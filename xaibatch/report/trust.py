"""The report's "Can I trust these maps?" data: faithfulness summaries, chance line, sanity results.

Plain data from the manifest's scores, ``faithfulness-chance.json`` and
``sanity.json``; :mod:`xaibatch.report` renders it, :mod:`xaibatch.report.figures` draws it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout

SANITY_FILE = layout.SANITY

CURVE_W, CURVE_H = 120, 60  # the detail page's curve thumbnails, in CSS pixels


@dataclass
class FaithRow:
    method: str
    title: str
    cells: list[tuple[str, int, float | None, float | None]]  # (subset, images, mean deletion, mean insertion)


@dataclass
class Verdict:
    text: str
    good: bool | None  # True: better than chance on both scores; False: on neither; None: mixed


@dataclass
class Trust:
    faith: list[FaithRow] = field(default_factory=list)
    chance: list[tuple[str, int, float, float]] = field(default_factory=list)  # (map, images, deletion, insertion)
    chance_settings: str = ""
    verdicts: list[Verdict] = field(default_factory=list)  # per method: its scores against the chance line
    sanity: dict[str, Any] | None = None
    sanity_stale: bool = False


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def build_trust(out: Path, images: dict, maps: dict, methods: list, labeled: bool, checkpoint_sha: str | None) -> Trust:
    """Per method mean deletion/insertion for correct, misclassified and all images; the chance line; sanity."""
    t = Trust()
    for m in methods:
        rows = [
            (images[rel], row)
            for (rel, name), row in maps.items()
            if name == m.name and row.deletion is not None and rel in images
        ]
        if not rows:
            continue
        subsets = [("all", rows)]
        if labeled:
            subsets += [
                ("correct", [(i, r) for i, r in rows if i.label is not None and i.label == i.pred]),
                ("misclassified", [(i, r) for i, r in rows if i.label is not None and i.label != i.pred]),
            ]
        t.faith.append(
            FaithRow(
                m.name,
                m.title,
                [
                    (s, len(rs), _mean([r.deletion for _i, r in rs]), _mean([r.insertion for _i, r in rs]))
                    for s, rs in subsets
                ],
            )
        )
    chance = load_chance(out)
    if t.faith and chance:
        for name, words in (("random", "random map"), ("blob", "centred blob")):
            d = chance.get(name) or {}
            if d.get("deletion"):
                t.chance.append((words, len(d["deletion"]), _mean(d["deletion"]), _mean(d["insertion"])))
        t.chance_settings = f"{chance.get('steps')} steps, {chance.get('baseline')} fill"
    if t.chance:
        for f in t.faith:
            _subset, _n, d, i = f.cells[0]  # all images
            if d is not None and i is not None:
                t.verdicts.append(faith_verdict(f.title, d, i, t.chance))
    try:
        t.sanity = json.loads((Path(out) / SANITY_FILE).read_text("utf-8"))
        t.sanity_stale = bool(checkpoint_sha) and t.sanity.get("checkpoint_sha256") != checkpoint_sha
    except (OSError, ValueError):
        t.sanity = None
    return t


def faith_verdict(
    title: str, deletion: float, insertion: float, chance: list[tuple[str, int, float, float]]
) -> Verdict:
    """A method's mean scores against the better chance map on each score (lowest deletion, highest insertion):
    what a reader would otherwise work out from the table's numbers."""
    best_d = min(d for _w, _n, d, _i in chance)
    best_i = max(i for _w, _n, _d, i in chance)
    d_ok, i_ok = deletion < best_d, insertion > best_i
    if d_ok and i_ok:
        return Verdict(f"{title}: better than both chance maps on deletion and insertion", True)
    if not d_ok and not i_ok:
        return Verdict(
            f"{title}: no better than a chance map on either score: its most important pixels are not what the "
            "model's probability depends on most",
            False,
        )
    better, worse = ("deletion", "insertion") if d_ok else ("insertion", "deletion")
    return Verdict(f"{title}: better than chance on {better}, not on {worse}", None)


def curve_points(curve: list[float]) -> str:
    """An SVG polyline's points for a probability curve over [0, 1] in a CURVE_W x CURVE_H box."""
    n = max(1, len(curve) - 1)
    return " ".join(f"{CURVE_W * i / n:.1f},{CURVE_H * (1 - max(0.0, min(1.0, v))):.1f}" for i, v in enumerate(curve))


def load_chance(out: Path) -> dict[str, Any] | None:
    """The chance sample file, or None when it is missing or unreadable (it is only a cache)."""
    try:
        data = json.loads((Path(out) / layout.FAITH_CHANCE).read_text("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
