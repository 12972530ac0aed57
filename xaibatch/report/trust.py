"""The report's "Can I trust these maps?" data: faithfulness summaries, chance line, sanity results.

Plain data from the manifest's scores, ``faithfulness-chance.json`` and
``sanity.json``; :mod:`xaibatch.report` renders it, :mod:`xaibatch.report.figures` draws it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, variance
from typing import Any

from .. import layout
from .text import fmt_time

SANITY_FILE = layout.SANITY

CURVE_KEYS = {"method", "steps", "rank", "ssim", "passed", "verdict"}  # what the page and figure read of a curve
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
    scores: dict[str, tuple[list[float], list[float]]] = {}  # method title -> all images' deletion, insertion
    for m in methods:
        rows = [
            (images[rel], row)
            for (rel, name), row in maps.items()
            if name == m.name and row.deletion is not None and rel in images
        ]
        if not rows:
            continue
        scores[m.title] = ([r.deletion for _i, r in rows], [r.insertion for _i, r in rows])
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
        lines = {name: chance[name] for name in ("random", "blob") if (chance.get(name) or {}).get("deletion")}
        if lines:
            t.verdicts = [faith_verdict(title, d, i, lines) for title, (d, i) in scores.items()]
    try:
        t.sanity = json.loads((Path(out) / SANITY_FILE).read_text("utf-8"))
        t.sanity_stale = bool(checkpoint_sha) and t.sanity.get("checkpoint_sha256") != checkpoint_sha
        for c in t.sanity["curves"]:  # a curve kept from an earlier check (sanity.earlier_curves) says when
            if not CURVE_KEYS <= c.keys():
                raise ValueError(f"a curve without {sorted(CURVE_KEYS - c.keys())}")
            checked = c.get("checked")
            c["earlier"] = fmt_time(checked) if checked is not None and checked != t.sanity.get("created") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        t.sanity = None
    return t


def faith_verdict(
    title: str, deletion: list[float], insertion: list[float], chance: dict[str, dict[str, list[float]]]
) -> Verdict:
    """A method's per-image scores against the better chance map on each score (lowest mean deletion, highest
    mean insertion): what a reader would otherwise work out from the table. A score counts as better only when
    the difference of the means exceeds two standard errors (the chance maps are scored on the run's first 64
    images, the method on all): 0.963 against 0.966 is not a finding."""
    d_ok = _clearly_better(deletion, min((c["deletion"] for c in chance.values()), key=fmean), lower=True)
    i_ok = _clearly_better(insertion, max((c["insertion"] for c in chance.values()), key=fmean), lower=False)
    if d_ok and i_ok:
        return Verdict(f"{title}: better than both chance maps on deletion and insertion", True)
    if not d_ok and not i_ok:
        return Verdict(
            f"{title}: not clearly better than a chance map on either score (the differences are within two "
            "standard errors, or the other way)",
            False,
        )
    better, other = ("deletion", "insertion") if d_ok else ("insertion", "deletion")
    return Verdict(f"{title}: clearly better than chance on {better}, not on {other}", None)


def _clearly_better(xs: list[float], ref: list[float], lower: bool) -> bool:
    """Whether ``xs``'s mean beats ``ref``'s (lower or higher) by more than two standard errors of the difference."""
    if len(xs) < 2 or len(ref) < 2:
        return False
    diff = fmean(ref) - fmean(xs) if lower else fmean(xs) - fmean(ref)
    return diff > 2 * (variance(xs) / len(xs) + variance(ref) / len(ref)) ** 0.5


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
