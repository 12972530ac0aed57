"""Gallery pages anchored by content (report/paging.py): a re-run that adds, removes or changes K images rewrites
the pages that hold them, not every page after them, and the gallery order read across the pages is a fresh
build's."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from test_report import labeled_rows, pages_js, parse, synth
from xaibatch import layout, report
from xaibatch.manifest import FILENAME, Manifest
from xaibatch.report import paging


def files_now(out: Path) -> dict[str, tuple[int, int]]:
    """Every file of the gallery and detail folders: (inode, mtime); a write (an atomic rename) changes both."""
    got = {}
    for top in ("gallery", "detail"):
        for p in (out / top).iterdir():
            st = p.stat()
            got[f"{top}/{p.name}"] = (st.st_ino, st.st_mtime_ns)
    return got


def rewritten(before: dict, after: dict) -> set[str]:
    return {k for k, v in after.items() if before.get(k) != v}


def order_by_pager(out: Path) -> list[str]:
    """The gallery order as a reader sees it: every page, in the order pages.js gives them, its cards in turn."""
    names = []
    for pid, _first, _last in pages_js(out)["pages"]:
        names += [c["data-name"] for c in parse(out / layout.gallery_page(pid)).cards]
    return names


def fresh_order(out: Path, tmp: Path) -> list[str]:
    """The gallery order of a build of the same manifest from scratch (no saved state: even pages)."""
    copy = tmp / "fresh"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    shutil.copy(out / FILENAME, copy / FILENAME)
    report.render(copy)
    return order_by_pager(copy)


def more_rows(n: int, seed: int, p0=(0.02, 0.98)) -> list[tuple[str, int, float]]:
    rng = np.random.default_rng(seed)
    return [(f"new{seed}/im_{i:04d}.png", i % 2, float(rng.uniform(*p0))) for i in range(n)]


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(report.model, "PAGE_SIZE", 50)  # read at call time: 5,000 images, 100 pages


def test_adding_images_rewrites_only_the_pages_that_hold_them(tmp_path, small_pages):
    """A night's new images (here 10 in 5,000, at 50 cards a page) moved most cards to another page: every gallery
    page, every detail page and data file was rewritten (100 + 200 files). Now the pages that hold the new cards,
    their detail files and their neighbours' (Previous and Next across the edge), and pages.js, names.js."""
    out = synth(tmp_path / "o", labeled_rows(5000), files=False)
    report.render(out)
    assert len(pages_js(out)["pages"]) == 100
    before = files_now(out)
    k = 10
    synth(out, more_rows(k, 1), files=False)
    stats = report.render(out)
    changed = rewritten(before, files_now(out))
    gallery = {c for c in changed if c.startswith("gallery/page-")}
    assert len(gallery) <= k, sorted(changed)
    assert len(changed) <= 4 * k + 2, sorted(changed)  # pages, detail files, neighbours' data files, pages/names.js
    assert {layout.GALLERY_PAGES, layout.GALLERY_NAMES} <= changed
    assert stats.written <= len(changed) + 8  # and the summary, history, predictions.csv, figures
    assert order_by_pager(out) == fresh_order(out, tmp_path)
    # every card is on the page pages.js places it, and names.js says so
    info = pages_js(out)
    assert info["total"] == 5000 + k and sum(last - first + 1 for _i, first, last in info["pages"]) == 5000 + k
    # unchanged content: nothing of the gallery or detail folders written again
    before = files_now(out)
    report.render(out)
    assert rewritten(before, files_now(out)) == set()


def test_a_page_grown_past_twice_its_size_splits_and_one_shrunk_merges(tmp_path, small_pages):
    out = synth(tmp_path / "o", labeled_rows(1000), files=False)  # 20 pages
    report.render(out)
    ids = [p[0] for p in pages_js(out)["pages"]]
    assert ids == list(range(1, 21))
    before = files_now(out)
    # 120 images all misclassified FAKE at about 30%: one page's range holds them all
    synth(out, [(f"FAKE/burst_{i:03d}.png", 0, 0.3 + i * 1e-5) for i in range(120)], files=False)
    report.render(out)
    info = pages_js(out)
    ids2 = [p[0] for p in info["pages"]]
    new = [i for i in ids2 if i not in ids]
    assert new and min(new) == 21 and all(i in ids2 for i in ids)  # split: the first part keeps the page's id
    sizes = [last - first + 1 for _i, first, last in info["pages"]]
    assert max(sizes) <= 2 * 50 and min(sizes) >= 50 // 4
    changed = rewritten(before, files_now(out))
    assert len({c for c in changed if c.startswith("gallery/page-")}) <= 2 + len(new) + 2, sorted(changed)
    assert order_by_pager(out) == fresh_order(out, tmp_path)

    # most images of one page removed: it merges into the page before; its files link on to that page
    victim = ids2[5]
    gone = [c["data-name"] for c in parse(out / layout.gallery_page(victim)).cards][:-5]
    m = Manifest(out / FILENAME)
    m.remove_images(gone)
    m.close()
    report.render(out)
    ids3 = [p[0] for p in pages_js(out)["pages"]]
    assert victim not in ids3 and ids2[4] in ids3 and len(ids3) == len(ids2) - 1
    assert_moved(out, victim, ids2[4])
    assert not (out / layout.detail_data(victim)).exists()
    assert order_by_pager(out) == fresh_order(out, tmp_path)


def assert_moved(out: Path, gone: int, now: int) -> None:
    """Page ``gone``'s gallery and detail files are links on to page ``now`` (render.moved_page)."""
    for path in (layout.gallery_page(gone), layout.detail_page(gone)):
        html = (out / path).read_text()
        assert f'location.replace("page-{now}.html" + location.hash)' in html and "data-name" not in html, path


def test_a_page_merged_away_keeps_a_link_on_to_where_its_images_went(tmp_path, small_pages):
    """A bookmark or a shared link to detail/page-7.html#<image> (or a gallery page) of a page that a later run
    merged into its neighbour found no file: the page's files were removed, where a page that stayed sends such a
    link on to the image's page. Now a merged page's files link on to the page that holds its range, run after
    run, also once that page itself merges or splits."""
    out = synth(tmp_path / "o", labeled_rows(1000), files=False)  # 20 pages of 50
    report.render(out)
    ids = [p[0] for p in pages_js(out)["pages"]]
    m = Manifest(out / FILENAME)
    m.remove_images([c["data-name"] for c in parse(out / layout.gallery_page(ids[6])).cards][:-5])
    m.close()
    report.render(out)
    assert ids[6] not in [p[0] for p in pages_js(out)["pages"]]
    assert_moved(out, ids[6], ids[5])
    # the page it went into merges in turn: both old names link on to where their cards are now
    m = Manifest(out / FILENAME)
    m.remove_images([c["data-name"] for c in parse(out / layout.gallery_page(ids[5])).cards][:-5])
    m.close()
    report.render(out)
    now = [p[0] for p in pages_js(out)["pages"]]
    assert ids[5] not in now and ids[6] not in now
    assert_moved(out, ids[5], ids[4])
    assert_moved(out, ids[6], ids[4])
    stats = report.render(out)  # nothing changed: the links stay, unwritten
    assert stats.written <= 3 and (out / layout.detail_page(ids[6])).exists()


def test_plan_anchors_splits_merges_and_starts_fresh():
    keys = [paging.card_key("right", 0, 0.5 + i / 1000, f"{i:04d}") for i in range(100)]  # least confident first
    keys.sort()
    order = paging.order_definition(True, 10)
    ranges, first = paging.plan(keys, None, order, 10)
    assert [(pid, a, b) for pid, a, b in ranges] == [(n + 1, 10 * n, 10 * n + 10) for n in range(10)]
    assert paging.Paging.from_json(first.to_json()) == first
    # 25 more keys inside page 3's range: it splits (over 20 cards), the others keep their cards
    extra = [paging.card_key("right", 0, 0.5 + 25 / 1000 + i / 1e6, f"x{i:02d}") for i in range(25)]
    keys2 = sorted(keys + extra)
    ranges2, second = paging.plan(keys2, first, order, 10)
    ids = [pid for pid, _a, _b in ranges2]
    assert ids[:3] == [1, 2, 3] and ids[3:6] == [11, 12, 13] and ids[6:] == [4, 5, 6, 7, 8, 9, 10]
    assert second.next_id == 14
    # page 5 shrunk to 1 card: merged into page 4; page 1 emptied: page 2's cards take its id (the first page's)
    drop = set(keys[40:49]) | set(keys[:10])
    keys3 = [k for k in keys2 if k not in drop]
    ranges3, third = paging.plan(keys3, second, order, 10)
    ids3 = [p for p, _a, _b in ranges3]
    assert (
        ids3 == [1, 3, 11, 12, 13, 4, 6, 7, 8, 9, 10]
        and ranges3[0][1:] == (0, 10)
        and ranges3[5][2] - ranges3[5][1] == 11
    )
    assert sum(b - a for _p, a, b in ranges3) == len(keys3)
    # another order definition (the page size, labeled or not): even pages again
    assert paging.plan(keys3, third, paging.order_definition(True, 20), 20)[0][0] == (1, 0, 20)
    assert paging.Paging.from_json({"order": order, "pages": [[1, ["x"]]], "next": 2}) is None  # a damaged state


def test_no_javascript_previous_and_next_reach_every_page(tmp_path, small_pages):
    """Without JavaScript a gallery page has its cards and Previous / Next (pages.js draws the rest): following
    Next from the first page reads the whole gallery in order, and Previous leads back."""
    out = synth(tmp_path / "o", labeled_rows(400), files=False)
    report.render(out)
    synth(out, [(f"FAKE/burst_{i:03d}.png", 0, 0.3 + i * 1e-5) for i in range(110)], files=False)
    report.render(out)  # a split: ids no longer follow the pager's order
    ids = [p[0] for p in pages_js(out)["pages"]]
    assert ids != sorted(ids)
    page, seen, visited = out / layout.gallery_page(1), [], []
    while True:
        html = page.read_text()
        visited.append(int(page.stem[5:]))
        seen += [c["data-name"] for c in parse(page).cards]
        nxt = re.search(r'<a href="(page-\d+\.html)" rel="next"', html)
        if not nxt:
            break
        page = page.parent / nxt.group(1)
        assert f'<a href="page-{visited[-1]}.html" rel="prev"' in page.read_text()  # its Previous leads back
    assert visited == ids and seen == order_by_pager(out)
    assert os.path.exists(out / layout.GALLERY_PAGES)


def test_a_folder_without_saved_pages_gets_even_pages_again_and_old_files_go(tmp_path, small_pages):
    """An output folder of an older xaibatch (its state has no page ranges), or one whose state was deleted: its
    first report builds even pages (ids 1..N, the files it had), which later runs anchor to; the files of pages
    no longer there are removed."""
    import json

    out = synth(tmp_path / "o", labeled_rows(400), files=False)
    report.render(out)
    synth(out, [(f"FAKE/burst_{i:03d}.png", 0, 0.3 + i * 1e-5) for i in range(110)], files=False)
    report.render(out)
    split = sorted(p[0] for p in pages_js(out)["pages"])
    assert split == list(range(1, 12))  # 8 even pages, one of them split in 4: ids 9, 10, 11
    state_file = out / layout.REPORT_STATE
    state = json.loads(state_file.read_text())
    del state["paging"]  # as an older xaibatch left it
    state_file.write_text(json.dumps(state))
    m = Manifest(out / FILENAME)
    m.remove_images([f"FAKE/burst_{i:03d}.png" for i in range(110)])
    m.close()
    synth(out, more_rows(24, 7), files=False)
    report.render(out)
    ids = [p[0] for p in pages_js(out)["pages"]]
    assert ids == list(range(1, 10))  # 424 images: 9 even pages; pages 10 and 11's files removed
    on_disk = sorted(int(p.stem[5:]) for p in (out / "gallery").glob("page-*.html"))
    assert on_disk == ids and sorted(int(p.stem[5:]) for p in (out / "detail").glob("page-*.js")) == ids
    # and from then on anchored: one more image rewrites a few pages
    before = files_now(out)
    synth(out, more_rows(1, 8), files=False)
    report.render(out)
    assert len({c for c in rewritten(before, files_now(out)) if c.startswith("gallery/page-")}) == 1


def _page_cards(keys, ranges) -> dict[int, frozenset]:
    return {pid: frozenset(keys[a:b]) for pid, a, b in ranges}


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(2, 12),
    first=st.sets(st.integers(0, 400), max_size=200),
    nights=st.lists(
        st.tuples(st.sets(st.integers(0, 400), max_size=60), st.sets(st.integers(0, 400), max_size=60)),
        min_size=1,
        max_size=6,
    ),
)
@example(size=8, first=set(range(9)), nights=[(set(), set())])  # a first build's last page of 1 card merges
def test_plan_over_random_nights_keeps_its_invariants(size, first, nights):
    """Nights of random additions and removals: the pages partition the gallery order, ids are never given twice
    nor to a page gone, every page stays within [size/4, 2*size] (but a first build's last page, which the next
    night merges), the state round-trips through JSON, planning again changes nothing, and a night changes only
    the pages that hold (or held) an added or removed card, and their neighbours (a merge)."""
    order = paging.order_definition(True, size)
    now: set[int] = set(first)
    saved, before, settles = None, {}, set()
    for added, removed in [(set(), set()), *nights]:
        touched = {f"{i:04d}" for i in (added - now) | (removed & now)}
        now = (now | added) - removed
        keys = sorted(paging.card_key("right", 0, 0.5, f"{i:04d}") for i in now)
        ranges, state = paging.plan(keys, saved, order, size)
        assert [a for _p, a, _b in ranges] == [0] + [b for _p, _a, b in ranges[:-1]] and ranges[-1][2] == len(keys)
        ids, gone = [p for p, _a, _b in ranges], [g for g, _k in state.gone]
        assert len(set(ids + gone)) == len(ids) + len(gone) and state.next_id > max(ids + gone)
        fresh = saved is None or not saved.pages  # even pages: the last one may be small, merged the next night
        if keys:
            assert all(b - a <= 2 * size for _p, a, b in ranges)
            assert len(ranges) == 1 or all(b - a >= max(1, size // 4) for _p, a, b in ranges[: -1 if fresh else None])
        assert paging.Paging.from_json(json.loads(json.dumps(state.to_json()))) == state
        again = paging.plan(keys, state, order, size)
        settling = fresh and len(ranges) > 1 and ranges[-1][2] - ranges[-1][1] < max(1, size // 4)
        if settling:  # the next night merges the small last page into the page before it, once
            assert again[0] == [*ranges[:-2], (ranges[-2][0], ranges[-2][1], len(keys))]
        else:
            assert again == (ranges, state)  # an unchanged night plans the same pages
        cards = _page_cards(keys, ranges)
        if saved is not None and saved.pages:
            assert ids[0] == saved.pages[0][0]  # every page's header links the first page by its id
            # the pages whose range holds a touched card, before and now (a split's parts take new ids)
            holding = {saved.holder(paging.card_key("right", 0, 0.5, t)) for t in touched}
            holding |= {p for p, c in [*cards.items(), *before.items()] if any(k[3] in touched for k in c)}
            holding |= settles  # the page before a first build's small last page, which it took in
            near = {ids[j + d] for j, p in enumerate(ids) if p in holding for d in (-1, 1) if 0 <= j + d < len(ids)}
            changed = {p for p, c in cards.items() if before.get(p) != c and p < saved.next_id}
            assert changed <= holding | near, (changed, holding, near)
        saved, before, settles = state, cards, {ranges[-2][0]} if settling else set()
