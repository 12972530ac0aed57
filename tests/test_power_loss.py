"""After a power cut: files renamed into place in the last seconds are left empty or cut short (ext4's and XFS's
delayed allocation) while the manifest's rows that point at them were committed. The next command after the
restart (a new kernel boot id in the manifest's meta) checks the files written since the last command started,
deletes the damaged ones, which the run writes again, and builds the report in full (pipeline/restart.py).

The restart is faked by changing the recorded boot id; the damage by truncating committed files.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import invoke, make_checkpoint, run_opts, write_images
from xaibatch import layout, lock, open_results
from xaibatch.pipeline import restart, run

SIDE = 160  # larger than layout.THUMB_SIDE: display copies and overlays have thumbnails of their own
REPORT = ("index.html", "history.html", "skipped.html", "predictions.csv", "gallery", "detail", "assets", "figures")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One --target pred,label run over 2 x 5 images with a random checkpoint: (input, output, checkpoint)."""
    root = tmp_path_factory.mktemp("power")
    write_images(root / "in" / "FAKE", 5, size=SIDE, seed=1)
    write_images(root / "in" / "REAL", 5, size=SIDE, seed=2)
    ckpt = make_checkpoint(root / "m.pth")
    run(opts(root / "in", root / "out", ckpt), log=lambda s: None)
    with sqlite3.connect(root / "out" / layout.MANIFEST) as db:
        assert db.execute("SELECT count(*) FROM maps WHERE method = 'gradcam@label'").fetchone()[0] >= 2
    return root / "in", root / "out", ckpt


def opts(inp: Path, out: Path, ckpt: Path):
    return run_opts(inp, out, ckpt, target="pred,label")


@pytest.fixture
def folder(base, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the base run's folder (mtimes kept: the check reads them)."""
    inp, out, ckpt = base
    shutil.copytree(out, tmp_path / "out", symlinks=True)
    return inp, tmp_path / "out", ckpt


def rows(out: Path) -> tuple[list[tuple], list[tuple]]:
    with sqlite3.connect(out / layout.MANIFEST) as db:
        images = db.execute("SELECT rel, stem, width, height FROM images ORDER BY rel").fetchall()
        maps = db.execute("SELECT rel, method, npy, png, thumb FROM maps ORDER BY rel, method").fetchall()
    return images, maps


def picture_damage(out: Path) -> tuple[dict[str, str], set[str]]:
    """A picture of each kind emptied or cut in half: path -> how; and the images they belong to."""
    images, maps = rows(out)
    stems = {rel: stem for rel, stem, _w, _h in images}
    plain = [m for m in maps if m[1] == "gradcam"]
    label = [m for m in maps if m[1] == "gradcam@label"]
    damage = {
        layout.image_png(stems[images[0][0]]): "empty",  # a display copy
        layout.image_thumb(stems[images[1][0]], SIDE, SIDE): "half",  # its thumbnail
        plain[2][2]: "half",  # a map's .npy
        plain[3][2]: "empty",
        plain[4][3]: "empty",  # an overlay
        plain[5][4]: "half",  # an overlay's thumbnail
        label[0][2]: "half",  # a true-class map's .npy
        label[1][4]: "empty",  # a true-class overlay's thumbnail
    }
    assert len(damage) == 8 and all(p.startswith(("images/", "thumbs/", "maps/")) for p in damage)
    owners = {images[0][0], images[1][0], *(m[0] for m in (plain[2], plain[3], plain[4], plain[5], label[0], label[1]))}
    return damage, owners


def report_damage(out: Path) -> dict[str, str]:
    """A report file of each kind emptied, cut in half or zeroed in its middle."""
    figure, figure2 = (p.name for p in sorted((out / "figures").iterdir())[:2])
    bar = next(p.name for p in (out / "assets").iterdir() if p.name.startswith("colourbar."))
    css = next(p.name for p in (out / "assets").iterdir() if p.suffix == ".css")
    detail = sorted(p.name for p in (out / "detail").iterdir() if p.suffix == ".js")[0]
    detail_page = sorted(p.name for p in (out / "detail").iterdir() if p.suffix == ".html")[0]
    return {
        "index.html": "empty",
        "gallery/page-1.html": "empty",
        "gallery/names.js": "half",
        f"detail/{detail}": "half",
        f"figures/{figure}": "half",
        # blocks of zeros inside, at the size written: no structural check sees them, the full build does
        f"figures/{figure2}": "zeros",
        f"detail/{detail_page}": "zeros",
        f"assets/{bar}": "empty",
        f"assets/{css}": "empty",
        "predictions.csv": "half",
    }


def damage_files(out: Path, damage: dict[str, str]) -> None:
    for rel, how in damage.items():
        path = out / rel
        size = path.stat().st_size
        if how == "zeros":
            with open(path, "r+b") as f:
                f.seek(size // 4)
                f.write(bytes(size // 2))
        else:
            os.truncate(path, 0 if how == "empty" else size // 2)


def fake_restart(out: Path, since: float | None = None) -> None:
    """The manifest as a command on another boot left it (``since``: when it started; else as recorded)."""
    with sqlite3.connect(out / layout.MANIFEST) as db:
        boot = json.loads(db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0])
        boot["boot_id"] = "another-boot"
        if since is not None:
            boot["since"] = since
        db.execute("UPDATE meta SET value = ? WHERE key = 'boot'", (json.dumps(boot),))


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every picture's bytes and mtime."""
    return {
        str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
        for top in layout.PICTURE_DIRS
        for p in (out / top).rglob("*")
        if p.is_file()
    }


def report_files(out: Path) -> dict[str, bytes]:
    found = {}
    for name in REPORT:
        p = out / name
        for f in [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()):
            found[str(f.relative_to(out))] = f.read_bytes()
    return found


def test_after_a_restart_a_run_writes_the_damaged_files_again_and_the_whole_report(folder, tmp_path):
    inp, out, ckpt = folder
    before = snapshot(out)
    pictures, owners = picture_damage(out)
    pages = report_damage(out)
    damage_files(out, pictures | pages)
    fake_restart(out)
    lines = []
    run(opts(inp, out, ckpt), log=lines.append)

    # the line names what was checked and what was damaged: every picture, the empty pages and the cut figure
    structural = set(pictures) | {
        rel for rel, how in pages.items() if how == "empty" or how == "half" and rel.endswith(".svg")
    }
    said = [s for s in lines if "the machine restarted" in s]
    assert len(said) == 1 and f", {len(structural)} were damaged (written again)" in said[0], lines
    assert len(structural) > 1
    assert f"{len(owners)} image(s) lost output files" in "\n".join(lines)

    # the damaged pictures are written again, whole (with the other files of their display copy or map); the
    # pictures of the other images are not touched
    after = snapshot(out)
    assert after.keys() == before.keys()
    stems = {stem for rel, stem, _w, _h in rows(out)[0] if rel in owners}
    for rel, (data, mtime) in before.items():
        if stem_of(rel) not in stems:
            assert after[rel] == (data, mtime), rel
        elif rel.endswith(".npy"):
            np.testing.assert_allclose(np.load(out / rel), np.load(_bytes_file(tmp_path, data)), atol=1e-5)
        else:
            assert Image.open(out / rel).size == Image.open(_bytes_file(tmp_path, data)).size
            Image.open(out / rel).load()
    res = open_results(out)
    assert sum(1 for r in res for key in r.maps if res.map(r, key).size) == len(rows(out)[1])

    # the report is the one a first build over this manifest writes
    fresh = tmp_path / "fresh"
    shutil.copytree(out, fresh, symlinks=True)
    for name in (*REPORT, layout.REPORT_STATE):
        p = fresh / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert invoke("report", fresh, "-q").exit_code == 0
    assert report_files(out) == report_files(fresh)
    assert all(report_files(out)[rel] for rel in pages)

    # once per restart: the next run checks nothing
    lines.clear()
    run(opts(inp, out, ckpt), log=lines.append)
    assert not [s for s in lines if "restarted" in s or "lost" in s], lines


def stem_of(rel: str) -> str:
    """The stem of the image a picture belongs to (images/<stem>.png, maps/<m>/<stem>.npy, thumbs/<m>/<stem>.png)."""
    top, _, rest = rel.partition("/")
    return (rest if top == "images" else rest.partition("/")[2]).rsplit(".", 1)[0]


def _bytes_file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"orig-{hash(data)}"
    p.write_bytes(data)
    return p


def test_the_same_damage_without_a_restart_is_not_checked(folder, monkeypatch):
    """The documented limit: a kill -9 leaves no such files (rename is atomic), so only a new boot id is looked at;
    a normal re-run walks nothing more than before (only a meta read and write)."""
    inp, out, ckpt = folder
    with sqlite3.connect(out / layout.MANIFEST) as db:  # recorded by a run an hour ago, on this boot
        boot = json.dumps({"boot_id": restart.boot_id(), "since": time.time() - 3600})
        db.execute("UPDATE meta SET value = ? WHERE key = 'boot'", (boot,))
    walked = []
    monkeypatch.setattr(restart, "repair", lambda *a, **k: walked.append(a))
    damage_files(out, {"index.html": "empty"} | picture_damage(out)[0])
    lines = []
    run(opts(inp, out, ckpt), log=lines.append)
    assert not walked and not [s for s in lines if "restarted" in s]
    assert (out / picture_damage(out)[0].popitem()[0]).stat().st_size == 0  # still empty: not noticed
    with sqlite3.connect(out / layout.MANIFEST) as db:
        boot = json.loads(db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0])
    assert boot["boot_id"] == restart.boot_id() and time.time() - boot["since"] < 60  # this run's start


def test_only_a_display_copy_damaged_computes_no_map(folder):
    inp, out, ckpt = folder
    images, maps = rows(out)
    rel, stem = images[0][0], images[0][1]
    npys = {m[2]: (out / m[2]).stat().st_mtime_ns for m in maps if m[0] == rel}
    damage_files(out, {layout.image_png(stem): "empty", layout.image_thumb(stem, SIDE, SIDE): "half"})
    fake_restart(out)
    result = run(opts(inp, out, ckpt), log=lambda s: None)
    Image.open(out / layout.image_png(stem)).load()
    Image.open(out / layout.image_thumb(stem, SIDE, SIDE)).load()
    assert {p: (out / p).stat().st_mtime_ns for p in npys} == npys  # its maps stay as they were
    with sqlite3.connect(out / layout.MANIFEST) as db:
        assert not db.execute("SELECT count(*) FROM maps WHERE run_id = ?", (result.run_id,)).fetchone()[0]


def test_xaibatch_report_after_a_restart_mends_its_pages_and_leaves_the_pictures_to_the_next_run(folder):
    inp, out, ckpt = folder
    pictures, _owners = picture_damage(out)
    damage_files(out, pictures | report_damage(out))
    fake_restart(out)
    got = invoke("report", out)
    assert got.exit_code == 0, got.output
    assert "the next run" in got.output and " damaged (" in got.output
    assert all((out / rel).stat().st_size for rel in report_damage(out))
    assert not any((out / rel).exists() for rel in pictures)  # deleted: the next run writes them again
    run(opts(inp, out, ckpt), log=lambda s: None)
    assert all(restart.intact(str(out / rel)) for rel in pictures)


@pytest.mark.parametrize("flags", [(), ("--log-json",), ("-q",)])
def test_the_command_line_says_it_once_as_a_line_or_an_event(folder, flags):
    inp, out, ckpt = folder
    display = layout.image_png(rows(out)[0][0][1])
    damage_files(out, {display: "empty"})
    fake_restart(out)
    r = invoke("run", inp, "--checkpoint", ckpt, "--out", out, "--target", "pred,label", "--workers", "0", *flags)
    assert r.exit_code == 0, r.output
    said = [s for s in r.stderr.splitlines() if "the machine restarted" in s]
    events = [e for e in map(json.loads, r.stdout.splitlines() if flags else []) if e.get("kind") == "restarted"]
    if flags == ("--log-json",):
        assert not said and len(events) == 1 and events[0]["damaged"] == 1 and events[0]["checked"] > 1
    elif flags == ("-q",):
        assert r.stderr == "" and r.stdout == ""
    else:
        assert len(said) == 1 and said[0].startswith("xaibatch: the machine restarted since this folder was last")
        assert said[0].endswith(", 1 was damaged (written again)")
    Image.open(out / display).load()


def test_the_files_checked_follow_the_recorded_start(folder):
    """Files modified an hour or more before the last command started were on disk before it: not read. A start
    later than the clock now (one of the boots' clocks was wrong: a Raspberry Pi without a clock) checks all."""
    inp, out, ckpt = folder
    display = layout.image_png(rows(out)[0][0][1])
    damage_files(out, {display: "empty"})
    since = time.time() - 60
    old = since - restart.MARGIN - 10
    os.utime(out / display, (old, old))
    fake_restart(out, since)
    assert restart.check(out, _manifest(out)).damaged == []
    (out / "images" / "link.png").symlink_to("/nonexistent")  # not a file xaibatch wrote: left alone
    fake_restart(out, time.time() + 3 * 86400)
    assert restart.check(out, _manifest(out)).damaged == [display]
    assert (out / "images" / "link.png").is_symlink()


def _manifest(out: Path):
    from xaibatch.manifest import Manifest

    return Manifest(out / layout.MANIFEST)


def test_without_a_boot_id_nothing_is_recorded(folder, monkeypatch, tmp_path):
    inp, out, ckpt = folder
    monkeypatch.setattr(lock, "BOOT_ID", tmp_path / "none")
    run(opts(inp, tmp_path / "new", ckpt), log=lambda s: None)
    assert restart.recorded(_manifest(tmp_path / "new")) is None


def test_intact_checks_each_kind_by_its_structure(tmp_path):
    arr = tmp_path / "a.npy"
    np.save(arr, np.zeros((40, 30), np.float32))
    png = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(png)
    svg = tmp_path / "a.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    js = tmp_path / "sanity.json"
    js.write_text('{"a": 1}')
    for p in (arr, png, svg, js):
        assert restart.intact(str(p))
        whole = p.read_bytes()
        for cut in (0, 1, len(whole) // 2, len(whole) - 1):
            p.write_bytes(whole[:cut])
            assert not restart.intact(str(p)), (p.name, cut)
        p.write_bytes(whole + b"\0")  # a block of zeros past the end
        assert not restart.intact(str(p)), p.name
