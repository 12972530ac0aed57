"""What the detail view shows, as JSON-ready records: each map's colour-bar numbers (from the map rows'
stored views, never from the .npy files) and the ground truth with the pointing game.

The detail view is drawn in the browser (``templates/assets/detail.js``) from one data file per gallery
page (``detail/page-<n>.js``), so the report's cost grows with its pages, not with its images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


from .. import targets
from ..errors import UsageError
from ..files import InputFolder, NotRegularFile, open_regular, safe_join
from ..scan import mask_rel
from .model import Card, Group, MARKER_COLOURS, MAX_ARRAY_BYTES, MapView, MethodInfo, TRUTH_MAX_SIDE
from .text import break_points, fmt_bytes, fmt_num, fmt_pct

MASK_MAX_PIXELS = 10_000_000  # a ground-truth mask larger than this is skipped without reading it


class BadArray(ValueError):
    """A .npy file the report will not read; the message says why, in a few words."""


def read_array(root: Path | InputFolder, rel: str, max_pixels: int = MASK_MAX_PIXELS) -> Any:
    """A 2-d boolean or numeric array from a regular ``.npy`` file under ``root``; raises BadArray with the reason.

    User data (ground-truth masks) is opened as images are: never a FIFO or a device (no block, no endless
    read), never outside ``root`` (an InputFolder: the same check, its folders opened once, for many files),
    the header checked before any data is read (no pickles, no structured dtypes, at most ``max_pixels``),
    and never more than MAX_ARRAY_BYTES.
    """
    import numpy as np

    try:
        fd, st = root.open(rel) if isinstance(root, InputFolder) else open_regular(safe_join(root, rel))
    except NotRegularFile:
        raise BadArray("not a regular file") from None
    except FileNotFoundError:
        raise BadArray("missing") from None
    except (OSError, UsageError) as e:
        raise BadArray(f"cannot open it ({type(e).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_ARRAY_BYTES:
            raise BadArray(f"{fmt_bytes(st.st_size)}, over the limit of {fmt_bytes(MAX_ARRAY_BYTES)}")
        try:
            shape, fortran, dtype = _read_header(f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, KeyError):
            raise BadArray("not a .npy file") from None
        if (
            dtype.hasobject
            or dtype.names is not None
            or dtype.subdtype is not None
            or not (dtype.kind in "biuf" and dtype.itemsize <= 8)
        ):
            raise BadArray(f"unsupported dtype {dtype.str}")
        if len(shape) != 2:
            raise BadArray(f"{len(shape)}-d, not 2-d")
        if shape[0] * shape[1] > max_pixels:
            raise BadArray(f"{shape[1]}×{shape[0]}, over the limit of {max_pixels:,} pixels")
        count = shape[0] * shape[1]
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise BadArray("truncated")
    a = np.frombuffer(data, dtype=dtype)
    return (a.reshape(shape[::-1]).T if fortran else a.reshape(shape)).copy()


_HEADERS: dict[bytes, tuple[Any, bool, Any]] = {}  # a header's bytes -> (shape, fortran, dtype), parsed once
_MAX_HEADER = 10_000


def _read_header(f: Any) -> tuple[Any, bool, Any]:
    """A .npy file's (shape, fortran order, dtype), leaving ``f`` at its data; numpy parses each distinct header
    once (masks of one size share one: parsing it is a Python ``literal_eval``, a fifth of reading a small mask)."""
    import io

    import numpy as np

    start = f.read(8)
    if len(start) != 8 or start[:6] != np.lib.format.MAGIC_PREFIX or start[6:] not in (b"\x01\x00", b"\x02\x00"):
        raise ValueError("not a .npy file")  # what numpy's read_magic and its (1, 0)/(2, 0) readers refuse
    width = 2 if start[6] == 1 else 4
    length = f.read(width)
    if len(length) != width or (n := int.from_bytes(length, "little")) > _MAX_HEADER:
        raise ValueError("bad header length")
    header = f.read(n)
    key = start + length + header
    got = _HEADERS.get(key)
    if got is None:
        read = np.lib.format.read_array_header_1_0 if width == 2 else np.lib.format.read_array_header_2_0
        got = read(io.BytesIO(length + header), max_header_size=_MAX_HEADER)
        if len(_HEADERS) < 256:
            _HEADERS[key] = got
    return got


def load_array(root: Path | InputFolder, rel: str, max_pixels: int = MASK_MAX_PIXELS) -> Any:
    """:func:`read_array`, or None when it refuses the file."""
    try:
        return read_array(root, rel, max_pixels)
    except BadArray:
        return None


# -- map views: what a map shows without reading it --------------------------------------------------------


def backfill_views(out: Path, manifest: Any, methods: list[MethodInfo]) -> int:
    """Store a view on every map row that lacks one (rows written before views existed) or holds one without the
    flags of a map that shows nothing (written before those, which a fresh run's report shows: "zero everywhere",
    a miss in the pointing game), once, on the first report after an upgrade. Only maps that may be flat are read
    (:func:`_shows_evidence`); the others' views gain their flag from what they hold (reading every map of a
    100,000-image folder of photos, 4 MB a map, would take hours). An unreadable map gets ``{"scale": None,
    "nowhere": None}``."""
    from ..overlay import ZERO_MAP, view_of  # numpy (torch to resize a map): only for a folder that has such rows

    signed = _signed_by_key(methods)
    views = []
    for rel, method, config_hash, npy, width, height, stored in manifest.maps_without_view():
        view = json.loads(stored) if stored else None
        if isinstance(view, dict) and view.get("zero"):  # flagged zero everywhere: no evidence either
            views.append((rel, method, config_hash, {**view, "nowhere": True}))
            continue
        if isinstance(view, dict) and _shows_evidence(view, signed.get(method, False), ZERO_MAP):
            views.append((rel, method, config_hash, {**view, "nowhere": False}))
            continue
        m = load_array(out, npy, max_pixels=MAX_ARRAY_BYTES)
        if m is None or not m.size:
            views.append((rel, method, config_hash, {"scale": None, "nowhere": None}))
        else:
            views.append((rel, method, config_hash, view_of(m, width, height, signed.get(method, False))))
    if views:
        with manifest.transaction():
            manifest.set_views(views)
    return len(views)


def backfill_grids(out: Path, manifest: Any, methods: list[MethodInfo]) -> int:
    """Add the summary grid (overlay.grid_of) to every map view that lacks one, reading each such map once: maps
    stored before the summary's mean maps. Only ``xaibatch report`` asks for it (a run never reads its maps back:
    at 4 MB a photo's map, a large folder's would take long); an unreadable map keeps its view. Returns how many
    views gained a grid."""
    import numpy as np

    from ..layout import display_size
    from ..overlay import display_map, display_scale, grid_of, view_of

    signed = _signed_by_key(methods)
    views = []
    for rel, method, config_hash, npy, width, height, stored in manifest.maps_without_grid():
        m = load_array(out, npy, max_pixels=MAX_ARRAY_BYTES)
        if m is None or not m.size:
            continue
        s = signed.get(method, False)
        view = json.loads(stored) if stored else None
        if not isinstance(view, dict) or not isinstance(view.get("scale"), (int, float)):
            view = view_of(m, width, height, s)  # no view at all: the whole of it, grid included
        else:
            shown = display_map(np.nan_to_num(m.astype(np.float32, copy=False)), display_size(width, height), s)
            view = {**view, "grid": grid_of(shown, float(view["scale"]) or display_scale(shown, s), s)}
        views.append((rel, method, config_hash, view))
    if views:
        with manifest.transaction():
            manifest.set_views(views)
    return len(views)


def _signed_by_key(methods: list[MethodInfo]) -> dict[str, bool]:
    """Map key (a method, and its ``@label`` maps) -> whether its maps are signed."""
    signed = {m.name: m.signed for m in methods}
    signed.update({targets.label_key(m.name): m.signed for m in methods})
    return signed


def _shows_evidence(view: dict[str, Any], signed: bool, zero_map: float) -> bool:
    """Whether a view stored without the flat flags is surely of a map with evidence for its class, from its numbers
    alone (overlay.views_batch): a peak off the first pixel (the argmax of no evidence is the first pixel) and a
    scale that only such a map has: a signed map's (max |m|) above ``zero_map``, an unsigned map's (its 99th
    percentile, 1.0 when that is nothing) neither the fallback nor below ``zero_map``. Left: a signed map whose
    positive values are all below ``zero_map`` beside larger negative ones (then its tiny peak counts)."""
    peak, scale = view.get("peak"), view.get("scale")
    if not isinstance(scale, (int, float)) or not isinstance(peak, list) or len(peak) != 2 or peak == [0, 0]:
        return False
    return scale > zero_map if signed else zero_map < scale != 1.0


def scale_texts(v: MapView, target: str) -> tuple[list[str], str]:
    """The numbers under a map's colour bar, left to right, and the sentence that says what they mean."""
    if v.scale is None or v.zero:  # a map with no colour: its warning says why, no scale to read
        return [], ""
    return colour_ticks(v.scale, v.m.signed, target, v.m.superpixels)


def colour_ticks(scale: float, signed: bool, target: str, superpixels: bool = True) -> tuple[list[str], str]:
    """The numbers under a colour bar drawn at full colour for ``scale``, and what they mean (the report's detail
    view and ``xaibatch serve``); ``superpixels``: a signed map is LIME's, else per-pixel logit attributions."""
    s = fmt_num(scale)
    if signed and not superpixels:
        return (
            [f"−{s}", "0", f"+{s}"],
            f"Full red: +{s} or more, a pixel's attribution toward {target} in the model's logit units; "
            f"full blue: −{s}, against it.",
        )
    if signed:
        return (
            [f"−{s}", "0", f"+{s}"],
            f"Full red: +{s}, hiding that superpixel lowers the probability of {target} by about "
            f"{s}; full blue: −{s}, hiding it raises it.",
        )
    return [
        "0",
        fmt_num(scale / 2),
        f"≥ {s}",
    ], f"Full colour: values of {s} (the 99th percentile of this map as drawn) and above."


# -- ground truth ------------------------------------------------------------------------------------------


def region_path(mask: Any) -> str:
    """An SVG path covering the True cells of a boolean grid, one rectangle per horizontal run."""
    import numpy as np

    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    # Across the flattened rows: each row starts and ends with a padding 0, so the changes alternate, a run's
    # start (0 -> 1) then its end (1 -> 0), and never pair across two rows.
    changes = np.flatnonzero(np.diff(padded.ravel()))
    starts, ends = changes[0::2], changes[1::2]
    ys, xs = np.divmod(starts, w + 2)
    runs = (ends - starts).tolist()
    return "".join(map("M{} {}h{}v1h-{}z".format, xs.tolist(), ys.tolist(), runs, runs))


LABEL_WIDTH, LABEL_ASCENT, LABEL_DESCENT = 0.6, 0.75, 0.2  # a label's box, in units of its font size


def label_box(text: str, x: float, y: float, font: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of ``text`` drawn at (x, y), its baseline's start, as the detail view draws it."""
    return x, y - LABEL_ASCENT * font, x + LABEL_WIDTH * font * len(text), y + LABEL_DESCENT * font


def place_labels(
    rings: list[tuple[float, float]], texts: list[str], w: float, h: float, radius: float, font: float
) -> list[tuple[float, float]]:
    """Where each ring's label stands (its baseline's start), inside the w x h figure: beside its own ring, one
    label after another, at the first of eight places around the ring that covers no label placed before and no
    ring, and stands nearer its own ring than any other (colour alone must not be what tells them apart).
    When every place is taken (rings crowded into a corner), the one that covers least, the nearest ring last."""

    def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    ring_boxes = [(x - radius, y - radius, x + radius, y + radius) for x, y in rings]
    placed: list[tuple[float, float, float, float]] = []
    out: list[tuple[float, float]] = []
    for i, ((x, y), text) in enumerate(zip(rings, texts, strict=True)):
        tw, up, down = LABEL_WIDTH * font * len(text), LABEL_ASCENT * font, LABEL_DESCENT * font
        gap = 0.15 * font
        spots = [  # right, left, above, below, then the four corners
            (x + radius + gap, y + up / 2),
            (x - radius - gap - tw, y + up / 2),
            (x - tw / 2, y - radius - gap - down),
            (x - tw / 2, y + radius + gap + up),
            (x + radius, y - radius),
            (x + radius, y + radius + up),
            (x - radius - tw, y - radius),
            (x - radius - tw, y + radius + up),
        ]
        best: tuple[float, tuple[float, float]] | None = None
        for lx, ly in spots:
            lx, ly = min(max(lx, 0.0), max(0.0, w - tw)), min(max(ly, up), h - down)  # inside the figure
            box = label_box(text, lx, ly, font)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            own = (cx - x) ** 2 + (cy - y) ** 2
            cost = sum(overlap(box, b) for b in placed) * 4
            cost += sum(overlap(box, b) for b in ring_boxes)  # its own ring too: a label hides no ring
            cost += sum(own > (cx - ox) ** 2 + (cy - oy) ** 2 for j, (ox, oy) in enumerate(rings) if j != i) * font
            if best is None or cost < best[0]:
                best = (cost, (lx, ly))
            if cost == 0:
                break
        assert best is not None
        out.append(best[1])
        placed.append(label_box(text, *best[1], font))
    return out


def truth_record(mask: Any, c: Card) -> dict[str, Any]:
    """The ground-truth figure and each map's pointing game (from its stored peak), as the detail view draws it."""
    import numpy as np

    h, w = mask.shape
    f = min(1.0, TRUTH_MAX_SIDE / max(h, w))
    gw, gh = max(1, round(w * f)), max(1, round(h * f))
    if (gw, gh) == (w, h):
        grid = mask  # at most TRUTH_MAX_SIDE: drawn cell for cell
    else:
        grid = mask[(np.arange(gh) * h // gh)[:, None], (np.arange(gw) * w // gw)[None, :]]
    side = max(gw, gh)
    radius, font = side / 28, side / 9
    points: list[dict[str, Any]] = []
    ringed: dict[tuple[int, int], dict[str, Any]] = {}  # peak -> the point whose ring and label stand there
    for i, v in enumerate(c.maps):
        pt: dict[str, Any] = {
            "n": i + 1,
            "m": v.method,
            "title": v.title,
            "colour": MARKER_COLOURS[i % len(MARKER_COLOURS)],
        }
        if v.zero or v.nowhere:  # a miss (localization.tally)
            pt["note"] = "the map is zero everywhere" if v.zero else "the map shows no evidence for the class"
            pt["nowhere"] = True
        elif v.peak is None or v.shape is None:
            pt["note"] = "map unreadable"
        elif tuple(v.shape) != (h, w):
            pt["note"] = f"map {v.shape[1]}×{v.shape[0]} and mask {w}×{h} differ"
        else:
            y, x = v.peak
            pt.update(px=[x, y], hit=bool(mask[y, x]))
            first = ringed.setdefault((x, y), pt)
            first["label"] = f"{first['label']},{pt['n']}" if first is not pt else str(pt["n"])  # one ring: "1,3"
        points.append(pt)
    rings = [((x + 0.5) * gw / w, (y + 0.5) * gh / h) for x, y in ringed]
    labels = place_labels(rings, [pt["label"] for pt in ringed.values()], gw, gh, radius, font)
    for pt, (px, py), (lx, ly) in zip(ringed.values(), rings, labels, strict=True):
        pt.update(x=round(px, 2), y=round(py, 2), lx=round(lx, 2), ly=round(ly, 2))
    return {
        "mask": mask_rel(c.rel).rsplit("/", 1)[-1],
        "w": gw,
        "h": gh,
        "path": region_path(grid),
        "share": fmt_pct(np.count_nonzero(mask) / mask.size),  # mask.mean()'s value (both exact over rounding)
        "area": round(float(np.count_nonzero(mask) / mask.size), 6),  # the summary's chance (localization.tally)
        "centre": bool(mask[(h - 1) // 2, (w - 1) // 2]),  # a map that always points at the centre pixel hits
        "r": round(radius, 2),
        "font": round(font, 2),
        "points": points,
    }


def truth_of(input_dir: Path | InputFolder | None, c: Card) -> dict[str, Any] | None:
    """The ground truth beside the card's image, or a record saying why its mask was skipped; None: no mask."""
    if not c.mask_key or input_dir is None:
        return None
    try:
        mask = read_array(input_dir, mask_rel(c.rel))
    except BadArray as e:
        return {"mask": mask_rel(c.rel).rsplit("/", 1)[-1], "skipped": str(e)}
    if mask.shape != (c.height, c.width):
        return {
            "mask": mask_rel(c.rel).rsplit("/", 1)[-1],
            "skipped": f"{mask.shape[1]}×{mask.shape[0]}, the image is {c.width}×{c.height}",
        }
    return truth_record(mask != 0, c)


# -- the records ---------------------------------------------------------------------------------------------


def map_record(v: MapView, c: Card, target: str | None = None) -> dict[str, Any]:
    """One map of the detail view; ``target``: the class it explains when not the card's (a true-class map)."""
    ticks, note = scale_texts(v, target or c.target)
    rec: dict[str, Any] = {
        "m": v.method,
        "png": v.png,
        "npy": v.npy,
        # the saved map's [height, width] (MapRow.view): the image's size, or smaller over --max-map-side;
        # None when the map could not be read (its view unknown)
        "shape": list(v.shape) if v.shape else None,
        "ticks": ticks,
        "note": note,
        "info": [[k, x] for k, x, _w in v.info],
    }
    if v.weak:
        rec["weak"] = v.weak
    if v.deletion is not None:
        rec["del"], rec["ins"] = v.deletion, v.insertion
        if v.curves:
            rec["curves"] = list(v.curves)
    return rec


def neighbour(c: Card | None, page: int, group: str) -> dict[str, Any] | None:
    """A link target of the detail view: its card id, its gallery page when not ``page``, its gallery group
    (``wrong-0``: section and class) when not ``group``, the group of the card it is drawn from."""
    if c is None:
        return None
    rec: dict[str, Any] = {"id": c.cid} if c.page == page else {"id": c.cid, "page": c.page}
    if c.group_key != group:
        rec["group"] = c.group_key
    return rec


def class_neighbours(groups: list[Group]) -> dict[str, tuple[Card | None, Card | None]]:
    """Per gallery group (its key): the last card of the nearest earlier group of the same class and the first
    card of the nearest later one (misclassified FAKE's and correct FAKE's), so that a class filter's
    Previous and Next can leave a group for the next one it keeps, which can be far away in gallery order."""
    out: dict[str, tuple[Card | None, Card | None]] = {}
    last: dict[int, Card] = {}
    for g in groups:
        if g.cards:
            out[g.key] = (last.get(g.class_index), None)
            last[g.class_index] = g.cards[-1]
    first: dict[int, Card] = {}
    for g in reversed(groups):
        if g.cards:
            out[g.key] = (out[g.key][0], first.get(g.class_index))
            first[g.class_index] = g.cards[0]
    return out


def detail_record(
    c: Card,
    prev: Card | None,
    nxt: Card | None,
    truth: dict[str, Any] | None,
    across: tuple[Card | None, Card | None] = (None, None),
) -> dict[str, Any]:
    """One image's detail view: every fact the page shows, as text the browser only places. ``across``: the
    card's group's :func:`class_neighbours`, kept only where the card opens or closes its group."""
    g = c.group_key
    rec = {
        "id": c.cid,
        "rel": c.rel,
        "label": c.label,
        "pred": c.pred,
        "conf": c.conf_text,
        "label_conf": c.label_conf,
        "correct": c.correct,
        "target": c.target,
        "w": c.width,
        "h": c.height,
        "dw": c.disp_w,
        "dh": c.disp_h,
        "pixelated": c.pixelated,
        "stretched": c.stretched,
        "bytes": fmt_bytes(c.size),
        "sha": c.sha256,
        "image": c.image,
        "page": c.page,
        "group": g,
        "maps": [map_record(v, c) for v in c.maps],
        "probs": [[name, text, round(100 * p, 1)] for name, p, text in c.probs],  # the bar's length: a share of 100
        "truth": truth,
        "prev": neighbour(prev, c.page, g),
        "next": neighbour(nxt, c.page, g),
    }
    # the gallery's class filter steps from a group's edge to the same class's next group (detail.js: step)
    if across[0] is not None and (prev is None or prev.group_key != g):
        rec["cprev"] = neighbour(across[0], c.page, g)
    if across[1] is not None and (nxt is None or nxt.group_key != g):
        rec["cnext"] = neighbour(across[1], c.page, g)
    if c.earlier:  # an earlier model's prediction and maps, which the next complete run recomputes
        rec["earlier"] = c.earlier
    if c.label_maps:  # --target pred,label, misclassified: each method's map of the true class, a second row
        rec["label_maps"] = [map_record(v, c, c.label) for v in c.label_maps]
    return rec


def site_record(methods: list[MethodInfo], target_words: str, n_classes: int) -> dict[str, Any]:
    """What every detail view shares: each method's legend and colour bar, the words for the info keys."""
    from .model import INFO_WORDS

    return {
        "target_words": target_words,
        "n_classes": n_classes,
        "info_words": INFO_WORDS,
        "methods": {
            m.name: {
                "title": m.title,
                # where the caption may break ("Integrated|Gradients"): a narrow figure broke words inside
                "breaks": list(break_points(m.title)),
                "signed": m.signed,
                "legend": m.legend,
                "scale_words": m.scale_words,
                "bar": m.bar,
            }
            for m in methods
        },
    }
