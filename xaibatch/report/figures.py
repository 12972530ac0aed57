"""The report's figures, drawn with matplotlib and returned as SVG bytes.

Figures are built on a bare :class:`matplotlib.figure.Figure` with an Agg
canvas: pyplot is never imported, so no window ever opens and the process-wide
backend of a caller (a notebook, say) is left alone. The numbers come from
:mod:`xaibatch.report`; this module only draws them. SVG text stays text
(small files) and ids are salted, so equal numbers give equal bytes.
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VERSION = 1  # bump when a figure's look changes, so cached files are redrawn

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "xaibatch",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """matplotlib's settings for one figure. matplotlib is imported here, when a figure is drawn, never at
    import: its first import on a machine builds a font cache (about 15 s), which a report whose figures are
    unchanged must not pay (tests/test_report_reuse.py)."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def _new(width: float = 5.0, height: float = 3.2) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "xaibatch"})
    return buf.getvalue()


def confidence_histogram(edges: Sequence[float], series: Sequence[tuple[str, Sequence[int], str]]) -> bytes:
    """Counts per confidence bin, one outlined bar series per group (e.g. correct vs misclassified)."""
    with _style():
        fig = _new()
        ax = fig.add_subplot()
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        for label, counts, colour in series:
            ax.bar(
                edges[:-1],
                counts,
                width=widths,
                align="edge",
                label=f"{label} ({sum(counts)})",
                color=colour,
                alpha=0.45,
                edgecolor=colour,
                linewidth=1.0,
            )
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("confidence (probability of the predicted class)")
        ax.set_ylabel("images")
        ax.set_title("Confidence")
        if len(series) > 1:
            ax.legend(frameon=False)
        return _svg(fig)


def reliability_diagram(bins: Sequence[tuple[float, float, int, float | None, float | None]], ece: float) -> bytes:
    """Accuracy per confidence bin (bars) against perfect calibration (diagonal); bins are (lo, hi, n, conf, acc)."""
    with _style():
        fig = _new()
        ax = fig.add_subplot()
        lo, hi = bins[0][0], bins[-1][1]
        ax.plot([lo, hi], [lo, hi], color="#555", linestyle="--", linewidth=1, label="perfect calibration")
        xs = [b[0] for b in bins if b[2]]
        ws = [b[1] - b[0] for b in bins if b[2]]
        acc = [b[4] for b in bins if b[2]]
        conf = [b[3] for b in bins if b[2]]
        ax.bar(xs, acc, width=ws, align="edge", color="#0072B2", alpha=0.6, edgecolor="#0072B2", label="accuracy")
        ax.scatter(
            [x + w / 2 for x, w in zip(xs, ws, strict=True)],
            conf,
            color="#D55E00",
            marker="D",
            s=14,
            zorder=3,
            label="mean confidence",
        )
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence bin")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Reliability (ECE {100 * ece:.1f}%)")
        ax.legend(frameon=False, loc="upper left")
        return _svg(fig)


def colour_bar(stops: Sequence[tuple[float, tuple[int, int, int]]], width: int = 256, height: int = 14) -> bytes:
    """A horizontal colour bar as a small SVG gradient (no text: the pages print the numbers under it)."""
    body = "".join(f'<stop offset="{x:.4f}" stop-color="rgb({r},{g},{b})"/>' for x, (r, g, b) in stops)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><defs><linearGradient id="g">{body}</linearGradient></defs>'
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="url(#g)" stroke="#888"/>'
        f"</svg>\n"
    ).encode()


def sanity_curves(curves: Sequence[tuple[str, Sequence[str], Sequence[float], Sequence[float]]]) -> bytes:
    """Rank correlation and SSIM to the original maps per randomization step, one line per method."""
    with _style():
        fig = _new(7.0, 3.2)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, which, title in ((axes[0], 2, "Spearman rank correlation"), (axes[1], 3, "SSIM")):
            for c in curves:
                ax.plot(range(len(c[1])), c[which], marker="o", markersize=3, label=c[0])
            ax.axhline(0, color="#999", linewidth=0.8)
            steps = list(curves[0][1])
            ax.set_xticks(range(len(steps)), steps, rotation=45, ha="right")
            ax.set_title(title)
            ax.set_xlabel("randomized from the top")
        axes[0].set_ylabel("similarity to the original maps")
        axes[0].set_ylim(-0.6, 1.05)
        axes[1].legend(frameon=False)
        return _svg(fig)


def roc_curve(
    fpr: Sequence[float], tpr: Sequence[float], point: tuple[float, float], threshold: float, auc: float, positive: str
) -> bytes:
    """The ROC curve of the positive class's probability, with the operating point of the threshold marked."""
    with _style():
        fig = _new(4.2, 3.6)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#555", linestyle="--", linewidth=1, label="chance")
        ax.plot(fpr, tpr, color="#0072B2", linewidth=1.5, label=f"ROC (AUC {auc:.3f})")
        ax.scatter(
            [point[0]], [point[1]], color="#D55E00", marker="o", s=30, zorder=3, label=f"threshold {threshold:g}"
        )
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.02)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel(f"true positive rate ({positive})")
        ax.set_title(f"ROC, positive class {positive}")
        ax.legend(frameon=False, loc="lower right")
        return _svg(fig)
