"""The files every page links to: the assets (content-hashed copies), one colour bar per colour map, and the
figures (named by a hash of their numbers: unchanged numbers are never redrawn)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..resources import templates_dir
from .forked import Forked
from .model import ASSET_NAMES, ReportData, url
from .output import PageWriter
from .text import fmt_pct


def asset_source(name: str, template_dir: Path | None) -> bytes:
    for base in ([template_dir] if template_dir is not None else []) + [templates_dir()]:
        p = Path(base) / "assets" / name
        if p.is_file():
            return p.read_bytes()
    raise FileNotFoundError(f"report asset assets/{name} is missing from the template folders")


def write_assets(w: PageWriter, data: ReportData, template_dir: Path | None) -> None:
    for name in ASSET_NAMES:
        body = asset_source(name, template_dir)
        stem, ext = name.rsplit(".", 1)
        rel = f"assets/{stem}.{hashlib.sha256(body).hexdigest()[:8]}.{ext}"
        w.write(rel, body)
        data.assets[ext if stem == "report" else stem] = url(rel)  # "css", "js", "detail", "icon"


COLOUR_BAR_VERSION = 1  # bump when the colour maps change (the bars are drawn only when their file is missing)


def write_colour_bars(w: PageWriter, data: ReportData, drawings: Drawings) -> None:
    """One small SVG colour bar per colour map, shared by every page and image; drawn only when its file is
    missing or the report's state is not (PageWriter.trusted); ``drawings`` draws it."""
    for m in data.methods:
        key = hashlib.sha256(f"colourbar:{COLOUR_BAR_VERSION}:{m.signed}".encode()).hexdigest()[:8]
        rel = f"assets/colourbar.{key}.svg"
        if rel not in w.paths and not (w.trusted and (w.out / rel).is_file()):
            drawings.add(rel, functools.partial(_colour_bar, m.signed))
        elif rel not in w.paths:
            w._path(rel)
            w.stats.unchanged += 1
        m.bar = url(rel)


class Figure(NamedTuple):
    """One figure a page shows: its name, the numbers it draws (hashed into its file name), its alt text, and how
    to draw it."""

    name: str
    numbers: Any
    alt: str
    draw: Callable[[], bytes]
    size: tuple[int, int]  # its width and height in CSS pixels, for the page's <img>


def write_figures(w: PageWriter, data: ReportData, drawings: Drawings) -> None:
    """Figures are named by a hash of the numbers they show: unchanged numbers are never redrawn (unless the
    report's state is missing: PageWriter.trusted); the pages link them at once, ``drawings`` draws them."""
    from . import figures

    wanted = [_confidence(data), _reliability(data), _sanity(data), _roc(data), *_mean_maps(data)]
    for name, numbers, alt, draw, (width, height) in (f for f in wanted if f is not None):
        key = hashlib.sha256(json.dumps([figures.VERSION, numbers], default=str).encode()).hexdigest()[:10]
        rel = f"figures/{name}-{key}.svg"
        path = w.out / rel
        if w.trusted and path.is_file():
            w.paths.add(rel)
            w.stats.unchanged += 1
        else:
            drawings.add(rel, draw)
        data.figures[name] = {"src": url(rel), "alt": alt, "width": width, "height": height}


def _confidence(data: ReportData) -> Figure | None:
    """The histogram of the predicted class's probability (none without images)."""
    from . import figures

    if not data.measured:
        return None
    scope = data.earlier["scope"] if data.earlier else ""  # images an earlier model predicted are left out
    if data.labeled:
        alt = (
            f"Histogram of the predicted class's probability for {data.correct:,} correctly classified "
            f"(blue) and {data.wrong:,} misclassified (orange) images{', ' + scope if scope else ''}."
        )
    else:
        alt = f"Histogram of the predicted class's probability {scope or f'over all {data.total:,} images'}."
    return Figure(
        "confidence",
        (data.hist_edges, data.hist_series),
        alt,
        lambda: figures.confidence_histogram(data.hist_edges, data.hist_series),
        figures.HISTOGRAM_SIZE,
    )


def _reliability(data: ReportData) -> Figure | None:
    """The reliability diagram (labeled images only)."""
    from . import figures

    if not (data.total and data.labeled and data.ece is not None):
        return None
    scope = f" ({data.earlier['scope']})" if data.earlier else ""
    alt = (
        f"Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration; "
        f"expected calibration error {fmt_pct(data.ece)}{scope}. The table below lists the same numbers."
    )
    bins = [(b["lo"], b["hi"], b["n"], b["confidence"], b["accuracy"]) for b in data.calibration]
    return Figure(
        "reliability",
        (bins, data.ece),
        alt,
        lambda: figures.reliability_diagram(bins, data.ece),
        figures.HISTOGRAM_SIZE,
    )


def _sanity(data: ReportData) -> Figure | None:
    """The cascading randomization curves (when the sanity check ran)."""
    from . import figures

    sanity = data.trust.sanity if data.trust else None
    if not (sanity and sanity.curves):
        return None
    # a method whose maps were all empty has no numbers to draw (sanity.Curve: "cannot tell")
    curves = [(c.method, c.steps, c.rank, c.ssim) for c in sanity.curves if None not in c.rank]
    if not curves:
        return None
    alt = (
        "Cascading randomization: mean rank correlation and SSIM between each method's original maps and its "
        "maps after randomizing the model's stages from the top; the table below lists the same numbers."
    )
    size = figures.sanity_size([c[0] for c in curves])
    return Figure("sanity", curves, alt, lambda: figures.sanity_curves(curves), size)


def _roc(data: ReportData) -> Figure | None:
    """The ROC curve of a two-class decision (when it has an AUC)."""
    from . import figures

    dec = data.decision
    if not (dec and dec.get("auc") is not None):
        return None
    alt = (
        f"ROC curve of P({dec['positive']}) over {dec['n']} labeled images, AUC {dec['auc']:.3f}; the dot is "
        f"the threshold {dec['threshold']:g} (false positive rate {dec['point'][0]:.3f}, "
        f"true positive rate {dec['point'][1]:.3f})."
    )
    numbers = (dec["roc_fpr"], dec["roc_tpr"], dec["point"], dec["threshold"], dec["positive"])
    return Figure(
        "roc",
        numbers,
        alt,
        lambda: figures.roc_curve(
            dec["roc_fpr"], dec["roc_tpr"], dec["point"], dec["threshold"], dec["auc"], dec["positive"]
        ),
        figures.ROC_SIZE,
    )


def _mean_maps(data: ReportData) -> list[Figure]:
    """A heatmap per method and gallery group (meanmaps.py), each method's on one colour scale."""
    import numpy as np

    from . import figures
    from ..overlay import ramp_colours

    out = []
    for i, mm in enumerate(data.mean_maps):
        top = mm.top if mm.top > 0 else 1.0
        for g in mm.groups:
            v = np.asarray(g.cells, dtype=np.float32) / top
            colours = ramp_colours(0.5 + 0.5 * v if mm.signed else v, mm.signed).tolist()
            rows = [[tuple(c) for c in row] for row in colours]
            g.figure = f"mean-{i}-{g.group}"
            strongest = "no cell above zero" if g.where == "nowhere" else f"strongest at the {g.where}"
            mean = f"the mean of {g.maps:,} maps" if g.maps != 1 else "its one map"
            alt = f"{mm.title}, {g.title}: {mean}, {strongest}."
            size = (figures.MEAN_MAP_PX, figures.MEAN_MAP_PX)
            out.append(
                Figure(g.figure, (rows, figures.MEAN_MAP_PX), alt, functools.partial(figures.mean_map, rows), size)
            )
    return out


def linked(data: ReportData) -> list[str]:
    """Urls of the assets, figures and colour bars the pages link to (each file once)."""
    return sorted({*data.assets.values(), *(f["src"] for f in data.figures.values()), *(m.bar for m in data.methods)})


def _colour_bar(signed: bool) -> bytes:
    from . import figures
    from ..overlay import colour_stops

    return figures.colour_bar(colour_stops(signed))


class Drawings:
    """The SVGs this write must draw: the figures (about a millisecond each) and, on a first build, the colour
    bars. With a second core they are drawn by a
    forked process while this one renders the pages (:meth:`start`, report/forked.py), and written here,
    through the PageWriter, by :meth:`finish`; otherwise, or when that process fails, they are drawn here (so a
    drawing's own error is raised as it would be inline)."""

    def __init__(self, w: PageWriter) -> None:
        self.w = w
        self.todo: list[tuple[str, Callable[[], bytes]]] = []
        self.child: Forked | None = None

    def add(self, rel: str, draw: Callable[[], bytes]) -> None:
        self.w.paths.add(rel)  # the pages may link it now (and a second colour map of the same kind finds it)
        self.todo.append((rel, draw))

    def start(self) -> None:
        if self.todo:
            todo = list(self.todo)
            self.child = Forked(lambda: [draw() for _rel, draw in todo])

    def finish(self) -> None:
        """Write every drawing: the child's bytes when it sent them all, else each drawn here."""
        drawn = self.child.result() if self.child is not None else None
        if not isinstance(drawn, list) or len(drawn) != len(self.todo):
            drawn = [draw() for _rel, draw in self.todo]
        for (rel, _draw), body in zip(self.todo, drawn, strict=True):
            self.w.write(rel, body)
        self.todo = []

    def abandon(self) -> None:
        """Stop and reap the drawing process, if any (also when the pages failed)."""
        if self.child is not None:
            self.child.abandon()
