"""Build the report's data from the manifest, then render it with Jinja2.

Templates only display: every number, group and link is computed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from .files import atomic_write_bytes
from .manifest import FILENAME as MANIFEST_NAME
from .manifest import Manifest
from .resources import templates_dir


def url(rel_path: str) -> str:
    """Percent-encode a relative file path for an href/src (keeps '/')."""
    return quote(rel_path, safe="/")


@dataclass
class Card:
    rel: str
    label: str | None
    pred: str
    confidence: float
    correct: bool | None
    image: str  # url of the display copy
    thumb: str
    maps: dict[str, dict[str, str]]  # method -> {"png": url, "thumb": url, "npy": url}
    probs: list[tuple[str, float]]


@dataclass
class Group:
    title: str
    key: str
    cards: list[Card]


@dataclass
class ReportData:
    title: str
    labeled: bool
    total: int
    correct: int | None
    accuracy: float | None
    class_names: list[str]
    confusion: list[list[int]] | None
    methods: list[tuple[str, str]]  # (name, title)
    layer: str | None
    config: dict[str, Any]
    runs: list[dict[str, Any]]
    failures: list[tuple[str, str]]
    sections: list[tuple[str, list[Group]]] = field(default_factory=list)


def build(out_dir: Path) -> ReportData:
    m = Manifest(out_dir / MANIFEST_NAME)
    try:
        images = m.images()
        maps = m.maps()
        runs = m.runs()
        failures = m.failures()
    finally:
        m.close()
    last = next((r for r in reversed(runs) if r["status"] != "running"), runs[-1] if runs else None)
    config = json.loads(last["config_json"]) if last else {}
    names: list[str] = config.get("class_names", [])
    method_info = config.get("methods", {})
    methods = [(k, v.get("title", k)) for k, v in method_info.items()]
    labeled = any(r.label is not None for r in images.values())

    cards: list[Card] = []
    for rel in sorted(images):
        r = images[rel]
        stem_maps = {}
        for name, _title in methods:
            row = maps.get((rel, name))
            if row is not None:
                stem_maps[name] = {"png": url(row.png), "thumb": url(row.thumb or row.png), "npy": url(row.npy)}
        stem = r.stem
        cards.append(Card(
            rel=rel,
            label=names[r.label] if r.label is not None and r.label < len(names) else None,
            pred=names[r.pred] if r.pred < len(names) else str(r.pred),
            confidence=r.confidence,
            correct=None if r.label is None else r.label == r.pred,
            image=url(f"images/{stem}.png"),
            thumb=url(f"thumbs/image/{stem}.png"),
            maps=stem_maps,
            probs=[(names[i] if i < len(names) else str(i), p) for i, p in enumerate(r.probs)],
        ))

    data = ReportData(
        title=f"xaibatch report: {Path(config.get('input_dir', '') or (last or {}).get('input_dir', '')).name}",
        labeled=labeled, total=len(cards), correct=None, accuracy=None, class_names=names, confusion=None,
        methods=methods, layer=config.get("layer"), config=config, runs=runs, failures=failures,
    )
    if labeled:
        k = len(names)
        conf = [[0] * k for _ in range(k)]
        for c in cards:
            conf[names.index(c.label)][names.index(c.pred)] += 1
        data.confusion = conf
        data.correct = sum(1 for c in cards if c.correct)
        data.accuracy = data.correct / len(cards) if cards else None
        wrong = [Group(f"true {n}", f"wrong-{i}", sorted([c for c in cards if not c.correct and c.label == n],
                                                           key=lambda c: -c.confidence)) for i, n in enumerate(names)]
        right = [Group(f"true {n}", f"right-{i}", sorted([c for c in cards if c.correct and c.label == n],
                                                           key=lambda c: c.confidence)) for i, n in enumerate(names)]
        data.sections = [("Misclassified", wrong), ("Correct", right)]
    else:
        groups = [Group(f"predicted {n}", f"pred-{i}", sorted([c for c in cards if c.pred == n],
                                                               key=lambda c: -c.confidence)) for i, n in enumerate(names)]
        data.sections = [("By predicted class", groups)]
    return data


def environment(template_dir: Path | None = None) -> jinja2.Environment:
    """User templates first (trusted: they are the user's own), packaged ones as the fallback."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(jinja2.FileSystemLoader(str(templates_dir())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["conf"] = lambda v: f"{100 * v:.1f}%"
    return env


def write_report(out_dir: Path, template_dir: Path | None = None) -> Path:
    data = build(out_dir)
    env = environment(template_dir)
    html = env.get_template("index.html").render(r=data)
    path = out_dir / "index.html"
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
