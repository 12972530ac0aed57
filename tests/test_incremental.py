"""Re-runs into the same --out: what is skipped, recomputed, dropped, and what the run history says."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_checkpoint, manifest_rows, quiet, run_opts, write_images
from xaibatch import data
from xaibatch.pipeline import plan
from xaibatch.manifest import Manifest
from xaibatch.methods import METHODS, Explanation, Method
from xaibatch.layout import assign_stems
from xaibatch.scan import Failure
from xaibatch.pipeline import run
from xaibatch.tools import synth


class MeanMethod(Method):
    """A cheap second method (the built-in set is being extended elsewhere): per-image channel mean."""

    name = "testmean"
    title = "Test mean"

    def explain(self, batch):
        m = batch.x.detach().mean(1) * float(self.options.get("scale", 1.0))
        lo = m.flatten(1).min(1).values.view(-1, 1, 1)
        hi = m.flatten(1).max(1).values.view(-1, 1, 1)
        return Explanation(maps=(m - lo) / (hi - lo + 1e-6))


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setitem(METHODS, "testmean", MeanMethod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: oversubscription makes tiny convolutions 5x slower
    yield
    torch.set_num_threads(threads)


def _files(out: Path) -> dict[str, int]:
    """Every output file under images/, thumbs/, maps/ with its mtime_ns (a rewrite changes it)."""
    found = {}
    for top in ("images", "thumbs", "maps"):
        for p in (out / top).rglob("*"):
            if p.is_file():
                found[p.relative_to(out).as_posix()] = p.stat().st_mtime_ns
    return found


def _state(out: Path) -> tuple[dict, dict]:
    """Manifest content without run ids: image rows and map rows, with each map's array."""
    m = Manifest(out / "xaibatch.sqlite")
    try:
        images = {rel: (r.stem, r.size, r.sha256, r.pred, r.probs, r.predict_hash) for rel, r in m.images().items()}
        maps = {k: (r.config_hash, r.npy, np.load(out / r.npy).tobytes()) for k, r in m.maps().items()}
    finally:
        m.close()
    return images, maps


def _assert_close(a, b) -> None:
    (ia, ma), (ib, mb) = a, b
    assert ia.keys() == ib.keys() and ma.keys() == mb.keys()
    for rel in ia:
        assert ia[rel][:4] == ib[rel][:4] and ia[rel][5] == ib[rel][5], rel
        np.testing.assert_allclose(ia[rel][4], ib[rel][4], atol=1e-5)
    for k in ma:
        assert ma[k][:2] == mb[k][:2], k
        np.testing.assert_allclose(np.frombuffer(ma[k][2], np.float32), np.frombuffer(mb[k][2], np.float32), atol=1e-5)


def _bump_mtime(p: Path, by_ns: int = 5_000_000_000) -> None:
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + by_ns))


def test_unchanged_rerun_skips_everything_without_hashing_or_writing(tmp_path, tiny_ckpt, monkeypatch):
    inp = tmp_path / "in"
    write_images(inp, 12)
    out = tmp_path / "out"
    first = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (first.seen, first.computed, first.unchanged, first.added) == (12, 12, 0, 12)
    before_files, before_state = _files(out), _state(out)

    def no_hashing(path):
        raise AssertionError(f"hashed {path} on the unchanged fast path")

    monkeypatch.setattr(plan, "file_sha256", no_hashing)  # the planner hashes touched files
    monkeypatch.setattr(data, "read_hashed", no_hashing)  # the loader new and changed ones
    again = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (again.seen, again.computed, again.unchanged, again.added, again.changed, again.removed) == (
        12,
        0,
        12,
        0,
        0,
        0,
    )
    assert _files(out) == before_files  # nothing rewritten
    assert _state(out) == before_state  # skipped images stay exactly as they were


def test_a_new_request_revision_loads_the_model_once_and_recomputes_nothing_unchanged(tmp_path, tiny_ckpt, monkeypatch):
    """A folder whose last run was made under an earlier REQUEST_REVISION (maps of a method whose configuration has
    since gained a field) is not served by the cached path: the model loads once, the methods' hashes decide (here
    nothing changed, so nothing is computed), and the run after is cached again."""
    import sys

    from xaibatch.pipeline import setup

    run_module = sys.modules["xaibatch.pipeline.run"]
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 6)
    loads = []
    real_load = run_module.load_setup
    monkeypatch.setattr(run_module, "load_setup", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    with monkeypatch.context() as m:
        m.setattr(setup, "REQUEST_REVISION", setup.REQUEST_REVISION - 1)  # the code before the bump
        assert run(run_opts(inp, out, tiny_ckpt), log=quiet).computed == 6
    before = _files(out)
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.computed, r.unchanged, len(loads)) == (0, 6, 2)  # loaded again, though nothing was to compute
    assert _files(out) == before
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.computed, len(loads)) == (0, 2)  # the cached path again


def test_maps_of_an_earlier_seeding_rule_are_recomputed_once_the_others_kept(tmp_path, tiny_ckpt, monkeypatch):
    """LIME's maps were seeded by the image's path: a folder made so gets its random methods' maps recomputed once
    (not kept by the cached path), its deterministic methods' maps and its predictions kept as they were."""
    from xaibatch.methods import base
    from xaibatch.pipeline import setup

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 4)
    opts = run_opts(inp, out, tiny_ckpt, methods=("gradcam", "lime"), method_options={"lime": {"samples": 20}})
    with monkeypatch.context() as m:  # the code before pixel seeds: its request revision and its maps' hashes
        m.setattr(setup, "REQUEST_REVISION", 2)
        m.setattr(base, "IMAGE_SEEDS", "path")
        run(opts, log=quiet)
    before = _files(out)
    r = run(opts, log=quiet)
    after = _files(out)
    assert r.computed == 4
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed and all(k.startswith("maps/lime/") for k in changed if k.startswith("maps/")), changed
    assert not any(k.startswith(("maps/gradcam/", "images/")) for k in changed)
    assert run(opts, log=quiet).computed == 0


def test_manifest_sha256_is_the_files_content_hash(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    paths = write_images(inp, 5)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    images, _ = _state(out)
    for p in paths:
        assert images[p.name][2] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_touched_file_is_hashed_once_then_fast_again(tmp_path, tiny_ckpt, monkeypatch):
    inp = tmp_path / "in"
    paths = write_images(inp, 6)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    before = _files(out)
    _bump_mtime(paths[2])  # same bytes, new mtime (e.g. copied without -p)
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.computed, r.unchanged, r.changed) == (0, 6, 0)
    assert _files(out) == before
    monkeypatch.setattr(plan, "file_sha256", lambda p: (_ for _ in ()).throw(AssertionError("hashed")))
    monkeypatch.setattr(data, "read_hashed", lambda *a: (_ for _ in ()).throw(AssertionError("hashed")))
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)  # the new mtime was recorded: no hashing now
    assert r.computed == 0


def test_a_rerun_hashes_each_moved_file_once(tmp_path, tiny_ckpt, monkeypatch):
    """The cached setup plans first and finds work; the run's own plan reuses its hashes (Scan.digests)."""
    inp = tmp_path / "in"
    paths = write_images(inp, 6)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    rng = np.random.default_rng(5)
    synth.save(synth.noise(rng, 32), paths[1])  # changed
    _bump_mtime(paths[1])
    _bump_mtime(paths[3])  # touched
    hashed: list[str] = []
    real = plan.file_sha256
    monkeypatch.setattr(plan, "file_sha256", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.changed, r.computed, r.unchanged) == (1, 1, 5)
    assert sorted(hashed) == sorted([paths[1].name, paths[3].name])


def test_changed_added_removed(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    paths = write_images(inp, 8)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    before_files = _files(out)
    _, before_maps = _state(out)

    # changed: new pixels, same name; added: a new file; removed: one file gone
    rng = np.random.default_rng(99)
    synth.save(synth.noise(rng, 32), paths[1])
    _bump_mtime(paths[1])
    synth.save(synth.noise(rng, 32), inp / "new.png")
    paths[5].unlink()

    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.seen, r.added, r.changed, r.removed, r.computed, r.unchanged) == (8, 1, 1, 1, 2, 6)
    images, maps = _state(out)
    assert "img_005.png" not in images and ("img_005.png", "gradcam") not in maps
    assert not (out / "maps/gradcam/img_005.npy").exists() and not (out / "images/img_005.png").exists()
    assert not (out / "thumbs/image/img_005.png").exists()
    assert maps[("img_001.png", "gradcam")][2] != before_maps[("img_001.png", "gradcam")][2]
    assert ("new.png", "gradcam") in maps and (out / "maps/gradcam/new.npy").exists()
    after = _files(out)
    for f, t in before_files.items():  # untouched images: files not rewritten
        if "img_001" not in f and "img_005" not in f:
            assert after[f] == t, f

    # the incremental result equals a fresh run over the same folder (up to float noise: CPU kernels
    # differ with batch size, and a re-run batches only the new and changed images)
    fresh = tmp_path / "fresh"
    run(run_opts(inp, fresh, tiny_ckpt), log=quiet)
    _assert_close(_state(fresh), _state(out))

    runs = Manifest(out / "xaibatch.sqlite").runs()
    assert [r.status for r in runs] == ["ok", "ok"]
    last = runs[-1]
    assert (
        last.n_seen,
        last.n_added,
        last.n_changed,
        last.n_removed,
        last.n_unchanged,
        last.n_failed,
        last.n_computed,
    ) == (8, 1, 1, 1, 6, 0, 2)
    assert last.finished_at >= last.started_at and last.seconds > 0


def test_adding_a_method_computes_only_that_method(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 6)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    gradcam_files = {f: t for f, t in _files(out).items()}
    _, maps_before = _state(out)

    r = run(run_opts(inp, out, tiny_ckpt, methods=("gradcam", "testmean")), log=quiet)
    assert (r.computed, r.added, r.changed) == (6, 0, 0)
    after = _files(out)
    for f, t in gradcam_files.items():
        assert after[f] == t, f"{f} was rewritten"
    _, maps = _state(out)
    assert all(maps[k] == v for k, v in maps_before.items())
    assert sum(1 for (_, m) in maps if m == "testmean") == 6

    # a method's option changes: only that method is recomputed
    r = run(
        run_opts(inp, out, tiny_ckpt, methods=("gradcam", "testmean"), method_options={"testmean": {"scale": 2.0}}),
        log=quiet,
    )
    assert r.computed == 6
    after2 = _files(out)
    assert all(after2[f] == t for f, t in gradcam_files.items())
    assert any(after2[f] != after[f] for f in after if f.startswith("maps/testmean/"))

    # and nothing to do when asked for a subset of what is there
    r = run(
        run_opts(inp, out, tiny_ckpt, methods=("testmean",), method_options={"testmean": {"scale": 2.0}}), log=quiet
    )
    assert r.computed == 0


def test_new_model_recomputes_and_drops_maps_of_methods_not_requested(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 4)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt, methods=("gradcam", "testmean")), log=quiet)
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    r = run(run_opts(inp, out, other), log=quiet)
    assert r.computed == 4
    _, maps = _state(out)
    assert {m for (_, m) in maps} == {"gradcam"}  # old testmean maps described the old model's prediction
    assert not list((out / "maps" / "testmean").glob("*.npy"))
    assert not list((out / "thumbs" / "testmean").glob("*.png"))


def test_new_model_keeps_the_display_copies_of_unchanged_images(tmp_path, tiny_ckpt):
    """A display copy depends on the image's bytes only: a new model recomputes every prediction and map but
    writes no display copy again (a cron job that swaps its checkpoint rewrote one file an image for nothing),
    except one whose file went missing and one of an image whose bytes changed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 4, size=300)  # 300 px: a display copy and its own thumbnail
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    copies = sorted([*(out / "images").glob("*.png"), *(out / "thumbs" / "image").glob("*.png")])
    assert len(copies) == 8
    before = {p: p.stat().st_ino for p in copies}
    lost = out / "images" / "img_001.png"
    lost.unlink()
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(paths[2])
    _bump_mtime(paths[2])
    r = run(run_opts(inp, out, make_checkpoint(tmp_path / "other.pt", seed=1)), log=quiet)
    assert r.computed == 4
    assert lost.is_file()
    rewritten = sorted(str(p.relative_to(out)) for p in copies if p.stat().st_ino != before.get(p))
    # img_001's copy and thumbnail (written together), img_002's (new bytes); img_000 and img_003 kept
    assert rewritten == [
        "images/img_001.png",
        "images/img_002.png",
        "thumbs/image/img_001.png",
        "thumbs/image/img_002.png",
    ]


def test_changed_content_drops_stale_maps_of_methods_not_requested(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    paths = write_images(inp, 3)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt, methods=("gradcam", "testmean")), log=quiet)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(paths[0])
    _bump_mtime(paths[0])
    run(run_opts(inp, out, tiny_ckpt), log=quiet)  # gradcam only
    _, maps = _state(out)
    assert ("img_000.png", "testmean") not in maps and ("img_001.png", "testmean") in maps
    # asking for testmean again computes it for the changed image only
    r = run(run_opts(inp, out, tiny_ckpt, methods=("gradcam", "testmean")), log=quiet)
    assert r.computed == 1


def test_image_that_becomes_unreadable_leaves_the_report(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    paths = write_images(inp, 4)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    paths[2].write_bytes(b"not a png any more")
    _bump_mtime(paths[2])
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert [rel for rel, _ in r.failed] == ["img_002.png"] and r.status == "some-failed"
    assert r.seen == r.computed + r.unchanged + len(r.failed)
    images, maps = _state(out)
    assert "img_002.png" not in images and ("img_002.png", "gradcam") not in maps
    assert not (out / "maps/gradcam/img_002.npy").exists() and not (out / "images/img_002.png").exists()
    m = Manifest(out / "xaibatch.sqlite")
    assert [rel for rel, _ in m.failures()] == ["img_002.png"]
    m.close()
    # a failure stays listed every run (not counted as added); once the file is gone, so is the failure
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.added, len(r.failed), r.computed) == (0, 1, 0)
    paths[2].unlink()
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert not r.failed
    m = Manifest(out / "xaibatch.sqlite")
    assert m.failures() == []
    m.close()


def test_files_of_dropped_rows_stay_until_the_report_no_longer_shows_them(tmp_path, tiny_ckpt, monkeypatch):
    """A run drops rows before it computes (images gone, unreadable now) and while it computes (the map of a
    method no longer asked, of an image whose content changed). The report on disk shows those images and maps
    until the run writes its new one (hours for LIME; for good when it never gets there), so their files stay until
    then: they were deleted at once, and the old report showed pictures that were gone. Here the report fails:
    every file the old report links is still there, also through a next run that fails as well. The one after
    ends clean, without a file of the dropped rows, and keeps the files a new image wrote where a removed one's
    were (img_003.png renamed: the same stem)."""
    import xaibatch.report
    from outcheck import check_output_folder, check_report_links

    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 8)
    run(run_opts(inp, out, tiny_ckpt, methods=("gradcam", "testmean")), log=quiet)
    links = check_report_links(out)
    paths[0].unlink()
    paths[1].write_bytes(b"not a png any more")
    _bump_mtime(paths[1])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(paths[2])
    _bump_mtime(paths[2])
    paths[3].rename(inp / "img_003.PNG")
    dropped = {
        f"{top}/{m}/img_00{i}.{x}"
        for top, x in (("maps", "npy"), ("maps", "png"))
        for m in ("gradcam", "testmean")
        for i in (0, 1)
    } | {"images/img_000.png", "images/img_001.png", "maps/testmean/img_002.png"}
    assert dropped <= links

    def no_report(*args, **kwargs):
        raise RuntimeError("no report this time")

    with monkeypatch.context() as m:
        m.setattr(xaibatch.report, "write_report", no_report)
        with pytest.raises(RuntimeError, match="no report this time"):
            run(run_opts(inp, out, tiny_ckpt), log=quiet)  # Grad-CAM only
        rows = set(manifest_rows(out, "SELECT rel, method FROM maps"))
        assert ("img_002.png", "testmean") not in rows and ("img_003.PNG", "gradcam") in rows  # computed, committed
        assert not {r for r, _ in rows} & {"img_000.png", "img_001.png", "img_003.png"}
        assert check_report_links(out) == links  # the report of the run before, every file it links in place
        # The next run sweeps the files no row points at, which the failed one left: only after its own report
        # (swept at its start, the old report lost them while it computed). This one does not get there either.
        with pytest.raises(RuntimeError, match="no report this time"):
            run(run_opts(inp, out, tiny_ckpt), log=quiet)
        assert check_report_links(out) == links

    said: list[str] = []
    r = run(run_opts(inp, out, tiny_ckpt), log=said.append)
    assert r.status == "some-failed" and r.computed == 0
    assert any(line.startswith("xaibatch: the previous run ended error; cleaned") for line in said), said
    check_output_folder(out, inp)  # no file without a row; every file the report links exists
    assert not [p for p in dropped if (out / p).exists()]
    stems = dict(manifest_rows(out, "SELECT rel, stem FROM images"))
    assert stems["img_003.PNG"] == "img_003" and (out / "maps/gradcam/img_003.npy").is_file()


def _sql(out: Path, statement: str) -> None:
    m = Manifest(out / "xaibatch.sqlite")
    with m.transaction():
        m.db.execute(statement)
    m.close()


def _last_run_loaded_the_model(out: Path) -> bool:
    from xaibatch.runconfig import RunConfig

    (config,) = manifest_rows(out, "SELECT config_json FROM runs ORDER BY id DESC LIMIT 1")[0]
    return RunConfig.from_json(config).loaded_model


def test_an_unchanged_unreadable_file_is_listed_without_being_read_again(tmp_path, tiny_ckpt):
    """A broken file made every re-run read it again, so a cron job over a folder with one truncated image loaded
    torch and the model every time (2,000 such files: 2.8-3.3 s instead of 0.4 s). Its size and mtime are stamped
    when its bytes are refused: unchanged, it is listed as failed (exit 1) and not read. A reason the bytes do not
    decide, a missing stamp (a run killed before it) or a changed file is read again."""
    inp = tmp_path / "in"
    paths = write_images(inp, 4)
    bad = inp / "cut.png"
    bad.write_bytes(paths[0].read_bytes()[:200])
    out = tmp_path / "out"
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    (reason,) = [why for rel, why in r.failed if rel == "cut.png"]
    assert reason.startswith("corrupt or truncated image")
    st = bad.stat()
    assert manifest_rows(out, "SELECT rel, size, mtime_ns FROM failure_stamps") == [
        ("cut.png", st.st_size, st.st_mtime_ns)
    ]

    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert r.failed == [Failure("cut.png", reason, "image")] and r.status == "some-failed"
    assert (r.seen, r.unchanged, r.computed) == (5, 4, 0)
    assert not _last_run_loaded_the_model(out)  # nothing to read: no torch, no model

    _sql(out, "UPDATE failures SET reason = 'cannot read: Input/output error'")  # a reason the bytes do not decide
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert r.failed == [Failure("cut.png", reason, "image")] and _last_run_loaded_the_model(out)
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert not _last_run_loaded_the_model(out)  # its bytes refused again: stamped again

    _sql(out, "DELETE FROM failure_stamps")  # a run killed before it stamped: read again
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert r.failed == [Failure("cut.png", reason, "image")] and _last_run_loaded_the_model(out)

    shutil.copy(paths[1], bad)  # mended: new size and mtime
    _bump_mtime(bad)
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.failed, r.computed) == ([], 1)
    assert manifest_rows(out, "SELECT rel FROM failures") == []


@pytest.mark.parametrize(
    "reason, lasting",
    [
        ("empty file (0 bytes)", True),
        ("corrupt or truncated image: image file is truncated", True),
        ("not an image (looks like text): the content is not PNG, JPEG, WebP, BMP, TIFF or GIF", True),
        ("refused: the image has 10,000,000,000 pixels, over the limit of 64,000,000 (decompression bomb?)", True),
        # an older xaibatch's words: read once more, as a JPEG that large is now decoded at a smaller scale
        ("refused: the image declares 96,000,000 pixels, over the limit of 64,000,000 (decompression bomb?)", False),
        ("cannot read: Permission denied", False),
        ("not a regular file", False),
        ("out of memory while decoding", False),
        ("OSError: something unexpected", False),
    ],
)
def test_which_reasons_the_bytes_decide(reason, lasting):
    from xaibatch.errors import lasting as decided

    assert decided(reason) is lasting


def test_stems_stay_stable_when_a_same_named_image_arrives(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 1)  # img_000.png, stem img_000
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    shutil.copy(inp / "img_000.png", inp / "img_000.jpg.png")
    Image.open(inp / "img_000.png").convert("RGB").save(inp / "img_000.jpg")
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert r.computed == 2
    images, _ = _state(out)
    assert images["img_000.png"][0] == "img_000"  # kept
    assert images["img_000.jpg"][0] == "img_000.jpg"
    assert len({v[0] for v in images.values()}) == 3
    (inp / "img_000.jpg").unlink()
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (out / "images/img_000.png").exists() and (out / "maps/gradcam/img_000.npy").exists()


def test_assign_stems_never_collides():
    from xaibatch.manifest import ImageRow

    def row(stem):
        return ImageRow("x", stem, 1, 1, "", 1, 1, None, 0, 0, 1.0, [1.0], "", 1)

    known = {"b.png": row("b"), "c.png": row("c.png")}
    stems = assign_stems(["b.png", "b.jpg", "c.png", "c.png.png", "c.jpg"], known)
    assert stems["b.png"] == "b" and stems["c.png"] == "c.png"
    assert len(set(stems.values())) == 5


def test_assign_stems_goes_round_files_still_on_disk():
    """Files of removed images stay until the report no longer shows them: a new image's files never need a folder
    where one of them is, nor go where a folder of them is; the very same file is simply replaced."""
    on_disk = {
        "images/R/x.png",  # R/x.png, removed; a folder R/x.png/ arrives
        "maps/gradcam/R/x.npy",
        "images/R/y.png/a.png",  # R/y.png/a.png, removed; a file R/y.png arrives
        "maps/gradcam/R/y.png/a.png",
        "images/R/z.png",  # R/z.png, removed; R/z.jpg arrives: the same stem, its files replaced
    }
    rels = ["R/x.png/a.png", "R/y.png", "R/z.jpg"]
    assert assign_stems(rels, {}) == {"R/x.png/a.png": "R/x.png/a", "R/y.png": "R/y", "R/z.jpg": "R/z"}
    stems = assign_stems(rels, {}, on_disk)
    assert stems["R/z.jpg"] == "R/z" and stems["R/y.png"] == "R/y.png"
    assert stems["R/x.png/a.png"].split("/")[1] not in ("x.png", "x.npy")
    assert len(set(stems.values())) == 3


def test_run_history_counts_and_summary(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 5)
    out = tmp_path / "out"
    r1 = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    r2 = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert "5 images seen, 0 computed, 5 skipped (unchanged), 0 failed" in r2.summary_line()
    rows = manifest_rows(out, "SELECT id, status, n_seen, n_added, n_unchanged, n_computed FROM runs ORDER BY id")
    assert rows == [(r1.run_id, "ok", 5, 5, 0, 5), (r2.run_id, "ok", 5, 0, 5, 0)]
    assert set(r2.timings) == {"scan", "prepare", "plan", "compute", "report"}  # no import, model, first_batch


def _rewrite_keeping_stamp(path: Path, content: bytes) -> None:
    """New bytes of the same size in place, the mtime put back (``cp -p`` over it, ``touch -r``)."""
    st = path.stat()
    assert len(content) == st.st_size
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _same_size_pngs(folder: Path, n: int, seed: int) -> list[Path]:
    """Uncompressed noise PNGs: every one of the same size, so any can replace another byte for byte."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return [synth.save(synth.noise(rng, 32), folder / f"img_{i:03d}.png", compress_level=0) for i in range(n)]


def test_a_rewrite_that_keeps_size_and_mtime_is_explained_again(tmp_path, tiny_ckpt):
    """A labelling tool re-saved an image with new pixels and put its mtime back (``cp -p``, ``touch -r``): same size,
    same mtime, so the re-run skipped it and kept the old image's prediction and maps under its name for good. The
    scan also compares the inode's change time (ctime), which no tool can set back: the file is hashed, and explained
    again when its bytes changed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = _same_size_pngs(inp, 4, seed=1)
    (other,) = _same_size_pngs(tmp_path / "other", 1, seed=2)
    assert run(run_opts(inp, out, tiny_ckpt), log=quiet).computed == 4
    _rewrite_keeping_stamp(paths[2], other.read_bytes())
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.changed, r.computed, r.unchanged) == (1, 1, 3)
    images, _ = _state(out)
    assert images["img_002.png"][2] == hashlib.sha256(other.read_bytes()).hexdigest()
    os.chmod(paths[1], 0o644)  # a new ctime, the same bytes: hashed once, nothing computed, then fast again
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.changed, r.computed, r.unchanged) == (0, 0, 4)
    assert run(run_opts(inp, out, tiny_ckpt), log=quiet).computed == 0


def test_an_image_refused_while_rewritten_is_read_again_once_whole(tmp_path, tiny_ckpt, monkeypatch):
    """``cp -p`` over an image while a run read it: the run saw it half written (corrupt or truncated), and stamped
    the failure with the size and mtime the scan had seen, which ``cp -p`` puts back when it is done. Every later
    run then listed the whole, good image as failed without reading it again. The stamp holds the ctime too."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = _same_size_pngs(inp, 3, seed=1)
    (other,) = _same_size_pngs(tmp_path / "other", 1, seed=2)
    real_load = data.load_image

    def rewritten_while_read(path, *a, **k):
        if Path(path).name != "img_001.png":
            return real_load(path, *a, **k)
        st = os.stat(path)
        with open(path, "r+b") as f:  # cp -p has written half of the new bytes
            f.truncate(st.st_size // 2)
        try:
            return real_load(path, *a, **k)
        finally:
            Path(path).write_bytes(other.read_bytes())  # and then the rest, and puts the mtime back
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    with monkeypatch.context() as m:
        m.setattr(data, "load_image", rewritten_while_read)
        r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert [rel for rel, _why in r.failed] == ["img_001.png"]
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.failed, r.computed) == ([], 1)
    images, _ = _state(out)
    assert images["img_001.png"][2] == hashlib.sha256(paths[1].read_bytes()).hexdigest()


def test_a_folder_an_older_xaibatch_wrote_is_hashed_once_and_nothing_recomputed(tmp_path, tiny_ckpt, monkeypatch):
    """A manifest of schema 4 has no ctime: its images with their recorded size and mtime are taken as the same,
    as that version took them, without reading them (a first version of the ctime check hashed every image of
    the folder once: every byte of a 100,000-photo set), and gain their ctimes: nothing computed, nothing
    written, and a later rewrite that keeps size and mtime is caught."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 4)
    assert run(run_opts(inp, out, tiny_ckpt), log=quiet).computed == 4
    before = _files(out)
    db = sqlite3.connect(out / "xaibatch.sqlite")  # not through Manifest, which would add the columns back
    db.executescript(
        "ALTER TABLE images DROP COLUMN ctime_ns; ALTER TABLE failure_stamps DROP COLUMN ctime_ns;"
        "UPDATE meta SET value = '4' WHERE key = 'schema_version';"
    )
    db.close()
    monkeypatch.setattr(plan, "file_sha256", lambda p, n=None: (_ for _ in ()).throw(AssertionError("hashed")))
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.computed, r.unchanged, r.changed) == (0, 4, 0)
    assert _files(out) == before
    assert manifest_rows(out, "SELECT value FROM meta WHERE key = 'schema_version'") == [("5",)]
    assert all(c for (c,) in manifest_rows(out, "SELECT ctime_ns FROM images"))
    assert run(run_opts(inp, out, tiny_ckpt), log=quiet).unchanged == 4
    monkeypatch.undo()
    path = sorted(inp.rglob("*.png"))[0]
    st = path.stat()
    path.write_bytes(sorted(inp.rglob("*.png"))[1].read_bytes()[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # cp -p: new bytes, the same size and mtime
    assert run(run_opts(inp, out, tiny_ckpt), log=quiet).changed == 1


def test_an_image_moved_or_deleted_while_the_run_reads_it_is_left_to_the_next_run(tmp_path, tiny_ckpt, monkeypatch):
    """A labelling tool moved ``REAL/img_001.png`` to ``FAKE/`` and deleted another image after the scan listed them:
    the run failed both ("cannot read: No such file or directory", exit 1) and listed them as unreadable, so a cron
    job over a folder people work in exited 1 on most runs for nothing a person must mend. They are no failure now:
    a ``vanished`` event each, exit 0, and the next run finds the moved one where it went."""
    from outcheck import check_output_folder

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    real_load = data.load_image

    def moved_meanwhile(path, *a, **k):
        p = Path(path)
        if p.parent.name == "REAL" and p.name == "img_001.png":
            p.rename(inp / "FAKE" / "moved.png")
        elif p.parent.name == "FAKE" and p.name == "img_002.png":
            p.unlink()
        return real_load(path, *a, **k)

    events: list[dict] = []
    with monkeypatch.context() as m:
        m.setattr(data, "load_image", moved_meanwhile)
        r = run(run_opts(inp, out, tiny_ckpt, on_event=events.append), log=quiet)
    assert (r.status, r.failed, r.computed) == ("ok", [], 4)
    gone = sorted(e["path"] for e in events if e["event"] == "vanished")
    assert gone == sorted(f.rel for f in r.vanished) == ["FAKE/img_002.png", "REAL/img_001.png"]
    assert not [e for e in events if e["event"] == "failure"]
    assert manifest_rows(out, "SELECT rel FROM failures") == []
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert (r.status, r.failed, r.added, r.computed) == ("ok", [], 1, 1)
    check_output_folder(out, inp)


def _content_version(out: Path) -> str:
    return manifest_rows(out, "SELECT value FROM meta WHERE key = 'content_version'")[0][0]


def test_a_ctime_alone_moved_is_read_once_said_and_redraws_nothing(tmp_path, tiny_ckpt, monkeypatch):
    """A chmod or chown (a Kubernetes fsGroup re-owns every file at each pod start) moves the ctime alone: each such
    image is read to check it, and the run says how many; the row's new ctime bumped content_version (the trigger
    fired on any UPDATE of images), so the report drew every per-image page again. --no-ctime reads none."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 4)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    version = _content_version(out)
    for p in paths[:2]:
        os.chmod(p, 0o640)
    said: list[str] = []
    r = run(run_opts(inp, out, tiny_ckpt), log=said.append)
    assert (r.computed, r.unchanged, r.changed) == (0, 4, 0)
    assert "xaibatch: 2 image(s) read to check after their ctime alone moved" in "\n".join(said)
    assert "2 with the same bytes; --no-ctime takes size and mtime alone" in "\n".join(said)
    assert _content_version(out) == version  # only the stamps moved: the per-image pages are not drawn again
    for p in paths:
        os.chmod(p, 0o600)
    monkeypatch.setattr(plan, "file_sha256", lambda p, n=None: (_ for _ in ()).throw(AssertionError("hashed")))
    said.clear()
    r = run(run_opts(inp, out, tiny_ckpt, check_ctime=False), log=said.append)
    assert (r.computed, r.unchanged) == (0, 4) and "ctime" not in "\n".join(said)


def test_a_new_threshold_keeps_the_touch_of_the_image_it_re_decides(tmp_path, tiny_ckpt, monkeypatch):
    """A re-decided row (a new --threshold) was written from the old row after the touches: the stamps the scan had
    just recorded (a chmod's ctime, a touch's mtime) went back, so the next run read those images again."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp / "REAL", 3, seed=1) + write_images(inp / "FAKE", 3, seed=2)
    run(run_opts(inp, out, tiny_ckpt, threshold=0.5), log=quiet)
    for p in paths:
        os.chmod(p, 0o640)
    _bump_mtime(paths[0])
    run(run_opts(inp, out, tiny_ckpt, threshold=0.3), log=quiet)
    stamps = dict(
        ((rel, (s, m, c)) for rel, s, m, c in manifest_rows(out, "SELECT rel, size, mtime_ns, ctime_ns FROM images"))
    )
    for p in paths:
        st = p.stat()
        assert stamps[p.relative_to(inp).as_posix()] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    monkeypatch.setattr(plan, "file_sha256", lambda p, n=None: (_ for _ in ()).throw(AssertionError("hashed")))
    assert run(run_opts(inp, out, tiny_ckpt, threshold=0.3), log=quiet).computed == 0


def test_a_failure_stamped_by_an_older_xaibatch_is_not_read_again(tmp_path, tiny_ckpt):
    """A failure stamp written before the ctime (NULL) never matched a file's ctime: every broken file was read
    again after the upgrade, and a cron job with nothing new loaded torch and the model. It is read by size and
    mtime, as that version did."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 3)
    (inp / "cut.png").write_bytes(paths[0].read_bytes()[:200])
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    _sql(out, "UPDATE failure_stamps SET ctime_ns = NULL")
    r = run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert [f.rel for f in r.failed] == ["cut.png"] and not _last_run_loaded_the_model(out)


EDITED_FACTORY = """
import torch
from torch import nn

SIGN = {sign}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return SIGN * self.head(self.features(x).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net()
"""


def test_an_edited_factory_forward_predicts_and_explains_every_image_again(tmp_path):
    """--model FILE.py:FACTORY: the factory's code is part of the model as its weights are. A forward edited in the
    file (here: the logits' sign, same weights) was taken for the same model: every image skipped as unchanged, the
    report kept the old model's predictions and maps."""
    inp, out, net = tmp_path / "in", tmp_path / "out", tmp_path / "net.py"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    net.write_text(EDITED_FACTORY.format(sign=1.0))
    opts = run_opts(inp, out, None, ["gradcam"], model=f"{net}:build", image_size=32)
    assert run(opts, log=quiet).computed == 6
    before = dict(manifest_rows(out, "SELECT rel, probs_json FROM images"))
    assert run(opts, log=quiet).computed == 0  # the same file: nothing to do
    net.write_text(EDITED_FACTORY.format(sign=-1.0))
    assert run(opts, log=quiet).computed == 6
    after = dict(manifest_rows(out, "SELECT rel, probs_json FROM images"))
    for rel, probs in before.items():
        np.testing.assert_allclose(json.loads(after[rel]), json.loads(probs)[::-1], rtol=1e-5, err_msg=rel)


def test_under_no_ctime_a_same_size_rewrite_with_a_new_mtime_is_explained_again(tmp_path, tiny_ckpt):
    """--no-ctime takes size and mtime alone: an image rewritten in place with new bytes of the same size (a
    labelling tool's re-save) has the same size and a new mtime, and must be hashed and explained again, not
    skipped with the old image's prediction and maps under its name."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = _same_size_pngs(inp, 3, seed=1)
    (other,) = _same_size_pngs(tmp_path / "other", 1, seed=2)
    assert run(run_opts(inp, out, tiny_ckpt, check_ctime=False), log=quiet).computed == 3
    paths[1].write_bytes(other.read_bytes())
    _bump_mtime(paths[1])
    r = run(run_opts(inp, out, tiny_ckpt, check_ctime=False), log=quiet)
    assert (r.changed, r.computed, r.unchanged) == (1, 1, 2)
    images, _ = _state(out)
    assert images["img_001.png"][2] == hashlib.sha256(other.read_bytes()).hexdigest()


def test_a_new_target_layer_recomputes_the_cam_maps_and_only_those(tmp_path, tiny_ckpt):
    """The layer is part of a CAM method's configuration (README, incremental runs): a re-run with another
    --target-layer must explain every image again at that layer, not keep the maps of the old one; a method that
    reads no layer keeps its maps."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 4)
    methods = ("gradcam", "testmean")
    run(run_opts(inp, out, tiny_ckpt, methods=methods), log=quiet)
    _, before = _state(out)
    r = run(run_opts(inp, out, tiny_ckpt, methods=methods, target_layer="layer3"), log=quiet)
    assert r.computed == 4
    _, after = _state(out)
    for key in before:
        assert (after[key][0] != before[key][0]) == (key[1] == "gradcam"), key
    assert any(after[k][2] != before[k][2] for k in before if k[1] == "gradcam")  # new maps, not relabelled old ones


def test_classes_given_in_another_order_predict_every_image_again(tmp_path):
    """A model that names no classes reads its outputs as the class folders in sorted order, and the run's warning
    says to give the training order with --classes. The classes are part of the configuration (README): the re-run
    with --classes REAL,FAKE must predict again under that order, whose positive class REAL is now output 0; the
    old rows' predictions were decided with output 1 as REAL."""
    import timm

    torch.manual_seed(0)
    plain = tmp_path / "plain.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), plain)
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp / "FAKE", 4, seed=1)
    write_images(inp / "REAL", 4, seed=2)
    given = dict(arch="test_resnet", image_size=32, threshold=0.3)
    run(run_opts(inp, out, plain, **given), log=quiet)
    r = run(run_opts(inp, out, plain, classes=["REAL", "FAKE"], **given), log=quiet)
    assert r.computed == 8
    rows = manifest_rows(out, "SELECT rel, label, pred, probs_json FROM images")
    for rel, label, pred, probs in rows:
        assert label == (0 if rel.startswith("REAL/") else 1), rel
        assert pred == (0 if json.loads(probs)[0] >= 0.3 else 1), (rel, probs)


def test_a_new_map_format_recomputes_every_map(tmp_path, tiny_ckpt, monkeypatch):
    """Maps written in an earlier map format (MAP_FORMAT_VERSION: what a map's array holds and how it is drawn) are
    computed again by the version that changed it, not kept beside the new ones."""
    from xaibatch.pipeline import setup

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    _, before = _state(out)
    monkeypatch.setattr(plan, "MAP_FORMAT_VERSION", 999)
    monkeypatch.setattr(setup, "MAP_FORMAT_VERSION", 999)
    assert run(run_opts(inp, out, tiny_ckpt), log=quiet).computed == 3
    _, after = _state(out)
    assert after.keys() == before.keys() and all(after[k][0] != before[k][0] for k in before)


def test_a_smaller_max_map_side_saves_every_map_again_at_that_size(tmp_path, tiny_ckpt):
    """--max-map-side decides the saved arrays' size: a re-run that lowers it must save the maps again at the new
    size, not keep the larger arrays of the run before."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3, size=32)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    assert run(run_opts(inp, out, tiny_ckpt, max_map_side=16), log=quiet).computed == 3
    m = Manifest(out / "xaibatch.sqlite")
    try:
        shapes = {np.load(out / r.npy).shape for r in m.maps().values()}
    finally:
        m.close()
    assert shapes == {(16, 16)}


TWO_FACTORIES = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1), act())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def forward(self, x):
        return self.head(self.features(x))


def relu_net():
    return Net(nn.ReLU)


def tanh_net():
    return Net(nn.Tanh)
"""


def test_the_same_weights_in_another_architecture_predict_every_image_again(tmp_path):
    """The architecture is part of the configuration (README): one weights file loaded into another --model (two
    factories whose modules share every parameter name and shape) is another model, whose predictions and maps are
    all computed again."""
    models = tmp_path / "nets.py"
    models.write_text(TWO_FACTORIES)
    ns: dict = {}
    exec(compile(TWO_FACTORIES, "nets", "exec"), ns)
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(ns["relu_net"]().state_dict(), weights)
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)
    first = run(run_opts(inp, out, weights, model=f"{models}:relu_net"), log=quiet)
    images, _ = _state(out)
    again = run(run_opts(inp, out, weights, model=f"{models}:tanh_net"), log=quiet)
    assert (first.computed, again.computed) == (3, 3)
    after, _ = _state(out)
    assert all(after[rel][5] != images[rel][5] for rel in images)  # another prediction hash


def test_a_new_normalization_of_the_same_model_predicts_every_image_again(tmp_path):
    """Normalization is part of the configuration (README): a --model factory whose pretrained_cfg now gives
    another mean and std (the user fixed it in the settings file it reads; the same factory file, the same weights)
    feeds the model other inputs, so every prediction and map is computed again. (Edited in the factory's own file,
    its code's hash alone would tell the runs apart; without --checkpoint each run loads the model, which made
    its weights.)"""
    models = tmp_path / "nets.py"
    models.write_text(
        TWO_FACTORIES
        + "\n\ndef configured_net():\n"
        + "    import json, pathlib\n"
        + "    torch.manual_seed(0)\n"
        + "    net = Net(nn.ReLU)\n"
        + "    net.pretrained_cfg = json.loads((pathlib.Path(__file__).parent / 'norm.json').read_text())\n"
        + "    return net\n"
    )
    norm = tmp_path / "norm.json"
    norm.write_text(json.dumps({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}))
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)
    opts = run_opts(inp, out, None, model=f"{models}:configured_net")
    assert run(opts, log=quiet).computed == 3
    assert run(opts, log=quiet).computed == 0  # the same model
    norm.write_text(json.dumps({"input_size": [3, 32, 32], "mean": [0.4] * 3, "std": [0.2] * 3}))
    assert run(opts, log=quiet).computed == 3


def test_another_image_size_predicts_every_image_again(tmp_path, tiny_ckpt):
    """The input size is part of the configuration (README): the same checkpoint at another --image-size sees other
    pixels, so every prediction and map is computed again."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    images, _ = _state(out)
    assert run(run_opts(inp, out, tiny_ckpt, image_size=48), log=quiet).computed == 3
    after, _ = _state(out)
    assert all(after[rel][5] != images[rel][5] for rel in images)


def test_an_edited_factory_module_is_a_new_model_on_an_unchanged_re_run(tmp_path, monkeypatch):
    """--model module.path:FACTORY --checkpoint W: the request key of an unchanged re-run (which loads no model) held
    a FILE.py's code but not a module's, so a forward edited in the module was never looked at: nothing computed,
    the old model's predictions and maps kept."""
    inp, out, code = tmp_path / "in", tmp_path / "out", tmp_path / "code"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    (code / "nets").mkdir(parents=True)
    (code / "nets" / "__init__.py").write_text("")
    (code / "nets" / "edited.py").write_text(EDITED_FACTORY.format(sign=1.0))
    monkeypatch.syspath_prepend(str(code))
    ckpt = tmp_path / "w.pt"
    torch.save(importlib.import_module("nets.edited").build().state_dict(), ckpt)
    opts = run_opts(inp, out, ckpt, ["gradcam"], model="nets.edited:build", image_size=32)
    for name in ("nets", "nets.edited"):  # each run a new process: nothing imported before it
        monkeypatch.delitem(sys.modules, name)
    assert run(opts, log=quiet).computed == 6
    for name in ("nets", "nets.edited"):
        monkeypatch.delitem(sys.modules, name)
    assert run(opts, log=quiet).computed == 0 and not _last_run_loaded_the_model(out)  # the same module: nothing
    assert "nets" not in sys.modules  # found without running the package's code
    (code / "nets" / "edited.py").write_text(EDITED_FACTORY.format(sign=-1.0))
    assert run(opts, log=quiet).computed == 6


def test_a_factory_folder_made_before_its_code_was_hashed_is_predicted_again_at_once(tmp_path, monkeypatch):
    """--model FILE.py:FACTORY --checkpoint W: a folder whose maps were made before the factory's code joined the
    predictions' hash was served by the cached path (its request unchanged: FILE.py's sha256 was in it already), so
    nothing happened until a run found one new image, and that run predicted and explained the whole folder again.
    A new request revision makes the next run load the model and recompute it once, as a0536a5 says."""
    from xaibatch.model import user
    from xaibatch.pipeline import setup

    inp, out, net = tmp_path / "in", tmp_path / "out", tmp_path / "net.py"
    write_images(inp / "FAKE", 3, seed=1)
    write_images(inp / "REAL", 3, seed=2)
    net.write_text(EDITED_FACTORY.format(sign=1.0))
    ns: dict = {}
    exec(compile(EDITED_FACTORY.format(sign=1.0), "net", "exec"), ns)
    ckpt = tmp_path / "w.pt"
    torch.save(ns["build"]().state_dict(), ckpt)
    opts = run_opts(inp, out, ckpt, ["gradcam"], model=f"{net}:build", image_size=32)
    with monkeypatch.context() as m:  # the code before a0536a5: its revision, no code in the predictions' hash
        m.setattr(setup, "REQUEST_REVISION", 3)
        m.setattr(user, "factory_code_sha256", lambda spec: None)
        assert run(opts, log=quiet).computed == 6
    assert run(opts, log=quiet).computed == 6 and _last_run_loaded_the_model(out)
    assert run(opts, log=quiet).computed == 0 and not _last_run_loaded_the_model(out)
