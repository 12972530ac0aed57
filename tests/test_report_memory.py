"""The report's memory: what a build keeps alive while it writes (issue #20's "memory flat" target)."""

from __future__ import annotations

import importlib
import json
import shutil
import weakref

from test_report import labeled_rows, synth
from xaibatch import report
from xaibatch.manifest import Manifest

render_module = importlib.import_module("xaibatch.report.render")


def test_gallery_pages_leave_no_card_html_behind(tmp_path, monkeypatch):
    """A gallery page's cards, as HTML, live while the page renders, not to the end of the build (5 KB an image)."""
    out = synth(tmp_path / "o", labeled_rows(2 * report.PAGE_SIZE + 3), methods=("gradcam", "lime"), files=False)
    rendered = []
    real = render_module._render_gallery

    def spy(gallery, data, p, fast):
        html = real(gallery, data, p, fast)
        rendered.append((html, [b.html for b in p.blocks]))
        return html

    monkeypatch.setattr(render_module, "_render_gallery", spy)
    monkeypatch.setattr(importlib.import_module("xaibatch.report.forked"), "can_fork", lambda: False)  # seen here
    report.render(out)
    assert len(rendered) == 3
    for html, left in rendered:
        assert 'class="card' in html
        assert left == [None] * len(left)


def test_manifest_rows_are_released_before_the_pages_are_written(tmp_path, monkeypatch):
    """The manifest's rows (more memory than the cards) are gone by the time the pages are written: the cards
    and the CSV's bytes hold what the pages show."""
    out = synth(tmp_path / "o", labeled_rows(30), methods=("gradcam", "lime"), files=False)
    refs: list[weakref.ref] = []

    def recorded(read):
        def rows(self):
            got = read(self)
            refs.extend(weakref.ref(r) for r in got.values())
            return got

        return rows

    monkeypatch.setattr(Manifest, "images", recorded(Manifest.images))
    monkeypatch.setattr(Manifest, "maps", recorded(Manifest.maps))
    alive = []
    real = render_module._write_all

    def write_all(*args):
        alive.append(sum(r() is not None for r in refs))
        return real(*args)

    monkeypatch.setattr(render_module, "_write_all", write_all)
    report.render(out)
    assert len(refs) == 30 * 3
    assert alive == [0]
    assert (out / "predictions.csv").read_text().count("\n") == 31


def _write_all_growth(out, monkeypatch) -> int:
    """Bytes the build allocates beyond what it holds when it starts writing (tracemalloc's peak in _write_all)."""
    import tracemalloc

    real = render_module._write_all
    grew = []

    def write_all(*args):
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        got = real(*args)
        grew.append(tracemalloc.get_traced_memory()[1] - start)
        return got

    monkeypatch.setattr(render_module, "_write_all", write_all)
    tracemalloc.start()
    try:
        report.render(out)
    finally:
        tracemalloc.stop()
    return grew[0]


def test_writing_the_pages_holds_nothing_per_card(tmp_path, monkeypatch):
    """Writing the pages needs memory per page, not per card: no per-card text (fingerprint keys, card HTML) is
    kept for the whole build. 1,000 more cards may add at most 100 bytes each (the keys took 600)."""
    monkeypatch.setattr(render_module, "detail_processes", lambda: 1)
    small, big = (
        synth(tmp_path / str(n), labeled_rows(n), methods=("gradcam", "lime"), files=False) for n in (400, 1400)
    )
    report.render(tmp_path / "400")  # the first build imports and compiles what every later one reuses
    for sub in ("gallery", "detail"):
        shutil.rmtree(small / sub)
    (small / ".xaibatch-report.json").unlink()
    extra = _write_all_growth(big, monkeypatch) - _write_all_growth(small, monkeypatch)
    assert extra < 1000 * 100, extra


def test_manifest_rows_read_in_chunks_share_equal_strings(tmp_path, monkeypatch):
    """Rows read a chunk at a time are the rows read at once; equal strings (an image's rel in its map rows, a
    method, a hash, a thumbnail that is the picture itself) are one object, as a big report holds every row."""
    import sqlite3

    from xaibatch import manifest as manifest_module

    rows = labeled_rows(11)
    out = synth(tmp_path / "o", rows, methods=("gradcam", "lime"), files=False)
    db = sqlite3.connect(out / manifest_module.FILENAME)
    db.execute("UPDATE maps SET thumb = png WHERE method = 'lime'")
    view = json.dumps({"scale": 0.5, "shape": [8, 8]})
    db.execute("UPDATE maps SET view_json = ? WHERE rel = ?", (view, rows[9][0]))
    db.commit()
    db.close()
    m = Manifest(out / manifest_module.FILENAME)
    try:
        whole = m.images(), m.maps()
        monkeypatch.setattr(manifest_module, "_CHUNK", 4)
        images, maps = m.images(), m.maps()
    finally:
        m.close()
    assert (images, maps) == whole
    assert list(images) == list(whole[0]) and list(maps) == list(whole[1])
    assert len(images) == 11 and len(maps) == 22
    assert maps[(rows[9][0], "gradcam")].view == {"scale": 0.5, "shape": [8, 8]}
    for (rel, method), row in maps.items():
        assert row.rel is images[rel].rel and row.method is maps[(rows[0][0], method)].method
        assert row.config_hash is maps[(rows[0][0], "gradcam")].config_hash
        assert (row.thumb is row.png) == (method == "lime")


def test_cards_hold_one_object_per_equal_text(tmp_path):
    """A card's equal texts are one object: a small image's thumbnail url is its picture's, the detail url its
    path when nothing needs escaping, and percentages are shared between cards."""
    from xaibatch.report.data import build

    out = synth(tmp_path / "o", [("a/x.png", 0, 0.75), ("a/y z.png", 1, 0.75)], files=False)
    a, b = sorted(build(out).cards, key=lambda c: c.rel)
    assert a.thumb is a.image and a.detail_url is a.detail
    assert b.thumb is b.image and b.detail_url == b.detail.replace(" ", "%20") and "%20" not in b.detail
    assert a.conf_text == b.conf_text == "75.0%" and a.conf_text is b.conf_text
    assert a.probs[0][2] is b.probs[0][2]
