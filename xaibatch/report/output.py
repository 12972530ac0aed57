"""Where every file of the report goes: :class:`PageWriter` (written only when its bytes change, through
files.OutputDir), what a write did (:class:`WriteStats`; :class:`Written` for writes set apart, e.g. by a forked
process), and the removal of files no write produced."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import layout
from ..errors import UsageError
from ..files import InputFolder, OutputDir, safe_join, walk_files
from .model import FINGERPRINT_VERSION, OWNED_DIRS


@dataclass
class WriteStats:
    """What one write_report call did (the benchmark and the tests read it)."""

    index: Path
    written: int = 0  # files whose bytes changed
    bytes_written: int = 0  # their size (what a backup or rsync of the folder copies again)
    unchanged: int = 0
    removed: int = 0
    pages: int = 0  # HTML pages in the report
    gallery_pages: int = 0
    biggest_page: tuple[str, int] = ("", 0)
    seconds_build: float = 0.0
    seconds_render: float = 0.0
    seconds_total: float = 0.0
    reused: bool = False  # nothing per image changed: only the run history was rendered (see snapshot.py)
    grids: int = 0  # map views given their summary grid (xaibatch report on a folder of an older xaibatch)
    accuracy: float | None = None  # over labeled images; None when there are none


@dataclass
class Written:
    """What some writes set apart from the rest (:meth:`PageWriter.apart`) must tell the PageWriter: made in a
    forked process, or here out of order, and taken in (:meth:`PageWriter.take`) in the order of a build made
    in one piece, so the saved state (its fingerprints and ground truths in gallery order) and the counts are the
    same byte for byte."""

    paths: list[str]
    fingerprints: dict[str, str]
    truths: dict[str, list[Any]]
    written: int
    unchanged: int
    pages: int
    biggest_page: tuple[str, int]
    bytes_written: int = 0


class PageWriter:
    """Every file of the report goes through here: pages, data files, assets, figures, predictions.csv and
    the state, each written with :class:`~xaibatch.files.OutputDir` (checked folders, descriptor-relative
    atomic renames), so a symlink planted under the output folder cannot redirect a write outside it."""

    def __init__(self, out_dir: Path, stats: WriteStats) -> None:
        self.out = out_dir
        self.stats = stats
        self.paths: set[str] = set()
        self.previous: dict[str, str] = {}  # page -> fingerprint of its inputs at the last write
        self.sizes: dict[str, int] | None = None  # page -> size of the file there now (list_pages)
        self.fingerprints: dict[str, str] = {}
        self.truth_cache: dict[str, list[Any]] = {}  # mask path -> [fingerprint, truth record] (see _truth)
        self.truths: dict[str, list[Any]] = {}  # the same, for this write's images
        # a saved state was read: a file on disk is the last write's (without one, a first build or after a
        # restart of the machine (pipeline/restart.py), the figures and colour bars are drawn and compared too)
        self.trusted = False
        for top in ("assets", "figures", *OWNED_DIRS):  # refuse a symlink that leads out of the report folder
            safe_join(out_dir, top)
        self.files = OutputDir(out_dir)
        self._inputs: InputFolder | None = None

    def inputs(self, input_dir: Path) -> InputFolder:
        """The input folder that ground-truth masks are read from (detail.truth_of), its folders opened once."""
        if self._inputs is None or self._inputs.root is not input_dir:  # one report: one input folder
            if self._inputs is not None:
                self._inputs.close()
            self._inputs = InputFolder(input_dir)
        return self._inputs

    def close(self) -> None:
        self.files.close()
        if self._inputs is not None:
            self._inputs.close()

    def _path(self, rel: str) -> Path:
        # Lexical check only (resolve() per page costs more than rendering it); the top folders are checked once.
        parts = rel.split("/")
        if rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"refusing to write report page {rel!r}: not a plain relative path")
        self.paths.add(rel)
        return self.out.joinpath(*parts)

    def _count(self, rel: str, size: int) -> None:
        if rel.endswith(".html"):
            self.stats.pages += 1
            if size > self.stats.biggest_page[1]:
                self.stats.biggest_page = (rel, size)

    def write(self, rel: str, data: bytes) -> None:
        """Write only when the bytes differ: unchanged files keep their mtime."""
        self._path(rel)
        self._count(rel, len(data))
        if self.files.read(rel, len(data)) == data:
            self.stats.unchanged += 1
            return
        self.files.write(rel, data)
        self.stats.written += 1
        self.stats.bytes_written += len(data)

    def write_page(self, rel: str, fingerprint: str, render: Callable[[], str]) -> None:
        """Skip rendering when the page's inputs are unchanged (same fingerprint as last time) and the file is
        there at the size it was written; otherwise render and write only if the bytes differ. The saved key is
        the fingerprint and that size ("<fingerprint>/<bytes>"), so a page cut short or overwritten is mended."""
        size = (self.sizes or {}).get(rel, -1)
        if size >= 0 and self.previous.get(rel) == _page_key(fingerprint, size):
            self.fingerprints[rel] = self.previous[rel]
            self._path(rel)
            self._count(rel, size)
            self.stats.unchanged += 1
            return
        data = render().encode("utf-8")
        self.write(rel, data)
        self.fingerprints[rel] = _page_key(fingerprint, len(data))

    def apart(self, write: Callable[[], None]) -> Written:
        """Run ``write()`` with this writer's record of what was written set aside; returns what it wrote, for
        :meth:`take` (the files themselves are written as ever)."""
        kept = self.paths, self.fingerprints, self.truths, self.stats
        self.paths, self.fingerprints, self.truths = set(), {}, {}
        self.stats = WriteStats(index=kept[3].index)
        try:
            write()
            s = self.stats
            return Written(
                sorted(self.paths),
                self.fingerprints,
                self.truths,
                s.written,
                s.unchanged,
                s.pages,
                s.biggest_page,
                s.bytes_written,
            )
        finally:
            self.paths, self.fingerprints, self.truths, self.stats = kept

    def take(self, got: Written) -> None:
        """Take in what :meth:`apart` returned, as if those writes were made now."""
        self.paths.update(got.paths)
        self.fingerprints.update(got.fingerprints)
        self.truths.update(got.truths)
        s = self.stats
        s.written, s.unchanged, s.pages = s.written + got.written, s.unchanged + got.unchanged, s.pages + got.pages
        s.bytes_written += got.bytes_written
        if got.biggest_page[1] > s.biggest_page[1]:
            s.biggest_page = tuple(got.biggest_page)

    def intact(self) -> bool:
        """Every page the last write left is still there at the size it was written (after list_pages)."""
        sizes = self.sizes or {}
        return all(key.rpartition("/")[2] == str(sizes.get(rel)) for rel, key in self.previous.items())

    def list_pages(self) -> None:
        """Sizes of the pages already there, from one listing of their folders (not a stat per page)."""
        sizes = self.sizes = {}
        for rel, path in walk_files(self.out, OWNED_DIRS):
            try:
                sizes[rel] = os.stat(path).st_size
            except OSError:
                pass

    def load_state(self) -> dict[str, Any]:
        """The state saved by the last write: page fingerprints, the content key and the summary (a cache)."""
        try:
            state = json.loads((self.out / layout.REPORT_STATE).read_text("utf-8"))
            if state.get("version") == FINGERPRINT_VERSION and isinstance(state.get("pages"), dict):
                self.previous = state["pages"]
                if isinstance(state.get("truth"), dict):
                    self.truth_cache = state["truth"]
                self.trusted = True
                return state
        except (OSError, ValueError, AttributeError):
            pass
        self.previous = {}
        return {}

    def save_state(self, content_key: str, summary: dict[str, Any], paging: dict[str, Any] | None = None) -> None:
        """``paging``: the gallery pages' ranges (paging.Paging.to_json), which the next write anchors its pages to."""
        body = json.dumps(
            {
                "version": FINGERPRINT_VERSION,
                "content": content_key,
                "summary": summary,
                "pages": self.fingerprints,
                "truth": self.truths,
                "paging": paging,
            },  # in gallery order
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        ).encode("utf-8", "surrogatepass")
        if self.files.read(layout.REPORT_STATE, len(body)) != body:
            self.files.write(layout.REPORT_STATE, body)


def remove_stale(w: PageWriter) -> None:
    """Delete report files this write did not produce: pages of removed images, old assets and figures."""
    out = w.out
    patterns = {
        "assets": (".css", ".js", ".svg"),
        "figures": (".svg",),
        "gallery": (".html",),  # and gallery/pages.js, names.js: written on every build
        "detail": (".html", ".js"),
    }
    for top, exts in patterns.items():
        root = out / top
        if not root.is_dir():
            continue
        base = len(str(out)) + 1
        for dirpath, _dirs, filenames in os.walk(root, topdown=False):
            prefix = dirpath[base:].replace(os.sep, "/") + "/"
            for f in filenames:
                if f.endswith(exts) and prefix + f not in w.paths:  # temporary files end in .tmp
                    os.unlink(os.path.join(dirpath, f))
                    w.stats.removed += 1
            if dirpath != str(root):
                try:
                    os.rmdir(dirpath)  # only succeeds when empty
                except OSError:
                    pass


def _page_key(fingerprint: str, size: int) -> str:
    """What the state saves of a page: its inputs' fingerprint and the bytes it was written with."""
    return f"{fingerprint}/{size}"
