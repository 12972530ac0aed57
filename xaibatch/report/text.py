"""How numbers, times and names are written on the pages."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Any


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    # a no-break space ties each number to its unit: a narrow column breaks "1 min | 54 s", never "1 | min"
    if s < 60:
        return f"{s:.1f}\u00a0s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}\u00a0min {sec}\u00a0s"
    h, m = divmod(m, 60)
    return f"{h}\u00a0h {m}\u00a0min"


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if v is None:
        return "–"
    return str(v)


def fmt_pct(v: float) -> str:
    """A share or probability, one decimal; never rounded onto 100 % or 0 % when it is not (an accuracy of 2,999 of
    3,000 images read "100.0%", a class probability of 0.0004 "0.0%"): ">99.9%" and "<0.1%" then."""
    text = f"{100 * v:.1f}%"
    if text == "100.0%" and v < 1:
        text = ">99.9%"
    elif text == "0.0%" and v > 0:
        text = "<0.1%"
    return sys.intern(text)  # few distinct texts (1,003 from 0 to 1), and a card holds three


def fmt_score(v: float) -> str:
    """A score of [0, 1] (precision, recall, F1, an AUC), three decimals; as :func:`fmt_pct`, never rounded onto 1 or
    0 when it is not (an AUC of 0.9996 read "1.000", a perfect ranking): ">0.999" and "<0.001" then."""
    text = f"{v:.3f}"
    if text == "1.000" and v < 1:
        return ">0.999"
    if text == "0.000" and v > 0:
        return "<0.001"
    return text


def luminance(rgb: tuple[int, ...]) -> float:
    """WCAG relative luminance of an sRGB colour."""
    lin = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_on(rgb: tuple[int, ...]) -> str:
    """White or black text, whichever contrasts more with the background (never below 4.58:1)."""
    lum = luminance(rgb)
    return "#fff" if 1.05 / (lum + 0.05) >= (lum + 0.05) / 0.05 else "#000"


# The overlays' two colour ramps (overlay.colorize, colourmaps.py) at 9 stops, as CSS, for the legends;
# tests/test_report.py checks them against the tables.
CSS_GRADIENTS = {
    False: "linear-gradient(to right, rgb(0,0,3), rgb(32,12,74), rgb(87,15,109), rgb(137,34,105), rgb(187,55,84), "
    "rgb(228,90,49), rgb(249,142,8), rgb(248,203,52), rgb(252,254,164))",
    True: "linear-gradient(to right, rgb(5,48,97), rgb(41,113,177), rgb(107,172,208), rgb(194,221,235), "
    "rgb(247,246,246), rgb(250,204,180), rgb(228,128,101), rgb(185,39,50), rgb(103,0,31))",
}


def css_gradient(signed: bool, computed: bool = False) -> str:
    """The colour ramp of signed or unsigned maps as a CSS gradient (``computed``: from overlay.colorize)."""
    if not computed:
        return CSS_GRADIENTS[signed]
    import numpy as np

    from ..overlay import colorize

    xs = np.linspace(-1, 1, 9) if signed else np.linspace(0, 1, 9)
    cols = colorize(xs[None, :].astype(np.float32), signed)[0]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in cols.tolist()) + ")"


def class_name(names: list[str], i: int | None) -> str | None:
    if i is None:
        return None
    return names[i] if 0 <= i < len(names) else f"class {i}"


def fmt_num(v: float) -> str:
    return f"{v:.3g}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


_LIBRARY = re.compile(r"^(.+?) \((?:captum|pytorch-grad-cam)\)$")  # library methods' titles: "Saliency (captum)"
# where a long name may break: after ':', '.' or '_', and between camel-case humps ("Integrated|Gradients")
_BREAKS = re.compile(r"(?<=[:._])(?=.)|(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# a short hyphenated word ("Grad-CAM", "Eigen-CAM": at most 9 characters, what a phone's card column holds) keeps
# its hyphen unbroken; "Grad-CAM++" may break after its hyphen (else a phone broke it as "Grad-CAM+" over "+")
_SHORT_HYPHENATED = re.compile(r"(?<![\w+-])[\w+][\w+-]{1,7}[\w+](?![\w+-])")
NON_BREAKING_HYPHEN = "\u2011"


def break_points(text: str) -> tuple[str, ...]:
    """``text`` cut where a narrow column may break it; the template joins the parts with ``<wbr>``. A short
    hyphenated word gets non-breaking hyphens: a card read "Guided Grad-" over "CAM"."""
    text = _SHORT_HYPHENATED.sub(lambda m: m.group(0).replace("-", NON_BREAKING_HYPHEN), text)
    return tuple(p for p in _BREAKS.split(text) if p)


def card_captions(titles: list[str]) -> list[tuple[str, ...]]:
    """The gallery cards' captions of these method titles, as break_points: a library method's title without
    its library ("IntegratedGradients (captum)" -> "IntegratedGradients"), unless another method of the report
    then reads the same (Grad-CAM beside "Grad-CAM (pytorch-grad-cam)")."""
    short = [m.group(1) if (m := _LIBRARY.match(t)) else t for t in titles]
    return [break_points(s if short.count(s) == 1 else t) for s, t in zip(short, titles)]
