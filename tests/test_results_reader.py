"""`xaibatch.open_results(OUT)`: a run's saved folder read back in a notebook, read-only and without a trace."""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ENV, REPO, manifest_rows, quiet, read_only_tree, run_opts, write_images
from xaibatch import layout
from xaibatch.errors import MissingOutput, UnknownName, UsageError, XaibatchError
from xaibatch.manifest import Manifest, read_snapshot
from xaibatch.results import open_results


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_ckpt) -> Path:
    """FAKE/img_00{0..3}.png, REAL/img_00{0..3}.png and REAL/img_000.jpg (its maps keep their extension: two
    images share the stem REAL/img_000), one unreadable file, --target pred,label (the tiny model calls everything
    REAL: every FAKE image gets true-class maps)."""
    from xaibatch.pipeline import run

    root = tmp_path_factory.mktemp("results")
    write_images(root / "in" / "FAKE", 4, seed=1)
    write_images(root / "in" / "REAL", 4, seed=2)
    write_images(root / "in" / "REAL", 1, seed=5, ext="jpg")
    (root / "in" / "REAL" / "broken.png").write_bytes(b"not a png")
    run(run_opts(root / "in", root / "out", tiny_ckpt, target="pred,label"), log=quiet)
    return root / "out"


def listing(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``folder`` (itself too) with its mtime, ctime and size: what a write would move."""
    out = {}
    for p in [folder, *folder.rglob("*")]:
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    return out


def predictions(out: Path) -> list[dict[str, str]]:
    with open(out / layout.CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_record_equals_its_predictions_csv_row(out):
    res = open_results(out)
    rows = predictions(out)
    assert [r["path"] for r in rows] == [r.rel for r in res] and len(res) == len(rows) == 9
    keys = ["gradcam", "gradcam@label"]
    assert list(res.map_keys) == keys and [c for c in rows[0] if c.startswith("npy_")] == ["npy_gradcam"]
    for row in rows:
        r = res[row["path"]]
        assert (r.label, r.pred, f"{r.confidence:.6f}") == (row["label"], row["pred"], row["confidence"])
        assert str(int(r.correct)) == row["correct"] and str(int(r.earlier)) == row["earlier_model"]
        assert {f"p_{c}": f"{p:.6f}" for c, p in r.probs.items()} == {k: v for k, v in row.items() if k[:2] == "p_"}
        assert str(r.maps["gradcam"].npy.relative_to(out)) == r.maps["gradcam"].npy_rel == row["npy_gradcam"]
        assert r.source == out.parent / "in" / r.rel and r.size == (32, 32)
    assert res.classes == ("FAKE", "REAL") and res.target == "pred,label" and res.input_dir == out.parent / "in"
    assert list(res.methods) == ["gradcam"] and res.methods["gradcam"].title == "Grad-CAM"
    assert res.model is not None and res.model.input_size == 32 and res.last_run.status == "some-failed"
    assert dict(res.failures) == {
        "REAL/broken.png": dict(manifest_rows(out, "SELECT rel, reason FROM failures"))["REAL/broken.png"]
    }
    wrong = res.where(correct=False, label="FAKE")
    assert [r.rel for r in wrong] == [r["path"] for r in rows if r["correct"] == "0" and r["label"] == "FAKE"]
    assert len(wrong) == 4 and all("gradcam@label" in r.maps for r in wrong)


def test_map_and_overlay_are_the_files_the_manifest_names(out):
    res = open_results(out)
    named = manifest_rows(out, "SELECT rel, method, npy, png FROM maps")
    assert len(named) == 9 + 4  # every image's map, and the FAKE ones' true-class maps
    for rel, key, npy, png in named:
        a = res.map(rel, key)
        assert a.dtype == np.float32 and np.array_equal(a, np.load(out / npy))
        assert np.array_equal(res[rel].map(key), a)
        with Image.open(out / png) as im:
            assert np.array_equal(np.asarray(res.overlay(rel, key)), np.asarray(im))
    png, jpg = res["REAL/img_000.png"].maps["gradcam"], res["REAL/img_000.jpg"].maps["gradcam"]
    assert (png.npy.name, jpg.npy.name) == ("img_000.png.npy", "img_000.jpg.npy")  # not derivable from the path
    assert not np.array_equal(res.map("REAL/img_000.png", "gradcam"), res.map("REAL/img_000.jpg", "gradcam"))
    label = res["FAKE/img_001.png"].maps["gradcam@label"].npy
    assert label == out / "maps" / layout.method_dir("gradcam@label") / "FAKE" / "img_001.npy"


def test_reading_leaves_no_trace_in_the_folder(out):
    """No file made, not even for a moment: the manifest's -wal and -shm files once came and went, and the
    folder's mtime moved."""
    before = listing(out)
    res = open_results(out)
    for r in res:
        for key in r.maps:
            r.map(key), r.overlay(key)
    pytest.importorskip("pandas")
    res.to_pandas()
    assert listing(out) == before


def test_a_read_only_folder_is_read(out, tmp_path):
    from helpers import without_file_permission_override

    prefix = without_file_permission_override()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    script = (
        "import sys, xaibatch; res = xaibatch.open_results(sys.argv[1]); "
        "print(len(res), res.map('FAKE/img_000.png', 'gradcam@label').shape, 'torch' in sys.modules)"
    )
    with read_only_tree(copy):
        before = listing(copy)
        p = subprocess.run(
            [*prefix, sys.executable, "-c", script, str(copy)], cwd=REPO, env=ENV, capture_output=True, text=True
        )
        assert listing(copy) == before
    assert (p.returncode, p.stdout, p.stderr) == (0, "9 (32, 32) False\n", "")  # and no torch imported


def test_a_run_writing_meanwhile_is_seen_as_last_committed(out, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    writer = Manifest(copy / layout.MANIFEST)  # as a run holds it: WAL mode, -wal and -shm files there
    try:
        writer.db.execute("BEGIN IMMEDIATE")
        writer.db.execute("UPDATE images SET pred = 0 WHERE rel = 'REAL/img_001.png'")  # not committed
        before = listing(copy)
        assert (copy / f"{layout.MANIFEST}-wal").exists()
        assert open_results(copy)["REAL/img_001.png"].pred == "REAL"
        writer.db.execute("COMMIT")
        assert open_results(copy)["REAL/img_001.png"].pred == "FAKE"
        after = listing(copy)
        for name in (f"{layout.MANIFEST}-wal", f"{layout.MANIFEST}-shm", layout.MANIFEST):
            before.pop(name), after.pop(name)  # the writer's own files (its commit)
        assert after == before
    finally:
        writer.close()


def test_a_run_not_ended_is_said(out, tmp_path):
    """Opened while a second run wrote into the folder, the records mixed its maps with the first's (some images
    with a LIME map, some without) and nothing said so: last_run is the last run that ended, status "ok"."""
    res = open_results(out)
    assert res.running is None and "had not ended" not in repr(res)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    writer = Manifest(copy / layout.MANIFEST)
    try:
        run_id = writer.start_run(str(out.parent / "in"), {}, "")
    finally:
        writer.close()
    res = open_results(copy)
    assert res.running is not None and res.running.id == run_id and res.last_run.id == run_id - 1
    assert repr(res).endswith(f"; run {run_id} had not ended (writing, or killed): open again for more)")


def test_a_manifest_changed_while_read_is_read_again(out, tmp_path):
    """A run that starts while a folder without a -wal file is read as it stands (immutable) and checkpoints into
    the file: the read is done again, over the new state."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / layout.MANIFEST
    seen = []

    def read(m: Manifest):
        seen.append(m.images()["REAL/img_001.png"].pred)
        if len(seen) == 1:  # a run meanwhile: commits, closes (checkpoints into the file, removes its -wal)
            w = sqlite3.connect(path)
            w.execute("UPDATE images SET pred = 0 WHERE rel = 'REAL/img_001.png'")
            w.commit()
            w.close()
        return seen[-1]

    assert read_snapshot(path, read) == 0 and seen == [1, 0]


def test_errors_are_one_line_and_name_close_matches(out, tmp_path):
    res = open_results(out)
    with pytest.raises(UnknownName, match=r"no image 'FAKE/img_01\.png' in .*; did you mean 'FAKE/img_001\.png'"):
        res["FAKE/img_01.png"]
    with pytest.raises(LookupError, match=r"'REAL/broken\.png' could not be read by the run \(.*\)"):
        res.map("REAL/broken.png", "gradcam")
    with pytest.raises(UnknownName, match=r"no 'gradcm' maps in .* \(it has: gradcam, gradcam@label\)"):
        res.map("FAKE/img_000.png", "gradcm")
    with pytest.raises(UnknownName, match=r"'REAL/img_001\.png' has no 'gradcam@label' map \(its maps: gradcam\)"):
        res["REAL/img_001.png"].map("gradcam@label")
    with pytest.raises(UnknownName, match=r"no class 'FAEK' in .*; did you mean 'FAKE'\?"):
        res.where(label="FAEK")
    with pytest.raises(UnknownName, match=r"no class 'fake' in .*; did you mean 'FAKE'\?"):
        res.where(label="fake")  # the class folders' case: said nothing close
    with pytest.raises(UnknownName, match=r"no image 'fake/img_001\.png' in .*; did you mean 'FAKE/img_001\.png'"):
        res["fake/img_001.png"]
    with pytest.raises(UnknownName, match=r"ImageRecord has no field 'corect'; did you mean 'correct'\?"):
        res.where(corect=False)
    with pytest.raises(UsageError, match=r"nowhere is not an xaibatch output folder \(no such folder\)"):
        open_results(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=r"is not an xaibatch output folder \(no xaibatch\.sqlite there\)"):
        open_results(out.parent / "in")

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    npy = res["FAKE/img_002.png"].maps["gradcam"].npy
    (copy / npy.relative_to(out)).unlink()
    gone = open_results(copy)
    with pytest.raises(MissingOutput, match=r"img_002\.npy is missing \('gradcam' map of 'FAKE/img_002\.png'\)"):
        gone.map("FAKE/img_002.png", "gradcam")
    assert isinstance(MissingOutput("x"), FileNotFoundError)

    for version, words in ((99, "a newer xaibatch"), (4, "an older xaibatch")):
        db = sqlite3.connect(copy / layout.MANIFEST)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        db.commit()
        db.close()
        with pytest.raises(XaibatchError, match=rf"was written by {words} \(its schema {version}; this one reads 5\)"):
            open_results(copy)


def test_an_image_by_position_or_path_as_explanations_numbers_them(out):
    """``res[0]`` (explain()'s result is indexed so: ``out.map(0, "gradcam")``) raised TypeError "'int' object is
    not iterable" from inside difflib, and ``res[Path(...)]`` one too; the position is the path order's."""
    res = open_results(out)
    records = list(res)
    assert res[0] is records[0] and res[-1] is records[-1] and res[np.int64(2)] is records[2]
    assert np.array_equal(res.map(1, "gradcam"), records[1].map("gradcam"))
    assert res[Path("FAKE/img_001.png")] is res["FAKE/img_001.png"] and Path("FAKE/img_001.png") in res
    with pytest.raises(UsageError, match=r"^image index 9 out of range: 9 images \(0\.\.8\)$"):
        res[9]
    with pytest.raises(UsageError, match=r"^an image is its path \(a str\) or its position \(an int\), not float$"):
        res[1.0]


def test_heatmap_is_explains_heatmap_of_the_same_image(out, tiny_ckpt):
    """explain()'s result draws a map alone (``ex.heatmap(i, method)``); a record had map() and overlay() only."""
    import dataclasses

    import xaibatch
    from xaibatch.overlay import colorize

    res = open_results(out)
    r = res["FAKE/img_001.png"]
    ex = xaibatch.explain(tiny_ckpt, [r.source], methods=["gradcam"], target="pred,label", labels=[0])
    for key in ("gradcam", "gradcam@label"):
        mine = r.heatmap(key)
        assert mine.size == (32, 32) and np.array_equal(np.asarray(mine), np.asarray(ex.heatmap(0, key, size="given")))
    assert np.array_equal(np.asarray(res.heatmap(r.rel, "gradcam")), np.asarray(r.heatmap("gradcam")))
    signed = dataclasses.replace(r, signed={"gradcam": True})  # a signed method: symmetric around 0, no stretch
    assert np.array_equal(np.asarray(signed.heatmap("gradcam")), colorize(r.map("gradcam"), True))


def test_a_ground_truth_mask_is_read_as_the_report_reads_it(out, tmp_path):
    """The mass of a map inside the ground-truth region, the pointing game: each needs the mask beside the image
    (``<name>.mask.npy``, as demo-data writes it), which the record did not name; ``r.mask()`` reads it."""
    import dataclasses

    res = open_results(out)
    r = res["FAKE/img_000.png"]
    beside = out.parent / "in" / "FAKE" / "img_000.mask.npy"
    marked = np.zeros((32, 32), np.uint8)
    marked[4:12, 20:30] = 1
    np.save(beside, marked)
    try:
        mask = r.mask()
        assert mask.dtype == bool and np.array_equal(mask, marked == 1)
        assert res["FAKE/img_001.png"].mask() is None  # no mask beside it
        np.save(beside, np.array([{"a": 1}, None], dtype=object))  # a pickle: never loaded
        with pytest.raises(UsageError, match=r"img_000\.mask\.npy is not read as a ground-truth mask: "):
            r.mask()
    finally:
        beside.unlink()
    with pytest.raises(UsageError, match=r"the input folder .*gone is not there .*: the mask of 'FAKE/img_000\.png'"):
        dataclasses.replace(r, input_dir=tmp_path / "gone").mask()


def test_to_pandas_is_one_row_an_image(out):
    pd = pytest.importorskip("pandas")
    frame = open_results(out).to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == [r["path"] for r in predictions(out)]
    assert frame.loc["FAKE/img_000.png", "npy_gradcam@label"] == str(out / "maps/gradcam_40label/FAKE/img_000.npy")
    assert frame["overlay_gradcam@label"].isna().sum() == 5
    assert bool(frame.loc["REAL/img_000.jpg", "correct"]) is True


def test_faithfulness_scores_and_the_model_read_as_predictions_csv_has_them(tmp_path, tiny_ckpt):
    """--faithfulness: each scored map's deletion and insertion on its record, and to_pandas() has every column of
    predictions.csv (scores and model_hash too), by the same names, in its order, with its values."""
    pytest.importorskip("pandas")
    from xaibatch.evaluation.faithfulness import FaithConfig
    from xaibatch.pipeline import run

    write_images(tmp_path / "in" / "FAKE", 2, seed=1)
    write_images(tmp_path / "in" / "REAL", 2, seed=2)
    out = tmp_path / "out"
    run(run_opts(tmp_path / "in", out, tiny_ckpt, faithfulness=FaithConfig(steps=4)), log=quiet)
    res, rows = open_results(out), predictions(out)
    assert res.scored == ("gradcam",) and len(rows) == 4
    for row in rows:
        r = res[row["path"]]
        f = r.faithfulness["gradcam"]
        assert (f"{f.deletion:.6f}", f"{f.insertion:.6f}") == (row["deletion_gradcam"], row["insertion_gradcam"])
        assert r.model_hash == row["model_hash"] and 0 <= f.deletion <= 1
    frame = open_results(out).to_pandas()
    csv_columns = list(rows[0])[1:]  # without path: the index
    assert [c for c in frame.columns if c in csv_columns] == csv_columns
    assert list(frame["model_hash"]) == [r["model_hash"] for r in rows]
    assert [f"{v:.6f}" for v in frame["insertion_gradcam"]] == [r["insertion_gradcam"] for r in rows]


def test_open_results_imports_no_torch(out):
    script = (
        "import sys, xaibatch; res = xaibatch.open_results(sys.argv[1]); "
        "[(r.map(k), r.heatmap(k)) for r in res for k in r.maps]; [r.mask() for r in res]; print('torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert (p.returncode, p.stdout, p.stderr) == (0, "False\n", "")


def test_the_folder_need_not_be_where_it_was_written(out, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    res = open_results(os.path.relpath(moved))
    assert res.out == moved.absolute() and res["FAKE/img_000.png"].maps["gradcam"].npy.is_relative_to(moved)
    assert np.array_equal(res.map("FAKE/img_000.png", "gradcam"), open_results(out).map("FAKE/img_000.png", "gradcam"))


def test_no_file_outside_the_folder_is_read(out, tmp_path):
    """A manifest naming ../x.npy is refused as the folder is opened; a link under the folder that leads outside
    it, as the file is read."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    outside = tmp_path / "secret.npy"
    np.save(outside, np.ones((2, 2), np.float32))
    link = copy / "maps" / "gradcam" / "FAKE" / "img_003.npy"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(
        UsageError, match=r"refusing to read .*/maps/gradcam/FAKE/img_003\.npy: a link leads it outside"
    ):
        open_results(copy).map("FAKE/img_003.png", "gradcam")
    db = sqlite3.connect(copy / layout.MANIFEST)
    db.execute("UPDATE maps SET npy = '../secret.npy' WHERE rel = 'FAKE/img_002.png' AND method = 'gradcam'")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match=r"the manifest names '\.\./secret\.npy', outside the folder; refusing"):
        open_results(copy)


def test_to_pandas_without_pandas_says_so(out, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(UsageError, match=r"^to_pandas\(\) needs pandas: pip install pandas$"):
        open_results(out).to_pandas()


def test_records_held_across_a_later_run_never_read_its_files_as_theirs(tmp_path, tiny_ckpt):
    """A notebook holds open_results(OUT) while a cron job runs into OUT: an image changed since had its map written
    again at the same path, and record.map() returned the new map under the old prediction without a word; an
    image gone from the input had its files deleted, and the error said "not copied with the folder; xaibatch run
    makes it again", which no run would. An image the run left alone reads as before."""
    from xaibatch.errors import ChangedSince
    from xaibatch.pipeline import run

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    res = open_results(out)
    kept, changed, gone = res["FAKE/img_000.png"], res["FAKE/img_001.png"], res["REAL/img_002.png"]
    first = kept.map("gradcam")
    (inp / "REAL" / "img_002.png").unlink()
    shutil.copyfile(inp / "REAL" / "img_000.png", inp / "FAKE" / "img_001.png")  # new bytes, the same path
    run(run_opts(inp, out, tiny_ckpt), log=quiet)

    assert np.array_equal(kept.map("gradcam"), first) and kept.overlay("gradcam").size
    for read in (changed.map, changed.overlay):
        with pytest.raises(ChangedSince, match=r"img_001\.(npy|png) was written again by run 2 after open_results "):
            read("gradcam")
    for read in (gone.map, gone.overlay):
        with pytest.raises(MissingOutput, match=r"a run removed it after open_results read .*: open_results again"):
            read("gradcam")
    again = open_results(out)  # as it is now: the new map is the record's
    assert np.array_equal(again["FAKE/img_001.png"].map("gradcam"), np.load(changed.maps["gradcam"].npy))
    assert "REAL/img_002.png" not in again


def test_a_manifest_a_first_run_is_making_is_read_once_it_has_its_tables(tmp_path):
    """open_results (a notebook polling a cron job's new folder, serve) the moment a first run made the manifest
    file, before its tables: "cannot read the manifest OUT/xaibatch.sqlite: no such table: meta". It reads again
    once the tables are there (milliseconds); a file that never gets them says what it is."""
    import threading

    out = tmp_path / "out"
    out.mkdir()
    (out / layout.MANIFEST).write_bytes(b"")  # as Manifest() makes it first (_create_as_others)
    maker = threading.Timer(0.15, lambda: Manifest(out / layout.MANIFEST).close())  # then its tables
    maker.start()
    try:
        res = open_results(out)
    finally:
        maker.join()
    assert len(res) == 0 and res.last_run is None
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / layout.MANIFEST).write_bytes(b"")
    with pytest.raises(XaibatchError, match=r"xaibatch\.sqlite holds nothing yet: a first run is creating it "):
        open_results(tmp_path / "stopped")
