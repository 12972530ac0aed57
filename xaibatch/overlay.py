"""Turn maps into the pictures the report shows: colour overlays and thumbnails."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from . import colourmaps
from .layout import THUMB_SIDE, display_size

# zlib's run-length strategy on PNG-filtered rows: 25-35% faster than the default strategy at 64-512 px and
# 5-10% smaller files on photos and overlays (measured with PIL's encoder); lossless all the same. With RLE (and with
# Huffman coding alone) zlib's level changes nothing: levels 1 to 6 within 1% in time and size at 224 px.
PNG_COMPRESS_LEVEL = 3
PNG_STRATEGY = zlib.Z_RLE
# A picture whose PNG rows take at most this many bytes (32x32 RGB: 3,104) is stored uncompressed: its file
# fits one 4 KiB file-system block either way, and zlib's set-up cost 8x the rest of the encode (issue #20).
PNG_STORE_MAX_BYTES = 4096
# A map's overlay and its thumbnail: Huffman coding alone. A colour blend has few runs for RLE to find, so at 224 px
# it is 22% faster for files 1% larger (512 px: 28%, 3.5%); a photo's display copy keeps RLE, which Huffman coding
# alone would make 7-23% larger (docs/bench-host224.md).
MAP_PNG_STRATEGY = zlib.Z_HUFFMAN_ONLY


@functools.cache
def _packed(signed: bool) -> np.ndarray:
    """The colour table of unsigned maps (inferno) or signed ones (RdBu_r: red = evidence for the explained
    class, blue = against): matplotlib's colours, written out (colourmaps.py) so that no run imports it."""
    return colourmaps.packed("RdBu_r" if signed else "inferno")


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
    """(H, W) map -> (H, W, 3) uint8 colours; signed maps are scaled symmetrically around 0. NaN and infinities
    are read as a run reads them (:func:`_finite`): one NaN pixel made a signed map's scale NaN, the whole map black."""
    m = np.nan_to_num(m)
    if signed:
        lim = display_scale(m, signed=True) or 1.0  # all zero: the ramp's middle everywhere
        return _lookup(_packed(True), 0.5 + 0.5 * np.clip(m / lim, -1, 1))
    return _lookup(_packed(False), np.clip(m, 0, 1))


DISPLAY_PERCENTILE = 99.0
STRETCH_MIN = 1e-6  # an unsigned map whose 99th percentile is at most this is drawn as it is, not stretched


def _percentile_rank(n: int) -> int:
    """The rank (0-based, ascending) of DISPLAY_PERCENTILE among ``n`` values: the one order statistic that
    :func:`display_scale`, :func:`stretch` and their batched forms use."""
    return min(n - 1, int(n * DISPLAY_PERCENTILE / 100))


def _top(m: np.ndarray) -> float:
    flat = m.ravel()
    k = _percentile_rank(flat.size)
    return float(np.partition(flat, k)[k])


def _top_batch(flat):
    """:func:`_top` per row of a (B, N) tensor."""
    return flat.kthvalue(_percentile_rank(flat.shape[1]) + 1, dim=1).values


def stretch(m: np.ndarray) -> np.ndarray:
    """Scale an unsigned map so its 99th percentile is full brightness (display only; the .npy is untouched).

    Guided Grad-CAM is sparse: a few pixels carry the maximum and most of the
    evidence sits far below it, invisible on a max-scaled colour ramp. Smooth
    Grad-CAM maps barely change (their 99th percentile is close to their max). NaN and infinities are read as a
    run reads them (:func:`_finite`).
    """
    m = np.nan_to_num(m)
    top = _top(m)
    if top <= STRETCH_MIN:
        return m
    with np.errstate(over="ignore"):  # an infinity read as the largest float, over a small top: 1 all the same
        return np.clip(m / top, 0, 1)


def display_map(m: np.ndarray, size: tuple[int, int], signed: bool) -> np.ndarray:
    """One map resized to the display copy's ``(width, height)``: :func:`resize_maps` on the CPU, the run's rule
    and pixels (a side that shrinks averaged, then one that grows interpolated). Imports torch only to resize."""
    w, h = size
    if m.shape == (h, w):
        return m
    import torch

    return resize_maps(torch.from_numpy(np.require(m, np.float32, "CW"))[None], (h, w), signed)[0].numpy()


def display_scale(m: np.ndarray, signed: bool) -> float:
    """The map value drawn at full colour, which the report and ``xaibatch serve`` print under its colour bar
    (MapRow.view's "scale"; :func:`display_scale_batch` for a batch): max |m| for signed maps (0 for a map
    zero everywhere: nothing is drawn), the 99th percentile (see :func:`stretch`) for unsigned ones (1 when that
    is at most STRETCH_MIN: the map is drawn unstretched)."""
    if signed:
        return float(np.abs(m).max(initial=0.0))
    top = _top(m)
    return top if top > STRETCH_MIN else 1.0


def tops_batch(m, signed: bool):
    """The statistic a batch's display scale and stretch are made of, per map of a (B, H, W) tensor: max |m| for
    signed maps, the 99th percentile for unsigned ones. A batch's overlays and views share it
    (pipeline/pictures.py): computed once."""
    flat = m.float().reshape(m.shape[0], -1)
    return flat.abs().amax(dim=1) if signed else _top_batch(flat)


def display_scale_batch(m, signed: bool, tops=None):
    """:func:`display_scale` per map of a (B, H, W) tensor: a (B,) float tensor, the same values; ``tops``: the
    maps' :func:`tops_batch`, when already made."""
    import torch

    top = tops_batch(m, signed) if tops is None else tops
    if signed:
        return top
    return torch.where(top > STRETCH_MIN, top, torch.ones_like(top))


def draw(display: np.ndarray, m: np.ndarray, signed: bool) -> tuple[np.ndarray, float]:
    """One map (any size) over one display copy ((H, W, 3) uint8), on the CPU through the run's own
    :func:`draw_batch`: the (H, W, 3) uint8 overlay, the same pixels a run writes for that map and image, and its
    display scale (the value drawn at full colour, which the colour bar reads). ``xaibatch serve`` and
    ``explain()``'s pictures are drawn here."""
    import torch

    pics = torch.from_numpy(np.require(display, np.uint8, "CW"))[None]  # a PIL image's array is read-only
    maps = torch.from_numpy(np.require(m, np.float32, "CW"))[None]
    shown, tops, over = draw_batch(pics, maps, signed)
    return over[0].numpy(), float(display_scale_batch(shown, signed, tops)[0])


def ramp_colours(x: np.ndarray, signed: bool) -> np.ndarray:
    """Positions on the overlays' colour ramp (0: its start, 1: its end; a signed map's 0 is at 0.5) -> uint8 RGB."""
    return _lookup(_packed(signed), np.clip(np.asarray(x, dtype=np.float32), 0, 1))


def colour_stops(signed: bool, n: int = 33) -> list[tuple[float, tuple[int, int, int]]]:
    """``n`` (offset 0..1, RGB) stops of the colour ramp the overlays use, for a colour bar."""
    xs = np.linspace(0, 1, n, dtype=np.float32)
    cols = _lookup(_packed(signed), xs)
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


# --- The writer's path: the same pictures for a whole batch on the model's device, then a cheap PNG encoder. ---

_TABLES: dict[tuple[bool, str], Any] = {}


def _table(signed: bool, device) -> Any:
    """The packed colour table as an (N + 1, 3) uint8 tensor on ``device`` (cached)."""
    import torch

    key = (signed, str(device))
    if key not in _TABLES:
        packed = _packed(signed)
        rgb = packed.view(np.uint8).reshape(-1, 4)[:, :3]
        _TABLES[key] = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
    return _TABLES[key]


def _lookup_t(table, x):
    """:func:`_lookup` on a tensor of values in [0, 1] (or NaN): (..., 3) uint8, the same colours."""
    import torch

    n = table.shape[0] - 1
    idx = (x * n).nan_to_num(nan=0.0).long().clamp_(max=n - 1)
    idx = torch.where(torch.isnan(x), torch.full_like(idx, n), idx)
    return table[idx]


def stretch_batch(m, tops=None):
    """:func:`stretch` per map of a (B, H, W) tensor: the same values (same order statistic, same division);
    ``tops``: the maps' :func:`tops_batch`, when already made."""
    import torch

    b = m.shape[0]
    top = (_top_batch(m.reshape(b, -1)) if tops is None else tops).view(b, 1, 1)
    return torch.where(top > STRETCH_MIN, (m / top).clamp(0, 1), m)


def overlay_batch(display, m, signed: bool, alpha: float = 0.5, tops=None):
    """Colour a batch of maps already at the display size over their display copies: (B, H, W, 3) uint8 and
    (B, H, W) -> (B, H, W, 3) uint8. Signed maps: the colour's opacity grows with |m|, so where the map is 0 the
    overlay is fully transparent. Unsigned maps (stretched: :func:`stretch_batch`): opacity 0.3 at 0 to 0.8 at
    full scale. Runs wherever the tensors are (a run: the model's device), so the host only encodes; the one
    blend of every surface (:func:`draw_batch`). ``tops``: the maps' :func:`tops_batch`, when already made.
    """
    import torch

    m = m.float()
    if signed:
        lim = display_scale_batch(m, True, tops).view(-1, 1, 1)
        lim = torch.where(lim > 0, lim, torch.ones_like(lim))  # all zero: transparent everywhere
        colours = _lookup_t(_table(True, m.device), 0.5 + 0.5 * (m / lim).clamp(-1, 1)).float()
        a = ((alpha + 0.2) * (m.abs() / lim).clamp(0, 1))[..., None]
    else:
        m = stretch_batch(m, tops).clamp(0, 1)  # unstretched (99th percentile at most STRETCH_MIN): may leave [0, 1]
        colours = _lookup_t(_table(False, m.device), m).float()
        a = (0.3 + 0.5 * m)[..., None]
    out = (1 - a) * display.float() + a * colours
    return out.clamp_(0, 255).to(torch.uint8)


def _finite(m):
    """A map as it is drawn and viewed: NaN as 0 and an infinity as the largest finite value of its sign, as
    :func:`view_of` reads a saved map (``np.nan_to_num``). One NaN pixel made a signed map's display scale NaN (the
    overlay drawn at scale 1 instead, its view's "scale" NaN) and its peak that pixel."""
    return m.nan_to_num()


def draw_batch(pics, maps, signed: bool, full=None):
    """Maps drawn for display, defined once: a run's overlays (pipeline/pictures.py, on the model's device), and
    ``xaibatch serve``'s and ``explain()``'s (:func:`draw`, on the CPU). ``maps`` (B, h, w) at any size are
    resized to the display copies' size ((B, H, W, 3) uint8 ``pics``) by :func:`resize_maps`, then coloured over
    them by :func:`overlay_batch`. ``full``: the maps already resized by :func:`resize_maps` to some size, taken
    as they are when that is the display size (the same values). NaN and infinities are read as :func:`view_of`
    reads them (:func:`_finite`). Returns the maps at the display size ("shown"),
    their :func:`tops_batch` and the (B, H, W, 3) uint8 overlays."""
    dh, dw = pics.shape[1:3]
    maps, full = _finite(maps), None if full is None else _finite(full)
    shown = full if full is not None and tuple(full.shape[1:]) == (dh, dw) else resize_maps(maps, (dh, dw), signed)
    tops = tops_batch(shown, signed)  # the overlays' scale and the views' "scale": one order statistic a batch
    return shown, tops, overlay_batch(pics, shown, signed, tops=tops)


ZERO_MAP = 1e-6  # a map whose every value is at most this (in absolute value) is "zero everywhere"

# A map's summary grid (MapRow.view "grid"), from which the report averages the maps of a group of images without
# reading them back (report/meanmaps.py): the map as its overlay shows it (divided by its display scale, clipped to
# [0, 1], or [-1, 1] for a signed map) averaged over GRID x GRID cells of the display copy (torch's adaptive average
# pooling), each cell one byte, round(127 v) + 128, the GRID * GRID bytes in base64 (344 characters a map).
GRID = 16


def grids_batch(shown, scale, signed: bool) -> list[str]:
    """Each map of ``shown`` (B, H, W, at the display copy's size) as its view's "grid"; ``scale``: the maps'
    :func:`display_scale_batch`."""
    import base64

    import torch
    import torch.nn.functional as F

    lo = -1.0 if signed else 0.0
    s = torch.where(scale > 0, scale, torch.ones_like(scale)).float()[:, None, None]
    cells = F.adaptive_avg_pool2d((shown.float() / s).clamp(lo, 1.0)[:, None], GRID)[:, 0]
    q = (cells * 127).round().add(128).clamp(1, 255).to(torch.uint8).reshape(len(cells), -1).cpu().numpy()
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in q]


def grid_of(shown: np.ndarray, scale: float, signed: bool) -> str:
    """:func:`grids_batch` of one map in numpy (views of older maps: :func:`view_of`): the same cells, each the mean
    of the rows ``floor(i H / GRID)`` to ``ceil((i + 1) H / GRID)`` and likewise the columns."""
    import base64

    lo = -1.0 if signed else 0.0
    v = np.clip(shown.astype(np.float64) / (scale if scale > 0 else 1.0), lo, 1.0)
    h, w = v.shape
    sums = np.zeros((h + 1, w + 1))
    sums[1:, 1:] = v.cumsum(0).cumsum(1)
    i = np.arange(GRID)
    r0, r1 = i * h // GRID, -(-(i + 1) * h // GRID)
    c0, c1 = i * w // GRID, -(-(i + 1) * w // GRID)
    total = sums[r1][:, c1] - sums[r0][:, c1] - sums[r1][:, c0] + sums[r0][:, c0]
    cells = total / ((r1 - r0)[:, None] * (c1 - c0)[None, :])
    q = np.clip(np.round(cells * 127) + 128, 1, 255).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii")


def read_grids(grids: list[str]) -> np.ndarray:
    """Stored grids (:func:`grids_batch`) back as an (n, GRID, GRID) float array in [-1, 1]."""
    import base64

    raw = b"".join(base64.b64decode(g) for g in grids)
    q = np.frombuffer(raw, np.uint8).reshape(len(grids), GRID, GRID)
    return (q.astype(np.float32) - 128) / 127


def views_batch(shown, full, signed: bool, tops=None) -> list[dict[str, Any]]:
    """Per map of a batch, what the report shows of it without reading the .npy back (MapRow.view):
    "scale", the value drawn at full colour (:func:`display_scale` of ``shown``, the maps at the overlay's size);
    "peak", [row, column] of the maximum of ``full`` (the saved maps; signed: of their positive part, the
    strongest evidence for the class, as the pointing game scores it; among equal maxima, :func:`peaks_batch`'s
    middle one); "shape" of ``full``; "zero": True
    only when the map is zero everywhere (no evidence at all: Grad-CAM's for a class the model rules out);
    "nowhere": True when it holds no evidence for the class (zero, or a signed map with no positive value): its
    peak then points nowhere (False otherwise). ``tops``: ``shown``'s :func:`tops_batch`, when already made."""
    b = shown.shape[0]
    scale = display_scale_batch(shown, signed, tops)
    ev = _finite(full.float()).reshape(b, -1)
    evidence = ev.clamp(min=0) if signed else ev
    zero = ev.abs().amax(dim=1) <= ZERO_MAP
    nowhere = evidence.amax(dim=1) <= ZERO_MAP
    w = full.shape[2]
    peak = peaks_batch(evidence, int(full.shape[1]), w)
    shape = [int(full.shape[1]), int(w)]
    grids = grids_batch(shown, scale, signed)
    return [
        {"scale": s, "peak": [p // w, p % w], "shape": shape, **flat_view(z, n), "grid": g}
        for s, p, z, n, g in zip(
            scale.cpu().tolist(),
            peak.cpu().tolist(),
            zero.cpu().tolist(),
            nowhere.cpu().tolist(),
            grids,
            strict=True,
        )
    ]


def peaks_batch(evidence, h: int, w: int):
    """Per row of ``evidence`` (B, h * w), the flat index of its maximum; where several pixels share it (a LIME
    map's strongest superpixel: a region of equal values), the one nearest their centroid, not the first in
    raster order (its top-left edge, where a mask's border is as likely as its inside: on 24 demo FAKEs the
    pointing game moved by 2 hits with the resampling of the region's edge pixels alone). A map with no
    evidence (all maxima at most ZERO_MAP) keeps the first pixel, as its "nowhere" flag says."""
    import torch

    top = evidence.amax(dim=1, keepdim=True)
    tied = evidence >= top
    first = evidence.argmax(dim=1)
    if bool((tied.sum(dim=1) == 1).all()):  # smooth maps: one maximum each
        return first
    # Over the tied pixels alone (a superpixel: a small share of the map), in float64: the sums of their indices
    # are exact and each distance correctly rounded, so equal distances stay equal (float32 split the tie of two
    # pixels equally near the centroid by its rounding) and the first in raster order wins, as in peak_of.
    b, dev = evidence.shape[0], evidence.device
    rows, flat = tied.nonzero(as_tuple=True)  # row by row, in raster order
    ys, xs = (flat // w).double(), (flat % w).double()
    n = tied.sum(dim=1).double()
    cy = torch.zeros(b, dtype=torch.float64, device=dev).index_add_(0, rows, ys) / n
    cx = torch.zeros(b, dtype=torch.float64, device=dev).index_add_(0, rows, xs) / n
    d = (ys - cy[rows]) ** 2 + (xs - cx[rows]) ** 2
    nearest = torch.full((b,), float("inf"), dtype=torch.float64, device=dev).scatter_reduce_(0, rows, d, "amin")
    at = torch.where(d == nearest[rows], flat, h * w)
    middle = torch.full((b,), h * w, dtype=flat.dtype, device=dev).scatter_reduce_(0, rows, at, "amin")
    return torch.where(top[:, 0] > ZERO_MAP, middle, first)


def peak_of(evidence: np.ndarray) -> tuple[int, int]:
    """:func:`peaks_batch` of one (h, w) map in numpy: the maximum nearest the centroid of the pixels sharing it."""
    top = float(evidence.max(initial=0.0))
    if top <= ZERO_MAP:
        y, x = np.unravel_index(int(np.argmax(evidence)), evidence.shape)
        return int(y), int(x)
    ys, xs = np.nonzero(evidence >= top)
    d = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
    k = int(np.argmin(d))  # the first of equal distances, in raster order, as torch's argmin
    return int(ys[k]), int(xs[k])


def flat_view(zero: bool, nowhere: bool) -> dict[str, bool]:
    """The view's flags (see views_batch): "nowhere" on every view, so that one an older xaibatch stored, which
    lacks it, is told apart and read again (report.detail.backfill_views); "zero" only for a map zero everywhere."""
    return {"zero": True, "nowhere": True} if zero else {"nowhere": bool(nowhere)}


def view_of(m: Any, width: int, height: int, signed: bool) -> dict[str, Any]:
    """:func:`views_batch` of one saved map, in numpy: MapRow.view for older folders, whose rows lack it (the
    report stores it: report.detail.backfill_views). The same scale, peak, shape and flags."""
    m = np.nan_to_num(m.astype(np.float32, copy=False))
    shown = display_map(m, display_size(width, height), signed)
    s = display_scale(shown, signed)
    evidence = np.where(m > 0, m, 0) if signed else m
    y, x = peak_of(evidence)
    flat = flat_view(float(np.abs(m).max(initial=0.0)) <= ZERO_MAP, float(evidence.max(initial=0.0)) <= ZERO_MAP)
    shape = [int(m.shape[0]), int(m.shape[1])]
    return {"scale": s, "peak": [int(y), int(x)], "shape": shape, **flat, "grid": grid_of(shown, s, signed)}


def resize_maps(m, size: tuple[int, int], signed: bool):
    """(B, h, w) maps to (B, H, W). A side that shrinks first, to the mean of the pixels each output pixel covers
    (a 224 px map sampled down to a 120x80 or 1x400 image kept one pixel in several, or only the middle column:
    every pixel's attribution now counts); then a side that grows: bilinear for unsigned maps, nearest for signed
    ones (segment edges stay). :func:`display_map`: one map in numpy, through this function."""
    import torch.nn.functional as F

    x = m.float()[:, None]
    if tuple(x.shape[2:]) == tuple(size):
        return x[:, 0]
    small = (min(size[0], x.shape[2]), min(size[1], x.shape[3]))
    if small != tuple(x.shape[2:]):
        x = F.interpolate(x, size=small, mode="area")
    if small != tuple(size):
        if signed:
            x = F.interpolate(x, size=size, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[:, 0]


def thumbnail_batch(pics, side: int = THUMB_SIDE):
    """(B, H, W, 3) uint8 -> thumbnails at most ``side`` on the longest side, or None when the pictures are
    already that small (they are their own thumbnails: one file, pointed at twice)."""
    import torch
    import torch.nn.functional as F

    h, w = pics.shape[1:3]
    if max(h, w) <= side:
        return None
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = pics.permute(0, 3, 1, 2).float()
    t = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(a: np.ndarray, strategy: int = PNG_STRATEGY) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes: numpy's 'Up' row filter and zlib's ``strategy`` (RLE, or
    MAP_PNG_STRATEGY for overlays; stored, uncompressed, up to PNG_STORE_MAX_BYTES of rows).

    About twice as fast as PIL's encoder at 32-512 px (PIL tries filters per row) for files 3-6% larger;
    lossless all the same. Releases the GIL in zlib, so writer threads encode in parallel.
    """
    h, w, c = a.shape
    flat = np.ascontiguousarray(a).reshape(h, w * c)
    if h * (w * c + 1) <= PNG_STORE_MAX_BYTES:
        return _stored_png(flat, c)
    return _png_head(w, h, c) + _chunk(b"IDAT", _compressed_zlib(flat, strategy)) + _PNG_END


_PNG_END = _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=256)
def _png_head(w: int, h: int, c: int) -> bytes:
    """The signature and IHDR chunk of a w x h PNG with ``c`` channels (1, 3 or 4)."""
    colour_type = {3: 2, 4: 6, 1: 0}[c]
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))


@functools.lru_cache(maxsize=256)
def _stored_head(w: int, h: int, c: int) -> tuple[bytes, int]:
    """Everything of a stored PNG before its rows (up to the stored block's header), and the CRC of its IDAT
    chunk's type and bytes so far: what does not depend on the pixels, built once per size."""
    size = h * (w * c + 1)
    zhead = b"\x78\x01\x01" + struct.pack("<HH", size, size ^ 0xFFFF)
    idat_len = struct.pack(">I", len(zhead) + size + 4)  # + the Adler-32 after the rows
    return _png_head(w, h, c) + idat_len + b"IDAT" + zhead, zlib.crc32(b"IDAT" + zhead)


def _stored_png(flat: np.ndarray, c: int) -> bytes:
    """A PNG whose rows (filter type None) are one stored (uncompressed) deflate block: a valid zlib stream,
    built here without zlib's compressor, whose set-up alone costs several times this at 32 px."""
    h, n = flat.shape
    head, crc = _stored_head(n // c, h, c)
    rows = np.zeros((h, n + 1), dtype=np.uint8)
    rows[:, 1:] = flat
    raw = rows.data
    adler = struct.pack(">I", zlib.adler32(raw))
    crc = zlib.crc32(adler, zlib.crc32(raw, crc))
    return b"".join((head, raw, adler, struct.pack(">I", crc), _PNG_END))


def _compressed_zlib(flat: np.ndarray, strategy: int = PNG_STRATEGY) -> bytes:
    h, n = flat.shape
    rows = np.empty((h, n + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type Up: each row minus the one above (the first row as is)
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    z = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 8, strategy)
    return z.compress(rows.data) + z.flush()
