"""Build the report's data from the manifest, then render it with Jinja2.

Templates only display: every number, group, order, page and link is computed
here (data first, render second). The report is a static folder that works
from ``file://``: relative links only, no external URL, the project's own CSS
and JS copied in under content-hashed names.

Layout written into the output folder::

    index.html                 summary: counts, metrics, figures, configuration, run history
    gallery/page-<n>.html      at most PAGE_SIZE cards each, in gallery order
    detail/<stem>.html         one per image: original and every map at a readable size
    history.html               every run
    skipped.html               every file that could not be read, and why
    figures/<name>-<hash>.svg  matplotlib figures (only redrawn when their numbers change)
    assets/report.<hash>.css   templates/assets/report.css, content-hashed
    assets/report.<hash>.js    templates/assets/report.js, content-hashed

Gallery order: labeled runs show Misclassified first, then Correct, each split
per true class (mistakes most confident first, correct ones least confident
first); unlabeled runs group by predicted class, most confident first. Pages
are only rewritten when their bytes change, so a cron re-run over an unchanged
folder rewrites the summary and nothing else.

Template names (a ``--template-dir`` may override any of them; the packaged
ones are the fallback): ``base.html`` (page frame), ``_macros.html`` (card,
pager, legend), ``_runs_table.html``, ``_failures_table.html``, ``index.html``,
``gallery.html``, ``detail.html``, ``history.html``, ``skipped.html``, and the
assets ``assets/report.css`` and ``assets/report.js``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import jinja2

from . import __version__, layout
from .errors import UsageError, XaibatchError
from .files import atomic_write_bytes, file_sha256, safe_join
from .layout import display_size
from .localization import MASK_SUFFIX
from .manifest import ImageRow, Manifest, MapRow
from .resources import DEFAULT_MODEL_IMAGE_SIZE as DEMO_SIZE
from .resources import default_checkpoint, templates_dir

PAGE_SIZE = 200  # cards per gallery page
DETAIL_MIN_SIDE = 256  # the detail page shows images at least this large (pixelated when upscaled)
CARD_THUMB_PX = 88  # thumbnails on cards are drawn this large (the files are <= 128 px)
MAX_PROBS_SHOWN = 10  # class probabilities on a detail page (the most likely ones)
RUNS_ON_SUMMARY = 20
FAILURES_ON_SUMMARY = 50
CONFUSION_MAX_CLASSES = 30  # above this the summary lists the most frequent confusions instead
FINGERPRINT_VERSION = 1  # bump when what a detail page shows changes without a template change
STATE_NAME = ".xaibatch-report.json"  # detail page -> fingerprint of its inputs (a cache: safe to delete)
CALIBRATION_BINS = 10
HISTOGRAM_BINS = 20

TEMPLATE_NAMES = ("base.html", "_macros.html", "_runs_table.html", "_failures_table.html", "index.html",
                  "gallery.html", "detail.html", "history.html", "skipped.html")
ASSET_NAMES = ("report.css", "report.js")  # under assets/ in a template folder
MARKER_COLOURS = ("#00e5ff", "#ff2bd6", "#ffe600", "#ff7a00")  # each method's maximum on the ground-truth figure
TRUTH_MAX_SIDE = 128  # the ground-truth region is drawn on a grid at most this large
MAX_ARRAY_BYTES = 256 << 20  # a map or mask file larger than this is not read for the detail page

# What a map's per-image facts (MapRow.info) mean, for the detail page.
INFO_WORDS = {
    "segments": "superpixels (SLIC regions) that LIME switched on and off in its perturbed samples; "
                "each pixel's value is its superpixel's coefficient",
    "score": "R² of LIME's weighted linear fit on those samples: how well the coefficients reproduce the "
             "model's probabilities (near 1: faithful; near 0: read this map with care)",
    "intercept": "the fit's probability of the explained class with every superpixel hidden",
}
OWNED_DIRS = ("gallery", "detail")  # every *.html in these is the report's; stale ones are removed


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")


def url(rel_path: str) -> str:
    """Percent-encode a relative file path for an href/src (keeps '/')."""
    if _URL_SAFE.fullmatch(rel_path):  # the common case, several per image: skip quote()
        return rel_path
    return quote(rel_path, safe="/")


def up(rel_page: str) -> str:
    """The relative prefix from a page (``detail/a/b.html``) back to the report root (``../../``)."""
    return "../" * rel_page.count("/")


# -- data ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MethodInfo:
    name: str
    title: str
    signed: bool
    settings: list[tuple[str, str]]
    legend: str  # what the colours mean, in words
    gradient: str  # a CSS linear-gradient of the colour map
    scale_words: str = ""  # what the numbers under the colour bar are
    bar: str = ""  # report-root-relative url of the method's colour bar (one SVG per method, not per image)


@dataclass(slots=True)
class MapView:
    method: str
    title: str
    m: MethodInfo = field(repr=False)  # the method's legend; part of the site fingerprint, not the card's
    png: str  # urls relative to the report root
    thumb: str
    npy: str
    info: list[tuple[str, str, str]]  # (key, value, what it means)
    npy_rel: str = field(default="", repr=False)  # manifest path of the .npy (npy is its url)
    config_hash: str = ""  # a recomputed map (same paths, new numbers) changes the card, so its page
    ticks: list[str] = field(default_factory=list, repr=False)  # colour bar numbers, left to right (detail page)
    scale_note: str = field(default="", repr=False)
    deletion: str | None = None  # faithfulness AUCs, "0.123" (also the gallery's sort keys)
    insertion: str | None = None
    curves: tuple[str, str] | None = None  # SVG polyline points of the deletion and insertion curves


@dataclass(slots=True)
class Card:
    rel: str
    stem: str
    cid: str  # stable element id, not derived from user text
    label: str | None
    label_index: int | None
    pred: str
    pred_index: int
    target: str
    confidence: float
    conf_text: str  # "73.9%"
    conf_attr: str  # "0.739123", for sorting in the browser
    correct: bool | None
    thumb: str
    image: str
    detail: str  # report-root-relative path of the detail page (not encoded)
    detail_url: str
    maps: list[MapView]
    methods_attr: str  # "gradcam lime": the methods this card has maps for
    probs: list[tuple[str, float, str]]  # (class, probability, "12.3%")
    width: int
    height: int
    disp_w: int = 0
    disp_h: int = 0
    pixelated: bool = False
    sha256: str = ""
    size: int = 0
    mask_key: str = ""  # "size:mtime" of a ground-truth mask (<name>.mask.npy) beside the input image, or ""
    truth: Truth | None = field(default=None, repr=False)  # filled only when the detail page is rendered
    group_key: str = field(default="", repr=False)
    index: int = field(default=0, repr=False)  # position in gallery order (not shown, so not fingerprinted)
    page: int = 1


@dataclass
class Point:
    """One method's maximum on the ground-truth figure and its pointing-game result."""

    n: int
    title: str
    colour: str
    x: float  # figure coordinates (the truth grid)
    y: float
    px: tuple[int, int] | None  # (x, y) in image pixels; None when the map could not be compared
    hit: bool | None
    note: str = ""
    lx: float = 0.0  # where its number is written, kept inside the figure
    ly: float = 0.0


@dataclass
class Truth:
    """The demo's ground-truth region beside an image, drawn as an SVG path, and each map's pointing game."""

    mask_name: str
    width: int  # the figure's grid (the mask, shrunk to at most TRUTH_MAX_SIDE)
    height: int
    path: str  # SVG path of the region
    share: str  # the region's share of the image: a map pointing at random hits this often
    radius: float
    font: float
    points: list[Point]


@dataclass
class Group:
    section: str  # "wrong" | "right" | "pred" | "nolabel"
    title: str  # e.g. "true FAKE"
    key: str  # stable id, e.g. "wrong-0"
    class_index: int
    order: str  # how the cards are sorted, in words
    cards: list[Card]
    section_title: str = ""
    start_page: int = 1
    start_url: str = ""


@dataclass
class Block:
    """A group's slice on one gallery page."""

    group: Group
    cards: list[Card]
    first: int  # 1-based position of cards[0] within the group
    last: int
    heading_section: str | None  # the section title when this block opens a section on this page


@dataclass
class GalleryPage:
    number: int
    path: str
    blocks: list[Block]
    prev: str | None
    next: str | None
    links: list[tuple[str, str | None, bool]]  # (label, url or None for a gap, is current)
    first: int  # 1-based global positions shown
    last: int


@dataclass
class Site:
    """What detail pages may use besides their card: a detail page is only re-rendered when this, its card,
    its neighbours or a template changed."""

    title: str
    assets: dict[str, str]
    gallery_first: str
    version: str
    target_words: str
    n_classes: int
    methods: list[MethodInfo]


@dataclass
class ReportData:
    title: str
    labeled: bool
    total: int
    class_names: list[str]
    methods: list[MethodInfo]
    config: dict[str, Any]
    config_rows: list[tuple[str, str]]
    runs: list[dict[str, Any]]  # newest first, formatted
    runs_total: int
    last_run: dict[str, Any] | None
    failures: list[tuple[str, str]]
    cards: list[Card]
    groups: list[Group]
    pages: list[GalleryPage]
    sections: list[tuple[str, str]]  # (section key, title) in gallery order
    # metrics (labeled)
    correct: int | None = None
    wrong: int | None = None
    accuracy: float | None = None
    confusion: list[list[dict[str, Any]]] | None = None
    top_confusions: list[tuple[str, str, int]] | None = None
    per_class: list[dict[str, Any]] = field(default_factory=list)
    macro: dict[str, Any] | None = None
    ece: float | None = None
    calibration: list[dict[str, Any]] = field(default_factory=list)
    hist_edges: list[float] = field(default_factory=list)
    hist_series: list[tuple[str, list[int], str]] = field(default_factory=list)
    pred_counts: list[tuple[str, int, str]] = field(default_factory=list)
    mean_confidence: float | None = None
    figures: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"src", "alt"}
    decision: dict[str, Any] | None = None  # two classes: threshold, its metrics and ROC (see _decision)
    assets: dict[str, str] = field(default_factory=dict)  # "css"/"js" -> report-root-relative url
    gallery_first: str = "gallery/page-1.html"
    page_size: int = PAGE_SIZE
    card_width: int = 0
    card_thumb: int = CARD_THUMB_PX
    target_words: str = "the predicted class"
    version: str = __version__
    has_csv: bool = True
    warnings: list[str] = field(default_factory=list)  # shown at the top of the summary
    input_dir: Path | None = None  # the last run's input folder when it is still there (ground-truth masks)
    trust: Any = None  # trust.Trust: faithfulness summary, chance line, sanity check

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def site(self) -> Site:
        return Site(self.title, dict(self.assets), self.gallery_first, self.version, self.target_words,
                    self.n_classes, self.methods)


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt_value(x)}" for k, x in v.items())
    if v is None:
        return "–"
    return str(v)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _luminance(rgb: tuple[int, ...]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    lin = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _text_on(rgb: tuple[int, ...]) -> str:
    """White or black text, whichever contrasts more with the background (never below 4.58:1)."""
    lum = _luminance(rgb)
    return "#fff" if 1.05 / (lum + 0.05) >= (lum + 0.05) / 0.05 else "#000"


def _gradient(signed: bool) -> str:
    import numpy as np

    from .overlay import colorize

    xs = np.linspace(-1, 1, 9) if signed else np.linspace(0, 1, 9)
    cols = colorize(xs[None, :].astype(np.float32), signed)[0]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in cols.tolist()) + ")"


def _methods(runs: list[dict[str, Any]], current: dict[str, Any], present: set[str]) -> list[MethodInfo]:
    """The latest run's methods first, then any method still in the manifest from older runs."""
    known: dict[str, dict[str, Any]] = {}
    for r in runs:
        try:
            known.update(json.loads(r["config_json"]).get("methods", {}))
        except (ValueError, TypeError):
            continue
    names = list(current.get("methods", {})) + sorted(present - set(current.get("methods", {})))
    out = []
    for name in names:
        info = {**known.get(name, {}), **current.get("methods", {}).get(name, {})}
        signed = bool(info.get("signed", False))
        out.append(MethodInfo(
            name=name, title=str(info.get("title", name)), signed=signed,
            settings=[(str(k), _fmt_value(v)) for k, v in (info.get("config") or {}).items()],
            legend=("red = evidence for the explained class, blue = evidence against it; the stronger the "
                    "evidence, the more opaque the colour, and where a superpixel has no effect the overlay is "
                    "transparent (the photo shows through)"
                    if signed else "bright = more important, dark = less important (the photo shows through "
                                   "where the map is low)"),
            gradient=_gradient(signed),
            scale_words=("LIME coefficient, in probability units of the explained class; the scale is "
                         "symmetric, set by this image's strongest superpixel" if signed else
                         "map value (0 to 1 in the .npy); the colour saturates at this image's 99th "
                         "percentile"),
        ))
    return out


def _config_rows(config: dict[str, Any], last: dict[str, Any] | None) -> list[tuple[str, str]]:
    model = config.get("model", {})
    sha = str(model.get("checkpoint_sha256") or "")
    grid = config.get("layer_grid")
    rows = [
        ("Model architecture", _fmt_value(model.get("arch"))),
        ("Checkpoint", _fmt_value(model.get("checkpoint"))),
        ("Checkpoint sha256", sha[:12] if sha else "–"),
        ("Input size", f"{model['input_size']} px" if model.get("input_size") else "–"),
        ("Classes", _fmt_value(config.get("class_names"))),
        ("Maps explain", "the folder's label" if model.get("target") == "label" else "the predicted class"),
        ("Decision", _decision_words(config.get("decision"))),
        ("Target layer", _fmt_value(config.get("layer"))),
        ("Layer grid", "×".join(str(g) for g in grid) if grid else "–"),
        ("Input folder", _fmt_value((last or {}).get("input_dir"))),
        ("Device", _fmt_value(config.get("device"))),
        ("Batch size", _fmt_value(config.get("batch_size"))),
        ("Decode workers", _fmt_value(config.get("workers"))),
        ("Seed", _fmt_value(config.get("seed"))),
        ("Versions", f"xaibatch {config.get('xaibatch', '–')}, torch {config.get('torch', '–')}"),
    ]
    return rows


def _run_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"], "started": _fmt_time(r["started_at"]), "status": r["status"],
        "seconds": fmt_seconds(r["seconds"]), "seen": r["n_seen"], "added": r["n_added"], "changed": r["n_changed"],
        "removed": r["n_removed"], "unchanged": r["n_unchanged"], "failed": r["n_failed"],
        "computed": r["n_computed"],
    }


def _name(names: list[str], i: int | None) -> str | None:
    if i is None:
        return None
    return names[i] if 0 <= i < len(names) else f"class {i}"


def mask_rel(rel: str) -> str:
    """Where demo-data keeps an image's ground-truth mask, relative to the input folder (see demo.mask_for)."""
    return rel.rsplit(".", 1)[0] + MASK_SUFFIX


def _mask_key(input_dir: Path | None, rel: str) -> str:
    if input_dir is None:
        return ""
    try:
        st = os.stat(os.path.join(input_dir, mask_rel(rel)))
    except (OSError, ValueError):
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) and st.st_size else ""


def _card(r: ImageRow, names: list[str], methods: list[MethodInfo], maps: dict[tuple[str, str], MapRow],
          input_dir: Path | None = None) -> Card:
    stem = r.stem
    views = []
    for m in methods:
        row = maps.get((r.rel, m.name))
        if row is not None:
            views.append(MapView(
                m.name, m.title, m, url(row.png), url(row.thumb or row.png), url(row.npy),
                [(str(k), _fmt_value(v), INFO_WORDS.get(str(k), "")) for k, v in (row.info or {}).items()],
                npy_rel=row.npy, config_hash=row.config_hash, **_faith_view(row),
            ))
    order = sorted(range(len(r.probs)), key=lambda i: -r.probs[i])[:MAX_PROBS_SHOWN]
    dw, dh = display_size(r.width, r.height)
    scale = max(1.0, DETAIL_MIN_SIDE / max(dw, dh))
    detail = f"detail/{stem}.html"
    return Card(
        rel=r.rel, stem=stem, cid="c" + hashlib.sha1(r.rel.encode("utf-8", "surrogatepass")).hexdigest()[:12],
        label=_name(names, r.label), label_index=r.label, pred=_name(names, r.pred) or "", pred_index=r.pred,
        target=_name(names, r.target) or "", confidence=r.confidence, conf_text=_pct(r.confidence),
        conf_attr=f"{r.confidence:.6f}",
        correct=None if r.label is None else r.label == r.pred,
        thumb=url(layout.image_thumb(stem, r.width, r.height)), image=url(layout.image_png(stem)),
        detail=detail, detail_url=url(detail), maps=views, methods_attr=" ".join(v.method for v in views),
        probs=[(_name(names, i) or "", r.probs[i], _pct(r.probs[i])) for i in order],
        width=r.width, height=r.height, disp_w=round(dw * scale), disp_h=round(dh * scale), pixelated=scale > 1,
        sha256=r.sha256[:12], size=r.size, mask_key=_mask_key(input_dir, r.rel),
    )


def _faith_view(row: MapRow) -> dict[str, Any]:
    if row.deletion is None or row.insertion is None:
        return {}
    from .trust import curve_points

    f = row.faith or {}
    curves = (curve_points(f["deletion_curve"]), curve_points(f["insertion_curve"])) if "deletion_curve" in f else None
    return {"deletion": f"{row.deletion:.3f}", "insertion": f"{row.insertion:.3f}", "curves": curves}


def _groups(cards: list[Card], names: list[str], labeled: bool) -> tuple[list[Group], list[tuple[str, str]]]:
    by: dict[tuple[str, int], list[Card]] = {}
    for c in cards:
        if labeled and c.label_index is not None:
            key = ("right" if c.correct else "wrong", c.label_index)
        else:
            key = ("nolabel" if labeled else "pred", c.pred_index)
        by.setdefault(key, []).append(c)
    classes = sorted({k for _s, k in by})
    if labeled:
        sections = [("wrong", "Misclassified"), ("right", "Correct")]
        if any(s == "nolabel" for s, _k in by):
            sections.append(("nolabel", "Without a label, by predicted class"))
    else:
        sections = [("pred", "By predicted class")]
    groups = []
    for s, _title in sections:
        for k in classes:
            members = by.get((s, k))
            if not members:
                continue
            if s == "right":  # the borderline correct ones are the interesting ones
                members.sort(key=lambda c: (c.confidence, c.rel))
                order = "least confident first"
            else:
                members.sort(key=lambda c: (-c.confidence, c.rel))
                order = "most confident first"
            word = "true" if s in ("wrong", "right") else "predicted"
            groups.append(Group(s, f"{word} {_name(names, k)}", f"{s}-{k}", k, order, members))
    return groups, sections


def _page_links(current: int, total: int) -> list[tuple[str, str | None, bool]]:
    """1 … c-2 c-1 c c+1 c+2 … total, as (label, url or None for a gap, is current)."""
    want = sorted({1, total, *range(max(1, current - 2), min(total, current + 2) + 1)})
    out: list[tuple[str, str | None, bool]] = []
    prev = 0
    for n in want:
        if n - prev > 1:
            out.append(("…", None, False))
        out.append((str(n), f"page-{n}.html", n == current))
        prev = n
    return out


def _paginate(groups: list[Group], sections: list[tuple[str, str]]) -> tuple[list[Card], list[GalleryPage]]:
    order = [c for g in groups for c in g.cards]
    for i, c in enumerate(order):
        c.index = i
        c.page = i // PAGE_SIZE + 1
    total = max(1, math.ceil(len(order) / PAGE_SIZE))
    titles = dict(sections)
    blocks: list[list[Block]] = [[] for _ in range(total)]
    for g in groups:
        g.section_title = titles[g.section]
        g.start_page = g.cards[0].page
        g.start_url = f"gallery/page-{g.start_page}.html#{g.key}"
        for c in g.cards:
            c.group_key = g.key
        i = 0
        while i < len(g.cards):
            p = g.cards[i].page
            j = min(len(g.cards), i + (PAGE_SIZE - g.cards[i].index % PAGE_SIZE))
            page_blocks = blocks[p - 1]
            opens = not page_blocks or page_blocks[-1].group.section != g.section
            page_blocks.append(Block(g, g.cards[i:j], i + 1, j, titles[g.section] if opens else None))
            i = j
    pages = []
    for n in range(1, total + 1):
        first = (n - 1) * PAGE_SIZE + 1
        pages.append(GalleryPage(
            number=n, path=f"gallery/page-{n}.html", blocks=blocks[n - 1],
            prev=f"page-{n - 1}.html" if n > 1 else None, next=f"page-{n + 1}.html" if n < total else None,
            links=_page_links(n, total), first=min(first, len(order)), last=min(n * PAGE_SIZE, len(order)),
        ))
    return order, pages


def _metrics(data: ReportData) -> None:
    cards = data.cards
    k = len(data.class_names)
    confs = [c.confidence for c in cards]
    data.mean_confidence = sum(confs) / len(confs) if confs else None
    lo = 1.0 / k if k > 1 else 0.0
    span = (1.0 - lo) or 1.0

    def bin_of(v: float, n: int) -> int:
        return min(n - 1, max(0, int((v - lo) / span * n)))

    data.hist_edges = [lo + span * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    pred_counts = [0] * k
    for c in cards:
        if 0 <= c.pred_index < k:
            pred_counts[c.pred_index] += 1
    n = len(cards)
    data.pred_counts = [(data.class_names[i], pred_counts[i], _pct(pred_counts[i] / n) if n else "–")
                        for i in range(k)]
    scored = [c for c in cards if c.correct is not None]
    if not data.labeled:
        counts = [0] * HISTOGRAM_BINS
        for v in confs:
            counts[bin_of(v, HISTOGRAM_BINS)] += 1
        data.hist_series = [("all images", counts, "#0072B2")]
        return
    right_h = [0] * HISTOGRAM_BINS
    wrong_h = [0] * HISTOGRAM_BINS
    cal_n = [0] * CALIBRATION_BINS
    cal_ok = [0] * CALIBRATION_BINS
    cal_conf = [0.0] * CALIBRATION_BINS
    conf_m = [[0] * k for _ in range(k)]
    for c in scored:
        (right_h if c.correct else wrong_h)[bin_of(c.confidence, HISTOGRAM_BINS)] += 1
        b = bin_of(c.confidence, CALIBRATION_BINS)
        cal_n[b] += 1
        cal_ok[b] += bool(c.correct)
        cal_conf[b] += c.confidence
        if 0 <= c.label_index < k and 0 <= c.pred_index < k:
            conf_m[c.label_index][c.pred_index] += 1
    data.hist_series = [("correct", right_h, "#0072B2"), ("misclassified", wrong_h, "#D55E00")]
    m = len(scored)
    data.correct = sum(1 for c in scored if c.correct)
    data.wrong = m - data.correct
    data.accuracy = data.correct / m if m else None
    ece = 0.0
    data.calibration = []
    for b in range(CALIBRATION_BINS):
        lo_b, hi_b = lo + span * b / CALIBRATION_BINS, lo + span * (b + 1) / CALIBRATION_BINS
        row = {"lo": lo_b, "hi": hi_b, "range": f"{lo_b:.2f}–{hi_b:.2f}", "n": cal_n[b],
               "confidence": None, "accuracy": None, "gap": None}
        if cal_n[b]:
            mc, acc = cal_conf[b] / cal_n[b], cal_ok[b] / cal_n[b]
            row.update(confidence=mc, accuracy=acc, gap=acc - mc)
            ece += cal_n[b] / m * abs(acc - mc)
        data.calibration.append(row)
    data.ece = ece if m else None
    # per class precision / recall / F1 from the confusion matrix
    per = []
    for i in range(k):
        tp = conf_m[i][i]
        support = sum(conf_m[i])
        predicted = sum(conf_m[j][i] for j in range(k))
        p = tp / predicted if predicted else None
        r = tp / support if support else None
        f = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
        per.append({"name": data.class_names[i], "precision": p, "recall": r, "f1": f, "support": support,
                    "predicted": predicted})

    def mean(key: str) -> float | None:
        vals = [x[key] for x in per if x[key] is not None]
        return sum(vals) / len(vals) if vals else None

    data.per_class = per
    data.macro = {"precision": mean("precision"), "recall": mean("recall"), "f1": mean("f1"), "support": m}
    if k <= CONFUSION_MAX_CLASSES:
        rows = []
        for i in range(k):
            total = sum(conf_m[i]) or 1
            row = []
            for j in range(k):
                share = conf_m[i][j] / total
                rgb = tuple(round(255 + (t - 255) * share) for t in (8, 48, 107))  # white -> dark blue
                row.append({"n": conf_m[i][j], "share": _pct(share), "diag": i == j,
                            "style": f"background-color: rgb{rgb}; color: {_text_on(rgb)}"})
            rows.append(row)
        data.confusion = rows
    else:
        pairs = [(data.class_names[i], data.class_names[j], conf_m[i][j])
                 for i in range(k) for j in range(k) if i != j and conf_m[i][j]]
        pairs.sort(key=lambda t: -t[2])
        data.top_confusions = pairs[:50]


def build(out_dir: Path) -> ReportData:
    """Read the manifest and compute everything the templates show. O(n) apart from the sorts."""
    m = Manifest(Path(out_dir) / layout.MANIFEST)
    try:
        images = m.images()
        maps = m.maps()
        runs = m.runs()
        failures = m.failures()
    finally:
        m.close()
    last = next((r for r in reversed(runs) if r["status"] != "running"), runs[-1] if runs else None)
    try:
        config = json.loads(last["config_json"]) if last else {}
    except ValueError:
        config = {}
    names: list[str] = list(config.get("class_names", []))
    k = max(len(names), len(next(iter(images.values())).probs) if images else 0)
    names += [f"class {i}" for i in range(len(names), k)]
    methods = _methods(runs, config, {meth for _rel, meth in maps})
    labeled = any(r.label is not None for r in images.values())

    input_dir = (last or {}).get("input_dir") or ""
    source = Path(input_dir) if input_dir and os.path.isdir(input_dir) else None
    cards = [_card(images[rel], names, methods, maps, source) for rel in sorted(images)]
    groups, sections = _groups(cards, names, labeled)
    order, pages = _paginate(groups, sections)
    data = ReportData(
        title=f"xaibatch report: {Path(input_dir).name or input_dir or 'no run yet'}",
        labeled=labeled, total=len(order), class_names=names, methods=methods, config=config,
        config_rows=_config_rows(config, last), runs=[_run_row(r) for r in reversed(runs)], runs_total=len(runs),
        last_run=_run_row(last) if last else None, failures=failures, cards=order, groups=groups, pages=pages,
        sections=sections, page_size=PAGE_SIZE,
        card_width=(1 + len(methods)) * (CARD_THUMB_PX + 4) + 24,
        target_words=("the folder's label" if config.get("model", {}).get("target") == "label"
                      else "the predicted class"),
        input_dir=source,
    )
    _metrics(data)
    warning = demo_model_warning(config, order, source is not None)
    if warning:
        data.warnings.append(warning)
    from .trust import build_trust

    data.trust = build_trust(Path(out_dir), images, maps, methods, labeled,
                             config.get("model", {}).get("checkpoint_sha256"))
    data.decision = _decision(config.get("decision"), names, images)
    return data


@functools.lru_cache(maxsize=4)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def bundled_model_sha256() -> str | None:
    """SHA-256 of the bundled demo checkpoint (hashed once per process while the file is unchanged)."""
    try:
        p = default_checkpoint()
        st = p.stat()
        return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def demo_model_warning(config: dict[str, Any], cards: list[Card], input_readable: bool) -> str | None:
    """A warning when the bundled demo model was applied to a folder that does not look like demo data.

    The test is simple on purpose: every demo image is 32x32, and every demo
    FAKE image has its ground-truth mask (``<name>.mask.npy``) beside it. A
    folder with any other size, or without a single mask, is not the demo set.
    """
    sha = config.get("model", {}).get("checkpoint_sha256")
    if not cards or not sha or sha != bundled_model_sha256():
        return None
    reasons = []
    other = sum(1 for c in cards if (c.width, c.height) != (DEMO_SIZE, DEMO_SIZE))
    if other:
        reasons.append(f"{other} of {len(cards)} images are not {DEMO_SIZE}x{DEMO_SIZE} (every demo image is)")
    if input_readable and not any(c.mask_key for c in cards):
        reasons.append(f"none of the {len(cards)} images has a ground-truth mask (<name>{MASK_SUFFIX}) beside it "
                       "(every demo FAKE image has one)")
    if not reasons:
        return None
    return ("These predictions and maps come from the bundled demo model, which was trained only on "
            "xaibatch demo-data (synthetic 32x32 images), but this folder does not look like demo data: "
            + "; ".join(reasons) + ". They say nothing reliable about these images: pass your own --checkpoint.")


# -- what only a detail page shows (read from the map files when the page is rendered) -----------------


def _load_array(root: Path, rel: str) -> Any:
    """A 2-d array from a regular ``.npy`` file under ``root``, or None (never blocks on a FIFO or device)."""
    import numpy as np

    try:
        fd = os.open(safe_join(root, rel), os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ARRAY_BYTES:
                return None
            a = np.load(f, allow_pickle=False)
    except (OSError, ValueError, UsageError, EOFError):
        return None
    return a if getattr(a, "ndim", 0) == 2 else None


def _fmt_num(v: float) -> str:
    return f"{v:.3g}"


def _scale(v: MapView, m: Any, c: Card) -> None:
    """The numbers under the method's colour bar, as the overlay drew this image (see overlay.display_scale)."""
    from .overlay import display_map, display_scale

    s = display_scale(display_map(m, display_size(c.width, c.height), v.m.signed), v.m.signed)
    if v.m.signed:
        v.ticks = [f"−{_fmt_num(s)}", "0", f"+{_fmt_num(s)}"]
        v.scale_note = (f"Full red: +{_fmt_num(s)}, hiding that superpixel lowers the probability of "
                        f"{c.target} by about {_fmt_num(s)}; full blue: −{_fmt_num(s)}, hiding it raises it.")
    else:
        v.ticks = ["0", _fmt_num(s / 2), f"≥ {_fmt_num(s)}"]
        v.scale_note = f"Full colour: values of {_fmt_num(s)} (this image's 99th percentile) and above."


def _region_path(mask: Any) -> str:
    """An SVG path covering the True cells of a boolean grid, one rectangle per horizontal run."""
    import numpy as np

    parts = []
    for y, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
            parts.append(f"M{x0} {y}h{x1 - x0}v1h-{x1 - x0}z")
    return "".join(parts)


def _truth(mask: Any, c: Card, arrays: dict[str, Any]) -> Truth:
    import numpy as np

    from .localization import hit, peak

    h, w = mask.shape
    f = min(1.0, TRUTH_MAX_SIDE / max(h, w))
    gw, gh = max(1, round(w * f)), max(1, round(h * f))
    ys = (np.arange(gh) * h // gh)[:, None]
    xs = (np.arange(gw) * w // gw)[None, :]
    points = []
    for i, v in enumerate(c.maps):
        colour = MARKER_COLOURS[i % len(MARKER_COLOURS)]
        m = arrays.get(v.method)
        if m is None or m.shape != mask.shape:
            note = "map unreadable" if m is None else f"map {m.shape[1]}×{m.shape[0]} and mask {w}×{h} differ"
            points.append(Point(i + 1, v.title, colour, 0, 0, None, None, note))
            continue
        evidence = np.where(m > 0, m, 0) if v.m.signed else m  # LIME: the strongest evidence *for* the class
        y, x = peak(evidence)
        points.append(Point(i + 1, v.title, colour, (x + 0.5) * gw / w, (y + 0.5) * gh / h, (x, y),
                            hit(evidence, mask)))
    side = max(gw, gh)
    radius, font = side / 28, side / 9
    for pt in points:
        pt.lx = min(pt.x + radius, gw - 0.6 * font)
        pt.ly = pt.y - radius if pt.y - radius >= font else pt.y + radius + font
    return Truth(mask_rel(c.rel).rsplit("/", 1)[-1], gw, gh, _region_path(mask[ys, xs]), _pct(float(mask.mean())),
                 radius=radius, font=font, points=points)


def detail_data(out_dir: Path, input_dir: Path | None, c: Card) -> None:
    """Fill in what only the detail page shows, from the map files: the colour bars' numbers and, where the
    demo's ground-truth mask lies beside the input image, the pointing game per method.

    Called only for pages that are (re)rendered; everything read here is covered by
    the card's fingerprint (map rows, the image's hash, the mask's size and mtime).
    """
    arrays = {}
    for v in c.maps:
        m = _load_array(out_dir, v.npy_rel)
        v.ticks, v.scale_note = [], ""
        if m is not None and m.size:
            arrays[v.method] = m
            _scale(v, m, c)
    c.truth = None
    if c.mask_key and input_dir is not None:
        mask = _load_array(input_dir, mask_rel(c.rel))
        if mask is not None and mask.size:
            c.truth = _truth(mask.astype(bool), c, arrays)


def _decision_words(d: dict[str, Any] | None) -> str:
    if not d:
        return "the most probable class"
    head = "one logit, P(positive) = sigmoid(z); " if d.get("one_logit") else ""
    return f"{head}{d['positive']} when P({d['positive']}) ≥ {d['threshold']:g}"


def _decision(d: dict[str, Any] | None, names: list[str], images: dict[str, ImageRow]) -> dict[str, Any] | None:
    """Threshold, accuracy, the positive class's precision and recall, and its ROC curve (labeled images)."""
    import numpy as np

    if not d or d.get("positive") not in names or len(names) != 2:
        return None
    pos, t = names.index(d["positive"]), float(d["threshold"])
    out: dict[str, Any] = {"positive": d["positive"], "negative": names[1 - pos], "threshold": t,
                           "one_logit": bool(d.get("one_logit")), "words": _decision_words(d)}
    rows = [r for r in images.values() if r.label is not None and 0 <= r.label < 2 and len(r.probs) == 2]
    if not rows:
        return out
    score = np.array([r.probs[pos] for r in rows], dtype=np.float64)
    truth = np.array([r.label == pos for r in rows])
    said = np.array([r.pred == pos for r in rows])
    tp, fp = int((said & truth).sum()), int((said & ~truth).sum())
    fn, tn = int((~said & truth).sum()), int((~said & ~truth).sum())
    out.update(tp=tp, fp=fp, fn=fn, tn=tn, n=len(rows), accuracy=(tp + tn) / len(rows),
               precision=tp / (tp + fp) if tp + fp else None, recall=tp / (tp + fn) if tp + fn else None,
               fpr=fp / (fp + tn) if fp + tn else None)
    if truth.all() or not truth.any():
        return out  # a ROC curve needs both classes
    order = np.argsort(-score, kind="stable")
    s, y = score[order], truth[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # one point per distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    fpr = np.r_[0.0, fps / (~truth).sum()]
    tpr = np.r_[0.0, tps / truth.sum()]
    out.update(roc_fpr=[round(float(v), 6) for v in fpr], roc_tpr=[round(float(v), 6) for v in tpr],
               auc=float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
               point=(fp / (fp + tn), tp / (tp + fn)))
    return out


# -- rendering -----------------------------------------------------------------------------------------


def environment(template_dir: Path | None = None) -> jinja2.Environment:
    """User templates first (trusted: they are the user's own), packaged ones as the fallback."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(jinja2.FileSystemLoader(str(templates_dir())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, auto_reload=False,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["conf"] = lambda v: f"{100 * v:.1f}%"
    env.filters["num"] = lambda v: "–" if v is None else f"{v:.3f}"
    env.filters["bytes"] = _fmt_bytes
    return env


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class WriteStats:
    """What one write_report call did (the benchmark and the tests read it)."""

    index: Path
    written: int = 0  # files whose bytes changed
    unchanged: int = 0
    removed: int = 0
    pages: int = 0  # HTML pages in the report
    gallery_pages: int = 0
    biggest_page: tuple[str, int] = ("", 0)
    seconds_build: float = 0.0
    seconds_render: float = 0.0
    seconds_total: float = 0.0


class _Writer:
    def __init__(self, out_dir: Path, stats: WriteStats) -> None:
        self.out = out_dir
        self.stats = stats
        self.paths: set[str] = set()
        self.previous: dict[str, str] = {}  # page -> fingerprint of its inputs at the last write
        self.fingerprints: dict[str, str] = {}
        for top in ("assets", "figures", *OWNED_DIRS):  # refuse a symlink that leads out of the report folder
            safe_join(out_dir, top)

    def _path(self, rel: str) -> Path:
        # Lexical check only (resolve() per page costs more than rendering it); the top folders are checked once.
        parts = rel.split("/")
        if rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"refusing to write report page {rel!r}: not a plain relative path")
        self.paths.add(rel)
        return self.out.joinpath(*parts)

    def _count(self, rel: str, size: int) -> None:
        if rel.endswith(".html"):
            self.stats.pages += 1
            if size > self.stats.biggest_page[1]:
                self.stats.biggest_page = (rel, size)

    def write(self, rel: str, data: bytes) -> None:
        """Write only when the bytes differ: unchanged files keep their mtime."""
        path = self._path(rel)
        self._count(rel, len(data))
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                self.stats.unchanged += 1
                return
        except (FileNotFoundError, NotADirectoryError):
            pass
        atomic_write_bytes(path, data)
        self.stats.written += 1

    def write_page(self, rel: str, fingerprint: str, render: Callable[[], str]) -> None:
        """Skip rendering when the page's inputs are unchanged (same fingerprint as last time and the file is
        there); otherwise render and write only if the bytes differ."""
        self.fingerprints[rel] = fingerprint
        if self.previous.get(rel) == fingerprint:
            path = self._path(rel)
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            if size >= 0:
                self._count(rel, size)
                self.stats.unchanged += 1
                return
        self.write(rel, render().encode("utf-8"))

    def load_fingerprints(self) -> None:
        try:
            state = json.loads((self.out / STATE_NAME).read_text("utf-8"))
            if state.get("version") == FINGERPRINT_VERSION and isinstance(state.get("pages"), dict):
                self.previous = state["pages"]
        except (OSError, ValueError, AttributeError):
            self.previous = {}

    def save_fingerprints(self) -> None:
        body = json.dumps({"version": FINGERPRINT_VERSION, "pages": self.fingerprints},  # in gallery order
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        path = self.out / STATE_NAME
        try:
            if path.read_bytes() == body:
                return
        except OSError:
            pass
        atomic_write_bytes(path, body)


_CARD_FIELDS = [f.name for f in fields(Card) if f.repr]
_MAP_FIELDS = [f.name for f in fields(MapView) if f.repr]


def _card_key(c: Card) -> str:
    """Everything a card can show, as text (faster than the dataclass repr; every field but index/group_key)."""
    values = [getattr(c, f) for f in _CARD_FIELDS]
    values[_CARD_FIELDS.index("maps")] = [[getattr(v, f) for f in _MAP_FIELDS] for v in c.maps]
    return repr(values)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _templates_key(template_dir: Path | None) -> str:
    """A hash of every template file that could be used: any edit re-renders every page."""
    h = hashlib.sha256(f"{FINGERPRINT_VERSION}".encode())
    for base in ([template_dir] if template_dir is not None else []) + [templates_dir()]:
        for p in sorted(Path(base).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(base)).encode("utf-8", "surrogatepass") + b"\0" + p.read_bytes())
    return h.hexdigest()[:20]


def _asset_source(name: str, template_dir: Path | None) -> bytes:
    for base in ([template_dir] if template_dir is not None else []) + [templates_dir()]:
        p = Path(base) / "assets" / name
        if p.is_file():
            return p.read_bytes()
    raise FileNotFoundError(f"report asset assets/{name} is missing from the template folders")


def _write_assets(w: _Writer, data: ReportData, template_dir: Path | None) -> None:
    for name in ASSET_NAMES:
        body = _asset_source(name, template_dir)
        stem, ext = name.rsplit(".", 1)
        rel = f"assets/{stem}.{hashlib.sha256(body).hexdigest()[:8]}.{ext}"
        w.write(rel, body)
        data.assets[ext] = url(rel)


def _write_colour_bars(w: _Writer, data: ReportData) -> None:
    """One small SVG colour bar per colour map, shared by every page and image (named by its content)."""
    from . import figures
    from .overlay import colour_stops

    for m in data.methods:
        body = figures.colour_bar(colour_stops(m.signed))
        rel = f"assets/colourbar.{hashlib.sha256(body).hexdigest()[:8]}.svg"
        w.write(rel, body)
        m.bar = url(rel)


def _write_figures(w: _Writer, data: ReportData) -> None:
    """Figures are named by a hash of the numbers they show: unchanged numbers are never redrawn."""
    from . import figures

    wanted: list[tuple[str, Any, str, Any]] = []
    if data.total:
        if data.labeled:
            alt = (f"Histogram of the predicted class's probability for {data.correct} correctly classified "
                   f"(blue) and {data.wrong} misclassified (orange) images.")
        else:
            alt = f"Histogram of the predicted class's probability over all {data.total} images."
        wanted.append(("confidence", (data.hist_edges, data.hist_series), alt,
                       lambda: figures.confidence_histogram(data.hist_edges, data.hist_series)))
        if data.labeled and data.ece is not None:
            alt = (f"Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration; "
                   f"expected calibration error {100 * data.ece:.1f}%. The table below lists the same numbers.")
            bins = [(b["lo"], b["hi"], b["n"], b["confidence"], b["accuracy"]) for b in data.calibration]
            wanted.append(("reliability", (bins, data.ece), alt,
                           lambda: figures.reliability_diagram(bins, data.ece)))
    sanity = data.trust.sanity if data.trust else None
    if sanity and sanity.get("curves"):
        curves = [(c["method"], c["steps"], c["rank"], c["ssim"]) for c in sanity["curves"]]
        alt = ("Cascading randomization: mean rank correlation and SSIM between each method's original maps and its "
               "maps after randomizing the model's stages from the top; the table below lists the same numbers.")
        wanted.append(("sanity", curves, alt, lambda: figures.sanity_curves(curves)))
    dec = data.decision
    if dec and dec.get("auc") is not None:
        alt = (f"ROC curve of P({dec['positive']}) over {dec['n']} labeled images, AUC {dec['auc']:.3f}; the dot is "
               f"the threshold {dec['threshold']:g} (false positive rate {dec['point'][0]:.3f}, "
               f"true positive rate {dec['point'][1]:.3f}).")
        numbers = (dec["roc_fpr"], dec["roc_tpr"], dec["point"], dec["threshold"], dec["positive"])
        wanted.append(("roc", numbers, alt, lambda: figures.roc_curve(dec["roc_fpr"], dec["roc_tpr"], dec["point"],
                                                                      dec["threshold"], dec["auc"], dec["positive"])))
    for name, numbers, alt, draw in wanted:
        key = hashlib.sha256(json.dumps([figures.VERSION, numbers], default=str).encode()).hexdigest()[:10]
        rel = f"figures/{name}-{key}.svg"
        path = w.out / rel
        if path.is_file():
            w.paths.add(rel)
            w.stats.unchanged += 1
        else:
            w.write(rel, draw())
        data.figures[name] = {"src": url(rel), "alt": alt}


def _remove_stale(w: _Writer) -> None:
    """Delete report files this write did not produce: pages of removed images, old assets and figures."""
    out = w.out
    patterns = {"assets": (".css", ".js", ".svg"), "figures": (".svg",), "gallery": (".html",), "detail": (".html",)}
    for top, exts in patterns.items():
        root = out / top
        if not root.is_dir():
            continue
        base = len(str(out)) + 1
        for dirpath, _dirs, filenames in os.walk(root, topdown=False):
            prefix = dirpath[base:].replace(os.sep, "/") + "/"
            for f in filenames:
                if f.endswith(exts) and prefix + f not in w.paths:  # temporary files end in .tmp
                    os.unlink(os.path.join(dirpath, f))
                    w.stats.removed += 1
            if dirpath != str(root):
                try:
                    os.rmdir(dirpath)  # only succeeds when empty
                except OSError:
                    pass


def render(out_dir: Path, template_dir: Path | None = None) -> WriteStats:
    """Build the data, then write every page; returns what was written."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    data = build(out)
    stats = WriteStats(index=out / "index.html", gallery_pages=len(data.pages))
    stats.seconds_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    env = environment(template_dir)
    w = _Writer(out, stats)
    _write_assets(w, data, template_dir)
    _write_colour_bars(w, data)
    _write_figures(w, data)

    w.load_fingerprints()
    detail = env.get_template("detail.html")
    site = data.site()
    site_key = _fingerprint(_templates_key(template_dir), site)
    cards = data.cards
    keys = [_card_key(c) for c in cards]

    def render_detail(c: Card, prev: Card | None, nxt: Card | None, root: str) -> str:
        detail_data(out, data.input_dir, c)
        return detail.render(r=site, c=c, root=root, nav="detail", prev=prev, next=nxt)

    for i, c in enumerate(cards):
        prev = cards[i - 1] if i > 0 else None
        nxt = cards[i + 1] if i + 1 < len(cards) else None
        root = up(c.detail)
        fp = _fingerprint(site_key, keys[i - 1] if prev else None, keys[i], keys[i + 1] if nxt else None)
        w.write_page(c.detail, fp, lambda: render_detail(
            c, prev, nxt, root))  # noqa: B023 - called at once
    gallery = env.get_template("gallery.html")
    for p in data.pages:
        w.write(p.path, gallery.render(r=data, p=p, root="../", nav="gallery").encode("utf-8"))
    w.write("history.html", env.get_template("history.html").render(r=data, root="", nav="history").encode())
    w.write("skipped.html", env.get_template("skipped.html").render(r=data, root="", nav="skipped").encode())
    w.write("index.html", env.get_template("index.html").render(r=data, root="", nav="summary").encode("utf-8"))
    _remove_stale(w)
    w.save_fingerprints()
    stats.seconds_render = time.perf_counter() - t1
    stats.seconds_total = time.perf_counter() - t0
    return stats


def write_report(out_dir: Path, template_dir: Path | None = None) -> Path:
    """Write (or bring up to date) the static report in ``out_dir``; returns the path of index.html."""
    try:
        return render(out_dir, template_dir).index
    except jinja2.TemplateError as e:  # e.g. a --template-dir template using a name the data lacks
        raise XaibatchError(f"cannot render the report: {type(e).__name__}: {e}") from None


def check_templates(template_dir: Path | None) -> None:
    """Compile every template now, so a broken --template-dir fails before any compute, as one line."""
    env = environment(template_dir)
    for name in TEMPLATE_NAMES:
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as e:
            where = f"{e.filename or name}, line {e.lineno}"
            raise UsageError(f"--template-dir: template error in {where}: {e.message}") from None
        except jinja2.TemplateError as e:
            raise UsageError(f"--template-dir: template {name}: {type(e).__name__}: {e}") from None


def write_predictions_csv(out: Path, names: list[str]) -> float | None:
    """Write predictions.csv; return the accuracy over labeled images (None when there are none)."""
    import csv
    import io

    manifest = Manifest(out / layout.MANIFEST)
    try:
        rows = manifest.images()
        maps = manifest.maps()
    finally:
        manifest.close()
    scored = sorted({m for (_rel, m), row in maps.items() if row.deletion is not None})  # faithfulness columns
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "pred", "confidence", "correct", *[csv_cell(f"p_{n}") for n in names],
                *[f"{kind}_{m}" for m in scored for kind in ("deletion", "insertion")]])
    for rel in sorted(rows):
        r = rows[rel]
        label = names[r.label] if r.label is not None and r.label < len(names) else ""
        correct = "" if r.label is None else int(r.label == r.pred)
        faith = []
        for m in scored:
            row = maps.get((rel, m))
            faith += ["" if row is None or v is None else f"{v:.6f}"
                      for v in ((row.deletion, row.insertion) if row else (None, None))]
        w.writerow([csv_cell(rel), csv_cell(label), csv_cell(names[r.pred]), f"{r.confidence:.6f}", correct,
                    *[f"{v:.6f}" for v in r.probs], *faith])
    atomic_write_bytes(out / "predictions.csv", buf.getvalue().encode())
    labeled = [r for r in rows.values() if r.label is not None]
    return sum(r.label == r.pred for r in labeled) / len(labeled) if labeled else None


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """Quote a text cell a spreadsheet would run as a formula (``=HYPERLINK(...)`` as a file name)."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text
