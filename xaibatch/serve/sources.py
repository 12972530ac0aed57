"""Where the page's images come from besides uploads: a few bundled demo images, and the images a report under
``--out`` holds (with a link to each one's detail page)."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout
from ..errors import XaibatchError
from ..files import file_stamp, safe_join
from ..manifest import ImageRow, commit_stamp, read_snapshot
from .core import Upload, read_upload

MAX_PICKS = 1000  # report images offered in the page's list (all of them can still be uploaded)
REPORT_ROUTE = "/report"  # the app serves the report folder here, so its pages open from the app
DEMO_SEED = 7


def demo_images(n: int = 3) -> dict[str, bytes]:
    """``n`` REAL and ``n`` FAKE 32x32 images made as ``xaibatch demo-data`` makes them, as PNG bytes by name."""
    import numpy as np
    from PIL import Image

    from ..tools.demo import _crop, make_fake, source_photos

    rng = np.random.default_rng(DEMO_SEED)
    photos = source_photos()
    out = {}
    for i in range(n):
        for kind in ("REAL", "FAKE"):
            a = _crop(rng, photos[int(rng.integers(len(photos)))][1])
            if kind == "FAKE":
                a = make_fake(rng, a)[0]
            buf = io.BytesIO()
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
            out[f"demo: {kind.lower()} {i + 1}"] = buf.getvalue()
    return out


@dataclass
class ReportImages:
    """The images of the report in ``out`` (none when there is no report there), found by content or by path.

    Read again whenever a run (a cron job's, into the same OUT) changed the manifest since (:meth:`refresh`), and the
    gallery's links whenever its pages changed: the page offers the report's images as they are now, and links an
    image to the detail page that shows it now (a link read before, once a run moved the image to another gallery
    page, opened that page's first image, another one)."""

    out: Path
    input_dir: Path | None = None
    rows: dict[str, ImageRow] = field(default_factory=dict)  # rel -> row
    by_sha: dict[str, ImageRow] = field(default_factory=dict)
    problem: str | None = None  # why the report could not be read
    pages: dict[str, int] | None = None  # card id -> gallery page, read from the gallery's links when first asked
    seen: tuple | None = field(default=None, repr=False, compare=False)  # the manifest's stamp when rows were read
    pages_seen: tuple | None = field(default=None, repr=False, compare=False)  # the gallery's, when pages were
    guard: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # the app's threads

    @classmethod
    def load(cls, out: Path) -> "ReportImages":
        found = cls(Path(out))
        found.seen = found._stamp()
        path = found.out / layout.MANIFEST
        if not path.is_file():
            return found
        try:  # one committed state, no file made there even for a moment (-wal, -shm): it may be read-only
            rows, input_dir = read_snapshot(path, lambda m: (m.images(), m.get_meta("input_dir")))  # any cwd works
        except (XaibatchError, OSError, ValueError) as e:
            found.problem = str(e)
            return found
        found.rows = rows
        found.by_sha = {r.sha256: r for r in rows.values()}
        found.input_dir = Path(input_dir) if input_dir else None
        return found

    def _stamp(self) -> tuple:
        return commit_stamp(self.out / layout.MANIFEST)

    def refresh(self) -> "ReportImages":
        """Read the report again if a run changed its manifest since it was read; returns self."""
        with self.guard:
            stamp = self._stamp()
            if stamp != self.seen:
                now = ReportImages.load(self.out)
                self.rows, self.by_sha, self.input_dir, self.problem = now.rows, now.by_sha, now.input_dir, now.problem
                self.seen = now.seen
        return self

    def detail_url(self, sha256: str) -> str | None:
        """The app's link to the detail page of the report's image with these bytes, if it has one."""
        from ..report.model import url

        row = self.refresh().by_sha.get(sha256)
        if row is None:
            return None
        cid = layout.card_id(row.rel)
        page = self.detail_pages().get(cid)
        if page is None:
            return None
        return f"{REPORT_ROUTE}/{url(layout.detail_page(page))}#{cid}"

    def detail_pages(self) -> dict[str, int]:
        """Which detail viewer shows each image: the links of the gallery's cards (a page per 200 images), read again
        when the gallery changed (each page the report rewrites is renamed into place)."""
        gallery_stamp = file_stamp(self.out / "gallery")
        if self.pages is None or gallery_stamp != self.pages_seen:
            self.pages, self.pages_seen = {}, gallery_stamp
            gallery = self.out / "gallery"
            for f in sorted(gallery.glob("page-*.html")) if gallery.is_dir() else []:
                if f.is_symlink() or not f.is_file():
                    continue  # the report writes plain files; never block on a FIFO planted there
                try:
                    text = f.read_text("utf-8", errors="replace")
                except OSError:
                    continue
                self.pages.update((cid, int(n)) for n, cid in layout.DETAIL_LINK.findall(text))
        return self.pages

    def pickable(self) -> list[str]:
        """The report's images the page offers to pick: none while its input folder is not there (moved, renamed,
        or the output folder copied to another machine); an upload of one still links to its detail page."""
        self.refresh()
        return sorted(self.rows) if self.input_dir is not None and self.input_dir.is_dir() else []

    def read(self, rel: str) -> Upload:
        """One of the report's images, read from its input folder."""
        self.refresh()
        rows, input_dir = self.rows, self.input_dir  # as read now: the page's thread may read the report again
        if rel not in rows or input_dir is None:
            raise XaibatchError(
                f"{rel!r} is not in the report under {self.out} (a run since the page was loaded may have removed "
                "it: reload the page for the report's images now)"
            )
        if not input_dir.is_dir():
            raise XaibatchError(
                f"the report's input folder {input_dir} is not there any more (moved, renamed, or the report "
                f"copied from another machine): upload {rel!r} instead"
            )
        path = safe_join(input_dir, rel)
        if not os.path.lexists(path):
            raise XaibatchError(
                f"{rel!r} is no longer in the report's input folder {input_dir} (moved or deleted since the "
                "report's run; the next run drops it): pick another image"
            )
        upload = read_upload(path)
        # Only the bytes the run read: the manifest (another user's, in a shared folder) names the folder read, and
        # would otherwise make this server read and show any image its user can read, at a path of its choosing.
        if upload.sha256 != rows[rel].sha256:
            raise XaibatchError(f"{rel!r} has changed since the report's run: upload it instead (or run again)")
        return upload
