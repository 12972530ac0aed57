"""Cards (one per image), the gallery's groups (correct / misclassified per class) and its pages."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any, Iterable


from .. import layout, targets
from ..layout import display_size
from ..manifest import ImageRow, MapRow
from ..scan import MASK_SUFFIX, mask_rel
from . import model, paging  # model.PAGE_SIZE read at call time: tests shrink it
from .model import (
    Block,
    Card,
    DETAIL_MAX_ASPECT,
    DETAIL_MIN_SIDE,
    GalleryPage,
    Group,
    INFO_WORDS,
    MAX_PROBS_SHOWN,
    MapView,
    MethodInfo,
    WEAK_SIGNED_SCALE,
    url,
)
from .paging import Paging
from .text import class_name, fmt_num, fmt_pct, fmt_value


def masks_beside(input_dir: Path | None, rels: Iterable[str]) -> dict[str, str]:
    """The ground-truth masks beside these images: mask path relative to the input folder -> "size:mtime".

    One listing per folder that holds images and a stat per mask (masks are few), not a stat per image.
    """
    if input_dir is None:
        return {}
    found = {}
    for folder in sorted({rel.rpartition("/")[0] for rel in rels}):
        try:
            with os.scandir(os.path.join(input_dir, folder)) as it:
                names = [e.name for e in it if e.name.endswith(MASK_SUFFIX)]
        except (OSError, ValueError):
            continue
        for name in names:
            rel = f"{folder}/{name}" if folder else name
            try:
                st = os.stat(os.path.join(input_dir, rel))
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size:
                found[rel] = f"{st.st_size}:{st.st_mtime_ns}"
    return found


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    tail = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{tail}"


def make_card(
    r: ImageRow,
    names: list[str],
    methods: list[MethodInfo],
    maps: dict[tuple[str, str], MapRow],
    masks: dict[str, str] | None = None,
    earlier: str = "",
) -> Card:
    """One image's card; ``masks``: see masks_beside; ``earlier``: the earlier model that predicted it, in words
    ("": the last run's)."""
    rel, stem, probs = r.rel, r.stem, r.probs
    views = [_view(row, m) for m in methods if (row := maps.get((rel, m.name))) is not None]
    why_not = []  # --target pred,label: the true class's maps of a misclassified image
    for m in methods:
        if (row := maps.get((rel, targets.label_key(m.name)))) is not None:
            why_not.append(_view(row, m))
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[:MAX_PROBS_SHOWN]
    label_conf = ""
    if r.label is not None and r.label != r.pred and 0 <= r.label < len(probs):
        p = probs[r.label]
        rank = 1 + sum(q > p for q in probs)
        label_conf = f"{fmt_pct(p)}, {ordinal(rank)} of {len(probs):,}"
    disp_w, disp_h, pixelated, stretched = _detail_size(r.width, r.height)
    image = url(layout.image_png(stem))
    # a small image is its own thumbnail: one string
    thumb = url(layout.image_thumb(stem, r.width, r.height)) if layout.has_own_thumbnail(r.width, r.height) else image
    return Card(
        rel=rel,
        stem=stem,
        cid=layout.card_id(rel),
        label=class_name(names, r.label),
        label_index=r.label,
        pred=class_name(names, r.pred) or "",
        pred_index=r.pred,
        target=class_name(names, r.target) or "",
        confidence=r.confidence,
        conf_text=fmt_pct(r.confidence),
        conf_attr=f"{r.confidence:.6f}",
        correct=None if r.label is None else r.label == r.pred,
        thumb=thumb,
        image=image,
        detail="",  # set by paginate: layout.detail_page(page) + "#" + cid
        detail_url="",
        maps=views,
        methods_attr=" ".join(v.method for v in views),
        probs=[(class_name(names, i) or "", probs[i], fmt_pct(probs[i])) for i in order],
        label_conf=label_conf,
        width=r.width,
        height=r.height,
        disp_w=disp_w,
        disp_h=disp_h,
        pixelated=pixelated,
        stretched=stretched,
        sha256=r.sha256[:12],
        size=r.size,
        mask_key=masks.get(mask_rel(rel), "") if masks else "",
        label_maps=why_not,
        earlier=earlier,
    )


@functools.lru_cache(maxsize=1024)  # a card per image, and a handful of image sizes
def _detail_size(width: int, height: int) -> tuple[int, int, bool, bool]:
    """The size the detail view draws a width x height image at (its display copy, upscaled to DETAIL_MIN_SIDE:
    pixelated, and no thinner than 1:DETAIL_MAX_ASPECT: stretched), whether it is upscaled, whether stretched."""
    dw, dh = display_size(width, height)
    scale = max(1.0, DETAIL_MIN_SIDE / max(dw, dh))
    disp_w, disp_h = round(dw * scale), round(dh * scale)
    thinnest = max(disp_w, disp_h) / DETAIL_MAX_ASPECT
    stretched = min(disp_w, disp_h) < thinnest
    if stretched:
        disp_w, disp_h = max(disp_w, round(thinnest)), max(disp_h, round(thinnest))
    return disp_w, disp_h, scale > 1, stretched


def _view(row: MapRow, m: MethodInfo) -> MapView:
    """What a card shows of one map row of method ``m`` (its prediction's map or its true class's)."""
    png = url(row.png)
    return MapView(
        m.name,
        m.title,
        m,
        png,
        png if not row.thumb or row.thumb == row.png else url(row.thumb),  # a small map is its own thumbnail
        url(row.npy),
        [(str(k), fmt_value(v), INFO_WORDS.get(str(k), "")) for k, v in row.info.items()] if row.info else [],
        config_hash=row.config_hash,
        **(_faith_view(row) if row.deletion is not None else {}),
        **(_scale_view(row, m) if row.view else {}),
    )


def _scale_view(row: MapRow, m: MethodInfo) -> dict[str, Any]:
    """The map's stored view (see MapRow.view): its colour-bar scale, peak and shape; for signed maps the
    magnitude the gallery prints, and a warning when it is so small that the full colours overstate it."""
    v = row.view or {}
    scale = v.get("scale")
    if not isinstance(scale, (int, float)):
        return {}
    text = fmt_num(scale)
    out: dict[str, Any] = {"scale": float(scale), "scale_text": text, "peak": v.get("peak"), "shape": v.get("shape")}
    if m.signed:
        out["mag"] = f"±{text}"
        if m.superpixels and scale < WEAK_SIGNED_SCALE and not v.get("zero"):  # a probability: LIME's only
            out["weak"] = (
                f"weak evidence: hiding any one superpixel changes the probability by at most "
                f"{text} (under {WEAK_SIGNED_SCALE:g}); the colours are scaled to this image's "
                "strongest superpixel, so full red and blue overstate it"
            )
    if v.get("zero"):  # no colour at all: say why, or the blank overlay reads as a broken picture
        out["zero"] = True
    if v.get("nowhere"):
        out["nowhere"] = True
    if v.get("zero"):
        out["weak"] = zero_words(m.title, m.signed, m.superpixels)
    return out


def zero_words(title: str, signed: bool, superpixels: bool) -> str:
    """What a map zero everywhere says instead of its scale (it has no colour; the report's card and detail view,
    and ``xaibatch serve``)."""
    if signed and superpixels:
        return "zero everywhere: hiding any one superpixel leaves the probability as it is"
    return f"zero everywhere: {title} finds no evidence for this class in the image"


def _faith_view(row: MapRow) -> dict[str, Any]:
    if row.deletion is None or row.insertion is None:
        return {}
    from .trust import curve_points

    f = row.faith or {}
    curves = (curve_points(f["deletion_curve"]), curve_points(f["insertion_curve"])) if "deletion_curve" in f else None
    return {"deletion": f"{row.deletion:.3f}", "insertion": f"{row.insertion:.3f}", "curves": curves}


def group_cards(cards: list[Card], names: list[str], labeled: bool) -> tuple[list[Group], list[tuple[str, str]]]:
    by: dict[tuple[str, int], list[Card]] = {}
    for c in cards:
        if labeled and c.label_index is not None:
            key = ("right" if c.correct else "wrong", c.label_index)
        else:
            key = ("nolabel" if labeled else "pred", c.pred_index)
        by.setdefault(key, []).append(c)
    classes = sorted({k for _s, k in by})
    if labeled:
        sections = [("wrong", "Misclassified"), ("right", "Correct")]
        if any(s == "nolabel" for s, _k in by):
            sections.append(("nolabel", "Without a label, by predicted class"))
    else:
        sections = [("pred", "By predicted class")]
    groups = []
    for s, _title in sections:
        for k in classes:
            members = by.get((s, k))
            if not members:
                continue
            if s == "right":  # the borderline correct ones are the interesting ones
                members.sort(key=lambda c: (c.confidence, c.rel))
                order = "least confident first"
            else:
                members.sort(key=lambda c: (-c.confidence, c.rel))
                order = "most confident first"
            word = "true" if s in ("wrong", "right") else "predicted"
            groups.append(Group(s, f"{word} {class_name(names, k)}", f"{s}-{k}", k, order, members, len(members)))
    return groups, sections


def page_links(current: int, total: int, paths: list[str] | None = None) -> list[tuple[str, str | None, bool]]:
    """1 … c-2 c-1 c c+1 c+2 … total, as (label, url or None for a gap, is current); ``paths``: each page's file
    name in gallery order (page-<n>.html when None). report.js draws the same pager from gallery/pages.js."""
    paths = paths or [f"page-{n}.html" for n in range(1, total + 1)]
    want = sorted({1, total, *range(max(1, current - 2), min(total, current + 2) + 1)})
    out: list[tuple[str, str | None, bool]] = []
    prev = 0
    for n in want:
        if n - prev > 1:
            out.append(("…", None, False))
        out.append((str(n), paths[n - 1], n == current))
        prev = n
    return out


def paginate(
    groups: list[Group], sections: list[tuple[str, str]], labeled: bool = True, saved: Paging | None = None
) -> tuple[list[Card], list[GalleryPage], Paging]:
    """The gallery order and its pages: anchored to ``saved`` (the last write's, see paging.py), else even
    pages; returns the pages' Paging too, for the next write."""
    order = [c for g in groups for c in g.cards]
    keys = [paging.card_key(g.section, g.class_index, c.confidence, c.rel) for g in groups for c in g.cards]
    ranges, anchors = paging.plan(keys, saved, paging.order_definition(labeled, model.PAGE_SIZE), model.PAGE_SIZE)
    del keys
    number_of = [0] * len(order)  # card index -> its page's number (1-based place in the pager)
    for n, (pid, a, b) in enumerate(ranges, 1):
        for i in range(a, b):
            order[i].index = i
            order[i].page = pid
            number_of[i] = n
    titles = dict(sections)
    blocks: list[list[Block]] = [[] for _ in ranges]
    for g in groups:
        g.section_title = titles[g.section]
        g.start_page, g.end_page = number_of[g.cards[0].index], number_of[g.cards[-1].index]
        g.start_url = f"{layout.gallery_page(g.cards[0].page)}#{g.key}"
        for c in g.cards:
            c.group_key = g.key
            page = layout.detail_page(c.page)
            c.detail = f"{page}#{c.cid}"
            c.detail_url = c.detail if url(page) is page else f"{url(page)}#{c.cid}"  # one string when equal
        i = 0
        while i < len(g.cards):
            n = number_of[g.cards[i].index]
            j = i + min(len(g.cards) - i, ranges[n - 1][2] - g.cards[i].index)
            page_blocks = blocks[n - 1]
            opens = not page_blocks or page_blocks[-1].group.section != g.section
            page_blocks.append(Block(g, g.cards[i:j], i + 1, j, titles[g.section] if opens else None))
            i = j
    names = [f"page-{pid}.html" for pid, _a, _b in ranges]
    pages = []
    for n, (pid, a, b) in enumerate(ranges, 1):
        pages.append(
            GalleryPage(
                number=n,
                path=layout.gallery_page(pid),
                blocks=blocks[n - 1],
                prev=names[n - 2] if n > 1 else None,
                next=names[n] if n < len(ranges) else None,
                links=page_links(n, len(names), names),
                first=min(a + 1, len(order)),
                last=b,
                id=pid,
            )
        )
    return order, pages, anchors
