"""Turn maps into the pictures the report shows: colour overlays and thumbnails."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

THUMB_SIDE = 128

_HEAT = colormaps["inferno"]
_SIGNED = colormaps["RdBu_r"]  # red = evidence for the explained class, blue = against


def colorize(m: np.ndarray, signed: bool) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 colours; signed maps are scaled symmetrically around 0."""
    if signed:
        lim = float(np.abs(m).max()) or 1.0
        rgba = _SIGNED(0.5 + 0.5 * np.clip(m / lim, -1, 1))
    else:
        rgba = _HEAT(np.clip(m, 0, 1))
    return (rgba[..., :3] * 255).astype(np.uint8)


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


def overlay(display: np.ndarray, m: np.ndarray, signed: bool, alpha: float = 0.5) -> Image.Image:
    """Blend a map (any size, resized here) over the display image."""
    h, w = display.shape[:2]
    if m.shape != (h, w):
        resample = Image.NEAREST if signed else Image.BILINEAR
        m = np.asarray(Image.fromarray(m.astype(np.float32), "F").resize((w, h), resample))
    if not signed:
        m = stretch(m)
    colours = colorize(m, signed).astype(np.float32)
    if signed:  # let the image show through where the evidence is weak
        lim = float(np.abs(m).max()) or 1.0
        a = (alpha + 0.2) * np.clip(np.abs(m) / lim, 0, 1)[..., None]
    else:  # the photo shows through where the map is low, the colour where it is high
        a = (0.3 + 0.5 * m)[..., None]
    out = (1 - a) * display.astype(np.float32) + a * colours
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    """At most ``side`` pixels on the longest side; small images stay as they are (the page scales them)."""
    w, h = image.size
    if max(w, h) <= side:
        return image
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
