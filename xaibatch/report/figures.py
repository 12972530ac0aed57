"""The report's figures, written as SVG from their numbers: axes, ticks, bars, lines, markers and a legend.

No plotting library is imported: a figure costs about a millisecond, equal numbers give equal bytes, and the
text stays text, set by the browser in its own sans-serif. So no font is measured and no font cache is built:
on a fresh machine matplotlib's first figure scanned the system's fonts for 15 s (issue 20). Every label is
escaped, since class and method names are user data. Sizes are the CSS pixels the summary page shows them at.
The numbers come from :mod:`xaibatch.report`; this module only draws them.
"""

from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

from .text import fmt_pct

VERSION = 5  # bump when a figure's look changes, so cached files are redrawn (1: matplotlib; 3: sanity legend;
# 5: an ECE under 0.05 % reads "<0.1%", not "0.0%")

FONT = 12.0  # px: tick labels, axis labels, legend
TITLE = 13.5
INK = "#222"
CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
BLUE, ORANGE, GREY = "#0072B2", "#D55E00", "#555"
TICK = 4.0  # px, outward
CHAR = 0.6 * FONT  # a label's width per character, for placing a legend (no font is measured)


def _n(v: float) -> str:
    """A coordinate with at most one decimal ('12', '12.5'; never '-0')."""
    r = round(v, 1) + 0.0
    return f"{r:.1f}".removesuffix(".0") if r else "0"


def ticks(lo: float, hi: float, most: int = 6, integer: bool = False) -> tuple[list[float], int]:
    """Round values in [lo, hi] to mark on an axis (steps of 1, 2, 2.5 or 5 times a power of ten, at most
    ``most`` steps), and the decimals their labels need."""
    span = hi - lo
    if not span > 0:
        return [lo], 0
    raw = span / most
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    values = [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return values, decimals


class Plot:
    """One plotting box of a figure: data limits mapped onto a pixel box, what is drawn in it, its legend."""

    def __init__(self, box: tuple[float, float, float, float], xlim: tuple[float, float], ylim: tuple[float, float]):
        self.left, self.top, self.width, self.height = box
        self.xlim, self.ylim = xlim, ylim
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []  # (swatch drawn around (0, 0), label)
        # the pixels drawn on (line points, dots) and the boxes filled (bars): a legend avoids them
        self.marks: list[tuple[float, float]] = []
        self.boxes: list[tuple[float, float, float, float]] = []  # (left, top, right, bottom)

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.left + (v - lo) / (hi - lo) * self.width

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.top + (hi - v) / (hi - lo) * self.height

    def bars(self, lefts, widths, heights, colour: str, label: str, opacity: float) -> None:
        """Bars from 0 up to each height, outlined in ``colour``."""
        for x0, w, h in zip(lefts, widths, heights, strict=True):
            if h is None or not h > 0:
                continue
            y0, y1 = self.y(h), self.y(0)
            self.boxes.append((self.x(x0), y0, self.x(x0 + w), y1))
            self.parts.append(
                f'<rect x="{_n(self.x(x0))}" y="{_n(y0)}" width="{_n(self.x(x0 + w) - self.x(x0))}" '
                f'height="{_n(y1 - y0)}" fill="{colour}" fill-opacity="{opacity}" stroke="{colour}"/>'
            )
        self.legend.append(
            (
                f'<rect x="-6" y="-5" width="12" height="10" fill="{colour}" fill-opacity="{opacity}" stroke="{colour}"/>',
                label,
            )
        )

    def line(
        self, xs, ys, colour: str, label: str | None, width: float = 1.5, dash: bool = False, dots: float = 0
    ) -> None:
        """A line through the finite points (broken where a value is missing), with round dots of radius ``dots``."""
        style = f'fill="none" stroke="{colour}" stroke-width="{width}"' + (' stroke-dasharray="5 3"' if dash else "")
        for run in _runs(xs, ys):
            pts = _polyline([(self.x(a), self.y(b)) for a, b in run])
            self.marks += _along(pts)
            self.parts.append(f'<polyline points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in pts)}" {style}/>')
            if dots:
                self.dots([a for a, _ in run], [b for _, b in run], colour, None, dots)
        if label is not None:
            swatch = f'<line x1="-9" y1="0" x2="9" y2="0" {style}/>'
            if dots:
                swatch += f'<circle r="{dots}" fill="{colour}"/>'
            self.legend.append((swatch, label))

    def dots(self, xs, ys, colour: str, label: str | None, r: float = 3.0, diamond: bool = False) -> None:
        """Markers at the finite points: circles, or diamonds."""

        def mark(a: float, b: float) -> str:
            if diamond:
                return f'<path d="M{_n(a)} {_n(b - r)}l{r} {r}l{-r} {r}l{-r} {-r}z" fill="{colour}"/>'
            return f'<circle cx="{_n(a)}" cy="{_n(b)}" r="{r}" fill="{colour}"/>'

        for run in _runs(xs, ys):
            self.parts.extend(mark(self.x(a), self.y(b)) for a, b in run)
            self.marks += [(self.x(a), self.y(b)) for a, b in run]
        if label is not None:
            self.legend.append((mark(0, 0), label))

    def hline(self, v: float, colour: str, width: float = 0.8) -> None:
        self.parts.append(
            f'<line x1="{_n(self.left)}" y1="{_n(self.y(v))}" x2="{_n(self.left + self.width)}" y2="{_n(self.y(v))}" '
            f'stroke="{colour}" stroke-width="{width}"/>'
        )


def _runs(xs, ys) -> list[list[tuple[float, float]]]:
    """The points split where a value is missing or not finite."""
    runs: list[list[tuple[float, float]]] = [[]]
    for a, b in zip(xs, ys, strict=True):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((float(a), float(b)))
    return [r for r in runs if r]


def _along(pts: list[tuple[float, float]], every: float = 8.0) -> list[tuple[float, float]]:
    """Points along a polyline at most ``every`` pixels apart (what a legend must not cover)."""
    out = pts[:1]
    for (a, b), (c, d) in zip(pts, pts[1:]):
        k = max(1, math.ceil(math.hypot(c - a, d - b) / every))
        out += [(a + (c - a) * i / k, b + (d - b) * i / k) for i in range(1, k + 1)]
    return out


def _polyline(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points as drawn (a tenth of a pixel), without repeats and without the middle points of a straight
    horizontal or vertical run: a ROC curve over 100,000 images stays under about 50 KB."""
    out: list[tuple[float, float]] = []
    for a, b in pts:
        p = (round(a, 1), round(b, 1))
        if out and p == out[-1]:
            continue
        if len(out) >= 2 and (out[-2][0] == out[-1][0] == p[0] or out[-2][1] == out[-1][1] == p[1]):
            out[-1] = p
        else:
            out.append(p)
    return out


class Chart:
    """A figure: its plots, their axes and titles, as one SVG."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def text(self, x: float, y: float, s: str, size: float = FONT, anchor: str = "middle", rotate: float = 0) -> None:
        turn = f' transform="rotate({rotate:g} {_n(x)} {_n(y)})"' if rotate else ""
        self.parts.append(
            f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size:g}" text-anchor="{anchor}"{turn}>{escape(s)}</text>'
        )

    def axes(
        self,
        p: Plot,
        title: str,
        xlabel: str,
        ylabel: str | None,
        xnames: Sequence[str] | None = None,
        yticks: tuple[list[float], int] | None = None,
        ytick_labels: bool = True,
    ) -> None:
        """The left and bottom axis lines of ``p`` with ticks, their labels (``xnames``: names slanted under the
        ticks 0, 1, ...), the axis labels and the title."""
        left, bottom, right = p.left, p.bottom, p.left + p.width
        self.parts.append(f'<path d="M{_n(left)} {_n(p.top)}V{_n(bottom)}H{_n(right)}" fill="none" stroke="{INK}"/>')
        xs, xd = (list(range(len(xnames))), 0) if xnames is not None else ticks(*p.xlim)
        for i, v in enumerate(xs):
            x = p.x(v)
            self.parts.append(f'<path d="M{_n(x)} {_n(bottom)}v{TICK:g}" stroke="{INK}"/>')
            if xnames is not None:
                self.text(x + 3, bottom + TICK + FONT, _short(xnames[i]), anchor="end", rotate=-45)
            else:
                self.text(x, bottom + TICK + FONT + 1, f"{v:.{xd}f}")
        ys, yd = yticks or ticks(*p.ylim)
        for v in ys:
            y = p.y(v)
            self.parts.append(f'<path d="M{_n(left)} {_n(y)}h{-TICK:g}" stroke="{INK}"/>')
            if ytick_labels:
                self.text(left - TICK - 3, y + FONT * 0.35, f"{v:.{yd}f}", anchor="end")
        below = bottom + TICK + FONT + 1 + (_slant(xnames) if xnames is not None else 0)
        self.text(left + p.width / 2, below + FONT + 4, xlabel)
        if ylabel is not None:
            self.text(left - 44, p.top + p.height / 2, ylabel, rotate=-90)
        self.text(left + p.width / 2, p.top - 10, title, size=TITLE)

    def legend(self, p: Plot, where: str = "best") -> None:
        """``p``'s legend entries, one a line, without a frame, inside the box in a corner: ``where`` ("upper
        left", "upper right", "lower left", "lower right"), or "best", the one over the fewest marks."""
        if not p.legend:
            return
        entries = [(swatch, _short(label, 40)) for swatch, label in p.legend]
        w, h = _legend_width(label for _, label in entries), LEGEND_STEP * len(entries)

        def corner(at: str) -> tuple[float, float]:
            x = p.left + 10 if at.endswith("left") else max(p.left + 10, p.left + p.width - 10 - w)
            return x, (p.top + 6 if at.startswith("upper") else p.bottom - 8 - h)

        def covered(at: str) -> float:
            """Marks under the legend, a bar's body counting one per 5 x 5 px of it."""
            x0, y0 = corner(at)
            x1, y1 = x0 + w + 4, y0 + h + 4
            x0, y0 = x0 - 4, y0 - 4
            area = sum(max(0.0, min(x1, r) - max(x0, l)) * max(0.0, min(y1, b) - max(y0, t)) for l, t, r, b in p.boxes)
            return sum(x0 <= a <= x1 and y0 <= b <= y1 for a, b in p.marks) + area / 25

        corners = ("upper left", "upper right", "lower left", "lower right")
        self.entries(entries, *corner(min(corners, key=covered) if where == "best" else where))

    def entries(self, entries: Sequence[tuple[str, str]], x: float, y: float) -> None:
        """Legend entries (swatch, label), one a line, from (x, y) down."""
        for i, (swatch, label) in enumerate(entries):
            yy = y + (i + 0.5) * LEGEND_STEP
            self.parts.append(f'<g transform="translate({_n(x + 10)} {_n(yy)})">{swatch}</g>')
            self.text(x + 26, yy + FONT * 0.35, label, anchor="start")

    def svg(self, plots: Sequence[Plot]) -> bytes:
        body = "".join(part for p in plots for part in p.parts) + "".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
            f'fill="{INK}"><rect width="{self.width}" height="{self.height}" fill="#fff"/>{body}</svg>\n'
        ).encode()


LEGEND_STEP = FONT * 1.4  # px from one legend entry to the next


def _legend_width(labels: Iterable[str]) -> float:
    return 30 + max(map(len, labels), default=0) * CHAR


def _short(name: str, most: int = 14) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"


def _slant(names: Sequence[str]) -> float:
    """How far below the axis names slanted at 45 degrees reach (past one line of text)."""
    return max((len(_short(n)) for n in names), default=0) * CHAR * 0.71


def legend_band(entries: int, height: float = 242) -> float:
    """The share of a plot's height a legend of ``entries`` takes, with its margins: the y axis runs that much past
    the highest bar, so that the legend has a band above every bar (and the ticks stop at the data's top)."""
    return (LEGEND_STEP * entries + 16) / height


HISTOGRAM_SIZE = (500, 320)  # the confidence histogram's and the reliability diagram's width and height
ROC_SIZE = (420, 360)


def confidence_histogram(edges: Sequence[float], series: Sequence[tuple[str, Sequence[int], str]]) -> bytes:
    """Counts per confidence bin, one outlined bar series per group (e.g. correct vs misclassified)."""
    top = max(1, max((c for _, counts, _ in series for c in counts), default=0)) * 1.05
    band = legend_band(len(series)) if len(series) > 1 else 0.0
    p = Plot((64, 30, 420, 242), (edges[0], edges[-1]), (0, top / (1 - band)))
    lefts, widths = list(edges[:-1]), [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    for label, counts, colour in series:
        p.bars(lefts, widths, counts, colour, f"{label} ({sum(counts)})", 0.45)
    c = Chart(*HISTOGRAM_SIZE)
    c.axes(
        p,
        "Confidence",
        "confidence (probability of the predicted class)",
        "images",
        yticks=ticks(0, top, integer=True),
    )
    if len(series) > 1:
        c.legend(p)
    return c.svg([p])


def reliability_diagram(bins: Sequence[tuple[float, float, int, float | None, float | None]], ece: float) -> bytes:
    """Accuracy per confidence bin (bars) against perfect calibration (diagonal); bins are (lo, hi, n, conf, acc)."""
    lo, hi = bins[0][0], bins[-1][1]
    full = [b for b in bins if b[2]]
    p = Plot((64, 30, 420, 242), (lo, hi), (0, 1.02 / (1 - legend_band(3))))
    p.line([lo, hi], [lo, hi], GREY, "perfect calibration", width=1, dash=True)
    p.bars([b[0] for b in full], [b[1] - b[0] for b in full], [b[4] for b in full], BLUE, "accuracy", 0.6)
    p.dots([(b[0] + b[1]) / 2 for b in full], [b[3] for b in full], ORANGE, "mean confidence", r=4, diamond=True)
    c = Chart(*HISTOGRAM_SIZE)
    c.axes(p, f"Reliability (ECE {fmt_pct(ece)})", "confidence bin", "accuracy", yticks=ticks(0, 1))
    c.legend(p)
    return c.svg([p])


def colour_bar(stops: Sequence[tuple[float, tuple[int, int, int]]], width: int = 256, height: int = 14) -> bytes:
    """A horizontal colour bar as a small SVG gradient (no text: the pages print the numbers under it)."""
    body = "".join(f'<stop offset="{x:.4f}" stop-color="rgb({r},{g},{b})"/>' for x, (r, g, b) in stops)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><defs><linearGradient id="g">{body}</linearGradient></defs>'
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="url(#g)" stroke="#888"/>'
        f"</svg>\n"
    ).encode()


MEAN_MAP_PX = 112  # a mean map's side on the summary page, in CSS pixels


def mean_map(colours: Sequence[Sequence[tuple[int, int, int]]], side: int = MEAN_MAP_PX) -> bytes:
    """A grid of coloured cells (rows of RGB), one unit each in the SVG's own coordinates and ``side`` pixels
    across: a run of equal colours in a row is one rectangle (no text: the page's caption says what it shows)."""
    rows, cols = len(colours), len(colours[0]) if colours else 0
    rects = []
    for y, row in enumerate(colours):
        x = 0
        while x < cols:
            end = x + 1
            while end < cols and row[end] == row[x]:
                end += 1
            r, g, b = row[x]
            rects.append(f'<rect x="{x}" y="{y}" width="{end - x}" height="1" fill="#{r:02x}{g:02x}{b:02x}"/>')
            x = end
    height = round(side * rows / cols) if cols else side
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{side}" height="{height}" viewBox="0 0 {cols} {rows}" '
        f'shape-rendering="crispEdges">{"".join(rects)}</svg>\n'
    ).encode()


SANITY_PANELS = 610  # px: the two panels of the sanity figure and their margins; its legend stands to the right
SANITY_HEIGHT = 320
SANITY_NAME = 30  # a method's name in that legend is cut past this many characters


def sanity_size(methods: Sequence[str]) -> tuple[int, int]:
    """The sanity figure's width and height in CSS pixels: the page's ``<img>`` sizes itself from this."""
    return math.ceil(SANITY_PANELS + _legend_width(_short(m, SANITY_NAME) for m in methods) + 10), SANITY_HEIGHT


def sanity_curves(curves: Sequence[tuple[str, Sequence[str], Sequence[float], Sequence[float]]]) -> bytes:
    """Rank correlation and SSIM to the original maps per randomization step, one line per method; the legend
    beside the two panels, so that no line hides behind it however many methods there are."""
    steps = list(curves[0][1])
    below = 44 + _slant(steps)
    plots = [
        Plot((64 + i * 275, 30, 255, SANITY_HEIGHT - 30 - below - FONT), (-0.3, len(steps) - 0.7), (-0.6, 1.05))
        for i in range(2)
    ]
    c = Chart(*sanity_size([curve[0] for curve in curves]))
    for i, (p, which, title) in enumerate(((plots[0], 2, "Spearman rank correlation"), (plots[1], 3, "SSIM"))):
        p.hline(0, "#999")
        for k, curve in enumerate(curves):
            p.line(range(len(curve[1])), curve[which], CYCLE[k % len(CYCLE)], curve[0], dots=2.5)
        ylabel = "similarity to the original maps" if i == 0 else None
        c.axes(p, title, "randomized from the top", ylabel, xnames=steps, ytick_labels=i == 0)
    c.entries([(s, _short(label, SANITY_NAME)) for s, label in plots[1].legend], SANITY_PANELS, plots[1].top)
    return c.svg(plots)


def roc_curve(
    fpr: Sequence[float], tpr: Sequence[float], point: tuple[float, float], threshold: float, auc: float, positive: str
) -> bytes:
    """The ROC curve of the positive class's probability, with the operating point of the threshold marked."""
    p = Plot((64, 30, 342, 282), (-0.01, 1.01), (-0.01, 1.02))
    p.line([0, 1], [0, 1], GREY, "chance", width=1, dash=True)
    p.line(fpr, tpr, BLUE, f"ROC (AUC {auc:.3f})")
    p.dots([point[0]], [point[1]], ORANGE, f"threshold {threshold:g}", r=4)
    c = Chart(*ROC_SIZE)
    name = _short(positive, 24)  # the page and the alt text name it in full
    c.axes(p, f"ROC, positive class {name}", "false positive rate", f"true positive rate ({_short(name, 16)})")
    c.legend(p)
    return c.svg([p])
