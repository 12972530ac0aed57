"""Every path under ``--out``: the one module that spells them.

::

    xaibatch.sqlite                 the manifest (MANIFEST)
    .xaibatch.lock                  one run at a time (LOCK)
    images/<stem>.png               display copy of each image (at most DISPLAY_MAX_SIDE)
    thumbs/image/<stem>.png         its thumbnail, only when the display copy is larger than THUMB_SIDE
    maps/<slug>/<stem>.npy          the map at the image's original size (float32); <slug>: method_dir(method)
    maps/<slug>/<stem>.png          the overlay at the display size
    thumbs/<slug>/<stem>.png        the overlay's thumbnail, only when the overlay is larger than THUMB_SIDE
    predictions.csv, index.html, gallery/, detail/, assets/, figures/, history.html, skipped.html: the report
    flagged/<label>/<sha256>.<ext>  images `xaibatch serve` users flagged as wrongly predicted (never touched by runs)

A picture no larger than a thumbnail is its own thumbnail: one file, and the manifest points at it twice.
Imports nothing heavy (no torch, no PIL), so planning a run and building the report stay cheap.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Collection
from collections import defaultdict

MANIFEST = "xaibatch.sqlite"
LOCK = ".xaibatch.lock"
CSV = "predictions.csv"
FAITH_CHANCE = "faithfulness-chance.json"  # deletion/insertion of random maps and a centred blob
SANITY = "sanity.json"  # `xaibatch sanity`: the model-randomization test
INDEX = "index.html"  # the report's summary page: open this
HISTORY = "history.html"  # every run
SKIPPED = "skipped.html"  # every file that could not be read, and why
REPORT_STATE = ".xaibatch-report.json"  # what each report page was rendered from (a cache: safe to delete)

DISPLAY_MAX_SIDE = 512  # display copies and overlays are written at most this large
THUMB_SIDE = 128  # gallery thumbnails are at most this large

PICTURE_DIRS = ("images", "thumbs", "maps")  # per-image files: written by runs, swept after a crash
# Top-level folders of an output folder that every run rewrites (maps, pictures, report pages and assets).
OUTPUT_DIRS = (*PICTURE_DIRS, "gallery", "detail", "assets", "figures")
PICTURE_SUFFIXES = (".png", ".npy")


def display_size(w: int, h: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the display copy of a w x h image."""
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


@functools.lru_cache(maxsize=1024)  # asked for every file the writer names: a handful of image sizes
def has_own_thumbnail(w: int, h: int) -> bool:
    """Whether the display copy of a w x h image is larger than a thumbnail (so a thumbnail file exists)."""
    return max(display_size(w, h)) > THUMB_SIDE


def image_png(stem: str) -> str:
    return f"images/{stem}.png"


def image_thumb(stem: str, w: int, h: int) -> str:
    return f"thumbs/image/{stem}.png" if has_own_thumbnail(w, h) else image_png(stem)


_SLUG_KEPT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_SLUG_NAMED = {":": "-", "+": "p"}


@functools.lru_cache(maxsize=1024)  # asked for every map file the writer names
def method_dir(method: str) -> str:
    """The folder of a method's files: its name with ``:`` as ``-``, ``+`` as ``p`` and any other character
    outside ``A-Za-z0-9._-`` as ``_`` and its code point in hex (``cam:gradcam++`` -> ``cam-gradcampp``).

    Portable (Windows, zip archives, relative URLs). Injective over every name xaibatch accepts (a test walks
    them); a run refuses two methods that would share a folder (:func:`check_method_dirs`).
    """
    return "".join(c if c in _SLUG_KEPT else _SLUG_NAMED.get(c) or f"_{ord(c):x}" for c in method)


def check_method_dirs(methods) -> None:
    """Raise ValueError naming two methods whose files would share a folder."""
    seen: dict[str, str] = {}
    for m in methods:
        other = seen.setdefault(method_dir(m), m)
        if other != m:
            raise ValueError(
                f"methods {other!r} and {m!r} would share the folder maps/{method_dir(m)}/; "
                "run them into different --out folders"
            )


def map_npy(method: str, stem: str) -> str:
    return f"maps/{method_dir(method)}/{stem}.npy"


def map_png(method: str, stem: str) -> str:
    return f"maps/{method_dir(method)}/{stem}.png"


def map_thumb(method: str, stem: str, w: int, h: int) -> str:
    return f"thumbs/{method_dir(method)}/{stem}.png" if has_own_thumbnail(w, h) else map_png(method, stem)


@dataclass(frozen=True)
class MapFiles:
    """One map's files under ``--out``: the array (.npy), the overlay (.png) and its thumbnail (the overlay itself
    when the image is small enough; None in rows of a manifest from before thumbnails)."""

    npy: str
    png: str
    thumb: str | None

    @classmethod
    def of(cls, method: str, stem: str, w: int, h: int) -> MapFiles:
        """The files of ``method``'s map of the image with ``stem``, ``w`` x ``h`` pixels, in this layout."""
        return cls(map_npy(method, stem), map_png(method, stem), map_thumb(method, stem, w, h))

    def paths(self) -> list[str]:
        """The paths recorded (a thumbnail that is the overlay appears twice, as the row records it)."""
        return [p for p in (self.npy, self.png, self.thumb) if p]


def moved_map_path(path: str, method: str) -> str:
    """A map file's path in the current layout, given its recorded one (``maps/cam:gradcam++/a.npy``)."""
    for top in ("maps", "thumbs"):
        old = f"{top}/{method}/"
        if path.startswith(old):
            return f"{top}/{method_dir(method)}/{path[len(old) :]}"
    return path


def card_id(rel: str) -> str:
    """An image's id in the report: its card's anchor and, after ``#``, its detail view's URL fragment."""
    return "c" + hashlib.sha1(rel.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def detail_page(page: int) -> str:
    """The detail viewer of gallery page ``page`` (its id: report/paging.py); ``#<card_id>`` names one of its
    images (``xaibatch serve`` links to it too)."""
    return f"detail/page-{page}.html"


def detail_data(page: int) -> str:
    """The data file of :func:`detail_page` (its images' detail records, a plain script)."""
    return f"detail/page-{page}.js"


def gallery_page(page: int) -> str:
    """Gallery page ``page`` (its id, from 1, not its place in the pager: report/paging.py); ``#<group key>`` or
    ``#<card_id>`` names a place on it."""
    return f"gallery/page-{page}.html"


GALLERY_PAGES = "gallery/pages.js"  # the pages in order, their places and totals: report.js draws the pagers from it
GALLERY_NAMES = "gallery/names.js"  # every image's name, gallery page and card id: the gallery's "find an image"

DETAIL_LINK = re.compile(r"detail/page-(\d+)\.html#(c[0-9a-f]{12})")  # a gallery card's link to its detail view


FLAGGED = "flagged"  # `xaibatch serve`: images flagged as wrongly predicted, OUT/flagged/<label>/<hash>.<ext>


def image_files(stem: str) -> list[str]:
    """Every file an image's display copy may have left (its thumbnail from an older layout included)."""
    return [image_png(stem), f"thumbs/image/{stem}.png"]


# Every file a stem becomes: images/<stem>.png, thumbs/<m>/<stem>.png, maps/<m>/<stem>.npy|.png (the report's
# detail pages are detail/page-N.html, named by no stem). The stem's last part must leave room for the longest
# suffix in 255 bytes.
STEM_SUFFIXES = (".png", ".npy")
MAX_STEM_NAME_BYTES = 255 - max(len(x) for x in STEM_SUFFIXES)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _hashed_stem(rel: str) -> str:
    """``a/b.png`` -> ``a/b.png~<hash>``, the name cut (at a character) so that it fits MAX_STEM_NAME_BYTES."""
    folder, _, name = rel.rpartition("/")
    tag = f"~{_short_hash(rel)}"
    name = name.encode()[: MAX_STEM_NAME_BYTES - len(tag)].decode("utf-8", "ignore")
    return f"{folder}/{name}{tag}" if folder else f"{name}{tag}"


def _fits(stem: str) -> bool:
    return len(stem.rsplit("/", 1)[-1].encode()) <= MAX_STEM_NAME_BYTES


def _folders(stems) -> set[str]:
    return {"/".join(parts[:i]) for s in stems for parts in [s.split("/")] for i in range(1, len(parts))}


def map_stems(rels: list[str]) -> dict[str, str]:
    """``a/b.png`` -> ``a/b``; when two images share a stem (``b.png``, ``b.jpg``) both keep their extension.

    Stems are unique, short enough for every file they become (STEM_SUFFIXES), and no
    ``<stem><suffix>`` is also a folder another image's files go in (``photo.jpg`` next to a
    folder ``photo.png/``, whose maps need a folder ``maps/<m>/photo.png/``): until that holds,
    the clashing ones keep their extension, and as a last resort get a short hash of their path
    (and, when too long, a shortened name).
    """
    stage = dict.fromkeys(rels, 0)  # 0: no extension, 1: with extension, 2: hashed

    def stem_at(r: str, k: int) -> str:
        while k < 2 and not _fits(s := (r.rsplit(".", 1)[0] if k == 0 else r)):
            k += 1
        stage[r] = k
        return s if k < 2 else _hashed_stem(r)

    stems = {r: stem_at(r, 0) for r in rels}
    folders = _folders(rels)
    while True:
        counts: dict[str, int] = defaultdict(int)
        for s in stems.values():
            counts[s] += 1
        clash = [r for r, s in stems.items() if counts[s] > 1 or any(s + x in folders for x in STEM_SUFFIXES)]
        bump = [r for r in clash if stage[r] == 0] or [r for r in clash if stage[r] == 1]
        if not bump:  # nothing clashes (or nothing more can be done here; assign_stems checks again)
            return stems
        stems.update({r: stem_at(r, stage[r] + 1) for r in bump})


def _aside(stem: str, files: set[str], n: int) -> str:
    """Rename each folder of ``stem`` that is also a file (``a.html/b`` -> ``a.html~<hash>/b``)."""
    parts = stem.split("/")
    for i in range(len(parts) - 1):
        path = "/".join(parts[: i + 1])
        if path in files:
            tag = f"~{_short_hash(f'{path}#{n}')}"
            parts[i] = parts[i].encode()[: 255 - len(tag)].decode("utf-8", "ignore") + tag
    return "/".join(parts)


def _as_stem_path(path: str) -> str | None:
    """Where a file under images/, thumbs/ or maps/ stands among the paths stems make (``<stem><suffix>``):
    ``images/a/b.png``, ``maps/<m>/a/b.png``, ``thumbs/<m>/a/b.png`` -> ``a/b.png``; None elsewhere."""
    top, _, rest = path.partition("/")
    if top not in PICTURE_DIRS:
        return None
    return (rest if top == "images" else rest.partition("/")[2]) or None


def assign_stems(rels: list[str], known: dict[str, Any], on_disk: Collection[str] = ()) -> dict[str, str]:
    """Output file stem per image: an image already in the manifest keeps its stem for good.

    A new image gets ``map_stems``' choice unless that clashes with a stem already given
    (``b.png`` known as ``b``, then ``b.jpg`` arrives: the newcomer is ``b.jpg``), or with a
    folder one needs, or the other way round (``a.jpg`` known as ``a``, then ``a.png/b.png``
    arrives: its folder becomes ``a.png~<hash>``). ``on_disk``: the files under images/, thumbs/
    and maps/ (relative to the output folder) that may still be there while the new images are
    written, such as those of images removed this run (deleted only after the report): a new
    image's files never need a folder where one of them is, nor go where a folder of them is
    (``x.png`` removed and a folder ``x.png/`` arrives, or the other way round); the same file
    (``x.png`` replaced by ``x.jpg``) is simply replaced.
    """
    stems = {r: known[r].stem for r in rels if r in known}
    taken = set(stems.values())
    files = {s + x for s in taken for x in STEM_SUFFIXES}
    folders = _folders(taken)
    if on_disk and len(stems) < len(rels):  # only new images take stems
        there = {p for f in on_disk if (p := _as_stem_path(f)) is not None and p not in files}  # not a known stem's
        files |= there
        folders |= _folders(there)

    def free(stem: str) -> bool:
        parents = ["/".join(stem.split("/")[:i]) for i in range(1, stem.count("/") + 1)]
        return (
            stem not in taken
            and _fits(stem)
            and not any(stem + x in folders for x in STEM_SUFFIXES)
            and not any(p in files for p in parents)
        )

    candidates = map_stems(rels)
    for r in rels:
        if r in stems:
            continue
        options = [candidates[r], r, _hashed_stem(r)]
        stem = next((s for s in options if free(s)), None)
        n = 0
        while stem is None:  # a folder on the way is some stem's file: move this image's files aside
            n += 1
            stem = _aside(_hashed_stem(r if n == 1 else f"{r}#{n}"), files, n)
            if not free(stem):
                stem = None
        stems[r] = stem
        taken.add(stem)
        files.update(stem + x for x in STEM_SUFFIXES)
        folders |= _folders([stem])
    return stems
