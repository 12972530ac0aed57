"""An unchanged report renders only its run history (report/snapshot.py), and every change is noticed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from test_report import html_pages, labeled_rows, synth
from xaibatch import layout, report
from xaibatch.manifest import FILENAME, Manifest, RunCounts
from xaibatch.layout import REPORT_STATE

OLD = 1_000_000_000  # 2001: any rewrite is visible


def age(out):
    """The report's files, dated 2001."""
    files = [p for p in out.rglob("*") if p.suffix in (".html", ".css", ".js", ".svg", ".csv")]
    for p in files:
        os.utime(p, (OLD, OLD))
    return files


def rewritten(out, files):
    return sorted(str(p.relative_to(out)) for p in files if p.exists() and p.stat().st_mtime != OLD)


def add_run(out, status="ok"):
    """A finished run row with the last run's configuration, as an unchanged cron re-run leaves it."""
    m = Manifest(out / FILENAME)
    last = m.runs()[-1]
    run_id = m.start_run(last.input_dir, json.loads(last.config_json), last.predict_hash)
    m.finish_run(run_id, status, 0.5, RunCounts(seen=8, unchanged=8))
    m.close()


def full_render(out):
    """Render with the saved content key spoiled, so everything is built from the manifest."""
    state = json.loads((out / REPORT_STATE).read_text())
    state["content"] = "spoiled"
    (out / REPORT_STATE).write_text(json.dumps(state))
    return report.render(out)


@pytest.fixture
def out(tmp_path):
    o = synth(
        tmp_path / "o",
        labeled_rows(8),
        methods=("gradcam", "lime"),
        failures=[("FAKE/bad.png", "not an image")],
        input_dir=tmp_path / "in",
    )
    (tmp_path / "in" / "FAKE").mkdir(parents=True)
    stats = report.render(o)
    assert not stats.reused
    return o


def test_unchanged_renders_only_the_run_history(out):
    files = age(out)
    add_run(out)
    stats = report.render(out)
    assert stats.reused
    assert rewritten(out, files) == ["history.html", "index.html"]
    assert "Run history" in (out / "index.html").read_text()
    assert stats.accuracy == pytest.approx(json.loads((out / REPORT_STATE).read_text())["summary"]["accuracy"])


def test_reused_summary_is_byte_identical_to_a_full_build(out):
    add_run(out, status="some-failed")
    fast = report.render(out)
    assert fast.reused
    pages = {p: p.read_bytes() for p in html_pages(out)}
    slow = full_render(out)
    assert not slow.reused
    assert {p: p.read_bytes() for p in html_pages(out)} == pages
    assert (fast.accuracy, fast.gallery_pages) == (slow.accuracy, slow.gallery_pages)


def change_row(out):
    m = Manifest(out / FILENAME)
    m.db.execute("UPDATE images SET confidence = 0.5 WHERE rel = 'FAKE/im_0000.png'")
    m.close()


def remove_map(out):
    m = Manifest(out / FILENAME)
    m.remove_map("FAKE/im_0000.png", "lime")
    m.close()


def new_failure(out):
    m = Manifest(out / FILENAME)
    m.put_failure("REAL/other.png", "empty file (0 bytes)", 9)
    m.close()


def failure_reason(out):
    m = Manifest(out / FILENAME)
    m.put_failure("FAKE/bad.png", "cannot read: Permission denied", 9)
    m.close()


def mask_beside(out):
    np.save(out.parent / "in" / "FAKE" / "im_0000.mask.npy", np.ones((8, 8), bool))


def sanity_file(out):
    curve = {
        "method": "gradcam",
        "steps": ["logits", "all"],
        "rank": [0.5, 0.01],
        "ssim": [0.4, 0.1],
        "passed": True,
        "verdict": "Grad-CAM: maps change with the model",
    }
    (out / layout.SANITY).write_text(json.dumps({"images": 4, "curves": [curve], "checkpoint_sha256": "x"}))


def lost_page(out):
    (out / "detail" / "page-1.js").unlink()  # the detail view's data (one file per gallery page, not per image)


def lost_viewer(out):
    (out / "detail" / "page-1.html").unlink()


def lost_csv(out):
    (out / "predictions.csv").unlink()


def lost_figure(out):
    next((out / "figures").iterdir()).unlink()


def method_settings(out):
    m = Manifest(out / FILENAME)
    last = m.runs()[-1]
    cfg = json.loads(last.config_json)
    cfg["methods"]["lime"]["config"]["samples"] = 500
    run_id = m.start_run(last.input_dir, cfg, last.predict_hash)
    m.finish_run(run_id, "ok", 0.5, RunCounts(seen=8))
    m.close()


@pytest.mark.parametrize(
    "change",
    [
        change_row,
        remove_map,
        new_failure,
        failure_reason,
        mask_beside,
        sanity_file,
        lost_page,
        lost_viewer,
        lost_csv,
        lost_figure,
        method_settings,
    ],
)
def test_every_change_rebuilds(out, change):
    change(out)
    stats = report.render(out)
    assert not stats.reused, change.__name__
    if change is sanity_file:
        assert "Sanity check" in (out / "index.html").read_text()
    assert (out / "predictions.csv").is_file() and (out / "detail" / "page-1.js").is_file()
    assert (out / "detail" / "page-1.html").is_file()
    again = report.render(out)  # and the next unchanged render reuses the new state
    assert again.reused


def test_same_failure_again_moves_nothing(out):
    m = Manifest(out / FILENAME)
    before = m.content_version()
    m.put_failure("FAKE/bad.png", "not an image", 7)  # every run retries a failed file
    assert m.content_version() == before
    m.close()
    assert report.render(out).reused


def test_template_dir_always_builds(out, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text(
        '{% extends "base.html" %}{% block main %}{{ r.cards | length }} cards{% endblock %}'
    )
    report.render(out, template_dir=mine)
    stats = report.render(out, template_dir=mine)
    assert not stats.reused
    assert f"{len(labeled_rows(8))} cards" in (out / "index.html").read_text()


def test_damaged_state_builds(out):
    state = json.loads((out / REPORT_STATE).read_text())
    state["summary"]["groups"] = [{"nonsense": 1}]
    (out / REPORT_STATE).write_text(json.dumps(state))
    stats = report.render(out)
    assert not stats.reused
    assert report.render(out).reused


def test_a_report_of_an_older_summary_version_is_built_again_with_the_new_csv_columns(out, monkeypatch):
    """A folder whose report an xaibatch before predictions.csv's npy_<method> columns wrote (SUMMARY_VERSION 6, the
    CSV without them) gains them at its next unchanged re-run: the reused summary would keep the old CSV."""
    from xaibatch.report import snapshot

    csv_path = out / "predictions.csv"
    header = csv_path.read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("npy_")] == ["npy_gradcam", "npy_lime"]
    keep = [i for i, c in enumerate(header) if not c.startswith("npy_")]
    old = "\n".join(",".join(r.split(",")[i] for i in keep) for r in csv_path.read_text().splitlines()) + "\n"
    monkeypatch.setattr(snapshot, "SUMMARY_VERSION", 6)  # the folder as the older version left it
    full_render(out)
    csv_path.write_text(old)
    monkeypatch.undo()
    add_run(out)
    stats = report.render(out)
    assert not stats.reused
    assert csv_path.read_text().splitlines()[0].split(",") == header
