"""Every path under ``--out``: the one module that spells them.

::

    xaibatch.sqlite                 the manifest (MANIFEST)
    .xaibatch.lock                  one run at a time (LOCK)
    images/<stem>.png               display copy of each image (at most DISPLAY_MAX_SIDE)
    thumbs/image/<stem>.png         its thumbnail, only when the display copy is larger than THUMB_SIDE
    maps/<method>/<stem>.npy        the map at the image's original size (float32)
    maps/<method>/<stem>.png        the overlay at the display size
    thumbs/<method>/<stem>.png      the overlay's thumbnail, only when the overlay is larger than THUMB_SIDE
    predictions.csv, index.html, gallery/, detail/, assets/, figures/, history.html, skipped.html: the report

A picture no larger than a thumbnail is its own thumbnail: one file, and the manifest points at it twice.
Imports nothing heavy (no torch, no PIL), so planning a run and building the report stay cheap.
"""

from __future__ import annotations

import hashlib
from typing import Any
from collections import defaultdict

MANIFEST = "xaibatch.sqlite"
LOCK = ".xaibatch.lock"
CSV = "predictions.csv"
FAITH_CHANCE = "faithfulness-chance.json"  # deletion/insertion of random maps and a centred blob
SANITY = "sanity.json"  # `xaibatch sanity`: the model-randomization test

DISPLAY_MAX_SIDE = 512  # display copies and overlays are written at most this large
THUMB_SIDE = 128  # gallery thumbnails are at most this large

PICTURE_DIRS = ("images", "thumbs", "maps")  # per-image files: written by runs, swept after a crash
PICTURE_SUFFIXES = (".png", ".npy")


def display_size(w: int, h: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the display copy of a w x h image."""
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def has_own_thumbnail(w: int, h: int) -> bool:
    """Whether the display copy of a w x h image is larger than a thumbnail (so a thumbnail file exists)."""
    return max(display_size(w, h)) > THUMB_SIDE


def image_png(stem: str) -> str:
    return f"images/{stem}.png"


def image_thumb(stem: str, w: int, h: int) -> str:
    return f"thumbs/image/{stem}.png" if has_own_thumbnail(w, h) else image_png(stem)


def map_npy(method: str, stem: str) -> str:
    return f"maps/{method}/{stem}.npy"


def map_png(method: str, stem: str) -> str:
    return f"maps/{method}/{stem}.png"


def map_thumb(method: str, stem: str, w: int, h: int) -> str:
    return f"thumbs/{method}/{stem}.png" if has_own_thumbnail(w, h) else map_png(method, stem)


def image_files(stem: str) -> list[str]:
    """Every file an image's display copy may have left (its thumbnail from an older layout included)."""
    return [image_png(stem), f"thumbs/image/{stem}.png"]


def stem_files(stem: str, methods: list[str]) -> list[str]:
    """Every path a stem becomes, for checking names against each other and against length limits."""
    return [*image_files(stem), *(p for m in methods for p in (map_npy(m, stem), map_png(m, stem),
                                                               f"thumbs/{m}/{stem}.png"))]


def map_stems(rels: list[str]) -> dict[str, str]:
    """``a/b.png`` -> ``a/b``; when two images share a stem (``b.png``, ``b.jpg``) both keep their extension.

    Stems are unique, and no ``<stem>.png``/``<stem>.npy`` is also a folder another image's files go in
    (``photo.jpg`` next to a folder ``photo.png/``): until that holds, the clashing ones keep their
    extension, and as a last resort get a short hash of their path.
    """
    stems = {r: r.rsplit(".", 1)[0] for r in rels}
    folders = {"/".join(r.split("/")[:i]) for r in rels for i in range(1, r.count("/") + 1)}
    while True:
        counts: dict[str, int] = defaultdict(int)
        for s in stems.values():
            counts[s] += 1
        clash = [r for r, s in stems.items() if counts[s] > 1 or f"{s}.png" in folders or f"{s}.npy" in folders]
        keep_ext = [r for r in clash if stems[r] != r and not stems[r].startswith(f"{r}~")]
        if keep_ext:  # first: the clashing ones keep their extension
            stems.update({r: r for r in keep_ext})
            continue
        hashed = [r for r in clash if stems[r] == r]
        if not hashed:  # nothing clashes (or nothing more can be done)
            return stems
        stems.update({r: f"{r}~{hashlib.sha256(r.encode()).hexdigest()[:8]}" for r in hashed})


def assign_stems(rels: list[str], known: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Output file stem per image: an image already in the manifest keeps its stem for good.

    A new image gets ``map_stems``' choice unless an existing image already uses
    it (``b.png`` known as ``b``, then ``b.jpg`` arrives: the newcomer is ``b.jpg``).
    """
    stems = {r: known[r].stem for r in rels if r in known}
    taken = set(stems.values())
    candidates = map_stems(rels)
    for r in rels:
        if r in stems:
            continue
        stem = candidates[r]
        if stem in taken:
            stem = r
        n = 1
        while stem in taken:
            stem, n = f"{r}~{n}", n + 1
        stems[r] = stem
        taken.add(stem)
    return stems
