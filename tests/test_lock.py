"""One run per --out: a second run exits 4 naming the holder, or waits with --wait; dead holders never block."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ENV, REPO, cli, run_argv, run_opts, write_images
from test_crash import PRELUDE
from xaibatch.errors import LockHeld
from xaibatch.lock import LOCK_NAME, OutputLock
from xaibatch.pipeline import run


HOLDER = r"""
import os, sys, time
from xaibatch.lock import OutputLock
lock = OutputLock(sys.argv[1])
lock.acquire()
child = ""
if len(sys.argv) > 2 and sys.argv[2] == "fork":
    child = os.fork()
    if child == 0:  # a child like a DataLoader worker: it must not inherit the lock
        time.sleep(60)
        os._exit(0)
print("held", child, flush=True)
sys.stdin.read()  # hold until the test closes stdin
lock.release()
"""


def _holder(out: Path, *extra: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), *extra],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    words = p.stdout.readline().split()
    assert words[0] == "held"
    p.child = int(words[1]) if len(words) > 1 else None
    return p


# The crash tests' prelude, plus a gate: the first run's writer announces (file ``inside``) that it is inside
# its run, holding the lock, and then waits for the test to create ``open`` before it commits its first batch.
# The test orders the runs by these files, never by timing, so a loaded machine cannot reorder them.
GATED = (
    r"""
import os, threading, time
from pathlib import Path
import xaibatch.manifest as _gmf

_gate = Path(os.environ["XB_TEST_GATE"])
_genter = _gmf._Transaction.__enter__
def _gated_enter(self):
    if threading.current_thread().name == "xaibatch-writer" and not (_gate / "open").exists():
        (_gate / "inside").write_text("")
        while not (_gate / "open").exists():
            time.sleep(0.02)
    return _genter(self)
_gmf._Transaction.__enter__ = _gated_enter
"""
    + PRELUDE
)


def _wait_file(proc: subprocess.Popen, path: Path, what: str, timeout: float = 120.0) -> None:
    """Poll for a file some process writes; fail at once if that process ended without it."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"process ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_second_real_run_exits_4_naming_the_holder_then_waits_with_wait(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 12)
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    gate.mkdir()
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            GATED,
            *run_argv(inp, out, tiny_ckpt),
            "--batch-size",
            "4",
            "--workers",
            "0",
            "-q",
        ],
        cwd=REPO,
        env={**ENV, "XB_TEST_GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiter = None
    try:
        _wait_file(first, gate / "inside", "the first run's writer reached its first commit")
        cmd = [
            sys.executable,
            "-c",
            "from xaibatch.cli import main; main()",
            *run_argv(inp, out, tiny_ckpt),
            "--batch-size",
            "4",
            "--workers",
            "0",
        ]
        kw = dict(cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        second = subprocess.Popen(cmd, stderr=subprocess.PIPE, **kw)
        waiter_err = tmp_path / "waiter.err"
        with open(waiter_err, "w") as err_file:
            waiter = subprocess.Popen([*cmd, "--wait"], stderr=err_file, **kw)
        out2, err2 = second.communicate(timeout=120)
        assert second.returncode == 4, err2
        assert first.poll() is None  # held at the gate: it cannot have ended
        lines = err2.strip().splitlines()
        assert len(lines) == 1, err2
        assert f"pid {first.pid} on {socket.gethostname()} since " in lines[0] and "--wait" in lines[0]
        assert time.monotonic() - t0 < 120  # did not wait

        t1 = time.monotonic()
        while f"waiting for pid {first.pid}" not in waiter_err.read_text():  # the waiter found the lock taken
            assert waiter.poll() is None, f"the waiter ended (rc {waiter.returncode}): {waiter_err.read_text()}"
            assert time.monotonic() - t1 < 120, "timed out waiting for the waiter's message"
            time.sleep(0.05)
        assert first.poll() is None
        (gate / "open").write_text("")  # let the first run finish
        out3, _ = waiter.communicate(timeout=180)
        assert first.wait(timeout=120) == 0
        assert waiter.returncode == 0, waiter_err.read_text()
        assert "12 skipped (unchanged)" in out3  # it ran after the first one, on its results
    finally:
        (gate / "open").write_text("")
        for p in (first, waiter):
            if p is not None and p.poll() is None:
                p.kill()
        first.communicate()
        if waiter is not None:
            waiter.wait()


@pytest.mark.slow
def test_wait_timeout_gives_up_with_4(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        r = cli(*run_argv(inp, out, tiny_ckpt), "--wait-timeout", "1", "--log-json")
        assert r.returncode == 4
        end = json.loads(r.stdout.strip().splitlines()[-1])
        assert end["event"] == "end" and end["exit_code"] == 4 and end["status"] == "locked"
        assert f"pid {holder.pid}" in end["error"] and "after waiting" in end["error"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)
    out = tmp_path / "out"
    holder = _holder(out)
    with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
        run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)
    holder.kill()
    holder.wait()
    said: list[str] = []
    r = run(run_opts(inp, out, tiny_ckpt), log=said.append)  # no waiting, no stale-lock dance
    assert r.computed == 2
    assert any(f"pid {holder.pid}" in s and "did not finish" in s for s in said)  # its record was taken over
    assert (out / LOCK_NAME).read_text() == ""  # released cleanly: record cleared


def test_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked; after a SIGKILL of the main process they live on for seconds.

    With flock they would keep the folder locked (the lock belongs to the shared
    open file); POSIX record locks are per process and not inherited.
    """
    out = tmp_path / "out"
    holder = _holder(out, "fork")
    try:
        assert not OutputLock(out).try_acquire()
        holder.kill()
        holder.wait()
        lock = OutputLock(out)
        assert lock.try_acquire()
        assert lock.previous["pid"] == holder.pid
        lock.release()
        os.kill(holder.child, 0)  # the child is still alive, yet the lock was free
    finally:
        holder.kill()
        os.kill(holder.child, signal.SIGKILL)


def test_stale_record_of_a_dead_process_is_taken_over(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    rec = {"pid": int(dead), "host": socket.gethostname(), "started_ts": time.time() - 3600}
    (out / LOCK_NAME).write_text(json.dumps(rec))
    (out / "maps" / "gradcam").mkdir(parents=True)
    half = out / "maps" / "gradcam" / f".img_000.npy.{dead}.tmp"
    half.write_bytes(b"half")
    live = out / f".notes.txt.{os.getpid()}.tmp"  # a live process's temp file is not ours to delete
    live.write_bytes(b"")
    said: list[str] = []
    r = run(run_opts(inp, out, tiny_ckpt), log=said.append)
    assert r.computed == 2
    assert any(f"pid {dead}" in s for s in said)
    assert not half.exists() and live.exists()


@pytest.mark.parametrize("status", ["interrupted", "error"])
def test_after_a_run_that_ended_badly_only_dead_writers_temp_files_are_swept(tmp_path, tiny_ckpt, status):
    """A run that ended interrupted or with an error released the lock: the next run sweeps the temporary files of
    processes that are gone, not those of a live one (a `serve` saving a flag, any other writer there now)."""
    import sqlite3

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 2)
    run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)
    db = sqlite3.connect(out / "xaibatch.sqlite")
    with db:
        db.execute("UPDATE runs SET status = ? WHERE id = (SELECT MAX(id) FROM runs)", (status,))
    db.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    half = out / "maps" / "gradcam" / f".img_000.npy.0.{dead.stdout.strip()}.tmp"
    half.write_bytes(b"half")
    live = out / "maps" / "gradcam" / f".img_001.npy.0.{os.getpid()}.tmp"
    live.write_bytes(b"being written")
    run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)
    assert not half.exists() and live.read_bytes() == b"being written"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_process_that_exited_unreaped_is_not_alive():
    """lock.pid_alive, the one test of a pid (the sweep of dead writers' temporary files, a worker's watch of a run
    that is not its parent): a zombie, exited but not yet reaped by its parent, is gone; os.kill(pid, 0) alone took
    it for alive, where signals.py had its own test that did not."""
    from xaibatch.lock import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited for: a zombie once it exits
    try:
        t0 = time.monotonic()
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() - t0 < 30, "the child did not exit"
            time.sleep(0.02)
        assert not pid_alive(child.pid)
        assert pid_alive(os.getpid())
    finally:
        child.wait()
    assert not pid_alive(child.pid)


def test_every_temporary_name_is_one_the_sweep_recognises():
    """Every writer names its temporary files with files.temp_name, which the sweep after a crash reads back:
    the pid last, short enough beside a 255-byte name; names that are not temporary files are left alone."""
    from xaibatch.files import temp_name, temp_pid, temporary

    long = "é" * 120 + ".npy"
    for name in ("img.png", long, "xaibatch-reserve"):
        tmp = temp_name(name)
        assert temp_pid(tmp) == os.getpid() and temporary(tmp) and len(tmp.encode()) <= 100
        assert temp_pid(temp_name(name, pid=4242)) == 4242
    assert temp_name("a") != temp_name("a")  # two writers of one name in one process
    assert temp_pid(".xaibatch-write-test.77") == 77  # what older versions left after a crash
    for other in ("notes.tmp", ".hidden", ".a.tmp", "img.png.123.tmp", ".a.b.tmp"):
        assert temp_pid(other) is None and not temporary(other)


def test_same_process_cannot_take_its_own_lock_twice(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            run(run_opts(inp, out, tiny_ckpt), log=lambda s: None)
        assert not OutputLock(out).try_acquire()  # and the first lock still holds
    again = OutputLock(out)
    assert again.try_acquire()
    again.release()


def _held_by(out: Path, command: str) -> subprocess.Popen:
    """A process holding ``out``'s lock as ``command`` until its stdin closes; it prints "held" once it does."""
    return subprocess.Popen(
        [sys.executable, "-c", HELD_BY, str(out), command],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


HELD_BY = r"""
import sys
from pathlib import Path
from xaibatch.pipeline.recovery import held_output
with held_output(Path(sys.argv[1]), print, sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin
"""


def test_a_run_that_waited_for_the_lock_says_so_and_records_only_its_own_time(tmp_path, tiny_ckpt):
    """A cron run with --wait behind someone's sanity said "0 computed, ... 15.9s" and its history row 15.9 s from a
    start time taken after the wait (it finished 0.4 s after it started): the wait read as the run's work."""
    import threading

    from helpers import quiet, small_run
    from xaibatch.manifest import Manifest

    out = small_run(tmp_path, tiny_ckpt, 2)
    holder = _holder(out)
    threading.Timer(2.0, holder.stdin.close).start()  # the holder lets go after 2 s
    result = run(run_opts(tmp_path / "in", out, tiny_ckpt, wait=True), log=quiet)
    holder.wait(timeout=30)
    assert result.timings["wait"] >= 1.5
    assert f"s ({result.timings['wait']:.1f}s of it waiting for the folder to be free) -> " in result.summary_line()
    m = Manifest(out / "xaibatch.sqlite")
    try:
        (row,) = [r for r in m.runs() if r.id == result.run_id]
    finally:
        m.close()
    assert row.seconds <= result.seconds - result.timings["wait"] + 0.01
    assert abs(row.started_at + row.seconds - row.finished_at) < 1.0


@pytest.mark.parametrize("command", ["report", "sanity"])
def test_a_run_refused_by_report_or_sanity_names_that_command(tmp_path, tiny_ckpt, command):
    """A cron job's run refused while someone's ``xaibatch sanity`` (a minute or more) holds the folder said "in use
    by another xaibatch run": whoever read the cron mail looked for a run that was not there."""
    from helpers import invoke, small_run

    out = small_run(tmp_path, tiny_ckpt, 2)
    p = _held_by(out, command)
    try:
        assert p.stdout.readline().split() == ["held"]
        r = invoke(*run_argv(tmp_path / "in", out, tiny_ckpt), "--workers", "0", catch_exceptions=True)
        assert r.exit_code == 4, r.output
        assert f"is in use by xaibatch {command} (pid {p.pid} on " in r.output, r.output
        r = invoke("report", out, catch_exceptions=True)
        assert r.exit_code == 4 and f"in use by xaibatch {command} (pid {p.pid}" in r.output, r.output
        with pytest.raises(LockHeld, match=f"still in use by xaibatch {command} \\(pid {p.pid} "):
            OutputLock(out).acquire(wait=True, timeout=0.2, poll=0.05)
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    holder = _holder(out)  # a run's lock (and an older xaibatch's record, without a command): "another xaibatch run"
    try:
        r = invoke("report", out, catch_exceptions=True)
        assert r.exit_code == 4 and f"in use by another xaibatch run (pid {holder.pid}" in r.output, r.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_run_after_a_killed_sanity_names_it_not_a_run(tmp_path, tiny_ckpt):
    """The run after a sanity killed while it held the folder (SIGKILL, the out-of-memory killer) said "the previous
    run (pid N ...) did not finish": no run had been there."""
    from helpers import small_run

    out = small_run(tmp_path, tiny_ckpt, 2)
    p = _held_by(out, "sanity")
    try:
        assert p.stdout.readline().split() == ["held"]
    finally:
        p.kill()
        p.wait(timeout=30)
    lines: list[str] = []
    run(run_opts(tmp_path / "in", out, tiny_ckpt), log=lines.append)
    said = [line for line in lines if "did not finish" in line]
    assert len(said) == 1 and said[0].startswith(f"xaibatch: the previous xaibatch sanity (pid {p.pid} on "), lines


def test_every_command_offers_wait_when_the_folder_is_busy(tmp_path, tiny_ckpt):
    """run, report and sanity each have a --wait, and their refusal names it; sanity says it before importing torch
    (seconds)."""
    from helpers import invoke, small_run

    out = small_run(tmp_path, tiny_ckpt, 2)
    holder = _holder(out)
    try:
        for command in ("report", "sanity"):
            r = invoke(command, out, catch_exceptions=True)
            assert r.exit_code == 4, r.output
            assert f"pid {holder.pid}" in r.output and "pass --wait to wait for it" in r.output, r.output
        r = invoke(*run_argv(tmp_path / "in", out, tiny_ckpt), "--workers", "0", catch_exceptions=True)
        assert r.exit_code == 4 and "pass --wait to wait for it" in r.output, r.output
        probe = f"""
import sys
from click.testing import CliRunner
from xaibatch.cli import cli
r = CliRunner().invoke(cli, ["sanity", {str(out)!r}])
assert r.exit_code == 4, r.output
print("torch" in sys.modules)
"""
        p = subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "False"  # refused before torch was imported
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.parametrize("command", ["report", "sanity"])
def test_report_and_sanity_wait_for_the_folder_with_wait(tmp_path, tiny_ckpt, command):
    """A cron job that rebuilds the report (or checks the methods) after a run, or beside another job, was refused at
    once (exit 4, "try again when it has finished"): ``report`` and ``sanity`` had no --wait, as ``run`` has."""
    import threading

    from helpers import invoke, small_run

    out = small_run(tmp_path, tiny_ckpt, 2)
    holder = _held_by(out, "sanity" if command == "report" else "report")
    try:
        assert holder.stdout.readline().split() == ["held"]
        r = invoke(command, out, catch_exceptions=True)
        assert r.exit_code == 4 and "pass --wait to wait for it" in r.output, r.output
        r = invoke(command, out, "--wait-timeout", "0.3", catch_exceptions=True)
        assert r.exit_code == 4 and f"still in use by xaibatch {'sanity' if command == 'report' else 'report'}" in (
            r.output
        ), r.output
        if command == "sanity":
            return  # what it waits for is the lock; the check itself is test_sanity's
        threading.Timer(1.5, holder.stdin.close).start()  # the holder lets go after 1.5 s
        r = invoke(command, out, "--wait", catch_exceptions=True)
        assert r.exit_code == 0, r.output
        assert f"xaibatch: waiting for pid {holder.pid} on " in r.output and "(xaibatch sanity)" in r.output, r.output
        assert "page(s)" in r.output, r.output
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)
    lock = OutputLock(out)
    assert lock.try_acquire()  # released
    lock.release()
