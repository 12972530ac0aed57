"""Turn maps into the pictures the report shows: colour overlays and thumbnails."""

from __future__ import annotations

import io
import zlib

import numpy as np
from matplotlib import colormaps
from PIL import Image

THUMB_SIDE = 128
# zlib's run-length strategy on PNG-filtered rows: 25-35% faster than the default strategy at 64-512 px and
# 5-10% smaller files on photos and overlays (measured in docs/benchmarks.md); lossless all the same.
PNG_COMPRESS_LEVEL = 3
PNG_STRATEGY = zlib.Z_RLE


def _colour_table(name: str) -> np.ndarray:
    """The colormap as N + 1 packed RGBX uint32 words: its N colours, then its colour for NaN.

    Built once from matplotlib, so :func:`colorize` is one 1-d gather per map
    instead of a matplotlib call, with exactly the colours matplotlib gives.
    """
    cmap = colormaps[name]
    rgba = np.vstack([cmap(np.arange(cmap.N)), np.asarray(cmap.get_bad(), dtype=np.float64)[None]])
    packed = np.zeros((len(rgba), 4), dtype=np.uint8)
    packed[:, :3] = (rgba[:, :3] * 255).astype(np.uint8)
    return packed.view(np.uint32)[:, 0]


_HEAT = _colour_table("inferno")
_SIGNED = _colour_table("RdBu_r")  # red = evidence for the explained class, blue = against


def _lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of values in [0, 1] (or NaN), as matplotlib's ``Colormap.__call__`` picks them."""
    n = len(table) - 1
    xa = x * n  # in x's float dtype, as matplotlib multiplies
    with np.errstate(invalid="ignore"):
        idx = xa.astype(np.intp)
    np.minimum(idx, n - 1, out=idx)  # x == 1 is the last colour
    nan = np.isnan(xa)
    if nan.any():
        idx[nan] = n
    return table.take(idx).view(np.uint8).reshape(*x.shape, 4)[..., :3]


def colorize(m: np.ndarray, signed: bool) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 colours; signed maps are scaled symmetrically around 0."""
    if signed:
        lim = float(np.abs(m).max()) or 1.0
        return _lookup(_SIGNED, 0.5 + 0.5 * np.clip(m / lim, -1, 1))
    return _lookup(_HEAT, np.clip(m, 0, 1))


DISPLAY_PERCENTILE = 99.0


def stretch(m: np.ndarray) -> np.ndarray:
    """Scale an unsigned map so its 99th percentile is full brightness (display only; the .npy is untouched).

    Guided Grad-CAM is sparse: a few pixels carry the maximum and most of the
    evidence sits far below it, invisible on a max-scaled colour ramp. Smooth
    Grad-CAM maps barely change (their 99th percentile is close to their max).
    """
    flat = m.ravel()
    k = min(flat.size - 1, int(flat.size * DISPLAY_PERCENTILE / 100))
    top = float(np.partition(flat, k)[k])
    return np.clip(m / top, 0, 1) if top > 1e-6 else m


def display_map(m: np.ndarray, size: tuple[int, int], signed: bool) -> np.ndarray:
    """The map resized to the display copy's ``(width, height)``, as the overlay draws it."""
    w, h = size
    if m.shape == (h, w):
        return m
    resample = Image.NEAREST if signed else Image.BILINEAR
    return np.asarray(Image.fromarray(m.astype(np.float32), "F").resize((w, h), resample))


def display_scale(m: np.ndarray, signed: bool) -> float:
    """The map value drawn at full colour: max |m| for signed maps, the 99th percentile (see :func:`stretch`)
    for unsigned ones. The report prints it beside each map's colour bar."""
    if signed:
        return float(np.abs(m).max()) or 1.0
    flat = m.ravel()
    k = min(flat.size - 1, int(flat.size * DISPLAY_PERCENTILE / 100))
    top = float(np.partition(flat, k)[k])
    return top if top > 1e-6 else 1.0


def overlay(display: np.ndarray, m: np.ndarray, signed: bool, alpha: float = 0.5) -> Image.Image:
    """Blend a map (any size, resized here) over the display image.

    Signed maps: the colour's opacity grows with |m|, so where the map is 0 the
    overlay is fully transparent. Unsigned maps: opacity 0.3 at 0 to 0.8 at full scale.
    """
    h, w = display.shape[:2]
    m = display_map(m, (w, h), signed)
    if not signed:
        m = stretch(m)
    colours = colorize(m, signed).astype(np.float32)
    if signed:  # let the image show through where the evidence is weak
        lim = display_scale(m, signed=True)
        a = (alpha + 0.2) * np.clip(np.abs(m) / lim, 0, 1)[..., None]
    else:  # the photo shows through where the map is low, the colour where it is high
        a = (0.3 + 0.5 * m)[..., None]
    out = (1 - a) * display.astype(np.float32) + a * colours
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def colour_stops(signed: bool, n: int = 33) -> list[tuple[float, tuple[int, int, int]]]:
    """``n`` (offset 0..1, RGB) stops of the colour ramp the overlays use, for a colour bar."""
    xs = np.linspace(0, 1, n, dtype=np.float32)
    cols = _lookup(_SIGNED if signed else _HEAT, xs)
    return [(float(x), (int(c[0]), int(c[1]), int(c[2]))) for x, c in zip(xs, cols, strict=True)]


def png_bytes(image: Image.Image) -> bytes:
    """Encode a picture as PNG (what the writer saves: overlays, thumbnails, the display copies)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY)
    return buf.getvalue()


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    """At most ``side`` pixels on the longest side; small images stay as they are (the page scales them)."""
    w, h = image.size
    if max(w, h) <= side:
        return image
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
