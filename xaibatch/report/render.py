"""Render the report's data with Jinja, writing only pages whose inputs changed."""

from __future__ import annotations

import gc
import json
import operator
import os
import time
from dataclasses import fields
from pathlib import Path
from urllib.parse import unquote
from typing import Any, Callable

import jinja2

from .. import layout
from ..defaults import cpu_count
from ..errors import UsageError, XaibatchError
from ..files import OutputDir
from ..manifest import Manifest
from ..resources import templates_dir
from . import snapshot
from .data import History, assemble, class_names, method_infos, read_rows
from .predictions import predictions_csv
from .snapshot import fingerprint, templates_key
from .fastcards import MACRO_FILES, cards_html
from .detail import backfill_grids, backfill_views, class_neighbours, detail_record, site_record, truth_of
from .localization import tally
from .forked import Forked, Queue
from .linked import Drawings, linked, write_assets, write_colour_bars, write_figures
from .model import Card, GalleryPage, MapView, ReportData, TEMPLATE_NAMES
from .output import PageWriter, WriteStats, Written, remove_stale
from .paging import Paging
from .text import fmt_bytes, fmt_pct, fmt_score


_ENVIRONMENTS: dict[tuple[str | None, str], jinja2.Environment] = {}  # the last template files' (templates_key)


def environment(template_dir: Path | None = None) -> jinja2.Environment:
    """User templates first (trusted: they are the user's own), packaged ones as the fallback.

    One per process while the template files are the same (their templates_key): check_templates, before a run's
    compute or ``xaibatch report``'s build, compiles every template, and the report then renders with those
    instead of compiling them all again (0.1 to 0.2 s of the build, in its serial part)."""
    key = (None if template_dir is None else str(template_dir), templates_key(template_dir))
    env = _ENVIRONMENTS.get(key)
    if env is None:
        _ENVIRONMENTS.clear()
        env = _ENVIRONMENTS[key] = _new_environment(template_dir)
    return env


def _new_environment(template_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(jinja2.FileSystemLoader(str(templates_dir())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["pct"] = lambda v: "–" if v is None else fmt_pct(v)
    env.filters["conf"] = fmt_pct
    env.filters["num"] = lambda v: "–" if v is None else fmt_score(v)
    env.filters["bytes"] = fmt_bytes
    env.filters["count"] = lambda v: f"{v:,}" if isinstance(v, int) else v  # 100,000 images, not 100000
    return env


# Fields computed from other fields by this version's code (the site key holds the version): left out of the key.
DERIVED = {
    "cid",  # rel
    "conf_text",  # confidence
    "label_conf",  # probs, label, pred
    "conf_attr",
    "image",  # stem
    "thumb",  # stem, width, height
    "detail_url",  # detail
    "methods_attr",  # the maps' methods
    "disp_w",  # width, height
    "disp_h",
    "pixelated",
    "stretched",
    "scale_text",  # scale (and the method's signedness, in the site key)
    "mag",
    "weak",  # scale, zero
}
_card_fields = operator.attrgetter(
    *(f.name for f in fields(Card) if f.repr and f.name not in ("maps", "label_maps") and f.name not in DERIVED)
)
_map_fields = operator.attrgetter(*(f.name for f in fields(MapView) if f.repr and f.name not in DERIVED))


def _card_key(c: Card) -> str:
    """Everything a card can show, as text (faster than the dataclass repr; every field but index/group_key and
    those DERIVED from the others)."""
    return repr((_card_fields(c), [_map_fields(v) for v in c.maps], [_map_fields(v) for v in c.label_maps]))


def render(out_dir: Path, template_dir: Path | None = None, fill_grids: bool = False) -> WriteStats:
    """Bring the report up to date: the run history only when nothing else changed, else build and write
    (pages whose inputs did not change are not rendered again); returns what was written. ``fill_grids``
    (``xaibatch report``): first add the summary grid to the views of maps stored without one, reading them."""
    out = Path(out_dir)
    stats = WriteStats(index=out / layout.INDEX)
    w = PageWriter(out, stats)
    collecting = gc.isenabled()
    gc.disable()  # the report builds many long-lived objects and few cycles: without this, the cyclic
    try:  # collector walks every card again and again (measured: half the time of a 20,000-image build)
        return _render(w, out, stats, template_dir, fill_grids)
    finally:
        if collecting:
            gc.enable()
        w.close()


def _render(w: PageWriter, out: Path, stats: WriteStats, template_dir: Path | None, fill_grids: bool) -> WriteStats:
    """Read the manifest; with the same content as last time rewrite only the run history, else build and write all."""
    t0 = time.perf_counter()
    state = w.load_state()
    manifest = Manifest(out / layout.MANIFEST)
    try:
        history = History.read(manifest)  # maps from before views existed: read once, stored (a migration)
        infos = method_infos(history, history.map_methods)
        backfill_views(out, manifest, infos)
        if fill_grids:  # the mean maps of maps stored before them (the content key moves: a full build)
            stats.grids = backfill_grids(out, manifest, infos)
        found = snapshot.inputs(out, manifest, history, template_dir, w.truth_cache)
        if template_dir is None and state.get("content") == found.key and _reuse(w, state, found, stats, t0):
            return stats
        images, maps, failures = read_rows(manifest, history)
    finally:
        manifest.close()
    names = class_names(found.history.run, images)
    # predictions.csv's bytes, made on a second core while this one makes the cards (which consume the rows)
    beside = Forked(lambda: predictions_csv(names, images, maps, found.history.earlier))
    try:
        csv = None if beside.started else predictions_csv(names, images, maps, found.history.earlier)
        saved_pages = Paging.from_json(state.get("paging"))
        data = assemble(out, images, maps, failures, found.history, found.masks, saved_pages)  # consumes the rows
        if csv is None:
            got = beside.result()
            csv = got if isinstance(got, bytes) else _csv_again(out, found.history)
    finally:
        beside.abandon()
    stats.gallery_pages, stats.accuracy = len(data.pages), data.accuracy
    stats.seconds_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = _write_all(w, data, csv, template_dir)
    remove_stale(w)
    w.save_state(found.key, summary, data.paging.to_json() if data.paging else None)
    stats.seconds_render = time.perf_counter() - t1
    stats.seconds_total = time.perf_counter() - t0
    return stats


def _csv_again(out: Path, history: History) -> bytes:
    """predictions.csv's bytes from the manifest's rows read again: the process that was making them failed, and
    the cards have consumed this process's rows (the folder is locked: the rows are the same)."""
    manifest = Manifest(out / layout.MANIFEST)
    try:
        images, maps, _failures = read_rows(manifest, history)
    finally:
        manifest.close()
    return predictions_csv(class_names(history.run, images), images, maps, history.earlier)


def _reuse(w: PageWriter, state: dict, found: snapshot.Inputs, stats: WriteStats, t0: float) -> bool:
    """Unchanged content: the last build's summary, with this run's history, rewrites only the history pages.

    False when the saved summary cannot be used or a file the last write left is gone (then all is built anew).
    """
    data = snapshot.load(state.get("summary") or {})
    if data is None or not _still_there(w, data):
        return False
    found.history.apply(data)
    stats.seconds_build = time.perf_counter() - t0
    _write_summary(w, environment(), data)
    stats.pages += sum(1 for rel in w.previous if rel.endswith(".html")) + 1  # and skipped.html
    stats.unchanged += len(w.previous) + 1 + len(linked(data))
    stats.gallery_pages = len(data.pages)
    stats.reused, stats.accuracy = True, data.accuracy
    stats.seconds_total = time.perf_counter() - t0
    stats.seconds_render = stats.seconds_total - stats.seconds_build
    return True


def _write_all(
    w: PageWriter,
    data: ReportData,
    csv: bytes,
    template_dir: Path | None,
) -> dict:
    """Write the figures, the CSV (predictions.csv's bytes), the assets and every page (shared with forked processes
    on a first build: :func:`_write_pages`); returns the summary to save for the next unchanged run."""
    drawings = Drawings(w)
    try:
        write_colour_bars(w, data, drawings)
        write_figures(w, data, drawings)
        drawings.start()  # drawn beside the pages when there is a second core
        w.files.write(layout.CSV, csv)  # before the pages
        env = environment(template_dir)
        write_assets(w, data, template_dir)
        if w.sizes is None:  # not yet listed by _still_there
            w.list_pages()
        site = data.site()
        _write_pages(w, env, data, site, fingerprint(templates_key(template_dir), site), template_dir)
        # from the ground truths the detail files were drawn with; over the last run's model's maps, as the other
        # numbers (an earlier model's maps, still in the gallery, are another model's)
        data.localization = tally([c for c in data.cards if not c.earlier], w.truths)
        summary = snapshot.save(data)
        drawings.finish()
        # the summary last, once every figure it links is drawn: a run killed (or out of disk) before this keeps
        # the previous index.html, which links the previous figures (their names carry their content's hash)
        _write_summary(w, env, data)
    finally:
        drawings.abandon()
    return summary


def _still_there(w: PageWriter, data: ReportData) -> bool:
    """Every file the last write left (pages, figures, assets, the CSV) is still in place."""
    w.list_pages()
    pages = [p.path for p in data.pages]
    sizes = w.sizes or {}
    if any(rel not in sizes for rel in pages) or not w.intact():  # a page gone, or not at the size it was written
        return False
    return all(
        (w.out / unquote(u)).is_file()
        for u in linked(data) + [layout.CSV, layout.SKIPPED, layout.GALLERY_NAMES, layout.GALLERY_PAGES]
    )


TRUTH_VERSION = 2  # bump when detail.truth_record's fields change (2: area, centre, each point's method)


def _truth(w: PageWriter, data: ReportData, c: Card) -> dict[str, Any] | None:
    """The card's ground truth (detail.truth_of), from the cache while its mask and its maps' peaks are the
    same: a mask is read once, not on every page write, and not at all while the input folder is not there (the
    mask key then comes from the cache too: snapshot.kept_masks)."""
    if not c.mask_key:
        return None
    key = fingerprint(
        TRUTH_VERSION,
        c.mask_key,
        c.width,
        c.height,
        [(v.method, v.title, v.peak, v.shape, v.zero, v.nowhere) for v in c.maps],
    )
    hit = w.truth_cache.get(c.rel)
    if isinstance(hit, list) and len(hit) in (2, 3) and hit[0] == key:
        truth = hit[1]
    elif data.input_dir is not None:
        truth = truth_of(w.inputs(data.input_dir), c)
    else:
        return None
    w.truths[c.rel] = [key, truth, c.mask_key]  # the mask key: what kept_masks gives back without the input folder
    return truth


def names_script(cards: list[Card]) -> bytes:
    """gallery/names.js: per gallery page, its images' card ids and names, for the gallery's "find an image"
    (loaded by report.js on the first search) and the detail view's link to a card moved to another page (detail.js),
    handed to a function."""
    pages: list[list[Any]] = []
    for c in cards:
        if not pages or pages[-1][0] != c.page:
            pages.append([c.page, []])
        pages[-1][1].append([c.cid, c.rel])
    return f"xaibatchNames({script_json(pages)});\n".encode("ascii")


def pages_script(data: ReportData) -> bytes:
    """gallery/pages.js: what a gallery page shows of the others, drawn by report.js (the pagers, "page 3 of 40",
    "images 401-600 of 7,950", each group's count and place), so that a page's own bytes depend on its cards
    alone (report/paging.py): each page's id, first and last place in gallery order; each group's key, class,
    section, first and last place. A plain script (fetch is refused on file://)."""
    body = {
        "total": data.total,
        "pages": [[p.id, p.first, p.last] for p in data.pages],
        "groups": [[g.key, g.class_index, g.section, g.cards[0].index + 1, g.cards[-1].index + 1] for g in data.groups],
    }
    return f"window.XAIBATCH_PAGES = {script_json(body)};\n".encode("ascii")


def moved_page(now: int) -> bytes:
    """The file left at a gallery or detail page's name once its page merged away (report/paging.py): it opens
    page ``now`` of the same folder, which holds the cards its range began with, with the link's fragment (a
    detail view there finds an image that moved on, from gallery/names.js); without JavaScript, a link."""
    to = f"page-{int(now)}.html"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>Page moved</title>\n'
        f'<script>location.replace("{to}" + location.hash);</script>\n</head>\n'
        f'<body>\n<p>The report\'s pages were rearranged: these images are now on <a href="{to}">{to}</a>.</p>\n'
        "</body>\n</html>\n"
    ).encode("ascii")


def script_json(value: Any) -> str:
    """``value`` as a JavaScript expression for a plain script (``fetch`` is refused on file://): ASCII JSON, in
    which file names are data, never markup ("<" is written \\u003c, so not even a "</script>" in a name could
    end a script if the file were ever inlined)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def detail_script(site: dict[str, Any], records: list[dict[str, Any]]) -> bytes:
    """A detail data file: a plain script that hands its JSON to the viewer."""
    return f"window.XAIBATCH_DETAIL = {script_json({'site': site, 'images': records})};\n".encode("ascii")


def detail_processes() -> int:
    """How many forked processes share the pages of a build with this one (:func:`_write_pages`): the cores left
    beside this process and the figures' one, at least 1 (a 2-core box), at most 6."""
    return max(1, min(6, cpu_count() - 2))


def page_chunks(pages: list[GalleryPage], k: int) -> list[list[GalleryPage]]:
    """``pages`` in at most ``k`` contiguous runs of about the same number of cards (never an empty run)."""
    total = sum(p.last - p.first + 1 for p in pages)
    chunks: list[list[GalleryPage]] = []
    done = 0
    for p in pages:
        if not chunks or (done >= total * len(chunks) / k and len(chunks) < k):
            chunks.append([])
        chunks[-1].append(p)
        done += p.last - p.first + 1
    return chunks


def _write_pages(
    w: PageWriter, env: jinja2.Environment, data: ReportData, site: Any, site_key: str, template_dir: Path | None
) -> None:
    """The gallery pages and their detail files, gallery/names.js and skipped.html.

    The pages are written in contiguous runs (about one page each), each run's gallery pages, fingerprints and
    detail files by one process (a page whose inputs did not change is not rendered again): forked processes
    (report/forked.py) and this one take the runs from one queue, this one once its own share is written, so
    none of them waits while work is left, whatever the cores. Each run's writes are set apart
    (PageWriter.apart) and taken in here in gallery order: the state and counts are those of a build in one
    process, and a run no child sent back (it failed) is written here."""
    gallery = env.get_template("gallery.html")
    env.get_template("detail.html")  # compiled once, before any fork, not in each process
    fast = template_dir is None or not any((Path(template_dir) / n).exists() for n in MACRO_FILES)
    runs = page_chunks(data.pages, min(len(data.pages), Queue.MAX_ITEMS))

    def run(i: int) -> tuple[Written, Written]:
        fps = page_fingerprints(data, site_key, runs[i])
        return (
            w.apart(lambda: _write_gallery(w, gallery, data, fps, runs[i], fast)),
            w.apart(lambda: _write_details(w, env, data, site, site_key, fps, runs[i])),
        )

    done: dict[int, tuple[Written, Written]] = {}
    # a re-run's too: a night's few hundred new images move most cards to another page (the gallery is sorted by
    # confidence), and a new method changes every page; a page whose inputs did not change costs its fingerprint
    helpers = min(detail_processes(), len(runs))
    queue = Queue(len(runs)) if helpers else None
    children = [Forked(lambda: _runs_in_child(w, queue, run)) for _ in range(helpers)] if queue else []
    try:
        w.write(layout.GALLERY_PAGES, pages_script(data))  # this process's own share first
        w.write(layout.GALLERY_NAMES, names_script(data.cards))
        for gone, now in data.paging.moved() if data.paging else []:  # pages merged away: links on
            w.write(layout.gallery_page(gone), moved_page(now))
            w.write(layout.detail_page(gone), moved_page(now))
        for i in iter(queue.take, None) if queue else range(len(runs)):
            done[i] = run(i)
        for child in children:
            got = child.result()
            if isinstance(got, dict):
                done.update(got)
    finally:
        for child in children:
            child.abandon()
        if queue:
            queue.close()
    for i in range(len(runs)):
        if i not in done:  # taken by a child that failed: written here
            done[i] = run(i)
        w.take(done[i][0])
    w.write(layout.SKIPPED, env.get_template(layout.SKIPPED).render(r=data, root="", nav="skipped").encode())
    for i in range(len(runs)):
        w.take(done[i][1])


def _runs_in_child(w: PageWriter, queue: Queue, run: Callable[[int], tuple[Written, Written]]) -> dict[int, Any]:
    """In a forked process (report/forked.py): ``run`` every run of pages it takes from ``queue``, writing through an
    OutputDir whose temporary names carry the run's pid; returns what each run wrote."""
    w.files = OutputDir(w.out, pid=os.getppid())
    try:
        return {i: run(i) for i in iter(queue.take, None)}
    finally:
        w.files.close()


def _write_details(
    w: PageWriter,
    env: jinja2.Environment,
    data: ReportData,
    site: Any,
    site_key: str,
    fps: dict[int, tuple[str, str]],
    pages: list[GalleryPage],
) -> None:
    """Per gallery page of ``pages``, a viewer page (detail/page-<n>.html, the same frame for every page) and a data file
    (detail/page-<n>.js) with its images' detail records; the browser draws one image, named in the URL's
    fragment (detail/page-<n>.html#<card id>). A data file is rewritten only when one of its cards, a
    neighbour across its edges or where a class filter leaves its groups, the site or a template changed."""
    viewer = env.get_template("detail.html")
    cards = data.cards
    shared = site_record(data.methods, data.target_words, data.n_classes)
    across = class_neighbours(data.groups)
    for p in pages:
        first, last = max(0, p.first - 1), p.last  # 0-based slice of the gallery order
        page_cards = cards[first:last]
        fp = fps[p.id][1]

        def script(page_cards=page_cards, first=first) -> str:
            records = []
            for i, c in enumerate(page_cards):
                j = first + i
                prev = cards[j - 1] if j > 0 else None
                nxt = cards[j + 1] if j + 1 < len(cards) else None
                records.append(detail_record(c, prev, nxt, _truth(w, data, c), across[c.group_key]))
            return detail_script(shared, records).decode("ascii")

        rel = layout.detail_data(p.id)
        w.write_page(rel, fp, script)
        if w.fingerprints[rel] == w.previous.get(rel):  # not rebuilt: keep its cached ground truths
            for c in page_cards:
                if c.rel in w.truth_cache and c.mask_key:
                    w.truths[c.rel] = w.truth_cache[c.rel]
        w.write_page(
            layout.detail_page(p.id),
            fingerprint(site_key, p.id),
            lambda n=p.id: viewer.render(
                r=site,
                number=n,
                root="../",
                nav="detail",
                data_src=layout.detail_data(n).rsplit("/", 1)[1],
            ),
        )


def _write_gallery(
    w: PageWriter,
    gallery: jinja2.Template,
    data: ReportData,
    fps: dict[int, tuple[str, str]],
    pages: list[GalleryPage],
    fast: bool,
) -> None:
    """Gallery pages, each re-rendered only when its cards, its place in the pager or the site changed."""
    for p in pages:
        w.write_page(p.path, fps[p.id][0], lambda: _render_gallery(gallery, data, p, fast))  # noqa: B023


def page_fingerprints(data: ReportData, site_key: str, pages: list[GalleryPage]) -> dict[int, tuple[str, str]]:
    """Per gallery page of ``pages`` (by id), the fingerprints of the page and of its detail data file
    (detail/page-<id>.js).

    A gallery page changes with its cards, its neighbours' ids (its no-JS Previous and Next) or the site, not with
    its place or the totals (gallery/pages.js: :func:`pages_script`); a data file with one of its cards, a neighbour
    across its edges or a class filter's step out of the groups it opens or closes, the site or a template.
    Each card's key (:func:`_card_key`) is made once, and only one page's keys are held at a time (they are
    600 bytes a card)."""
    cards = data.cards
    layout_key = fingerprint(
        site_key,
        data.card_width,
        data.card_thumb,
        data.class_names,
        data.labeled,
        data.sections,
        data.trust.faith if data.trust else None,
        data.earlier is not None,  # the gallery's line on cards marked "earlier model"
        data.filter_classes,
    )
    across = class_neighbours(data.groups)
    fps = {}
    for p in pages:
        first, last = max(0, p.first - 1), p.last  # 0-based slice of the gallery order
        page_cards = cards[first:last]
        keys = [_card_key(c) for c in page_cards]
        shown = [
            (
                b.group.key,
                b.group.title,
                b.group.order,
                b.group.class_index,
                b.group.section,
                b.group.section_title,
                b.heading_section,
                [keys[c.index - first] for c in b.cards],
            )
            for b in p.blocks
        ]
        before = cards[first - 1] if first > 0 and page_cards else None
        after = cards[last] if last < len(cards) and page_cards else None
        detail = fingerprint(
            site_key,
            keys,
            before and (before.cid, before.page, before.group_key),
            after and (after.cid, after.page, after.group_key),
            # the groups' edges a class filter steps to (detail.class_neighbours), wherever they are: for the groups
            # that open or close here (detail_record keeps them only on a group's first and last card)
            [
                (
                    b.group.key,
                    [x and (x.cid, x.page) for x in across[b.group.key]],
                    b.first == 1,
                    b.last == b.group.count,
                )
                for b in p.blocks
                if b.first == 1 or b.last == b.group.count
            ],
            data.input_dir is not None,
        )
        fps[p.id] = (fingerprint(layout_key, p.id, p.prev, p.next, shown), detail)
    return fps


def _render_gallery(gallery: jinja2.Template, data: ReportData, p: Any, fast: bool) -> str:
    for b in p.blocks:
        b.html = cards_html(b.cards, "../", data.card_thumb) if fast else None
    try:
        return gallery.render(r=data, p=p, root="../", nav="gallery")
    finally:  # a page's cards as HTML, kept on its blocks, held every page written so far (5 KB an image)
        for b in p.blocks:
            b.html = None


def _write_summary(w: PageWriter, env: jinja2.Environment, data: ReportData) -> None:
    """The pages that show the run history: written on every run."""
    w.write(layout.HISTORY, env.get_template(layout.HISTORY).render(r=data, root="", nav="history").encode())
    w.write(layout.INDEX, env.get_template(layout.INDEX).render(r=data, root="", nav="summary").encode("utf-8"))


def write_report(out_dir: Path, template_dir: Path | None = None, fill_grids: bool = False) -> WriteStats:
    """Write (or bring up to date) the static report in ``out_dir``; returns what was written (``.index``).
    ``fill_grids``: see :func:`render`."""
    try:
        return render(out_dir, template_dir, fill_grids)
    except jinja2.TemplateError as e:  # e.g. a --template-dir template using a name the data lacks
        raise XaibatchError(f"cannot render the report: {type(e).__name__}: {e}") from None


def check_templates(template_dir: Path | None) -> None:
    """Compile every template now, so a broken --template-dir fails before any compute, as one line."""
    env = environment(template_dir)
    for name in TEMPLATE_NAMES:
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as e:
            where = f"{e.filename or name}, line {e.lineno}"
            raise UsageError(f"--template-dir: template error in {where}: {e.message}") from None
        except jinja2.TemplateError as e:
            raise UsageError(f"--template-dir: template {name}: {type(e).__name__}: {e}") from None
