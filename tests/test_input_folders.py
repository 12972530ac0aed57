"""The input folder's scan: unreadable subfolders, clashing or too long stems, empty classes, links out, links into
a report, hidden names, folder names that are not UTF-8, a stray manifest in a class folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import REPO, invoke, manifest_rows, run_argv, write_images
from oddnames import make_unreadable
from xaibatch import layout
from xaibatch.cli import cli
from xaibatch.scan import scan


def test_unreadable_subfolder_is_skipped_and_the_rest_scanned(tmp_path, monkeypatch):
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    write_images(root / "REAL" / "locked", 1, seed=2)
    try:
        make_unreadable(root / "REAL" / "locked", monkeypatch)
        found = scan(root)
    finally:
        (root / "REAL" / "locked").chmod(0o755)
    assert [e.rel for e in found.images] == [
        "FAKE/img_000.png",
        "FAKE/img_001.png",
        "REAL/img_000.png",
        "REAL/img_001.png",
    ]
    assert [rel for rel, _ in found.skipped] == ["REAL/locked"]
    assert "cannot list folder" in found.skipped[0][1]


def test_folder_symlink_out_of_the_input_is_not_followed_unless_asked(tmp_path, tiny_ckpt):
    outside = tmp_path / "elsewhere"
    write_images(outside, 2, seed=5)
    root = tmp_path / "in"
    write_images(root, 1)
    os.symlink(outside, root / "out_link")
    os.symlink(root / "inner", root / "in_link")  # a link that stays inside is followed as before
    write_images(root / "inner", 1, seed=6)
    found = scan(root)
    assert [e.rel for e in found.images] == ["img_000.png", "inner/img_000.png"]
    assert [rel for rel, _ in found.skipped] == ["out_link"]
    assert "outside the input folder" in found.skipped[0][1] and "--follow-links" in found.skipped[0][1]
    assert len(scan(root, follow_links=True).images) == 4
    out = tmp_path / "o"
    r = CliRunner().invoke(
        cli,
        ["run", str(root), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q", "--follow-links"],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "images" / "out_link").iterdir()) == ["img_000.png", "img_001.png"]


def test_a_link_to_a_sibling_whose_name_extends_the_inputs_leads_outside(tmp_path):
    """``in-extra`` is not inside ``in``, though its path starts with the input's: a link to it leads out of the
    input folder and is not followed without --follow-links (a path prefix is not a folder)."""
    root = tmp_path / "in"
    write_images(root, 1)
    sibling = tmp_path / "in-extra"
    write_images(sibling, 2, seed=5)
    os.symlink(sibling, root / "more")
    found = scan(root)
    assert [e.rel for e in found.images] == ["img_000.png"]
    assert [rel for rel, _ in found.skipped] == ["more"] and "outside the input folder" in found.skipped[0][1]


ORIGINALS = ["FAKE/img_000.png", "FAKE/img_001.png", "REAL/img_000.png", "REAL/img_001.png"]


def test_a_folder_named_like_an_image_is_listed_as_a_folder_not_scanned(tmp_path, tiny_ckpt):
    """The failures' list on stderr tells images from folders by their kind (scan.Failure), not by the name: a folder
    ``more.png`` (a link out, not followed) was counted as "1 image(s) could not be read" with the unreadable
    image ``cut.png``; on the re-run too, where ``cut.png`` stays failed unread."""
    write_images(tmp_path / "elsewhere", 1, seed=5)
    root = tmp_path / "in"
    write_images(root, 2)
    (root / "cut.png").write_bytes(b"not an image")
    os.symlink(tmp_path / "elsewhere", root / "more.png")
    for _ in range(2):
        r = invoke(*run_argv(root, tmp_path / "out", tiny_ckpt, "--workers", "0"))
        assert r.exit_code == 1, r.output
        lines = r.stderr.splitlines()
        assert lines[0] == "xaibatch: 1 image(s) could not be read, 1 folder(s) not scanned:", r.stderr
        assert sorted(line.split(":")[0] for line in lines[1:]) == ["  cut.png", "  more.png"], r.stderr


@pytest.mark.parametrize("where", ["out-inside-the-input", "out-elsewhere-follow-links"])
def test_a_link_into_the_report_does_not_feed_it_its_own_copies(tmp_path, tiny_ckpt, where):
    """A link into OUT's images/ (inside the input: followed by default; elsewhere: with --follow-links) made each
    run scan the display copies it had written as new images: 8, 12, 16 ... seen, REAL/imgs/REAL/imgs/... listed."""
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    inside = where == "out-inside-the-input"
    out = root / "rep" if inside else tmp_path / "out"
    args = ["run", root, "--checkpoint", tiny_ckpt, "--out", out, "--workers", "0", "-q"]
    args += [] if inside else ["--follow-links"]
    assert invoke(*args).exit_code == 0
    os.symlink("../rep/images" if inside else out / "images", root / "REAL" / "imgs")
    os.symlink(out / "images" / "FAKE" / "img_000.png", root / "REAL" / "copy.png")  # one display copy: the same
    for _ in range(2):
        r = invoke(*args)
        assert r.exit_code == 0, r.output
        assert sorted(rel for (rel,) in manifest_rows(out, "SELECT rel FROM images")) == ORIGINALS
    assert not (out / "images" / "REAL" / "imgs").exists()


def test_the_runs_out_and_any_report_reached_through_a_link_are_not_scanned(tmp_path):
    """--out is skipped before it holds a manifest (a first run, one killed before writing it); a link into any
    folder below an xaibatch output folder is skipped as the output folder itself is, silently."""
    root = tmp_path / "in"
    write_images(root / "REAL", 1)
    write_images(root / "rep" / "images" / "REAL", 1, seed=1)  # --out, its manifest not written yet
    old = tmp_path / "old"  # another report, outside the input
    write_images(old / "maps" / "gradcam" / "REAL", 1, seed=2)
    (old / layout.MANIFEST).write_bytes(b"SQLite format 3\0" + bytes(84))
    os.symlink("../rep/images", root / "REAL" / "imgs")
    os.symlink(old / "maps" / "gradcam", root / "REAL" / "old")
    os.symlink(old / "maps" / "gradcam" / "REAL" / "img_000.png", root / "REAL" / "old.png")
    found = scan(root, follow_links=True, out=root / "rep")
    assert [e.rel for e in found.images] == ["REAL/img_000.png"] and found.skipped == []
    assert "rep/images/REAL/img_000.png" in [e.rel for e in scan(root).images]  # only --out says what rep/ is
    # An input inside --out (--replace into a folder above it): the input is still scanned.
    assert [e.rel for e in scan(root / "REAL", out=root).images] == ["img_000.png"]


def test_hidden_files_and_folders_are_ignored(tmp_path):
    """A hidden folder was a class ("folder classes ['.git', 'FAKE', 'REAL'] do not match"), hidden images were
    explained, and macOS's ._x.png metadata failed every run (exit 1)."""
    root = tmp_path / "in"
    write_images(root / "FAKE", 1)
    write_images(root / "REAL", 1, seed=1)
    for rel in (".git/x.png", ".ipynb_checkpoints/REAL/y.png", "REAL/.hidden.png", "REAL/.thumbs/t.png", ".z.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / rel)
    (root / "REAL" / "._img_000.png").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")  # AppleDouble metadata
    (root / ".empty").mkdir()
    found = scan(root)
    assert found.classes == ["FAKE", "REAL"] and not found.empty_classes and found.skipped == []
    assert [e.rel for e in found.images] == ["FAKE/img_000.png", "REAL/img_000.png"]


def test_a_report_that_holds_hidden_images_drops_them_on_the_next_run(tmp_path, tiny_ckpt, monkeypatch):
    """An output folder an older xaibatch filled with hidden images (and a failure for ._x.png): the next run
    removes them as images gone from the input, and ends with exit 0."""
    import xaibatch.scan as scan_module
    from outcheck import check_output_folder

    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    for rel in ("REAL/.hidden.png", "REAL/.thumbs/t.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(root / rel)
    (root / "REAL" / "._img_000.png").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
    out = tmp_path / "out"
    args = ["run", root, "--checkpoint", tiny_ckpt, "--out", out, "--workers", "0"]
    with monkeypatch.context() as m:
        m.setattr(scan_module, "_hidden", lambda name: False, raising=False)  # the scan of older versions
        assert invoke(*args).exit_code == 1
    assert len(manifest_rows(out, "SELECT rel FROM images")) == 6
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "2 removed" in r.output and "0 failed" in r.output
    assert sorted(rel for (rel,) in manifest_rows(out, "SELECT rel FROM images")) == ORIGINALS
    assert manifest_rows(out, "SELECT count(*) FROM failures") == [(0,)]
    check_output_folder(out, root)
    assert "._img_000" not in (out / "skipped.html").read_text()


def _check_stems(stems: dict[str, str]) -> None:
    """Every file a stem becomes can be written: unique, short enough, no file where a folder must be."""
    from xaibatch.layout import STEM_SUFFIXES

    assert len(set(stems.values())) == len(stems)
    files = {s + x for s in stems.values() for x in STEM_SUFFIXES}
    for s in stems.values():
        assert len(s.rsplit("/", 1)[-1].encode()) + max(map(len, STEM_SUFFIXES)) <= 255, s
        parts = s.split("/")
        assert not any("/".join(parts[:i]) in files for i in range(1, len(parts))), s


def test_stems_never_clash_with_folders_or_exceed_name_limits():
    from xaibatch.manifest import ImageRow
    from xaibatch.layout import assign_stems, map_stems

    long = "x" * 247
    rels = ["a.jpg", "a.png/b.png", f"{long}.png", f"{long}.jpg", f"d/{long}.png", "c.png.npy/q.png", "c.png"]
    stems = map_stems(rels)
    _check_stems(stems)
    assert stems["a.png/b.png"] == "a.png/b" and stems["a.jpg"] == "a.jpg"

    def row(stem):
        return ImageRow("x", stem, 1, 1, "", 1, 1, None, 0, 0, 1.0, [1.0], "", 1)

    # Known stems stay; newcomers whose folder is a known stem's picture (images/a.png) go aside.
    known = {"a.jpg": row("a"), f"{long}.png": row(long)}
    stems = assign_stems(rels, known)
    assert stems["a.jpg"] == "a" and stems[f"{long}.png"] == long
    _check_stems(stems)


def test_run_with_clashing_and_long_names_writes_every_file_and_the_report(tmp_path, tiny_ckpt):
    root = tmp_path / "in"
    long = "x" * 247
    # names of 252 and 255 bytes too: up to NAME_MAX, an image is explained, its stem cut and hashed when needed
    rels = ["a.jpg", "a.png/b.png", f"{long}.png", f"{long}.jpg", f"{'y' * 248}.png", f"d/{'z' * 251}.png"]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(root / rel)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["run", str(root), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    )
    assert r.exit_code == 0, r.output
    stems = dict(manifest_rows(out, "SELECT rel, stem FROM images"))
    assert sorted(stems) == sorted(rels)
    from outcheck import check_output_folder

    check_output_folder(out)  # among others: every image has its detail view (detail/page-<n>.js)
    for stem in stems.values():
        assert (out / "images" / f"{stem}.png").is_file()


def _empty_folders(out: Path) -> list[str]:
    """Empty folders below images/, thumbs/ and maps/ (those three themselves may be)."""
    return sorted(
        os.path.relpath(d, out)
        for top in ("images", "thumbs", "maps")
        for d, subs, files in os.walk(out / top)
        if not subs and not files and d != str(out / top)
    )


def test_an_image_that_becomes_a_folder_and_then_an_image_again(tmp_path, tiny_ckpt):
    """REAL/img_000.png is a file, then a folder holding an image, then a file again. The folder's image left
    images/REAL/img_000.png/ and maps/gradcam/REAL/img_000.png/ behind, empty, where the file's display copy and
    overlay go: every run after failed with exit 3, "Is a directory". Folders the removed images' files leave empty
    go with them, and each run ends with exit 0."""
    import shutil

    from outcheck import check_output_folder

    root, out = tmp_path / "in", tmp_path / "out"
    write_images(root / "FAKE", 2)
    image = write_images(root / "REAL", 2, seed=1)[0]
    original = image.read_bytes()
    args = ["run", root, "--checkpoint", tiny_ckpt, "--out", out, "--workers", "0", "-q"]
    assert invoke(*args).exit_code == 0
    image.unlink()
    write_images(image, 1, seed=5)  # REAL/img_000.png/img_000.png
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    check_output_folder(out, root)
    shutil.rmtree(image)
    image.write_bytes(original)
    for _ in range(2):  # and the run after
        r = invoke(*args)
        assert r.exit_code == 0, r.output
        check_output_folder(out, root)
    assert (out / "images/REAL/img_000.png").is_file() and (out / "maps/gradcam/REAL/img_000.png").is_file()
    assert _empty_folders(out) == []


def test_an_empty_folder_left_where_an_image_goes_is_freed(tmp_path, tiny_ckpt):
    """An output folder an older xaibatch left with empty folders where an image's files go (see above): the run
    removes them and writes the files; it failed with exit 3 on every run."""
    from outcheck import check_output_folder

    root, out = tmp_path / "in", tmp_path / "out"
    write_images(root / "REAL", 2, seed=1)
    write_images(root / "FAKE", 1)
    args = ["run", root, "--checkpoint", tiny_ckpt, "--out", out, "--workers", "0", "-q"]
    assert invoke(*args).exit_code == 0
    for rel in ("images/REAL/img_000.png", "maps/gradcam/REAL/img_000.png", "maps/gradcam/REAL/img_000.npy"):
        (out / rel).unlink()
        (out / rel).mkdir()
    r = invoke(*args)  # the lost files are written again
    assert r.exit_code == 0, r.output
    check_output_folder(out, root)
    assert _empty_folders(out) == []


@pytest.mark.parametrize("plain", [False, True], ids=["xaibatch-checkpoint", "plain-state-dict"])
def test_an_emptied_class_folder_is_a_class_without_images_and_its_images_leave(tmp_path, tiny_ckpt, plain):
    import timm
    import torch

    ckpt = tiny_ckpt
    extra = []
    if plain:  # no class names in the checkpoint: the folder names are the classes, the empty one included
        torch.manual_seed(0)
        ckpt = tmp_path / "plain.pt"
        torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), ckpt)
        extra = ["--arch", "test_resnet", "--image-size", "32"]
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    out = tmp_path / "out"
    args = ["run", str(root), "--checkpoint", str(ckpt), "--out", str(out), "--workers", "0", *extra]
    assert CliRunner().invoke(cli, args).exit_code == 0
    for p in (root / "FAKE").iterdir():
        p.unlink()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "class folder 'FAKE' holds no images" in r.output
    assert "2 removed" in r.output
    assert dict(manifest_rows(out, "SELECT rel, label FROM images")) == {"REAL/img_000.png": 1, "REAL/img_001.png": 1}
    assert not list((out / "images" / "FAKE").glob("*.png"))
    csv_rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in csv_rows] == [["REAL/img_000.png", "REAL"], ["REAL/img_001.png", "REAL"]]


def test_an_empty_folder_that_is_no_class_of_the_model_is_ignored_with_a_warning(tmp_path, tiny_ckpt):
    root = tmp_path / "in"
    write_images(root / "FAKE", 1)
    write_images(root / "REAL", 1, seed=1)
    (root / "notes").mkdir()
    r = CliRunner().invoke(
        cli, ["run", str(root), "--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "o"), "--workers", "0"]
    )
    assert r.exit_code == 0, r.output
    assert "class folder 'notes' holds no images; ignored" in r.output


@pytest.mark.parametrize("content", [b"", b"not a database", "fifo"])
def test_a_fake_manifest_in_a_class_folder_does_not_hide_its_images(tmp_path, content):
    import os

    from xaibatch.scan import scan

    write_images(tmp_path / "in" / "FAKE", 2)
    write_images(tmp_path / "in" / "REAL", 2)
    fake = tmp_path / "in" / "REAL" / layout.MANIFEST
    if content == "fifo":
        os.mkfifo(fake)
    else:
        fake.write_bytes(content)
    found = scan(tmp_path / "in")
    assert found.classes == ["FAKE", "REAL"] and len(found.images) == 4 and not found.empty_classes


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["C.UTF-8", "C"])
def test_an_input_folder_whose_name_is_not_utf8_works(tmp_path, tiny_ckpt, lang):
    inp = Path(os.fsdecode(os.fsencode(tmp_path) + b"/in\xff"))
    write_images(inp, 2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": lang, "LANG": lang}
    env.pop("PYTHONIOENCODING", None)
    p = subprocess.run(
        [sys.executable, "-m", "xaibatch", "run", os.fsencode(inp), "--checkpoint", str(tiny_ckpt), "--workers", "0"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    # the default --out: outputs/<parent>-<name> (pipeline.default_out), relative to the working folder
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/outputs/" + os.fsencode(tmp_path.name) + b"-in\xff"))
    assert (out / "index.html").is_file()
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(2,)]


@pytest.mark.parametrize("log_json", [False, True], ids=["summary", "log-json"])
def test_names_outside_a_latin1_stdout_are_escaped(tmp_path, tiny_ckpt, log_json):
    """stdout in ISO-8859-1 (an old server's locale; here PYTHONIOENCODING) and an image named in Japanese that
    cannot be read: its failure event ended the run, "Error: internal error: UnicodeEncodeError: 'latin-1' codec
    can't encode characters", exit 3, row 'error'. The JSON now names it with \\u escapes (the same JSON), a
    line with backslash escapes."""
    inp = tmp_path / "in"
    write_images(inp, 2)
    (inp / "bröken_日本.png").write_text("not an image")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "latin-1"}
    argv = [sys.executable, "-m", "xaibatch", "run", str(inp), "--checkpoint", str(tiny_ckpt), "--workers", "0"]
    p = subprocess.run(
        [*argv, "--out", str(tmp_path / "out_日本"), *["--log-json"] * log_json],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr.decode(errors="replace")
    assert manifest_rows(tmp_path / "out_日本", "SELECT status FROM runs") == [("some-failed",)]
    lines = p.stdout.decode("latin-1").splitlines()
    if log_json:
        events = [json.loads(line) for line in lines]
        assert [e["path"] for e in events if e["event"] == "failure"] == ["bröken_日本.png"]
        assert events[-1]["report"].endswith("out_日本/index.html")
    else:
        assert lines[-1].endswith("out_\\u65e5\\u672c/index.html"), lines


def test_the_scan_stats_no_file_that_is_not_named_like_an_image(tmp_path, monkeypatch):
    """#20: demo data keeps a ground-truth mask beside each FAKE image, a third of the folder's entries; the listing
    already says they are plain files, so the scan ignores them without an lstat each. What it finds and skips
    is unchanged: links and folders whatever their names, files named like images whatever they are."""
    import xaibatch.scan as scan_module

    root = tmp_path / "in"
    write_images(root / "FAKE", 3)
    write_images(root / "REAL", 2, seed=1)
    for p in sorted((root / "FAKE").glob("*.png")):
        p.with_name(p.stem + ".mask.npy").write_bytes(b"x")
    (root / "REAL" / "notes.txt").write_text("x")
    (root / "REAL" / "sub.d").mkdir()  # a folder named like no image is still entered
    write_images(root / "REAL" / "sub.d", 1, seed=2)
    os.symlink("/etc", root / "REAL" / "etc.txt")  # a link whatever its name: still looked at (and skipped)
    os.mkfifo(root / "REAL" / "pipe.png")
    statted = []
    real_lstat = os.lstat

    def counting(path, *a, **k):
        statted.append(os.path.basename(path))
        return real_lstat(path, *a, **k)

    monkeypatch.setattr(scan_module.os, "lstat", counting)
    found = scan(root)
    monkeypatch.undo()
    assert not [n for n in statted if n.endswith((".npy", "notes.txt"))], statted
    assert [e.rel for e in found.images] == [
        "FAKE/img_000.png",
        "FAKE/img_001.png",
        "FAKE/img_002.png",
        "REAL/img_000.png",
        "REAL/img_001.png",
        "REAL/sub.d/img_000.png",
    ]
    assert [rel for rel, _ in found.skipped] == ["REAL/etc.txt", "REAL/pipe.png"]


def test_a_stray_image_at_the_top_of_class_folders_is_refused_not_relabelled(tmp_path, tiny_ckpt):
    """A folder with images both at its top and in subfolders is read as unlabeled. So one stray file landing at
    the top of a cron job's class folders regrouped every image by prediction and dropped the labels, without a
    word. A folder that earlier runs read as class folders is refused instead (exit 2), nothing written; with
    --unlabeled it is read as asked: the labels of the images already explained go too (they stayed, stale), and
    come back with the class folders, without a forward pass. A first run over such a folder is unlabeled, as
    before."""
    root, out = tmp_path / "in", tmp_path / "out"
    write_images(root / "FAKE", 2, seed=1)
    write_images(root / "REAL", 2, seed=2)
    args = ["run", str(root), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (out / "predictions.csv").read_bytes()
    write_images(root, 1, seed=3)  # img_000.png at the top
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith(f"Error: 1 image(s) now sit directly in {root} (e.g. img_000.png), which ")
    assert (out / "predictions.csv").read_bytes() == before
    assert CliRunner().invoke(cli, [*args, "--unlabeled"]).exit_code == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 5 and all(r["label"] == "" for r in rows)  # no labels any more: as asked, no forward pass
    maps = {p: p.stat().st_mtime_ns for p in (out / "maps").rglob("*.npy") if "/FAKE/" in str(p) or "/REAL/" in str(p)}
    (root / "img_000.png").unlink()  # and back to class folders: the labels return, nothing is computed again
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert (out / "predictions.csv").read_bytes() == before
    assert maps and {p: p.stat().st_mtime_ns for p in maps} == maps


_NAMES = ["a", "a.png", "a.jpg", "a.npy", "a.png.npy", "a.png.png", "b.png", "a~1", "é.png", "A.png"]
_NAMES += [f"{'x' * 247}.png", f"{'x' * 247}.jpg", f"{'y' * 250}.png"]  # stems cut and hashed
_RELS = st.lists(
    st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3).map("/".join), min_size=1, max_size=12, unique=True
).filter(lambda rels: not any(r.startswith(o + "/") for r in rels for o in rels))  # no file where a folder is


@settings(max_examples=300, deadline=None)
@given(_RELS, _RELS, st.booleans())
def test_stems_of_any_two_scans_never_clash(first, second, removed):
    """Two scans of a folder (``second`` arrives after ``first`` got its stems): every stem stays writable
    (_check_stems), a known image keeps its stem, and with ``removed`` the first scan's images that are gone leave
    their files on disk meanwhile: no new image's files need a folder where one of them is, nor go where a folder
    of them is."""
    from xaibatch.layout import STEM_SUFFIXES, assign_stems, image_png, map_npy
    from xaibatch.manifest import ImageRow

    old = assign_stems(first, {})
    _check_stems(old)
    rels = second if removed else second + [r for r in first if r not in second]
    assume(not any(r.startswith(o + "/") for r in rels for o in rels))
    known = {r: ImageRow("x", old[r], 1, 1, "", 1, 1, None, 0, 0, 1.0, [1.0], "", 1) for r in first if r in rels}
    on_disk = {f for r in first if r not in rels for f in (image_png(old[r]), map_npy("gradcam", old[r]))}
    stems = assign_stems(rels, known, on_disk)
    _check_stems(stems)
    assert all(stems[r] == known[r].stem for r in known)
    for r, s in stems.items():
        if r in known:
            continue
        parts = s.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            assert not {f"images/{folder}", f"maps/gradcam/{folder}"} & on_disk, (r, s)
        mine = {f"images/{s}{x}/" for x in STEM_SUFFIXES} | {f"maps/gradcam/{s}{x}/" for x in STEM_SUFFIXES}
        assert not any(f.startswith(p) for f in on_disk for p in mine), (r, s)
