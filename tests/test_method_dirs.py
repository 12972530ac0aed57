"""Method folders on disk are portable slugs; folders of an older layout move on the next run (issue 21, item 5)."""

from __future__ import annotations

import re
import shutil
import sqlite3

import numpy as np
import pytest

from helpers import run_opts, write_images
from outcheck import check_output_folder
from xaibatch import layout
from xaibatch.errors import UsageError
from xaibatch.methods import METHODS
from xaibatch.methods.captum_library import NT_PREFIX, TUNNELABLE
from xaibatch.pipeline import RunOptions, run

SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def test_every_method_name_gets_a_safe_distinct_folder():
    names = list(METHODS) + [NT_PREFIX + b for b in TUNNELABLE]
    dirs = [layout.method_dir(n) for n in names]
    assert all(SAFE.match(d) for d in dirs), [d for d in dirs if not SAFE.match(d)]
    assert len(set(dirs)) == len(names)
    assert layout.method_dir("cam:gradcam++") == "cam-gradcampp"
    assert layout.method_dir("captum:NoiseTunnel.IntegratedGradients") == "captum-NoiseTunnel.IntegratedGradients"
    for native in ("gradcam", "guided-gradcam", "lime"):
        assert layout.method_dir(native) == native  # existing folders of the native methods stay valid
    assert layout.method_dir("a/b é") == "a_2fb_20_e9"
    assert layout.map_npy("cam:gradcam++", "FAKE/x") == "maps/cam-gradcampp/FAKE/x.npy"


def test_map_files_are_spelled_once():
    """MapFiles.of names a map's three files; a manifest row gives back the same ones, in the order recorded."""
    from xaibatch.manifest import MapRow

    big = layout.MapFiles.of("cam:gradcam++", "d/x", 640, 480)
    assert big == layout.MapFiles(
        "maps/cam-gradcampp/d/x.npy", "maps/cam-gradcampp/d/x.png", "thumbs/cam-gradcampp/d/x.png"
    )
    small = layout.MapFiles.of("lime", "y", 64, 64)  # no thumbnail of its own: the overlay is one
    assert small.thumb == small.png == "maps/lime/y.png"
    assert small.paths() == ["maps/lime/y.npy", "maps/lime/y.png", "maps/lime/y.png"]
    old = MapRow("y.png", "lime", "h", "maps/lime/y.npy", "maps/lime/y.png", None, None, 1)
    assert old.files.paths() == ["maps/lime/y.npy", "maps/lime/y.png"]  # a row from before thumbnails


def test_methods_sharing_a_folder_are_refused():
    with pytest.raises(ValueError, match="share the folder"):
        layout.check_method_dirs(["cam:x", "cam-x"])


def _opts(inp, out, ckpt, **kw):
    return run_opts(inp, out, ckpt, ["gradcam", "cam:gradcam++"], device="cpu", **kw)


def _to_old_layout(out):
    """Rewrite a folder as main e16738b wrote it: the method's name itself as its folder, its report linking there."""
    from xaibatch.report import write_report

    for top in ("maps", "thumbs"):
        if (out / top / "cam-gradcampp").exists():
            (out / top / "cam-gradcampp").rename(out / top / "cam:gradcam++")
    db = sqlite3.connect(out / "xaibatch.sqlite")
    for col in ("npy", "png", "thumb"):
        db.execute(f"UPDATE maps SET {col} = replace({col}, '/cam-gradcampp/', '/cam:gradcam++/')")
    db.commit()
    db.close()
    write_report(out)


def test_old_folders_move_on_the_next_run_without_recomputing(tmp_path, tiny_ckpt, monkeypatch):
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 3, size=24, seed=1)
    write_images(inp / "REAL", 3, size=24, seed=2)
    out = tmp_path / "o"
    run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert (out / "maps" / "cam-gradcampp").is_dir()
    before = {
        p.relative_to(out / "maps" / "cam-gradcampp"): np.load(p)
        for p in (out / "maps" / "cam-gradcampp").rglob("*.npy")
    }
    _to_old_layout(out)
    check_output_folder(out, inp)

    # A migration that fails before its commit leaves the old layout intact and consistent.
    from xaibatch.manifest import Manifest

    real_put = Manifest.put_map
    monkeypatch.setattr(Manifest, "put_map", lambda self, row: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    put: list = []  # the rows the migration writes: whole (the run plans with rows without their views)
    monkeypatch.setattr(Manifest, "put_map", lambda self, row: (put.append(row), real_put(self, row)))

    logs = []
    res = run(_opts(inp, out, tiny_ckpt), log=logs.append)
    assert res.computed == 0
    assert any("moved" in line for line in logs)
    assert len(put) == 6 and all(row.view and row.view.get("grid") for row in put)
    assert not any(":" in p.name for p in out.rglob("*")), "a folder or file still has a colon"
    check_output_folder(out, inp)
    after = {
        p.relative_to(out / "maps" / "cam-gradcampp"): np.load(p)
        for p in (out / "maps" / "cam-gradcampp").rglob("*.npy")
    }
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    html = "".join(p.read_text() for p in (out / "detail").rglob("*.*"))  # viewer pages and their data files
    assert "cam-gradcampp/" in html and "cam:gradcam++/" not in html
    assert "cam:gradcam++" in html  # the method's name stays in the report


def test_a_clash_is_refused_before_any_compute(tmp_path, tiny_ckpt):
    from xaibatch.methods import register_method
    from xaibatch.methods.gradcam import GradCAM

    cls = type("Clash", (GradCAM,), {"name": "cam-gradcampp"})
    register_method(cls)
    try:
        inp = tmp_path / "in"
        write_images(inp, 2, size=16)
        with pytest.raises(UsageError, match="share the folder"):
            run(
                RunOptions(
                    input_dir=inp,
                    out_dir=tmp_path / "o",
                    methods=["cam:gradcam++", "cam-gradcampp"],
                    checkpoint=tiny_ckpt,
                    handle_signals=False,
                ),
                log=lambda s: None,
            )
        assert not (tmp_path / "o").exists()
    finally:
        del METHODS["cam-gradcampp"]
    shutil.rmtree(tmp_path / "in")


def test_a_long_stem_moves_too(tmp_path):
    """The move links each file under its new name through a temporary one; for a stem of the longest kind that
    temporary name (the whole file name, a dot and the pid) was over 255 bytes: ENAMETOOLONG mid-migration."""
    from xaibatch import layout
    from xaibatch.pipeline.migrate import _link

    stem = "s" * layout.MAX_STEM_NAME_BYTES
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / f"{stem}.npy").write_bytes(b"map")
    _link(tmp_path, f"old/{stem}.npy", f"maps/m/{stem}.npy")
    assert (tmp_path / "maps" / "m" / f"{stem}.npy").read_bytes() == b"map"
    assert [p.name for p in (tmp_path / "maps" / "m").iterdir()] == [f"{stem}.npy"]  # no temporary file left


def test_the_report_on_disk_keeps_its_old_map_files_until_the_new_one_is_written(tmp_path, tiny_ckpt, monkeypatch):
    """The move linked the new names and deleted the old ones before the run's report: the report on disk, which
    links the old names, showed broken pictures while the run computed, and after a kill until the next run (a
    main run killed after the move over a folder e16738b wrote: 900 of 7,099 links broken)."""
    import xaibatch.report as report
    from outcheck import check_report_links

    inp = tmp_path / "in"
    write_images(inp / "FAKE", 3, size=24, seed=1)
    write_images(inp / "REAL", 3, size=24, seed=2)
    out = tmp_path / "o"
    run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    _to_old_layout(out)
    write_images(inp / "REAL" / "new", 2, size=24, seed=3)  # work to do: the run computes after the move

    def killed(*a, **kw):  # a run stopped after its compute, before its report
        check_report_links(out)  # the old report, during the run
        raise RuntimeError("killed")

    monkeypatch.setattr(report, "write_report", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    check_report_links(out)  # and after the stop
    assert (out / "maps" / "cam:gradcam++").is_dir()
    monkeypatch.undo()

    res = run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert res.computed == 0  # the stopped run committed its maps; the move is not done twice
    check_output_folder(out, inp)  # the old names went with the next report: nothing unreferenced
    assert not any(":" in p.name for p in out.rglob("*")), "a folder or file still has a colon"

    # An uninterrupted run removes the old names once its report is written
    _to_old_layout(out)
    res = run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    check_output_folder(out, inp)
    assert not any(":" in p.name for p in out.rglob("*"))
