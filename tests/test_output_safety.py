"""Never lose a user's files, never hang: swaps after the scan, output folders that are not ours,
inputs inside output folders, orphaned workers, a deleted lock file, deleted output files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ENV, REPO, invoke, manifest_value, reap, run_argv, run_opts, wait_until, write_images
from xaibatch.lock import LOCK_NAME
from xaibatch.manifest import Manifest
from xaibatch.pipeline import run


def _one_line_exit_2(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    for w in words:
        assert w in lines[0], lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _missing_files(out: Path) -> list[str]:
    """Files the manifest points at that do not exist."""
    m = Manifest(out / "xaibatch.sqlite")
    try:
        return sorted(p for p in m.referenced_files() if not (out / p).is_file())
    finally:
        m.close()


# --- 1: a file swapped for a FIFO or a symlink to /dev/zero after the scan --------------------------------

SWAP_AFTER_SCAN = r"""
import os, sys
from pathlib import Path
import xaibatch.pipeline.setup as pl
from xaibatch.pipeline import RunOptions, run

inp, out, ckpt = map(Path, sys.argv[1:4])
real_scan = pl.scan

def swapping_scan(*a, **k):
    found = real_scan(*a, **k)
    for name, kind in (("img_000.png", "fifo"), ("img_001.png", "zero"), ("new_0.png", "fifo"),
                       ("new_1.png", "zero")):
        (inp / name).unlink()
        if kind == "fifo":
            os.mkfifo(inp / name)
        else:
            os.symlink("/dev/zero", inp / name)
    return found

pl.scan = swapping_scan
r = run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=ckpt, batch_size=4,
                   workers=int(sys.argv[4]), handle_signals=False), log=lambda s: None)
for rel, reason in r.failed:
    print("FAILED", rel, reason, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_file_swapped_for_fifo_or_dev_zero_after_the_scan_is_skipped_not_hung(tmp_path, tiny_ckpt, workers):
    """Known images whose mtime moved (hashed by the plan) and new ones (hashed while loading) alike."""
    inp = tmp_path / "in"
    write_images(inp, 6)
    out = tmp_path / "out"
    run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)
    for name in ("img_000.png", "img_001.png"):
        st = (inp / name).stat()
        os.utime(inp / name, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    for i, p in enumerate(write_images(tmp_path / "new", 2, seed=5)):
        os.replace(p, inp / f"new_{i}.png")
    proc = subprocess.Popen(
        [sys.executable, "-c", SWAP_AFTER_SCAN, str(inp), str(out), str(tiny_ckpt), str(workers)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the run hung on a FIFO or /dev/zero swapped in after the scan")
    assert proc.returncode == 0, stderr
    failed = {line.split()[1]: line for line in stdout.splitlines() if line.startswith("FAILED")}
    for name in ("img_000.png", "img_001.png", "new_0.png", "new_1.png"):
        assert name in failed and "not a regular file" in failed[name], stdout
    assert _missing_files(out) == []
    m = Manifest(out / "xaibatch.sqlite")
    try:
        assert sorted(m.images()) == ["img_002.png", "img_003.png", "img_004.png", "img_005.png"]
    finally:
        m.close()


# --- 2: an input inside an output folder's own folders -------------------------------------------------


def test_input_inside_an_output_folders_images_is_refused(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3)
    assert invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0
    before = _snapshot(out / "images")
    r = invoke("run", out / "images", "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    _one_line_exit_2(r, "INPUT_DIR", "images/", "original images")
    assert _snapshot(out / "images") == before
    r = invoke("run", out / "maps" / "gradcam", "--checkpoint", tiny_ckpt, "--out", tmp_path / "other", "--workers", 0)
    _one_line_exit_2(r, "INPUT_DIR", "maps/")
    assert not (tmp_path / "other").exists()


def test_out_whose_images_folder_holds_the_input_is_refused_even_with_replace(tmp_path, tiny_ckpt):
    photos = tmp_path / "mine"
    originals = photos / "images" / "cats"
    write_images(originals, 3)
    (photos / "notes.txt").write_text("mine")
    before = _snapshot(photos)
    for extra in ((), ("--replace",)):
        r = invoke("run", originals, "--checkpoint", tiny_ckpt, "--out", photos, "--workers", 0, *extra)
        _one_line_exit_2(r, "--out", "images/", "choose another folder")
        assert _snapshot(photos) == before and not (photos / LOCK_NAME).exists()


# --- 3: the default --out, and another input on an existing output folder ------------------------------


def test_default_out_does_not_collide_for_same_named_inputs(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "data" / "CIFAKE" / "test", 3, seed=1)
    write_images(tmp_path / "data" / "demo" / "test", 2, seed=2)
    for name in ("CIFAKE", "demo"):
        r = invoke("run", Path("data") / name / "test", "--checkpoint", tiny_ckpt, "--workers", 0, "--unlabeled")
        assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "outputs" / "CIFAKE-test" / "images").iterdir())) == 3
    assert len(list((tmp_path / "outputs" / "demo-test" / "images").iterdir())) == 2


def test_another_input_on_an_existing_output_folder_needs_replace(tmp_path, tiny_ckpt):
    a, b, out = tmp_path / "a" / "test", tmp_path / "b" / "test", tmp_path / "out"
    write_images(a, 3, seed=1)
    write_images(b, 2, seed=2)
    assert invoke("run", a, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0
    before = _snapshot(out)
    r = invoke("run", b, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    _one_line_exit_2(r, str(a.resolve()), "--replace", "--out")
    after = _snapshot(out)
    after.pop(LOCK_NAME, None), before.pop(LOCK_NAME, None)
    assert {k: v for k, v in after.items() if "sqlite" not in k} == {
        k: v for k, v in before.items() if "sqlite" not in k
    }
    # The same input again (another spelling of the path) is a normal re-run.
    r = invoke("run", tmp_path / "a" / ".." / "a" / "test", "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    assert r.exit_code == 0 and "3 skipped (unchanged)" in r.output, r.output
    r = invoke("run", b, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, "--replace")
    assert r.exit_code == 0, r.output
    assert len(list((out / "images").iterdir())) == 2
    assert invoke("run", b, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0


def test_an_input_folder_moved_away_says_replace_keeps_its_results(tmp_path, tiny_ckpt):
    """The input folder moved or renamed (same images), the cron job pointed at the new path: the refusal said
    "pass --replace to replace that report", which reads as losing the results; --replace keeps every one whose
    image has the same bytes, and the refusal now says so where the folder it names is not there any more."""
    old, new, out = tmp_path / "old" / "test", tmp_path / "new" / "test", tmp_path / "out"
    write_images(old, 3, seed=1)
    assert invoke("run", old, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0
    new.parent.mkdir()
    old.rename(new)
    r = invoke("run", new, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    _one_line_exit_2(r, f"holds the report of {old.resolve()}, which is not there any more", "moved or renamed")
    assert "--replace" in r.output and "nothing is computed again" in r.output, r.output
    r = invoke("run", new, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, "--replace")
    assert r.exit_code == 0 and "0 computed, 3 skipped (unchanged)" in r.output, r.output
    # that run, which loaded no model (nothing to compute), recorded the folder where it is now, not the earlier
    # run's (sanity read the images from there: "does not exist any more")
    recorded = manifest_value(out, "SELECT config_json FROM runs ORDER BY id DESC LIMIT 1")
    assert json.loads(recorded)["input_dir"] == os.path.abspath(new)


def test_a_copy_taken_while_a_run_wrote_says_so_in_its_history(tmp_path, tiny_ckpt):
    """cp -a OUT while a cron run writes to it: the copy's next run finds that run 'running' and marks it killed,
    whose reason named only a kill or a failing disk, though the run may well have finished in the original."""
    from xaibatch.manifest import Manifest

    inp, out, copy = tmp_path / "in", tmp_path / "out", tmp_path / "copy"
    write_images(inp, 3, seed=1)
    assert invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0
    m = Manifest(out / "xaibatch.sqlite")
    m.start_run(str(inp), {}, "p")  # a run under way when the folder was copied
    m.close()
    shutil.copytree(out, copy)
    assert invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", copy, "--workers", 0).exit_code == 0
    reason = manifest_value(copy, "SELECT reason FROM runs WHERE status = 'killed'")
    assert "this folder is a copy taken while it ran" in reason, reason


def test_an_input_link_flipped_to_a_new_folder_is_the_same_input(tmp_path, tiny_ckpt):
    """A sync that swaps the input folder by a symlink flip (``ln -sfn new current``) is the same INPUT_DIR to the
    cron job that names ``current``: every run after the first flip was refused with exit 2 ("holds the report of
    .../old"), since the guard compared the link's target, until --replace threw the whole report away."""
    old, new, link, out = tmp_path / "old", tmp_path / "new", tmp_path / "current", tmp_path / "out"
    write_images(old, 3, seed=1)
    write_images(new, 2, seed=2)
    link.symlink_to("old")
    assert invoke("run", link, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0
    tmp = tmp_path / "current.tmp"
    tmp.symlink_to("new")
    os.replace(tmp, link)
    r = invoke("run", link, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    assert r.exit_code == 0, r.output
    assert len(list((out / "images").iterdir())) == 2
    assert Manifest(out / "xaibatch.sqlite").get_meta("input_dir") == str(new.resolve())  # what it is of now
    # another folder named otherwise is still another input
    _one_line_exit_2(invoke("run", old, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0), "--replace")


def test_a_folder_whose_runs_all_stopped_before_any_image_takes_another_input(tmp_path, tiny_ckpt):
    """A first run that stopped before its first image (a Ray cluster it could not reach: exit 2) left a manifest
    naming its input, and every later run of another input into that new --out was refused as "holds the report
    of ..." although the folder held no report of anything."""
    from xaibatch.manifest import Manifest

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    write_images(a, 3, seed=1)
    write_images(b, 2, seed=2)
    out.mkdir()
    m = Manifest(out / "xaibatch.sqlite")  # what such a run leaves: its run row, ended "error", and its input
    m.set_meta("input_dir", str(a.resolve()))
    m.finish_run(m.start_run(str(a), {}, "p"), "error", 1.0, None, "cannot reach the Ray cluster at 127.0.0.1:1")
    m.close()
    r = invoke("run", b, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    assert r.exit_code == 0, r.output
    assert len(list((out / "images").iterdir())) == 2
    r = invoke("run", a, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)  # now it holds b's report
    _one_line_exit_2(r, str(b.resolve()), "--replace")


# --- 4: a non-empty folder that is not an xaibatch output ----------------------------------------------


def test_foreign_non_empty_out_is_refused_unless_replace(tmp_path, tiny_ckpt):
    inp, site = tmp_path / "in", tmp_path / "site"
    write_images(inp, 3)
    (site / "assets").mkdir(parents=True)
    (site / "assets" / "logo.css").write_text("body{}")
    (site / "index.html").write_text("<p>my site</p>")
    (site / "notes.txt").write_text("keep me")
    (site / "blog").mkdir()
    (site / "blog" / "post.html").write_text("<p>post</p>")
    before = _snapshot(site)
    r = invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", site, "--workers", 0)
    _one_line_exit_2(r, "not an xaibatch output", "--replace")
    assert _snapshot(site) == before and not (site / LOCK_NAME).exists()
    r = invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", site, "--workers", 0, "--replace")
    assert r.exit_code == 0, r.output
    # Replaced: the report's own pages and folders (assets/ included); anything else stays.
    assert (site / "notes.txt").read_text() == "keep me" and (site / "blog" / "post.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", empty, "--workers", 0).exit_code == 0


def test_the_sweep_after_a_killed_run_keeps_a_replaced_folders_own_files(tmp_path, tiny_ckpt):
    """A user's site taken with --replace kept its images/logo.png only until a run was killed: the next command's
    sweep of files no row points at deleted every .png and .npy under images/, thumbs/ and maps/ (and a file with a
    temporary file's name anywhere). The files that were there before the folder's first run are noted now and
    never swept; temporary files are swept only where xaibatch writes. What a killed run left is still swept."""
    inp, site = tmp_path / "in", tmp_path / "site"
    write_images(inp, 3)
    mine = {"images/logo.png": b"\x89PNG logo", "maps/coords.npy": b"NUMPY", "thumbs/icons/home.png": b"\x89PNG"}
    mine["blog/.draft.99999999.tmp"] = b"an editor's temporary file"  # pid 99999999: no such process
    for rel, data in mine.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    assert invoke("run", inp, "--checkpoint", tiny_ckpt, "--out", site, "--workers", 0, "--replace").exit_code == 0
    db = sqlite3.connect(site / "xaibatch.sqlite")  # what a SIGKILL leaves: the run row "running" ...
    with db:
        db.execute("UPDATE runs SET status = 'running' WHERE id = (SELECT max(id) FROM runs)")
    db.close()
    left = ["maps/gradcam/gone.npy", "images/gone.png", f"maps/gradcam/.gone.npy.0.{2**22 + 1}.tmp"]
    for rel in left:  # ... and files of rows it never committed, a dead writer's temporary file
        (site / rel).write_bytes(b"x")
    res = invoke("report", site)
    assert res.exit_code == 0, res.output
    assert "cleaned 3 leftover file(s)" in res.output
    assert {rel: (site / rel).read_bytes() for rel in mine} == mine
    assert not any((site / rel).exists() for rel in left)


def test_a_run_killed_before_its_first_row_leaves_a_replaced_folders_files_to_the_next_sweep(tmp_path):
    """A run killed after opening the manifest but before noting the folder's own files (and before its run row)
    left the next command's sweep nothing to keep: `xaibatch report` deleted images/logo.png. Without a run row
    no run has written a picture, so nothing is swept."""
    from xaibatch.manifest import Manifest
    from xaibatch.pipeline.recovery import sweep_orphans

    site = tmp_path / "site"
    mine = {"images/logo.png": b"\x89PNG logo", "maps/data.npy": b"NUMPY"}
    for rel, data in mine.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    manifest = Manifest(site / "xaibatch.sqlite")
    try:
        assert manifest.last_status() is None
        assert sweep_orphans(site, manifest) == 0
    finally:
        manifest.close()
    assert {rel: (site / rel).read_bytes() for rel in mine} == mine


# --- 5 and 7: a real run paused before its first commit ---------------------------------------------------

PAUSED_RUN = r"""
import os, threading, time
from pathlib import Path
import xaibatch.manifest as _mf

marks = Path(os.environ["XB_MARKS"])
_n = [0]
_enter = _mf._Transaction.__enter__

def _enter_paused(self):  # the writer stops after writing a batch's files, before committing its rows
    if threading.current_thread().name == "xaibatch-writer":
        _n[0] += 1
        (marks / f"precommit-{_n[0]}").write_text("")
        t0 = time.monotonic()
        while not (marks / "go").exists() and time.monotonic() - t0 < 120:
            time.sleep(0.02)
    return _enter(self)

_mf._Transaction.__enter__ = _enter_paused
from xaibatch.cli import main
main()
"""


def _paused_run(inp: Path, out: Path, ckpt: Path, marks: Path, workers: int) -> subprocess.Popen:
    marks.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSED_RUN,
            *run_argv(inp, out, ckpt),
            "--batch-size",
            "4",
            "--workers",
            str(workers),
            "-q",
        ],
        cwd=REPO,
        env={**ENV, "XB_MARKS": str(marks)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(proc, cond, what: str) -> None:
    wait_until(proc, cond, what, timeout=120.0, poll=0.05)


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_and_wait_for(proc: subprocess.Popen, pids: list[int], within: float = 3.0) -> list[int]:
    """SIGKILL ``proc``, reap it, and give ``pids`` (its children) ``within`` seconds to end: those still alive."""
    proc.kill()
    proc.wait(timeout=30)
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < within:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_dataloader_workers_die_with_a_sigkilled_run(tmp_path, tiny_ckpt):
    inp, out, marks = tmp_path / "in", tmp_path / "out", tmp_path / "marks"
    write_images(inp, 40)
    proc = _paused_run(inp, out, tiny_ckpt, marks, workers=1)
    workers: list[int] = []
    try:
        _wait_until(proc, lambda: (marks / "precommit-1").exists(), "the first batch")
        _wait_until(proc, lambda: bool(workers.extend(_children(proc.pid)) or workers), "a DataLoader worker")
        left = _kill_and_wait_for(proc, workers)
        assert not left, f"workers {left} outlived their SIGKILLed parent by 3s"
    finally:
        reap(proc, workers)


WATCHED_CHILD = r"""
import os, time
import xaibatch.pipeline.signals as pl

pl._set_pdeathsig = lambda sig: False  # as where prctl is unavailable: only the parent-pid watch is left
parent = os.getpid()
if os.fork() == 0:
    pl.die_with_parent(parent)
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_without_prctl_a_worker_watches_its_parent_pid(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WATCHED_CHILD], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    kid = int(proc.stdout.readline())
    try:
        assert not _kill_and_wait_for(proc, [kid]), "the child outlived its SIGKILLed parent"
    finally:
        try:
            os.kill(kid, signal.SIGKILL)
        except OSError:
            pass


SERVED_CHILD = r"""
import multiprocessing, os, sys, time
import xaibatch.pipeline.signals as pl


def child(parent, pidfile):
    pl.die_with_parent(parent)  # its parent is the fork server, not the run
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


if __name__ == "__main__":
    multiprocessing.get_context("forkserver").Process(target=child, args=(os.getpid(), sys.argv[1])).start()
    time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_fork_servers_child_lives_with_the_run_and_dies_with_it(tmp_path):
    # Python 3.14 starts multiprocessing's children from a fork server on Linux: such a worker's parent is the
    # server, so die_with_parent took the living run for dead and the worker ended at once (every run with
    # --workers failed: "a DataLoader worker ... exited unexpectedly: out of memory or of /dev/shm space").
    script, pidfile = tmp_path / "served.py", tmp_path / "kid.pid"
    script.write_text(SERVED_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pidfile)], cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True
    )
    kid = 0
    try:
        wait_until(proc, lambda: pidfile.exists() and pidfile.read_text() != "", "the child's pid", timeout=60)
        kid = int(pidfile.read_text())
        time.sleep(1.0)
        assert _alive(kid), "the fork server's child took its living run for dead"
        assert not _kill_and_wait_for(proc, [kid]), "the fork server's child outlived its SIGKILLed run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if kid:
            try:
                os.kill(kid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.slow
def test_a_run_whose_lock_file_is_deleted_stops_and_the_folder_stays_consistent(tmp_path, tiny_ckpt):
    inp, out, marks = tmp_path / "in", tmp_path / "out", tmp_path / "marks"
    write_images(inp, 12)
    first = _paused_run(inp, out, tiny_ckpt, marks, workers=0)
    try:
        _wait_until(first, lambda: (marks / "precommit-1").exists(), "the first batch's files")
        (out / LOCK_NAME).unlink()
        second = run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)  # gets in: the lock file is new
        assert second.computed == 12
        (marks / "go").write_text("")
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 3, err
    assert "lock" in err and "Traceback" not in err
    assert _missing_files(out) == []
    again = run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert (again.computed, again.unchanged) == (0, 12)
    assert _missing_files(out) == []


# --- 8: deleted output files are regenerated -----------------------------------------------------------


def test_deleted_output_files_are_regenerated_and_nothing_else_is_rewritten(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 8, size=160)  # larger than a thumbnail: thumbs/ holds files of their own (layout.py)
    opts = run_opts(inp, out, tiny_ckpt)
    opts.methods = ["gradcam", "guided-gradcam"]
    run(opts, log=lambda s: None)
    before = {p: (out / p).stat().st_mtime_ns for p in _referenced(out)}
    gone = [
        "maps/gradcam/img_000.npy",
        "maps/guided-gradcam/img_001.png",
        "thumbs/gradcam/img_002.png",
        "images/img_003.png",
        "thumbs/image/img_004.png",
    ]
    for p in gone:
        (out / p).unlink()
    r = run(opts, log=lambda s: None)
    assert (r.computed, r.unchanged) == (5, 3)
    assert _missing_files(out) == []
    untouched = [p for p in before if not any(f"img_00{i}." in p for i in range(5))]
    assert untouched and all((out / p).stat().st_mtime_ns == before[p] for p in untouched)
    r = run(opts, log=lambda s: None)
    assert (r.computed, r.unchanged) == (0, 8)
    # A map of a method not asked for this time cannot be recomputed: its row goes, the report links nothing.
    (out / "maps/guided-gradcam/img_005.npy").unlink()
    opts.methods = ["gradcam"]
    r = run(opts, log=lambda s: None)
    assert r.computed == 0 and _missing_files(out) == []
    m = Manifest(out / "xaibatch.sqlite")
    try:
        assert ("img_005.png", "guided-gradcam") not in m.maps() and ("img_006.png", "guided-gradcam") in m.maps()
    finally:
        m.close()


def _referenced(out: Path) -> list[str]:
    m = Manifest(out / "xaibatch.sqlite")
    try:
        return sorted(m.referenced_files())
    finally:
        m.close()
