"""The chance line's sample and its file, ``faithfulness-chance.json``: no torch, the report reads it too.

A random map and a centred blob are scored (deletion, insertion) on a sample of a run's images, so that the report
can say whether a method's maps beat maps that know nothing. The sample is the ``CHANCE_SAMPLE`` images whose
content (sha256) sorts first: a pseudo-random draw that depends on neither the file names nor the folders (the
classes), is the same whichever engine computes, and moves little between runs (an added image joins only when its
hash sorts among the first; only then is it scored). Each image's scores are kept under its ``rel`` with the sha256
and target class they were computed for, so that a later run scores only what the sample lacks and the report can
compare a method with the chance maps image by image, on the same images.

An older xaibatch wrote lists over the run's first images in path order (``"random": {"deletion": [...]}``); such
a file is read (the report compares unpaired and says so) and replaced by the next run with ``--faithfulness``.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import layout

CHANCE_SAMPLE = 64  # images on which a random map and a centred blob are scored (the report's chance line)
SCORES_VERSION = 1  # bump when the deletion/insertion scores' definition changes: part of the faithfulness hash
MAPS = ("random", "blob")  # the chance maps, as the file names them
FORMAT = 2  # per-image scores; 1 (no "format" key): lists over the run's first images


@dataclass
class ChanceScores:
    """One image's chance scores: per chance map (deletion AUC, insertion AUC), and what they were computed for."""

    sha256: str
    target: int
    scores: dict[str, tuple[float, float]]  # map name (MAPS) -> (deletion, insertion)

    def body(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "target": self.target, **{k: list(v) for k, v in self.scores.items()}}


@dataclass
class ChanceFile:
    """``faithfulness-chance.json`` as read: per-image scores, or an older file's unpaired lists (``legacy``)."""

    key: str
    steps: Any = None
    baseline: Any = None
    images: dict[str, ChanceScores] = field(default_factory=dict)  # rel -> its scores
    legacy: dict[str, dict[str, list[float]]] | None = None  # older files: map -> {"deletion": [...], ...}


def sample(images: Iterable[tuple[str, str]], n: int | None = None) -> list[tuple[str, str]]:
    """The chance sample of ``(rel, sha256)`` pairs: the ``n`` (CHANCE_SAMPLE) whose sha256 sorts first (ties by
    rel), so by content: never by path order, file name or class folder."""
    n = CHANCE_SAMPLE if n is None else n
    return [(rel, sha) for sha, rel in heapq.nsmallest(n, ((sha, rel) for rel, sha in images))]


def settings_key(steps: Any, baseline: Any) -> dict[str, Any]:
    """The faithfulness settings that change the scores (faithfulness.FaithConfig.key): the definition's version,
    the steps and the fill."""
    return {"version": SCORES_VERSION, "steps": steps, "baseline": baseline}


def scored_by(f: ChanceFile, predict_hash: str) -> bool:
    """Whether ``f``'s scores are those of the model (and decision) whose predictions carry ``predict_hash``, at the
    settings the file records: a run with another model that stopped before it scored the chance line leaves the
    previous model's scores in the file."""
    return f.key == key(settings_key(f.steps, f.baseline), predict_hash)


def scores_hash(map_hash: str, faith_key: dict[str, Any]) -> str:
    """The hash a map's scores are stored under (MapRow.faith_hash, faithfulness.hashes): its map's hash and the
    faithfulness settings (:func:`settings_key`)."""
    from ..pipeline.plan import config_hash

    return config_hash({"map": map_hash, "faithfulness": faith_key})


def key(faith_key: dict[str, Any], predict_hash: str) -> str:
    """What the scores depend on beyond the image: the faithfulness settings and the model (not the methods)."""
    from ..pipeline.plan import config_hash

    return config_hash({"faithfulness": faith_key, "predict": predict_hash})


def read(out: Path) -> ChanceFile | None:
    """The chance file, or None when it is missing or unreadable (it is only a cache). Malformed entries are left
    out, as if never scored."""
    try:
        data = json.loads((Path(out) / layout.FAITH_CHANCE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    f = ChanceFile(str(data.get("key", "")), data.get("steps"), data.get("baseline"))
    if data.get("format") == FORMAT:
        images = data.get("images")
        for rel, body in (images if isinstance(images, dict) else {}).items():
            entry = _entry(body)
            if entry is not None:
                f.images[rel] = entry
        return f
    legacy = {}
    for name in MAPS:
        d = data.get(name)
        if isinstance(d, dict) and _floats(d.get("deletion")) and _floats(d.get("insertion")):
            legacy[name] = {"deletion": list(d["deletion"]), "insertion": list(d["insertion"])}
    f.legacy = legacy
    return f


def _floats(xs: Any) -> bool:
    return isinstance(xs, list) and bool(xs) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in xs)


def _entry(body: Any) -> ChanceScores | None:
    if not isinstance(body, dict) or not isinstance(body.get("sha256"), str) or type(body.get("target")) is not int:
        return None
    scores = {}
    for name in MAPS:
        v = body.get(name)
        if not (_floats(v) and len(v) == 2):
            return None
        scores[name] = (float(v[0]), float(v[1]))
    return ChanceScores(body["sha256"], body["target"], scores)


def write(out: Path, chance_key: str, steps: int, baseline: str, images: dict[str, ChanceScores]) -> None:
    """Write the file (atomically): the sample's per-image scores, in the sample's order."""
    from ..files import atomic_write_bytes

    body = {
        "format": FORMAT,
        "key": chance_key,
        "steps": steps,
        "baseline": baseline,
        "images": {rel: s.body() for rel, s in images.items()},
    }
    atomic_write_bytes(Path(out) / layout.FAITH_CHANCE, json.dumps(body).encode())


def matching(f: ChanceFile, rel: str, sha256: str, target: int) -> ChanceScores | None:
    """The kept scores of this image: under its rel, or (a renamed or copied file) under another rel with the same
    content; only when computed for this content and target class (the random map is seeded by the content)."""
    s = f.images.get(rel)
    if s is not None and s.sha256 == sha256 and s.target == target:
        return s
    for s in f.images.values():
        if s.sha256 == sha256 and s.target == target:
            return s
    return None


def due(out: Path, chance_key: str) -> bool:
    """Whether a run with ``--faithfulness`` must load the model even with no maps to compute: the chance file is
    missing, of an older xaibatch, or of other settings. (Images that left the sample are replaced by the next run
    that computes anything.)"""
    f = read(out)
    return f is None or f.legacy is not None or f.key != chance_key
