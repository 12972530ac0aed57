"""A real ``xaibatch run`` killed part-way (SIGKILL) or stopped (SIGTERM/SIGINT), then re-run.

The killed run is a subprocess with test hooks patched in before the CLI starts
(``PRELUDE``): the writer sleeps after writing each batch's files and before
committing its rows (a marker file announces that moment), so batches commit
one by one; another marker announces the report, which can be slowed too. Kill
points are chosen by polling the manifest and those markers, never by sleeping.
For signals, the writer can be held before a given commit until the run's own
signal handler has run (another marker), so the signal always lands mid-run.

The reference is the *same incremental run* done uninterrupted from a copy of
the same starting folder: CPU kernels can differ in the last float bit with
batch size, and a resumed run keeps the original batches (committed batches are
a prefix of the same ordered work list), so the maps must be byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO, invoke, manifest_rows, quiet, run_argv, run_opts, wait_until, write_images
from outcheck import check_output_folder, check_report_links
from xaibatch import layout
from xaibatch.manifest import Manifest
from xaibatch.pipeline import RunOptions, run
from xaibatch.tools import synth

N_OLD, N_NEW, BATCH = 8, 32, 4

PRELUDE = r"""
import os, sys, threading, time
from pathlib import Path
import xaibatch.manifest as _mf
import xaibatch.pipeline as _pl
import xaibatch.report as _rp

_delay = float(os.environ.get("XB_TEST_DELAY", "0"))
_report_delay = float(os.environ.get("XB_TEST_REPORT_DELAY", "0"))
_marks = Path(os.environ["XB_TEST_MARKS"]) if os.environ.get("XB_TEST_MARKS") else None
_hold_at = int(os.environ.get("XB_TEST_HOLD_AT") or 0)  # hold this commit until a signal was handled
_n = [0]

def _mark(name):
    if _marks is not None:
        _marks.mkdir(parents=True, exist_ok=True)
        (_marks / name).write_text("")

_enter = _mf._Transaction.__enter__
def _enter_marked(self):
    # a batch's commit; not the writer's commit before it of the rows whose files it writes over (writer.unclaim)
    if threading.current_thread().name == "xaibatch-writer" and sys._getframe(1).f_code.co_name != "unclaim":
        _n[0] += 1
        _mark(f"precommit-{_n[0]}")  # this batch's files are in place, its rows not yet committed
        time.sleep(_delay)
        while _n[0] == _hold_at and not (_marks / "signalled").exists():
            time.sleep(0.02)
    return _enter(self)
_mf._Transaction.__enter__ = _enter_marked

import signal as _signal
_signal_real = _signal.signal
def _signal_marking(signum, handler):  # mark when the pipeline's own SIGINT/SIGTERM handler has run
    if callable(handler) and getattr(handler, "__module__", "").startswith("xaibatch.pipeline"):
        def marked(s, frame, _h=handler):
            try:
                _h(s, frame)
            finally:
                _mark("signalled")
        return _signal_real(signum, marked)
    return _signal_real(signum, handler)
_signal.signal = _signal_marking

_report = _rp.write_report
def _slow_report(*a, **k):
    _mark("report")
    time.sleep(_report_delay)
    return _report(*a, **k)
_rp.write_report = _slow_report

import xaibatch.pipeline.apply as _apply  # the plan's removals: rows committed, then files deleted
_remove_files = _apply.remove_files
def _unlink_held(*a, **k):  # the removal transaction has committed; its files are not deleted yet
    if os.environ.get("XB_TEST_HOLD_REMOVALS"):
        _mark("removals-committed")
        while True:  # until a second signal raises KeyboardInterrupt here
            time.sleep(0.02)
    return _remove_files(*a, **k)
_apply.remove_files = _unlink_held

_link_moved = _apply.link_moved
def _linked_held(*a, **k):  # moved images' files linked under their new names; their rows not committed yet
    n = _link_moved(*a, **k)
    if os.environ.get("XB_TEST_HOLD_LINKS"):
        _mark("linked")
        while True:  # until killed
            time.sleep(0.02)
    return n
_apply.link_moved = _linked_held

from xaibatch.cli import main
main()
"""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same kernels as the OMP_NUM_THREADS=1 subprocess
    yield
    torch.set_num_threads(threads)


def _opts(inp, out, ckpt, **kw) -> RunOptions:
    return run_opts(inp, out, ckpt, batch_size=BATCH, **kw)


def _kill_when(proc: subprocess.Popen, cond, what: str) -> None:
    """SIGKILL the run ``proc`` once ``cond()`` holds (a failed wait kills it too)."""
    try:
        wait_until(proc, cond, what)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close(), proc.stderr.close()


def _cli(
    inp,
    out,
    ckpt,
    marks: Path | None = None,
    delay: float = 0.0,
    report_delay: float = 0.0,
    workers: int = 0,
    new_session=False,
    extra=(),
    hold_at: int = 0,
    hold_removals: bool = False,
    hold_links: bool = False,
):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "XB_TEST_DELAY": str(delay),
        "XB_TEST_REPORT_DELAY": str(report_delay),
        "XB_TEST_MARKS": str(marks) if marks else "",
        "XB_TEST_HOLD_AT": str(hold_at),
        "XB_TEST_HOLD_REMOVALS": "1" if hold_removals else "",
        "XB_TEST_HOLD_LINKS": "1" if hold_links else "",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            PRELUDE,
            *run_argv(inp, out, ckpt),
            "--batch-size",
            str(BATCH),
            "--workers",
            str(workers),
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def _count(out: Path, sql: str) -> int:
    db_path = out / "xaibatch.sqlite"
    if not db_path.exists():
        return -1
    try:
        return manifest_rows(out, sql, timeout=1)[0][0]
    except sqlite3.Error:
        return -1


def _starting_folder(tmp_path: Path, ckpt: Path) -> tuple[Path, Path]:
    """A finished report over N_OLD images; then the input changes: N_NEW added, one changed, one removed."""
    inp = tmp_path / "in"
    old = write_images(inp, N_OLD, seed=1)
    out = tmp_path / "out"
    run(_opts(inp, out, ckpt), log=lambda s: None)
    rng = np.random.default_rng(7)
    for i in range(N_NEW):
        synth.save(synth.noise(rng, 32), inp / f"new_{i:03d}.png")
    synth.save(synth.noise(rng, 32), old[3])
    st = old[3].stat()
    os.utime(old[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    old[6].unlink()
    return inp, out


def _reference(tmp_path: Path, out: Path, inp: Path, ckpt: Path) -> Path:
    ref = tmp_path / "ref"
    shutil.copytree(out, ref)
    run(_opts(inp, ref, ckpt), log=lambda s: None)
    return ref


def _consistent(out: Path) -> tuple[dict, dict]:
    """The manifest opens; every file it references exists and loads; no temp files. Returns its content."""
    m = Manifest(out / "xaibatch.sqlite")
    try:
        images, maps = m.images(), m.maps()
    finally:
        m.close()
    for rel, r in images.items():
        for p in (layout.image_png(r.stem), layout.image_thumb(r.stem, r.width, r.height)):
            with Image.open(out / p) as im:
                im.load()
    arrays = {}
    for key, r in maps.items():
        arrays[key] = np.load(out / r.npy)
        for p in (r.png, r.thumb):
            with Image.open(out / p) as im:
                im.load()
    assert (out / "index.html").read_text().rstrip().endswith("</html>")
    assert not [p for p in out.rglob("*.tmp")], "stray temp files"
    rows = {rel: (r.stem, r.sha256, r.pred, r.probs, r.predict_hash) for rel, r in images.items()}
    return rows, {k: (maps[k].config_hash, maps[k].npy, a.tobytes()) for k, a in arrays.items()}


def _files(out: Path) -> set[str]:
    return {
        p.relative_to(out).as_posix()
        for top in ("images", "thumbs", "maps")
        for p in (out / top).rglob("*")
        if p.is_file()
    }


KILL_POINTS = {
    # name: (condition on (out, marks), what, seconds before each commit, seconds before the report)
    "before-first-batch": (lambda out, marks: _count(out, "SELECT count(*) FROM runs") >= 2, "the run row", 0.5, 0),
    "after-first-commit": (
        lambda out, marks: _count(out, "SELECT count(*) FROM images WHERE run_id = 2") >= BATCH,
        "the first batch's commit",
        0.3,
        0,
    ),
    "files-written-not-committed": (lambda out, marks: (marks / "precommit-3").exists(), "batch 3's files", 1.0, 0),
    "midway": (
        lambda out, marks: _count(out, "SELECT count(*) FROM images WHERE run_id = 2") >= 16,
        "16 images",
        0.2,
        0,
    ),
    "during-report": (lambda out, marks: (marks / "report").exists(), "the report", 0, 3.0),
}


@pytest.mark.parametrize(
    "point",
    [  # one kill point in the default tier, the others slow
        pytest.param(p, marks=() if p == "files-written-not-committed" else pytest.mark.slow) for p in KILL_POINTS
    ],
)
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, tiny_ckpt, point):
    inp, out = _starting_folder(tmp_path, tiny_ckpt)
    ref = _reference(tmp_path, out, inp, tiny_ckpt)
    previous = _consistent(out)
    assert "images/img_006.png" in check_report_links(out)  # the image removed from the input
    marks = tmp_path / "marks"
    cond, what, delay, report_delay = KILL_POINTS[point]

    proc = _cli(inp, out, tiny_ckpt, marks=marks, delay=delay, report_delay=report_delay)
    _kill_when(proc, lambda: cond(out, marks), what)

    # What the killed run leaves is readable and self-consistent (temp files aside, which the next run sweeps).
    m = Manifest(out / "xaibatch.sqlite")
    try:
        assert m.runs()[-1].status in ("running", "ok")
        for rel, r in m.images().items():
            assert (out / f"images/{r.stem}.png").exists()
        for r in m.maps().values():
            np.load(out / r.npy)
    finally:
        m.close()
    assert previous  # the starting report existed
    check_report_links(out)  # and every file it links still does: a removed image's go only after the new report
    if point == "files-written-not-committed":  # the state this point is about: files no row points at yet
        referenced = Manifest(out / "xaibatch.sqlite").referenced_files()
        assert _files(out) - referenced

    committed = _count(out, "SELECT count(*) FROM images WHERE run_id = 2")  # new and changed images only
    said: list[str] = []
    r = run(_opts(inp, out, tiny_ckpt), log=said.append)
    assert r.status == "ok"
    # what it finished is kept, whatever this run computes: "continuing where it stopped" was said also when new
    # settings redid all of it (the summary's "already done by" counts what was kept and used)
    assert any(line.endswith("did not finish; what it finished is kept") for line in said), said
    # what the killed run committed is "resumed", a part of "unchanged" (as everything not computed again)
    assert (r.unchanged, r.resumed, r.computed) == (N_OLD - 2 + committed, committed, N_NEW + 1 - committed)
    assert r.resumed_from == ({2: "killed"} if committed else {})
    got, want = _consistent(out), _consistent(ref)
    assert got[0].keys() == want[0].keys() and got[1].keys() == want[1].keys()
    assert got == want  # same rows, byte-identical maps
    assert _files(out) == _files(ref)  # no orphans, nothing missing
    check_output_folder(out, inp)
    statuses = [row.status for row in Manifest(out / "xaibatch.sqlite").runs()]
    assert statuses[0] == "ok" and statuses[-1] == "ok"
    assert statuses[1] == "killed"  # also when killed during the report, whose run row said "ok" already


@pytest.mark.slow
@pytest.mark.parametrize("sig,workers,json_log", [(signal.SIGTERM, 1, False), (signal.SIGINT, 0, True)])
def test_signal_stops_cleanly_with_exit_5_and_rerun_completes(tmp_path, tiny_ckpt, sig, workers, json_log):
    inp, out = _starting_folder(tmp_path, tiny_ckpt)
    ref = _reference(tmp_path, out, inp, tiny_ckpt)
    # the whole process group, as systemd (KillMode=control-group) and a terminal's Ctrl-C do.
    # The writer holds batch 2's commit until the run has handled the signal: the queue (4 batches) then
    # keeps the run from computing all 9 batches first, however slow or loaded the machine.
    marks = tmp_path / "marks"
    proc = _cli(
        inp,
        out,
        tiny_ckpt,
        marks=marks,
        workers=workers,
        new_session=True,
        hold_at=2,
        extra=["--log-json"] if json_log else [],
    )
    wait_until(proc, lambda: (marks / "precommit-2").exists(), "batch 2's files (batch 1 committed)")
    assert _count(out, "SELECT count(*) FROM images WHERE run_id = 2") >= BATCH
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    if json_log:
        import json

        end = json.loads(stdout.strip().splitlines()[-1])
        assert end["event"] == "end" and end["exit_code"] == 5 and end["status"] == "interrupted"
        assert end["skipped"] == N_OLD - 2 and 0 < end["computed"] < N_NEW + 1
    else:
        assert "skipped (unchanged)" in stdout  # the summary line of what was done

    runs = Manifest(out / "xaibatch.sqlite").runs()
    last = runs[-1]
    assert last.status == "interrupted" and last.finished_at is not None
    done = _count(out, "SELECT count(*) FROM images WHERE run_id = 2")
    assert 0 < last.n_computed < N_NEW + 1 and done == last.n_computed  # the writer drained its queue
    _consistent(out)  # report rendered, every referenced file in place

    r = run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert r.status == "ok" and r.computed == N_NEW + 1 - done
    assert _consistent(out) == _consistent(ref)
    assert _files(out) == _files(ref)
    check_output_folder(out, inp)


PRED_LABEL = ["--target", "pred,label"]


@pytest.mark.slow
def test_sigkill_of_a_pred_label_run_then_rerun_equals_uninterrupted(tmp_path, tiny_ckpt):
    """``--target pred,label``: killed with a batch's prediction and true-class files written, its rows not
    committed. The tiny model calls most images REAL, so the FAKE ones are misclassified (as in
    test_target_label.py): their ``gradcam@label`` rows must come out as an uninterrupted run makes them."""
    inp, out = tmp_path / "in", tmp_path / "out"
    synth.write_classes(inp, 2, seed=1)  # FAKE from seed 1, REAL from seed 2
    run(_opts(inp, out, tiny_ckpt, target="pred,label"), log=lambda s: None)
    for k, name in enumerate(synth.CLASSES):  # new images in both classes: several mixed batches
        for i, path in enumerate(synth.write_images(tmp_path / "new" / name, 10, seed=11 + k)):
            shutil.move(path, inp / name / f"new_{i:03d}.png")
    ref = tmp_path / "ref"
    shutil.copytree(out, ref)
    run(_opts(inp, ref, tiny_ckpt, target="pred,label"), log=lambda s: None)
    label_rows = {rel for rel, key in _consistent(ref)[1] if key == "gradcam@label"}
    new_rels = {f"{c}/new_{i:03d}.png" for c in synth.CLASSES for i in range(10)}
    assert label_rows & new_rels and new_rels - label_rows, "new images both misclassified and not"

    marks = tmp_path / "marks"
    proc = _cli(inp, out, tiny_ckpt, marks=marks, delay=1.0, extra=PRED_LABEL)
    _kill_when(proc, lambda: (marks / "precommit-3").exists(), "batch 3's files")
    referenced = Manifest(out / "xaibatch.sqlite").referenced_files()
    assert _files(out) - referenced  # files no row points at yet
    done = _count(out, "SELECT count(*) FROM images WHERE run_id = 2")
    assert 0 < done < len(new_rels)  # killed mid-compute

    said: list[str] = []
    r = run(_opts(inp, out, tiny_ckpt, target="pred,label"), log=said.append)
    assert r.status == "ok" and r.computed == len(new_rels) - done
    assert any("did not finish" in line for line in said)
    got, want = _consistent(out), _consistent(ref)
    assert got == want  # same image rows; same map rows, the @label ones too; byte-identical maps
    assert _files(out) == _files(ref)
    check_output_folder(out, inp)


def test_sigkill_between_linking_moved_images_and_committing_them_then_rerun(tmp_path, tiny_ckpt):
    """Images moved between class folders and renamed (plan.Move): killed once their files are linked under the new
    names and before the rows that point at them are committed. The folder still holds the old rows (the report on
    disk links only existing files); the next run links again over what the killed one left and ends as an
    uninterrupted run does, nothing computed but the true-class map the new label asks for."""
    inp, out = tmp_path / "in", tmp_path / "out"
    synth.write_classes(inp, 3, seed=1)
    run(_opts(inp, out, tiny_ckpt, target="pred,label"), log=lambda s: None)
    moved = {"REAL/img_000.png": "FAKE/from_real.png", "FAKE/img_001.png": "REAL/from_fake.png"}
    moved["REAL/img_001.png"] = "REAL/renamed.png"
    for old, new in moved.items():
        (inp / old).rename(inp / new)
    ref = tmp_path / "ref"
    shutil.copytree(out, ref)
    run(_opts(inp, ref, tiny_ckpt, target="pred,label"), log=lambda s: None)
    before = _consistent(out)

    marks = tmp_path / "marks"
    proc = _cli(inp, out, tiny_ckpt, marks=marks, hold_links=True, extra=PRED_LABEL)
    _kill_when(proc, lambda: (marks / "linked").exists(), "the moved images' links")
    m = Manifest(out / "xaibatch.sqlite")
    try:  # the old rows (a temporary file of the killed run aside, which the next run sweeps)
        assert (set(m.images()), set(m.maps())) == (set(before[0]), set(before[1]))
    finally:
        m.close()
    linked = _files(out) - Manifest(out / "xaibatch.sqlite").referenced_files()
    assert layout.image_png("FAKE/from_real") in linked and layout.map_npy("gradcam", "REAL/renamed") in linked
    check_report_links(out)

    r = run(_opts(inp, out, tiny_ckpt, target="pred,label"), log=lambda s: None)
    assert r.status == "ok" and r.computed == 1  # FAKE/from_real.png, misclassified now: its gradcam@label
    got, want = _consistent(out), _consistent(ref)
    assert got == want
    assert _files(out) == _files(ref)
    check_output_folder(out, inp)


def test_a_second_signal_right_after_the_removal_commit_leaves_nothing_behind(tmp_path, tiny_ckpt):
    """Stopped between committing the removal of an image and deleting its files, a run ends "interrupted" and
    releases the lock cleanly; the next run still finds and deletes those files."""
    inp, out = _starting_folder(tmp_path, tiny_ckpt)  # one image removed from the input
    marks = tmp_path / "marks"
    proc = _cli(inp, out, tiny_ckpt, marks=marks, hold_removals=True)
    wait_until(proc, lambda: (marks / "removals-committed").exists(), "the removal commit")
    proc.send_signal(signal.SIGTERM)
    wait_until(proc, lambda: (marks / "signalled").exists(), "the first signal handled")
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert Manifest(out / "xaibatch.sqlite").runs()[-1].status == "interrupted"
    with pytest.raises(AssertionError, match="files no row points at"):
        check_output_folder(out, inp, report=False)  # the removed image's files

    said: list[str] = []
    r = run(_opts(inp, out, tiny_ckpt), log=said.append)
    assert r.status == "ok"
    assert any("the previous run ended interrupted; cleaned" in line for line in said), said
    check_output_folder(out, inp)


def test_signal_handlers_are_restored(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)

    def mine(signum, frame):
        pass

    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, mine)
    try:
        opts = _opts(inp, tmp_path / "out", tiny_ckpt)
        opts.handle_signals = True
        run(opts, log=lambda s: None)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is old_int
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _sigterm_during_second_batch(monkeypatch) -> None:
    """Send this process SIGTERM while the second batch is being computed."""
    from xaibatch.methods.explainer import Explainer

    calls = {"n": 0}
    real = Explainer.__call__

    def call(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *a, **k)

    monkeypatch.setattr(Explainer, "__call__", call)


def test_signal_in_process_interrupts_after_the_batch(tmp_path, tiny_ckpt, monkeypatch):
    """The library call: a SIGTERM mid-run raises Interrupted carrying the partial result."""
    from xaibatch.errors import Interrupted

    inp = tmp_path / "in"
    write_images(inp, 12)
    _sigterm_during_second_batch(monkeypatch)
    opts = _opts(inp, tmp_path / "out", tiny_ckpt)
    opts.handle_signals = True
    with pytest.raises(Interrupted) as ei:
        run(opts, log=lambda s: None)
    res = ei.value.result
    assert res.status == "interrupted" and res.computed == 2 * BATCH
    assert Manifest(tmp_path / "out" / "xaibatch.sqlite").runs()[-1].status == "interrupted"


def _history_row(out: Path, run_id: int) -> dict[str, str]:
    """Run ``run_id``'s row of history.html, by column."""
    page = (out / "history.html").read_text()
    heads = re.findall(r'<th scope="col">(.*?)</th>', page)
    row = re.search(rf'<tr><th scope="row">{run_id}</th>(.*?)</tr>', page).group(1)
    return dict(zip(heads, [str(run_id), *re.findall(r"<td[^>]*>(.*?)</td>", row)], strict=True))


def test_a_resumed_run_tells_what_the_interrupted_run_did_from_unchanged_images(tmp_path, tiny_ckpt, monkeypatch):
    """The run after an interrupted one counted the images that run had committed as "skipped (unchanged)": in
    its summary, its --log-json plan and end events and the run history, as if they had been there before. They
    are "resumed" now, naming the run that did them, and the run after that finds them unchanged."""
    from xaibatch.errors import Interrupted

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3 * BATCH)
    _sigterm_during_second_batch(monkeypatch)
    opts = _opts(inp, out, tiny_ckpt)
    opts.handle_signals = True
    with pytest.raises(Interrupted):
        run(opts, log=quiet)  # two batches of three committed
    monkeypatch.undo()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    argv = ("--batch-size", BATCH, "--workers", 0)

    r = invoke(*run_argv(inp, out, tiny_ckpt, *argv, "--log-json"))
    assert r.exit_code == 0, r.output
    events = {e["event"]: e for e in map(json.loads, r.stdout.splitlines())}
    plan, end = events["plan"], events["end"]
    # the JSON fields keep their meaning (a log collector's seen == computed + skipped + failed); resumed is a part
    plan_counts = (plan["unchanged"], plan["resumed"], plan["resumed_from"], plan["to_compute"])
    assert plan_counts == (2 * BATCH, 2 * BATCH, [1], BATCH)
    assert (end["computed"], end["skipped"], end["resumed"], end["seen"]) == (BATCH, 2 * BATCH, 2 * BATCH, 3 * BATCH)
    assert end["seen"] == end["computed"] + end["skipped"] + end["failed"]
    history = _history_row(out, 2)
    assert (history["Unchanged"], history["Resumed"], history["Computed"]) == ("0", str(2 * BATCH), str(BATCH))
    assert _history_row(out, 1)["Status"] == "interrupted"
    index = (out / "index.html").read_text()
    assert (
        f'({BATCH} computed, {2 * BATCH} already done by <a href="history.html">runs that did not finish</a>, 0 unchanged)'
        in index
    )

    r = invoke(*run_argv(inp, copy, tiny_ckpt, *argv))  # the same, as a person reads it
    assert (
        f"{3 * BATCH} images seen, {BATCH} computed, {2 * BATCH} already done by the interrupted run 1, "
        "0 skipped (unchanged), 0 failed"
    ) in r.stdout

    again = run(_opts(inp, out, tiny_ckpt), log=quiet)  # the interrupted run is behind a finished one now
    assert (again.computed, again.unchanged, again.resumed, again.resumed_from) == (0, 3 * BATCH, 0, {})
    assert "skipped (unchanged)" in again.summary_line() and "already done" not in again.summary_line()


def test_signal_during_the_last_batch_still_finishes_ok(tmp_path, tiny_ckpt, monkeypatch):
    inp = tmp_path / "in"
    write_images(inp, 2 * BATCH)
    _sigterm_during_second_batch(monkeypatch)
    opts = _opts(inp, tmp_path / "out", tiny_ckpt)
    opts.handle_signals = True
    r = run(opts, log=lambda s: None)  # nothing left to do: no Interrupted
    assert r.status == "ok" and r.computed == 2 * BATCH


def test_a_worker_says_nothing_when_the_main_process_stops_reading():
    """A DataLoader worker whose batch is still being sent when the run stops reading (a signal) printed the
    feeder thread's traceback, and was killed mid-print: a lone "Traceback" line on a clean stop's stderr.
    worker_init silences exactly that case in the worker; any other feeder error (a batch that could not be
    sent: the run would wait for it forever) is one line, and the worker ends (test_batch_handover.py)."""
    code = """
import contextlib, io, sys, multiprocessing.queues as q
from xaibatch.pipeline.loader import worker_init
worker_init(0)
buf = io.StringIO()
with contextlib.redirect_stderr(buf):
    for e in (BrokenPipeError(32, "closed"), ConnectionResetError(104, "reset")):
        try:
            raise e
        except Exception as err:
            q.Queue._on_queue_feeder_error(err, None)
    for e in (ConnectionResetError(104, "reset"), EOFError(), KeyError("sharer")):  # the resource sharer's path
        try:
            raise e
        except BaseException as err:
            sys.excepthook(type(err), err, err.__traceback__)
print(repr(buf.getvalue()), flush=True)
q.Queue._on_queue_feeder_error(ValueError("boom"), None)
print("still here")
"""
    from xaibatch.pipeline.loader import LOADER_WORKER_FAILED

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == LOADER_WORKER_FAILED, out.stderr
    said = out.stdout
    assert "BrokenPipe" not in said and "ConnectionReset" not in said and "still here" not in said
    assert "KeyError" in said and "sharer" in said and "EOFError" not in said
    assert out.stderr == "xaibatch: a DataLoader worker could not hand over a batch: boom\n"


def test_the_run_says_nothing_when_a_killed_worker_leaves_its_index_queue():
    """The run's own feeder threads (the index queues of its DataLoader workers) printed the start of a traceback
    when they were still sending to a worker the run had just killed: quiet_feeders silences exactly that for
    the queues started in it; a queue started outside it still reports, as multiprocessing always has."""
    code = """
import multiprocessing as mp, sys, time
from xaibatch.pipeline.loader import quiet_feeders

def orphan(q):
    q._reader.close()  # the worker's end, gone (killed)
    q.put(b"x" * 1_000_000)  # the feeder thread writes into a pipe nobody reads: EPIPE
    time.sleep(0.5)

with quiet_feeders():
    quiet = mp.Queue()
    quiet.put(1)  # the feeder thread starts here, with the quiet handler
orphan(quiet)
sys.stderr.write("--\\n")
usual = mp.Queue()
usual.put(1)
orphan(usual)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    quiet, _, usual = out.stderr.partition("--\n")
    assert quiet == "", quiet
    assert "BrokenPipeError" in usual  # the control: outside the block the usual traceback


def test_images_this_run_re_decides_are_its_own_work_not_the_stopped_runs(tmp_path, tiny_ckpt):
    """A run that re-decided every image under a new threshold stopped (here: marked interrupted, as a kill after
    its removals would leave it); the next run, at the old threshold, re-decides them all again itself. It used to
    say "8 already done by the interrupted run 2": that run's work was undone, not resumed."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp / "FAKE", 4, seed=1)
    write_images(inp / "REAL", 4, seed=2)
    run(run_opts(inp, out, tiny_ckpt, workers=0), log=quiet)
    second = run(run_opts(inp, out, tiny_ckpt, workers=0, threshold=0.5001), log=quiet)  # flips none
    assert (second.computed, _count(out, "SELECT count(*) FROM images WHERE run_id = 2")) == (0, 8)
    db = sqlite3.connect(out / "xaibatch.sqlite", isolation_level=None)  # damage on purpose: run 2 never finished
    db.execute("UPDATE runs SET status = 'interrupted' WHERE id = 2")
    db.close()
    third = run(run_opts(inp, out, tiny_ckpt, workers=0), log=quiet)
    assert _count(out, "SELECT count(*) FROM images WHERE run_id = 3") == 8  # every row re-decided by run 3
    assert (third.computed, third.unchanged, third.resumed, third.resumed_from) == (0, 8, 0, {})
    assert "already done" not in third.summary_line()


def test_sigkill_after_a_changed_images_files_then_its_old_bytes_back_recomputes_it(tmp_path, tiny_ckpt):
    """A changed image's new files are written to its old files' paths. Killed once they were written and before
    the batch's rows were committed, the folder kept the old rows pointing at the new files; the image's old bytes
    put back (a backup restored), the next run took it as touched and kept those rows: the report showed the map
    and display copy of the other picture under the old image, silently. Now the rows go in a commit before their
    files are written over: the next run computes the image again."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 6, seed=1)
    run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    target = paths[1]
    rel, stem = "img_001.png", "img_001"
    old_bytes, old_map = target.read_bytes(), np.load(out / layout.map_npy("gradcam", stem))
    with Image.open(out / layout.image_png(stem)) as im:
        old_display = np.asarray(im.convert("RGB"))
    synth.save(synth.noise(np.random.default_rng(7), 32), target)  # new bytes: a changed image
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))

    marks = tmp_path / "marks"
    npy = out / layout.map_npy("gradcam", stem)
    proc = _cli(inp, out, tiny_ckpt, marks=marks, delay=3.0)  # each of the writer's commits waits 3 s first

    def written() -> bool:  # the new map is in place: the writer waits before the batch's commit now
        try:
            return not np.array_equal(np.load(npy), old_map)
        except (OSError, ValueError):
            return False

    _kill_when(proc, written, "the changed image's new map")
    assert not np.array_equal(np.load(npy), old_map)  # the killed run's file
    assert _count(out, "SELECT count(*) FROM images WHERE run_id = 2") == 0  # no row of the killed run committed

    target.write_bytes(old_bytes)  # the backup restored: the old bytes, a new mtime and ctime
    r = run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert r.status == "ok"
    m = Manifest(out / "xaibatch.sqlite")
    try:
        row, map_row = m.images()[rel], m.maps()[(rel, "gradcam")]
    finally:
        m.close()
    assert row.sha256 == hashlib.sha256(old_bytes).hexdigest()
    np.testing.assert_allclose(np.load(out / map_row.npy), old_map, atol=1e-5)  # the old image's map, not the other's
    with Image.open(out / layout.image_png(stem)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), old_display)
    check_output_folder(out, inp)


def test_sigkill_after_maps_of_new_options_were_written_then_the_old_options_back(tmp_path, tiny_ckpt):
    """The same as a changed image's old bytes put back, for options: a run with a new --max-map-side killed once a
    batch's maps were written over the committed ones and before its rows were committed; the next run, with the
    old options again, must not keep the old rows over the new maps (found by tests/rerun_fuzz.py)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    synth.write_classes(inp, 3, seed=1)
    run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    npy = out / layout.map_npy("gradcam", "FAKE/img_000")
    shape = np.load(npy).shape

    def written() -> bool:  # a map of the new options is in place; the writer waits before the batch's commit
        try:
            return np.load(npy).shape != shape
        except (OSError, ValueError):
            return False

    proc = _cli(inp, out, tiny_ckpt, marks=tmp_path / "marks", delay=3.0, extra=("--max-map-side", "8"))
    _kill_when(proc, written, "a map of the new options")

    r = run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert r.status == "ok" and r.computed >= 1
    ref = tmp_path / "ref"
    run(_opts(inp, ref, tiny_ckpt), log=lambda s: None)
    got, want = _consistent(out), _consistent(ref)
    assert got[0].keys() == want[0].keys() and got[1].keys() == want[1].keys()
    for key, (h, path, data) in want[1].items():
        a, b = np.frombuffer(got[1][key][2], np.float32), np.frombuffer(data, np.float32)
        assert got[1][key][:2] == (h, path) and a.shape == b.shape and np.allclose(a, b, atol=1e-5), key
    check_output_folder(out, inp)
