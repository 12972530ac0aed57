"""What only a detail page needs: each map's colour-bar numbers and the ground truth with the pointing game."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any


from ..errors import UsageError
from ..files import safe_join
from ..layout import display_size
from .cards import mask_rel
from .model import Card, MARKER_COLOURS, MAX_ARRAY_BYTES, MapView, Point, TRUTH_MAX_SIDE, Truth
from .text import fmt_num, fmt_pct


def load_array(root: Path, rel: str) -> Any:
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


def _scale(v: MapView, m: Any, c: Card) -> None:
    """The numbers under the method's colour bar, as the overlay drew this image (see overlay.display_scale)."""
    from ..overlay import display_map, display_scale

    s = display_scale(display_map(m, display_size(c.width, c.height), v.m.signed), v.m.signed)
    v.ticks, v.scale_note = colour_ticks(s, v.m.signed, c.target)


def colour_ticks(s: float, signed: bool, target: str) -> tuple[list[str], str]:
    """The numbers under a colour bar drawn at full colour for ``s`` and what they mean (also ``xaibatch serve``)."""
    if signed:
        return [f"−{fmt_num(s)}", "0", f"+{fmt_num(s)}"], (
            f"Full red: +{fmt_num(s)}, hiding that superpixel lowers the probability of "
            f"{target} by about {fmt_num(s)}; full blue: −{fmt_num(s)}, hiding it raises it.")
    return ["0", fmt_num(s / 2), f"≥ {fmt_num(s)}"], (
        f"Full colour: values of {fmt_num(s)} (this image's 99th percentile) and above.")


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

    from ..localization import hit, peak

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
    return Truth(mask_rel(c.rel).rsplit("/", 1)[-1], gw, gh, _region_path(mask[ys, xs]), fmt_pct(float(mask.mean())),
                 radius=radius, font=font, points=points)


def detail_data(out_dir: Path, input_dir: Path | None, c: Card) -> None:
    """Fill in what only the detail page shows, from the map files: the colour bars' numbers and, where the
    demo's ground-truth mask lies beside the input image, the pointing game per method.

    Called only for pages that are (re)rendered; everything read here is covered by
    the card's fingerprint (map rows, the image's hash, the mask's size and mtime).
    """
    arrays = {}
    for v in c.maps:
        m = load_array(out_dir, v.npy_rel)
        v.ticks, v.scale_note = [], ""
        if m is not None and m.size:
            arrays[v.method] = m
            _scale(v, m, c)
    c.truth = None
    if c.mask_key and input_dir is not None:
        mask = load_array(input_dir, mask_rel(c.rel))
        if mask is not None and mask.size:
            c.truth = _truth(mask.astype(bool), c, arrays)
