"""An image moved to another class folder (a relabel) or renamed, same bytes: its prediction, maps and files go to
the new path (plan.Move), and only what its new label asks for is computed (a labelling tool reorganising the folder
a cron job runs over used to cost every method again for each image it touched).

The tiny randomly initialised checkpoint calls most images REAL (see test_target_label.py), so moving an image between
FAKE and REAL changes whether it is misclassified; every test checks what it relies on.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import manifest_rows, run_opts
from outcheck import check_output_folder, check_report_links, detail_records
from xaibatch import layout
from xaibatch.pipeline import RunOptions, run
from xaibatch.tools import synth

LIME = {"lime": {"samples": 24, "segments": 8}}


@pytest.fixture
def inp(tmp_path) -> Path:
    root = tmp_path / "in"
    synth.write_images(root / "FAKE", 4, 32, 1, "png")
    synth.write_images(root / "REAL", 4, 32, 2, "png")
    return root


def opts(inp: Path, out: Path, ckpt: Path, target: str = "pred", methods=("gradcam",), **kw) -> RunOptions:
    return run_opts(inp, out, ckpt, methods, target=target, batch_size=3, method_options=LIME, **kw)


def go(o: RunOptions, said: list[str] | None = None):
    return run(o, log=(said.append if said is not None else lambda s: None))


def images(out: Path) -> dict[str, tuple]:
    """rel -> (stem, label, pred, target, probs, sha256, run_id)."""
    rows = manifest_rows(out, "SELECT rel, stem, label, pred, target, probs_json, sha256, run_id FROM images")
    return {r[0]: (r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows}


def maps(out: Path) -> dict[tuple[str, str], tuple[str, str, int, bytes]]:
    """(rel, method) -> (config_hash, npy path, run_id, the .npy's bytes)."""
    rows = manifest_rows(out, "SELECT rel, method, config_hash, npy, run_id FROM maps")
    return {(r[0], r[1]): (r[2], r[3], r[4], (out / r[3]).read_bytes()) for r in rows}


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / layout.CSV, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def move(inp: Path, old: str, new: str) -> None:
    (inp / new).parent.mkdir(parents=True, exist_ok=True)
    os.rename(inp / old, inp / new)


def test_a_relabelled_image_computes_nothing_and_shows_under_its_new_class(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    before, before_maps = images(out), maps(out)
    assert before["REAL/img_001.png"][1:3] == (1, 1), "the fixture model must call this REAL image REAL"
    move(inp, "REAL/img_001.png", "FAKE/moved.png")

    said: list[str] = []
    r = go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")), said)
    assert r.computed == 0  # no forward pass: LIME's samples and Grad-CAM's pass not run again
    assert "model" not in r.timings  # nor a model loaded: the cached setup of an unchanged re-run (no torch import)
    assert (r.counts.added, r.counts.removed, r.counts.unchanged) == (0, 0, 8)
    assert any("1 image(s) moved or renamed (e.g. REAL/img_001.png -> FAKE/moved.png)" in s for s in said), said

    after, after_maps = images(out), maps(out)
    assert "REAL/img_001.png" not in after
    stem, label, pred, target, probs, sha, _run = after["FAKE/moved.png"]
    assert (stem, label) == ("FAKE/moved", 0)  # FAKE is class 0
    assert (pred, target, probs, sha) == before["REAL/img_001.png"][2:6]
    for m in ("gradcam", "lime"):
        old, new = before_maps[("REAL/img_001.png", m)], after_maps[("FAKE/moved.png", m)]
        assert new[0] == old[0] and new[2] == old[2]  # the same hash, the run that computed it
        assert new[1] == layout.map_npy(m, "FAKE/moved") and new[3] == old[3]  # its bytes under the new stem
        assert not (out / old[1]).exists()  # the old path's files are gone with its rows
    assert not (out / layout.image_png("REAL/img_001")).exists()

    row = csv_rows(out)["FAKE/moved.png"]
    assert (row["label"], row["pred"], row["correct"]) == ("FAKE", "REAL", "0")
    assert "REAL/img_001.png" not in csv_rows(out)
    rec = detail_records(out)["FAKE/moved.png"]
    assert (rec["label"], rec["group"]) == ("FAKE", "wrong-0")  # the gallery's misclassified FAKE group
    assert {m["m"] for m in rec["maps"]} == {"gradcam", "lime"}
    assert rec["image"] == layout.image_png("FAKE/moved")
    check_output_folder(out, inp)
    check_report_links(out)


def test_a_rename_within_a_class_keeps_everything(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    before, before_maps = images(out), maps(out)
    move(inp, "FAKE/img_002.png", "FAKE/renamed.png")
    move(inp, "REAL/img_003.png", "REAL/sub/deeper.png")  # a folder below the class folder: the same class
    r = go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    assert r.computed == 0
    after, after_maps = images(out), maps(out)
    for old, new in (("FAKE/img_002.png", "FAKE/renamed.png"), ("REAL/img_003.png", "REAL/sub/deeper.png")):
        assert after[new][1:] == before[old][1:]
        for m in ("gradcam", "lime"):
            assert after_maps[(new, m)][3] == before_maps[(old, m)][3]
    check_output_folder(out, inp)


def test_a_rename_to_another_extension_keeps_its_stem(inp, tmp_path, tiny_ckpt):
    """``a.png`` -> ``a.PNG``: the stem is the same, the files stay where they are (no link onto itself)."""
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt))
    npy = (out / layout.map_npy("gradcam", "REAL/img_000")).read_bytes()
    move(inp, "REAL/img_000.png", "REAL/img_000.PNG")
    r = go(opts(inp, out, tiny_ckpt))
    assert r.computed == 0
    assert images(out)["REAL/img_000.PNG"][0] == "REAL/img_000"
    assert (out / layout.map_npy("gradcam", "REAL/img_000")).read_bytes() == npy
    check_output_folder(out, inp)


@pytest.mark.parametrize("target", ["label", "pred,label"])
def test_a_move_ends_as_a_fresh_run_over_the_moved_folder_would(inp, tmp_path, tiny_ckpt, target):
    """--target label: a map explains the label, so a move between classes computes the image's maps again and a
    rename within its class none. --target pred,label: the true-class maps (``@label``) follow whether the image is
    misclassified under its new label. Either way the folder ends as a fresh run over the moved input leaves it."""
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, target=target, methods=("gradcam", "lime")))
    before_maps = maps(out)
    before = images(out)
    assert before["FAKE/img_000.png"][2] == 1 and before["REAL/img_000.png"][2] == 1  # both called REAL
    moved = {
        "REAL/from_fake.png": "FAKE/img_000.png",  # misclassified -> correct
        "FAKE/from_real.png": "REAL/img_000.png",  # correct -> misclassified
        "REAL/renamed.png": "REAL/img_002.png",  # same class
    }
    for new, old in moved.items():
        move(inp, old, new)

    r = go(opts(inp, out, tiny_ckpt, target=target, methods=("gradcam", "lime")))
    ref = tmp_path / "ref"
    go(opts(inp, ref, tiny_ckpt, target=target, methods=("gradcam", "lime")))
    got, want = images(out), images(ref)
    assert got.keys() == want.keys()
    for rel in got:
        assert got[rel][:4] == want[rel][:4], rel  # stem, label, pred, target
        assert np.allclose(got[rel][4], want[rel][4], atol=1e-5)
    got_maps, want_maps = maps(out), maps(ref)
    assert got_maps.keys() == want_maps.keys()
    for (rel, m), (h, npy, run_id, data) in got_maps.items():
        assert (h, npy) == want_maps[(rel, m)][:2], (rel, m)
        if run_id != r.run_id:  # reused: the old path's bytes (LIME's draw is seeded by the path it was computed at)
            assert data == before_maps[(moved.get(rel, rel), m)][3]
        if run_id == r.run_id or not m.startswith("lime"):
            a, b = np.load(out / npy), np.load(ref / npy)
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-4), (rel, m)

    run2 = {key for key, v in got_maps.items() if v[2] == r.run_id}  # what this run computed
    kept = {("REAL/renamed.png", m) for m in ("gradcam", "lime")}
    assert not run2 & kept and all(got_maps[k][3] == before_maps[("REAL/img_002.png", k[1])][3] for k in kept)
    if target == "label":  # the two relabelled images' maps explain their new class: computed again
        assert run2 == {(rel, m) for rel in ("REAL/from_fake.png", "FAKE/from_real.png") for m in ("gradcam", "lime")}
        assert r.computed == 2
    else:  # the prediction's maps stay; the image now misclassified gets its true class's, the other loses them
        assert run2 == {("FAKE/from_real.png", m) for m in ("gradcam@label", "lime@label")}
        assert not {k for k in got_maps if k[0] == "REAL/from_fake.png" and k[1].endswith("@label")}
        assert r.computed == 1
    check_output_folder(out, inp)


def test_duplicates_pair_each_vanished_row_with_one_new_path(inp, tmp_path, tiny_ckpt):
    """Two images with the same bytes vanish and three copies appear: two are moves (the one with the same file name
    first, then by path), the third is an added image computed as before."""
    shutil.copy(inp / "REAL/img_001.png", inp / "REAL/dup.png")
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt))
    before_maps = maps(out)
    for old, new in (("REAL/img_001.png", "FAKE/a.png"), ("REAL/dup.png", "FAKE/dup.png")):
        move(inp, old, new)
    shutil.copy(inp / "FAKE/a.png", inp / "FAKE/b.png")
    events: list[dict] = []
    r = go(opts(inp, out, tiny_ckpt, on_event=events.append))
    assert [e["moved"] for e in events if e["event"] == "plan"] == [2]
    assert (r.computed, r.counts.added, r.counts.removed) == (1, 1, 0)
    got = maps(out)
    # REAL/dup.png -> FAKE/dup.png (same name), REAL/img_001.png -> FAKE/a.png (the first left by path)
    assert got[("FAKE/dup.png", "gradcam")][2] == before_maps[("REAL/dup.png", "gradcam")][2] == 1
    assert got[("FAKE/a.png", "gradcam")][2] == 1
    assert got[("FAKE/b.png", "gradcam")][2] == r.run_id
    check_output_folder(out, inp)


def test_renames_in_a_chain_take_each_image_its_own_files(inp, tmp_path, tiny_ckpt):
    """``img_002.png`` -> ``img_009.png`` and ``img_001.png`` -> ``img_002.jpg``, whose stem is ``img_002`` again:
    every file is linked before any is replaced, so no image gets another's pictures."""
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    before, before_maps = images(out), maps(out)
    display = {rel: (out / layout.image_png(before[rel][0])).read_bytes() for rel in before}
    move(inp, "REAL/img_002.png", "REAL/img_009.png")
    move(inp, "REAL/img_001.png", "REAL/img_002.jpg")
    r = go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    assert r.computed == 0
    after, after_maps = images(out), maps(out)
    assert after["REAL/img_002.jpg"][0] == "REAL/img_002"  # the stem the other image had
    for old, new in (("REAL/img_002.png", "REAL/img_009.png"), ("REAL/img_001.png", "REAL/img_002.jpg")):
        assert (out / layout.image_png(after[new][0])).read_bytes() == display[old], new
        for m in ("gradcam", "lime"):
            assert after_maps[(new, m)][3] == before_maps[(old, m)][3], (new, m)
    check_output_folder(out, inp)


def test_a_copy_is_an_added_image(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt))
    shutil.copy(inp / "REAL/img_001.png", inp / "FAKE/copy.png")
    events: list[dict] = []
    r = go(opts(inp, out, tiny_ckpt, on_event=events.append))
    assert (r.computed, r.counts.added) == (1, 1)
    assert [e["moved"] for e in events if e["event"] == "plan"] == [0]
    assert {"REAL/img_001.png", "FAKE/copy.png"} <= images(out).keys()
    check_output_folder(out, inp)


def test_a_moved_image_whose_map_file_was_lost_gets_it_again(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    lost = out / layout.map_npy("lime", "REAL/img_001")
    lost.unlink()
    move(inp, "REAL/img_001.png", "FAKE/moved.png")
    r = go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    assert r.computed == 1
    got = maps(out)
    assert got[("FAKE/moved.png", "lime")][2] == r.run_id and got[("FAKE/moved.png", "gradcam")][2] == 1
    check_output_folder(out, inp)


def test_a_move_after_a_model_change_keeps_only_the_display_copy(inp, tmp_path, tiny_ckpt):
    """Another checkpoint: the prediction and maps are computed again, at the new path; the display copy (the image's
    bytes alone decide it) is the old one, linked; nothing of the old path's stays behind."""
    from helpers import make_checkpoint

    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt))
    display = (out / layout.image_png("REAL/img_001")).stat().st_ino
    move(inp, "REAL/img_001.png", "FAKE/moved.png")
    other = make_checkpoint(tmp_path / "other.pt", seed=5)
    r = go(opts(inp, out, other))
    assert r.computed == 8
    assert images(out)["FAKE/moved.png"][1] == 0
    assert (out / layout.image_png("FAKE/moved")).stat().st_ino == display  # not written again
    check_output_folder(out, inp)


def test_output_dir_link_gives_a_file_a_second_name_inside_the_folder(tmp_path, monkeypatch):
    import errno

    from xaibatch.errors import UsageError
    from xaibatch.files import OutputDir

    out = tmp_path / "out"
    (out / "maps/a").mkdir(parents=True)
    (out / "maps/a/x.npy").write_bytes(b"old map")
    (out / "maps/b").mkdir(parents=True)
    (out / "maps/b/y.npy").write_bytes(b"left by another image")  # replaced, as a write replaces it
    os.symlink(tmp_path / "secret", out / "maps/a/link.npy")
    (tmp_path / "secret").write_bytes(b"not ours")
    with OutputDir(out) as files:
        assert files.link([("maps/a/x.npy", "maps/b/y.npy")]) == 1
        assert files.link([("maps/a/x.npy", "maps/b/y.npy")]) == 1  # linked already (a run killed before its commit)
        assert files.link([("maps/a/x.npy", "maps/c/d/z.npy")]) == 1  # folders made as a write makes them
        gone = [("maps/a/gone.npy", "maps/b/w.npy"), ("maps/nowhere/gone.npy", "maps/b/w.npy")]
        assert files.link([*gone, ("maps/a/link.npy", "maps/b/v.npy")]) == 0  # never a link followed out
        for src, dst in (("maps/a/x.npy", "../escaped.npy"), ("../secret", "maps/b/u.npy")):
            with pytest.raises(UsageError, match="refusing"):
                files.link([("maps/a/x.npy", "maps/b/t.npy"), (src, dst)])
    ino = (out / "maps/a/x.npy").stat().st_ino
    assert (out / "maps/b/y.npy").stat().st_ino == ino and (out / "maps/c/d/z.npy").stat().st_ino == ino
    assert sorted(p.name for p in out.rglob("*") if p.is_file() or p.is_symlink()) == [
        "link.npy",
        "x.npy",
        "y.npy",
        "z.npy",
    ]
    assert not (tmp_path / "escaped.npy").exists() and not (out / "maps/b/t.npy").exists()  # nothing of a refusal

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links: the bytes are copied
    with OutputDir(out) as files:
        assert files.link([("maps/a/x.npy", "maps/b/copy.npy")]) == 1
    assert (out / "maps/b/copy.npy").read_bytes() == b"old map"
    assert not [p for p in out.rglob("*.tmp")]


def test_a_misclassified_image_moved_to_a_third_class_explains_its_new_label(tmp_path):
    """--target pred,label with three classes: an image predicted C in folder A moved to folder B stays
    misclassified, and its true-class maps (``@label``) must explain B now; the map of A it had must not go along
    with the move (with two classes a move between folders always ends correct or explained anew)."""
    ckpt = synth.tiny_checkpoint(tmp_path / "abc.pt", classes=("A", "B", "C"))
    root = tmp_path / "in"
    for seed, name in enumerate("ABC", start=1):
        synth.write_images(root / name, 3, 32, seed, "png")
    out = tmp_path / "out"
    go(opts(root, out, ckpt, target="pred,label"))
    names = "ABC"
    old, pred = next(
        (rel, row[2]) for rel, row in sorted(images(out).items()) if names[row[2]] != rel.split("/")[0]
    )  # a misclassified image
    third = next(n for n in names if n not in (old.split("/")[0], names[pred]))
    new = f"{third}/moved.png"
    move(root, old, new)
    r = go(opts(root, out, ckpt, target="pred,label"))
    ref = tmp_path / "ref"
    go(opts(root, ref, ckpt, target="pred,label"))
    got, want = maps(out), maps(ref)
    assert got.keys() == want.keys() and (new, "gradcam@label") in got
    assert got[(new, "gradcam@label")][2] == r.run_id  # computed for the new label, not the old one's carried over
    assert np.allclose(np.load(out / got[(new, "gradcam@label")][1]), np.load(ref / want[(new, "gradcam@label")][1]))
    assert images(out)[new][1] == names.index(third)


def test_a_moved_image_keeps_what_the_report_shows_of_its_maps(inp, tmp_path, tiny_ckpt):
    """A run plans from the manifest's map rows without what only the report shows (Known.read: a view is most of a
    row, 190 MB and 2 s of every night's run at 100,000 images and two methods); a moved image's rows still go to its
    new path whole: the same view, LIME's info and run, not rows emptied of them (nor views drawn again)."""
    out = tmp_path / "out"
    methods = ("gradcam", "lime")
    go(opts(inp, out, tiny_ckpt, methods=methods))
    query = "SELECT method, view_json, info_json, faith_json, run_id FROM maps WHERE rel = ?"
    before = manifest_rows(out, query, ("REAL/img_001.png",))
    assert len(before) == 2 and all(r[1] for r in before) and any(r[2] for r in before)
    move(inp, "REAL/img_001.png", "REAL/sub/moved.png")
    r = go(opts(inp, out, tiny_ckpt, methods=methods))
    assert r.computed == 0
    assert sorted(manifest_rows(out, query, ("REAL/sub/moved.png",))) == sorted(before)


def test_a_run_plans_without_what_only_the_report_shows(inp, tmp_path, tiny_ckpt):
    """Known.read leaves out each map's view, LIME's info and faithfulness curves, which the plan never reads."""
    from xaibatch.manifest import Manifest
    from xaibatch.pipeline.plan import Known

    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime")))
    m = Manifest(out / layout.MANIFEST)
    try:
        whole, known = m.maps(), Known.read(m)
    finally:
        m.close()
    rows = [row for by in known.maps.values() for row in by.values()]
    assert len(rows) == len(whole) == 16 and all(r.view for r in whole.values())
    assert all(r.view is None and r.info is None and r.faith is None for r in rows)
    for row in rows:  # the rest as the manifest holds it
        w = whole[(row.rel, row.method)]
        assert (row.config_hash, row.files, row.run_id, row.faith_hash) == (
            w.config_hash,
            w.files,
            w.run_id,
            w.faith_hash,
        )
