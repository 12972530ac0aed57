"""The summary's figures (report/figures.py): SVG written from the numbers, checked against those numbers.

Each figure is parsed as XML and read back through its own axes: the tick marks and their labels give the
mapping from pixels to data, and through it the bars, lines and markers must give back the numbers drawn
(to a tenth of a pixel). Names are user data and must come back as text, never as markup.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from xaibatch.manifest import ImageRow
from xaibatch.report import figures
from xaibatch.report.metrics import decision_summary

NS = "{http://www.w3.org/2000/svg}"
HOSTILE = "<b onload=x>&amp;\"q' 日本"
PX = 0.15  # pixels: rounding to a tenth, of the point drawn and of the tick marks the axes are read from


def parse(svg: bytes) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


class Axis:
    """One axis of a plot, fitted to its labelled tick marks: pixels <-> data (numbers or numpy arrays)."""

    def __init__(self, root: ET.Element, which: str, panel: int = 0, named: int = 0) -> None:
        """``named``: the axis's ticks are that many names, the values 0, 1, ... (a panel after another)."""
        label_at: dict[tuple[float, float], float] = {}
        for t in root.iter(f"{NS}text"):
            try:
                label_at[(float(t.get("x")), float(t.get("y")))] = float(t.text or "")
            except ValueError:
                pass
        marks: list[tuple[float, float]] = []  # (pixel, value)
        for p in root.iter(f"{NS}path"):
            m = re.fullmatch(r"M([-\d.]+) ([-\d.]+)(v4|h-4)", p.get("d", ""))
            if not m or (m[3] == "v4") != (which == "x"):
                continue
            x, y = float(m[1]), float(m[2])
            if named:
                marks.append((x, len(marks) % named))
                continue
            for (tx, ty), v in label_at.items():
                if which == "x" and abs(tx - x) < 0.06 and ty > y:
                    marks.append((x, v))
                if which == "y" and abs(ty - (y + figures.FONT * 0.35)) < 0.06 and tx < x:
                    marks.append((y, v))
        panels: list[list[tuple[float, float]]] = []  # one run of increasing values per plot
        for px, v in marks:
            if not panels or v <= panels[-1][-1][1]:
                panels.append([])
            panels[-1].append((px, v))
        (self.p0, self.v0), (p1, v1) = panels[panel][0], panels[panel][-1]
        self.k = (p1 - self.p0) / (v1 - self.v0)  # pixels per unit

    def data(self, px):
        return self.v0 + (px - self.p0) / self.k

    def px(self, v):
        return self.p0 + (v - self.v0) * self.k


def polylines(root: ET.Element, colour: str) -> list[np.ndarray]:
    return [
        np.array([[float(c) for c in xy.split(",")] for xy in p.get("points", "").split()])
        for p in root.iter(f"{NS}polyline")
        if p.get("stroke") == colour
    ]


def distance_to_polyline(pts: np.ndarray, line: np.ndarray) -> np.ndarray:
    """For each point (n, 2), its distance in pixels to the polyline (m, 2)."""
    a, b = line[:-1][None], line[1:][None]  # (1, m-1, 2)
    d = b - a
    t = np.clip(((pts[:, None] - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(pts[:, None] - (a + t[..., None] * d), axis=-1).min(1)


def roc_numbers(n: int, separation: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    rows = {
        str(i): ImageRow(
            str(i), str(i), 1, 1, "x", 32, 32, int(y[i]), int(s[i] >= 0.5), 0, 0.0, [1 - s[i], s[i]], "h", 1
        )
        for i in range(n)
    }
    return decision_summary({"positive": "REAL", "threshold": 0.5}, ["FAKE", "REAL"], rows)


def test_ticks_are_round_evenly_spaced_and_inside_the_limits():
    for lo, hi in [(0, 1), (0.5, 1.0), (-0.6, 1.05), (0, 7), (0, 1234.5), (-0.01, 1.02), (0.333, 0.334)]:
        values, decimals = figures.ticks(lo, hi)
        assert 3 <= len(values) <= 7, (lo, hi, values)
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values)
        steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
        assert len(steps) == 1
        step = steps.pop()
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5)), step
        labels = [f"{v:.{decimals}f}" for v in values]
        assert len(set(labels)) == len(labels) and all(float(s) == pytest.approx(v) for s, v in zip(labels, values))
    assert figures.ticks(0, 3.15, integer=True)[0] == [0, 1, 2, 3]  # counts: whole steps
    assert figures.ticks(1, 1) == ([1], 0)


def test_the_roc_line_is_the_curve_and_stays_small_over_100000_images():
    for n, separation in ((300, 1.0), (100_000, 0.5)):
        d = roc_numbers(n, separation)
        svg = figures.roc_curve(d["roc_fpr"], d["roc_tpr"], d["point"], 0.5, d["auc"], "REAL")
        root = parse(svg)
        x, y = Axis(root, "x"), Axis(root, "y")
        (line,) = polylines(root, figures.BLUE)
        curve = np.stack([x.px(np.array(d["roc_fpr"])), y.px(np.array(d["roc_tpr"]))], axis=1)
        # every drawn corner is a point of the curve (to the tenth of a pixel it is rounded to) ...
        for corner in line:  # the curve's x never decreases
            lo, hi = np.searchsorted(curve[:, 0], [corner[0] - PX, corner[0] + PX], side="left")
            assert hi > lo and np.abs(curve[lo:hi] - corner).max(1).min() <= PX, corner
        # ... and the points of the curve (2,000 of them, evenly) lie on the line drawn
        sample = curve[:: max(1, len(curve) // 2000)]
        for chunk in np.array_split(sample, max(1, len(sample) // 200)):
            assert distance_to_polyline(chunk, line).max() <= PX
        assert f"ROC (AUC {d['auc']:.3f})" in texts(root)
        assert len(line) < 0.05 * len(curve) or n < 1000
    assert len(svg) < 60_000  # 100,001 points, a few thousand corners at a tenth of a pixel


def test_histogram_bars_give_back_the_counts():
    edges = [0.5 + 0.05 * i for i in range(11)]
    counts = [[0, 1, 2, 3, 5, 8, 13, 21, 34, 55], [9, 0, 7, 0, 5, 0, 3, 0, 1, 0]]
    svg = figures.confidence_histogram(
        edges, [("correct", counts[0], "#0072B2"), (f"mis {HOSTILE}", counts[1], "#D55E00")]
    )
    root = parse(svg)
    fx, fy = Axis(root, "x").data, Axis(root, "y").data
    bars = [r for r in root.iter(f"{NS}rect") if r.get("fill-opacity") and float(r.get("height")) > 0]
    for colour, want in zip(("#0072B2", "#D55E00"), counts, strict=True):
        drawn = {}
        for r in (b for b in bars if b.get("fill") == colour and float(b.get("x")) > 0):
            x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
            if w > 30:  # a legend swatch is 12 wide
                drawn[round(fx(x), 3)] = (fy(y), fy(y + h), fx(x + w) - fx(x))
        expect = {round(e, 3): c for e, c in zip(edges, want, strict=False) if c}
        assert sorted(drawn) == sorted(expect)
        for x0, (top, base, width) in drawn.items():
            assert top == pytest.approx(expect[x0], abs=0.1) and base == pytest.approx(0, abs=0.1)
            assert width == pytest.approx(0.05, abs=0.002)
    assert f"correct ({sum(counts[0])})" in texts(root) and f"mis {HOSTILE} ({sum(counts[1])})" in texts(root)


def test_reliability_bars_and_markers_give_back_accuracy_and_confidence():
    bins = [(0.5, 0.6, 4, 0.55, 0.5), (0.6, 0.7, 0, None, None), (0.7, 0.8, 9, 0.74, 0.777), (0.9, 1.0, 50, 0.98, 0.96)]
    root = parse(figures.reliability_diagram(bins, 0.0312))
    fx, fy = Axis(root, "x").data, Axis(root, "y").data
    bars = [r for r in root.iter(f"{NS}rect") if r.get("fill") == figures.BLUE and float(r.get("width")) > 30]
    got = sorted((round(fx(float(r.get("x"))), 3), round(fy(float(r.get("y"))), 2)) for r in bars)
    assert got == [(0.5, 0.5), (0.7, 0.78), (0.9, 0.96)]
    diamonds = [p.get("d") for p in root.iter(f"{NS}path") if p.get("fill") == figures.ORANGE]
    tips = sorted((float(m[1]), float(m[2])) for m in (re.match(r"M([-\d.]+) ([-\d.]+)", d) for d in diamonds))
    centres = [(round(fx(x), 3), round(fy(y + 4), 2)) for x, y in tips if fx(x) > 0.45]  # the legend's is at 0
    assert sorted(centres) == [(0.55, 0.55), (0.75, 0.74), (0.95, 0.98)]
    assert "Reliability (ECE 3.1%)" in texts(root)


def test_sanity_curves_draw_each_method_in_both_panels_and_break_at_missing_values():
    steps = ["original", "fc", "+layer4", "+layer3.a.very.long.stage.name"]
    curves = [
        ("Grad-CAM", steps, [1.0, 0.5, float("nan"), -0.2], [1.0, 0.6, 0.3, 0.1]),
        (HOSTILE, steps, [1.0, 0.9, 0.8, 0.7], [1.0, 0.95, 0.9, 0.85]),
    ]
    root = parse(figures.sanity_curves(curves))
    xs, y = (
        [Axis(root, "x", p, named=len(steps)) for p in (0, 1)],
        Axis(root, "y"),
    )  # the panels share y (labels on the left)
    for k, (_name, _steps, rank, ssim) in enumerate(curves):
        drawn: list[list[list[tuple[float, float]]]] = [[], []]
        for ln in polylines(root, figures.CYCLE[k]):
            panel = int(xs[1].data(ln[0][0]) > -0.5)  # from the second panel's left edge on: the second
            drawn[panel].append([(float(xs[panel].data(a)), float(y.data(b))) for a, b in ln])
        for panel, values in enumerate((rank, ssim)):
            runs, run = [], []
            for i, v in enumerate(values):
                if math.isfinite(v):
                    run.append((i, v))
                elif run:
                    runs, run = runs + [run], []
            runs.append(run)
            assert len(drawn[panel]) == len(runs)  # a missing value breaks the line
            for got, want in zip(drawn[panel], runs, strict=True):
                assert np.allclose(got, want, atol=0.005), (panel, got, want)
    assert HOSTILE in texts(root) and steps[3][:13] + "…" in texts(root)


def test_names_are_text_never_markup():
    d = roc_numbers(50, 1.0)
    for svg in (
        figures.roc_curve(d["roc_fpr"], d["roc_tpr"], d["point"], 0.5, d["auc"], HOSTILE),
        figures.confidence_histogram([0, 0.5, 1], [(HOSTILE, [1, 2], "#0072B2"), ("x", [0, 1], "#D55E00")]),
        figures.sanity_curves([(HOSTILE, [HOSTILE, "fc"], [1, 0.5], [1, 0.4])]),
    ):
        root = parse(svg)  # well-formed: nothing the names hold opened an element
        assert not [
            e
            for e in root.iter()
            if e.tag.removeprefix(NS) not in {"svg", "rect", "text", "path", "polyline", "line", "circle", "g"}
        ]
        assert any(HOSTILE in t for t in texts(root))


def test_equal_numbers_give_equal_bytes():
    d = roc_numbers(500, 1.0)
    a = figures.roc_curve(d["roc_fpr"], d["roc_tpr"], d["point"], 0.5, d["auc"], "REAL")
    b = figures.roc_curve(list(d["roc_fpr"]), list(d["roc_tpr"]), d["point"], 0.5, d["auc"], "REAL")
    assert a == b and b"-0," not in a and b" -0 " not in a


def test_long_names_are_shortened_to_stay_inside_the_figure():
    """A 300-character class or method name (user data) is cut with an ellipsis where the figure shows it; the
    page's tables and the alt text carry it whole."""
    long = "a-very-long-class-name-" * 13
    d = roc_numbers(50, 1.0)
    for svg in (
        figures.roc_curve(d["roc_fpr"], d["roc_tpr"], d["point"], 0.5, d["auc"], long),
        figures.sanity_curves([(long, ["original", long], [1, 0.5], [1, 0.4])]),
    ):
        root = parse(svg)
        width = float(root.get("width"))
        for t in root.iter(f"{NS}text"):
            if t.get("transform"):
                continue  # turned text: the axis label (cut to 16 characters) and the slanted step names
            x, n = float(t.get("x")), len(t.text or "") * figures.CHAR * float(t.get("font-size")) / figures.FONT
            lo = {"start": x, "middle": x - n / 2, "end": x - n}[t.get("text-anchor")]
            assert 0 <= lo and lo + n <= width, t.text
        assert any("…" in (t.text or "") for t in root.iter(f"{NS}text"))


def test_the_sanity_legend_stands_beside_the_panels_however_many_methods():
    """Inside the SSIM panel the legend hid lines (with three methods, Grad-CAM's); it now stands to the right of
    both panels, every name in it (cut past 30 characters), and the figure is as wide as ``sanity_size`` says,
    the size the summary page gives its <img>."""
    steps = ["original", "head", "+s2", "+stem"]
    names = [f"method-{k}" for k in range(10)] + ["captum:IntegratedGradients.with.a.long.suffix"]
    rng = np.random.default_rng(0)
    curves = [(n, steps, [1.0, *rng.uniform(-0.5, 1, 3)], [1.0, *rng.uniform(-0.5, 1, 3)]) for n in names]
    root = parse(figures.sanity_curves(curves))
    assert (int(root.get("width")), int(root.get("height"))) == figures.sanity_size(names)
    frames = [p.get("d") for p in root.iter(f"{NS}path") if re.fullmatch(r"M[\d.]+ [\d.]+V[\d.]+H[\d.]+", p.get("d"))]
    assert len(frames) == 2  # the two panels' axes
    right = max(float(d.rsplit("H", 1)[1]) for d in frames)
    legend = [t for t in root.iter(f"{NS}text") if t.get("text-anchor") == "start"]
    assert [t.text for t in legend] == names[:10] + ["captum:IntegratedGradients.wi…"]
    assert all(float(t.get("x")) > right for t in legend)
    for t in legend:
        end = float(t.get("x")) + len(t.text) * figures.CHAR
        assert end <= int(root.get("width"))
    for colour in figures.CYCLE:  # and no line reaches the legend's column
        for ln in polylines(root, colour):
            assert ln[:, 0].max() <= right


def legend_box(root: ET.Element) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a figure's legend: its swatches and its left-anchored labels."""
    xs, ys = [], []
    for g in root.iter(f"{NS}g"):
        m = re.fullmatch(r"translate\(([-\d.]+) ([-\d.]+)\)", g.get("transform", ""))
        if m:
            xs.append(float(m[1]) - 6)
            ys += [float(m[2]) - 6, float(m[2]) + 6]
    for t in root.iter(f"{NS}text"):
        if t.get("text-anchor") == "start":
            x, y = float(t.get("x")), float(t.get("y"))
            xs += [x, x + len(t.text or "") * figures.CHAR]
            ys += [y - figures.FONT, y]
    return min(xs), min(ys), max(xs), max(ys)


@pytest.mark.parametrize(
    "accuracy",
    [
        [0.5, 0.5, 1.0, 0.67, 1.0, None, 0.75, None, 0.4, 0.97],  # the audit's: a legend over the bars of 0.5-0.7
        [1.0] * 10,  # every bar full height
        [0.0, 0.1, 1.0, 1.0, 0.2, 1.0, 1.0, 0.3, 1.0, 1.0],
    ],
)
def test_the_reliability_legend_covers_no_bar(accuracy):
    """The legend's corner was chosen by the bars' tops alone: it landed on the bodies of the bars below them.
    Bars are now whole boxes to avoid, and the axis runs past 1 so that a band above them always has room."""
    bins = [
        (0.5 + 0.05 * i, 0.55 + 0.05 * i, 0 if a is None else 10, 0.52 + 0.05 * i, a) for i, a in enumerate(accuracy)
    ]
    root = parse(figures.reliability_diagram(bins, 0.05))
    left, top, right, bottom = legend_box(root)
    bars = [r for r in root.iter(f"{NS}rect") if r.get("fill") == figures.BLUE and float(r.get("width")) > 12]
    assert len(bars) == sum(a is not None and a > 0 for a in accuracy)
    for r in bars:
        x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
        assert x + w <= left or x >= right or y >= bottom or y + h <= top, (r.attrib, (left, top, right, bottom))
    fy = Axis(root, "y").data
    assert fy(bottom) > 1.0  # above every bar and the diagonal's end
    ys = [float(t.text) for t in root.iter(f"{NS}text") if t.get("text-anchor") == "end"]
    assert ys[0] == 0 and ys[-1] == 1  # the y axis is labelled up to 1 only


def test_the_histogram_legend_avoids_the_bars_bodies():
    """Two tall bars at the ends and one in the middle leave the lower corners under bars: the legend goes where
    no bar is."""
    edges = [0.5 + 0.05 * i for i in range(11)]
    counts = [[90, 0, 0, 0, 0, 0, 0, 0, 0, 95], [0, 0, 0, 0, 0, 0, 0, 0, 0, 3]]
    root = parse(
        figures.confidence_histogram(
            edges, [("correct", counts[0], figures.BLUE), ("wrong", counts[1], figures.ORANGE)]
        )
    )
    left, top, right, bottom = legend_box(root)
    for r in root.iter(f"{NS}rect"):
        if r.get("fill-opacity") and float(r.get("width")) > 12:
            x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
            assert x + w <= left or x >= right or y >= bottom or y + h <= top, r.attrib
