"""A reusable consistency check of an xaibatch output folder, for any test that tries to break a run."""

from __future__ import annotations

import csv
import html
import json
import os
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from helpers import manifest_rows, manifest_value
from xaibatch import layout
from xaibatch.files import temporary

OWNED = ("images", "thumbs", "maps")


class _Cards(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "li" and "card" in (a.get("class") or "").split():
            self.names.append(a.get("data-name"))


def _unquote_cell(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:2] in ("=", "+", "-", "@", "\t", "\r") else cell


# A picture file a report page or data file links: "../images/a.png" in a page, "maps/m/a.png" in a data file.
_PICTURE_LINK = re.compile(r"""["'](?:\.\./)?((?:images|thumbs|maps)/[^"'<>]+?\.(?:png|npy))["']""")


def report_links(out: Path) -> set[str]:
    """Every file under images/, thumbs/, maps/ that the report's pages and data files link, relative to ``out``."""
    out = Path(out)
    links = set()
    for page in [*out.glob("*.html"), *out.glob("gallery/*"), *out.glob("detail/*")]:
        if page.suffix not in (".html", ".js"):
            continue
        for m in _PICTURE_LINK.finditer(page.read_text("utf-8")):
            link = html.unescape(m.group(1)) if page.suffix == ".html" else json.loads(f'"{m.group(1)}"')
            links.add(unquote(link))  # links are percent-encoded, in the pages and in their data files
    return links


def check_report_links(out: Path) -> set[str]:
    """Assert that every picture the report on disk links exists (whichever run wrote it); return the links."""
    links = report_links(out)
    assert links, "the report links no picture"
    missing = sorted(p for p in links if not (Path(out) / p).is_file())
    assert not missing, f"the report links missing files: {missing[:5]}"
    return links


def check_output_folder(out: Path, input_dir: Path | None = None, report: bool = True) -> dict[str, str]:
    """Assert that ``out`` is consistent; return {rel: stem} of its images.

    Every manifest row's files exist; no file under images/, thumbs/, maps/ that no row points at; no
    temporary file anywhere; predictions.csv, the gallery pages and the detail pages list each manifest
    image exactly once, and every picture they link exists (when ``report``); with ``input_dir``, every image row
    is a file there.
    """
    out = Path(out)
    rows = manifest_rows(out, "SELECT rel, stem, width, height FROM images")
    stems = {rel: stem for rel, stem, _w, _h in rows}
    maps = manifest_rows(out, "SELECT rel, method, npy, png, thumb FROM maps")
    failures = {r for (r,) in manifest_rows(out, "SELECT rel FROM failures")}
    running = manifest_value(out, "SELECT count(*) FROM runs WHERE status = 'running'")
    assert running == 0, "a run row is still 'running'"
    referenced = set()
    for _rel, stem, width, height in rows:
        referenced |= {layout.image_png(stem), layout.image_thumb(stem, width, height)}
    for rel, method, *files in maps:
        assert rel in stems, f"map row {method} of {rel} has no image row"
        referenced |= {f for f in files if f}
    missing = sorted(f for f in referenced if not (out / f).is_file())
    assert not missing, f"rows point at missing files: {missing[:5]}"
    present = set()
    for top in OWNED:
        for dirpath, _dirs, files in os.walk(out / top):
            for name in files:
                present.add(Path(os.path.relpath(os.path.join(dirpath, name), out)).as_posix())
    orphans = sorted(present - referenced)
    assert not orphans, f"files no row points at: {orphans[:5]}"
    temps = [os.path.join(d, n) for d, _s, files in os.walk(out) for n in files if temporary(n)]
    assert not temps, f"temporary files left: {temps[:5]}"
    assert not set(stems) & failures, f"images both computed and failed: {sorted(set(stems) & failures)[:5]}"
    if input_dir is not None:
        gone = sorted(r for r in stems if not (Path(input_dir) / r).is_file())
        assert not gone, f"rows of images no longer in the input: {gone[:5]}"
    if report:
        with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        csv_rels = Counter(_unquote_cell(r[0]) for r in rows)
        assert csv_rels == Counter(stems.keys()), (
            f"predictions.csv and the manifest differ: "
            f"{sorted(set(csv_rels) ^ set(stems))[:5]} {csv_rels.most_common(1)}"
        )
        parser = _Cards()
        for page in sorted((out / "gallery").glob("page-*.html")):
            parser.feed(page.read_text(encoding="utf-8"))
        cards = Counter(parser.names)
        assert cards == Counter(stems.keys()), f"gallery and manifest differ: {sorted(set(cards) ^ set(stems))[:5]}"
        details: Counter = Counter()  # each image's detail view: a record in its gallery page's data file
        for page in sorted((out / "detail").glob("page-*.js")):
            assert (out / "detail" / page.name.replace(".js", ".html")).is_file(), f"{page.name} has no viewer"
            details.update(im["rel"] for im in detail_page_images(page))
        assert details == Counter(stems.keys()), f"detail views differ: {sorted(set(details) ^ set(stems))[:5]}"
        stale = [
            os.path.join(d, n)
            for d, _s, files in os.walk(out / "detail")
            for n in files
            if d != str(out / "detail") and n.endswith(".html")
        ]
        assert not stale, f"per-image pages of the old layout left: {stale[:5]}"
        missing = sorted(p for p in report_links(out) if not (out / p).is_file())
        assert not missing, f"the report links missing files: {missing[:5]}"
    return stems


def detail_page_images(page: Path) -> list[dict]:
    """The image records of one detail data file (``detail/page-N.js``: ``window...=<JSON>;``)."""
    text = page.read_text("ascii")
    return json.loads(text[text.index("=") + 1 :].strip().rstrip(";"))["images"]


def detail_records(out: Path) -> dict[str, dict]:
    """rel -> the detail view's record of that image, over every detail data file of the report in ``out``."""
    return {im["rel"]: im for page in (Path(out) / "detail").glob("page-*.js") for im in detail_page_images(page)}
