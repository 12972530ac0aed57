"""`xaibatch run` as a user at a terminal sees it: under a pseudo-terminal (tests/ptyrun.py), where the progress
bar is drawn and Ctrl-C, Ctrl-Z, a resize or a closed window reach the whole foreground process group."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sys
import time

import pytest

import ptyrun
from helpers import ENV, MANIFEST, REPO, manifest_rows, write_images

SUMMARY = re.compile(r"xaibatch: (\d+) images seen, (\d+) computed, .* -> .*index\.html")


def _argv(inp, out, ckpt, *extra) -> list[str]:
    return [sys.executable, "-m", "xaibatch", "run", str(inp), "--out", str(out), "--checkpoint", str(ckpt), *extra]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("tty")
    write_images(root / "in" / "FAKE", 40, seed=1)
    write_images(root / "in" / "REAL", 40, seed=2)
    return root / "in"


def _screen_lines(text: str) -> list[str]:
    """What stays on the screen, line by line: each line's last carriage-return segment."""
    return [line.split("\r")[-1] for line in text.replace("\r\n", "\n").split("\n")]


@pytest.mark.parametrize("cols", [40, 200])
def test_the_bar_ends_cleanly_then_the_summary(tmp_path, images, tiny_ckpt, cols):
    """The bar fits the terminal, is drawn to 100% and left on its own line, and the summary line follows (the
    quick exit, os._exit once torch is loaded, flushed both). The report still forks its helpers (no thread
    left behind by the bar): a sitecustomize in the child records each fork decision."""
    site, log = tmp_path / "site", tmp_path / "forks.log"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, xaibatch.report.forked as f\n"
        "_can = f.can_fork\n"
        "def can_fork():\n"
        "    r = _can()\n"
        f"    open({str(log)!r}, 'a').write(f'{{r}}\\n')\n"
        "    return r\n"
        "f.can_fork = can_fork\n"
    )
    env = {**ENV, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    r = ptyrun.run(_argv(images, tmp_path / "out", tiny_ckpt, "--batch-size", "8"), cols=cols, env=env)
    assert r.code == 0, r.text
    assert "Traceback" not in r.text
    lines = _screen_lines(r.text)
    assert lines[-1] == ""  # the output ends with a newline
    assert re.match(r"xaibatch: 100%.*80/80", lines[-3]), r.text
    assert SUMMARY.fullmatch(lines[-2]) and SUMMARY.fullmatch(lines[-2]).groups() == ("80", "80"), r.text
    widths = [len(seg) for line in r.text.replace("\r\n", "\n").split("\n") for seg in line.split("\r")]
    bar_widths = [w for w, seg in zip(widths, re.split(r"[\r\n]+", r.text)) if "img" in seg]
    assert bar_widths and max(bar_widths) <= cols
    decisions = log.read_text().split() if log.exists() else []
    if (os.cpu_count() or 1) >= 2:
        assert decisions and set(decisions) == {"True"}, decisions


@pytest.mark.parametrize("which", ["stdout", "stderr"])
def test_one_stream_on_a_file_loses_nothing(tmp_path, images, tiny_ckpt, which):
    """stdout a file and stderr the terminal, or the reverse: no bar (it would garble the file), the summary in
    stdout wherever it goes."""
    f = tmp_path / "stream.txt"
    r = ptyrun.run(_argv(images, tmp_path / "out", tiny_ckpt), env=ENV, **{f"{which}_file": str(f)})
    assert r.code == 0, r.text
    where = f.read_text() if which == "stdout" else r.text
    assert SUMMARY.search(where), (where, r.text)
    assert "img/s" not in r.text + f.read_text()


def _hang_up_mid_run(tmp_path, images, ckpt, *extra):
    """A run on a terminal whose window is closed once its first batches are done: the kernel sends SIGHUP to
    the foreground group (the run, its DataLoader workers and writer processes) and every later write to the
    terminal fails."""
    out = tmp_path / "out"
    t = ptyrun.Terminal(_argv(images, out, ckpt, "--batch-size", "2", "--workers", "1", *extra), env=ENV)
    assert t.wait_for("img/s]", 90), t.text
    deadline = time.monotonic() + 30
    while "/80 [" not in t.text or re.search(r" [1-9]\d*/80 \[", t.text) is None:
        assert time.monotonic() < deadline, t.text
        t.read(0.1)
    t.close_window()
    return t.code, out


def test_a_closed_terminal_stops_the_run_like_sigterm(tmp_path, images, tiny_ckpt):
    """SIGHUP (the terminal closed, an ssh session lost) used to kill the run where it stood: no report, its row
    left 'running'. It now stops as SIGINT/SIGTERM do: the current batch finishes, the report is written, exit 5,
    the row 'interrupted'; the output that had gone to the terminal goes nowhere instead of failing."""
    code, out = _hang_up_mid_run(tmp_path, images, tiny_ckpt)
    assert code == 5
    ((status, computed),) = manifest_rows(out, "SELECT status, n_computed FROM runs")
    assert status == "interrupted" and 0 < computed < 80
    assert (out / "index.html").exists()
    (n,) = manifest_rows(out, "SELECT COUNT(*) FROM images")[0]
    assert n == computed
    assert (out / MANIFEST).exists()


def test_a_run_under_nohup_ignores_the_hangup(tmp_path, images, tiny_ckpt):
    """`nohup xaibatch run ...` (SIGHUP ignored, stdout and stderr to nohup.out): the ignored SIGHUP stays ignored
    when the terminal closes; the run finishes."""
    argv = [
        sys.executable,
        "-c",
        "import signal, runpy, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
        "sys.argv = ['xaibatch', *sys.argv[1:]]; runpy.run_module('xaibatch', run_name='__main__')",
        *_argv(images, tmp_path / "x", tiny_ckpt)[3:],
    ]
    log = tmp_path / "nohup.out"
    t = ptyrun.Terminal(argv, env=ENV, stdout_file=str(log), stderr_file=str(log))
    code, out = None, tmp_path / "x"
    while not (out / MANIFEST).exists():
        assert t.poll() is None, log.read_text()
        time.sleep(0.1)
    os.close(t.master)
    t.master = os.open(os.devnull, os.O_RDONLY)
    end = time.monotonic() + 90
    while t.poll() is None:
        assert time.monotonic() < end
        time.sleep(0.1)
    code = t.code
    assert code == 0, log.read_text()
    assert manifest_rows(out, "SELECT status FROM runs") == [("ok",)]


@pytest.mark.parametrize("broken", [False, True])
def test_a_run_that_outlives_its_terminal_is_not_failed_by_its_output(tmp_path, images, tiny_ckpt, broken):
    """SIGHUP ignored (`disown`, `trap '' HUP`) but the output still on the terminal, which then closes: every
    write there fails with EIO. That used to fail the run, blamed on the disk ("input/output error writing to
    OUT: check the disk"), exit 1, no report. The output now goes nowhere and the run finishes: exit 0, row ok
    (``broken``: an unreadable file, listed on stderr at the end, with stdout on a file: that listing failed the
    command before its summary line; now the summary is in the file and the exit code is 1, "some failed")."""
    out = tmp_path / "out"
    if broken:
        shutil.copytree(images, tmp_path / "in")
        (tmp_path / "in" / "REAL" / "broken.png").write_bytes(b"not a png")
        images = tmp_path / "in"
    code = (
        "import signal, runpy, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
        "sys.argv = ['xaibatch', *sys.argv[1:]]; runpy.run_module('xaibatch', run_name='__main__')"
    )
    argv = [sys.executable, "-c", code, *_argv(images, out, tiny_ckpt, "--batch-size", "2", "--workers", "1")[3:]]
    log = tmp_path / "stdout.txt"
    t = ptyrun.Terminal(argv, env=ENV, stdout_file=str(log) if broken else None)
    if broken:  # no bar (stdout is a file): the terminal closes once the run has started
        while not (out / MANIFEST).exists():
            assert t.poll() is None, t.text
            time.sleep(0.05)
    deadline = time.monotonic() + 90
    while not broken and re.search(r" [1-9]\d*/80 \[", t.text) is None:
        assert time.monotonic() < deadline and t.poll() is None, t.text
        t.read(0.1)
    t.close_window()  # the run carries on
    status = "some-failed" if broken else "ok"
    assert manifest_rows(out, "SELECT status, reason, n_computed FROM runs") == [(status, None, 80)]
    assert t.code == (1 if broken else 0)
    if broken:
        assert SUMMARY.search(log.read_text()), log.read_text()
    assert (out / "index.html").exists()


def _mid_run(tmp_path, images, ckpt, out_name="out"):
    t = ptyrun.Terminal(_argv(images, tmp_path / out_name, ckpt, "--batch-size", "2", "--workers", "1"), env=ENV)
    deadline = time.monotonic() + 90
    while re.search(r" [1-9]\d*/80 \[", t.text) is None:
        assert time.monotonic() < deadline and t.poll() is None, t.text
        t.read(0.1)
    return t


def test_ctrl_c_once_stops_after_the_batch_twice_at_once(tmp_path, images, tiny_ckpt):
    """Ctrl-C (SIGINT to the whole foreground group: workers and writers too) once: the summary and the
    'interrupted' line, exit 5. Twice quickly: one line, exit 5, no traceback; the next run completes to the same
    images as an uninterrupted one."""
    t = _mid_run(tmp_path, images, tiny_ckpt, "once")
    t.signal_group(signal.SIGINT)
    r = t.finish(90)
    assert r.code == 5 and "Traceback" not in r.text, r.text
    lines = _screen_lines(r.text)
    assert SUMMARY.search(lines[-3]) and "(interrupted)" in lines[-3], r.text
    assert lines[-2].startswith("Error: interrupted by SIGINT after "), r.text

    t = _mid_run(tmp_path, images, tiny_ckpt, "twice")
    t.signal_group(signal.SIGINT)
    t.signal_group(signal.SIGINT)
    r = t.finish(90)
    assert r.code == 5 and "Traceback" not in r.text, r.text
    assert _screen_lines(r.text)[-2].startswith("Error: interrupted"), r.text
    again = ptyrun.run(_argv(images, tmp_path / "twice", tiny_ckpt), env=ENV)
    assert again.code == 0 and "Traceback" not in again.text, again.text
    rows = "SELECT rel, pred, confidence FROM images ORDER BY rel"
    full = ptyrun.run(_argv(images, tmp_path / "full", tiny_ckpt), env=ENV)
    assert full.code == 0
    got, want = manifest_rows(tmp_path / "twice", rows), manifest_rows(tmp_path / "full", rows)
    assert len(want) == 80 and [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], abs=1e-5)


def test_ctrl_z_then_fg_and_a_resize_mid_run(tmp_path, images, tiny_ckpt):
    """Ctrl-Z (SIGTSTP to the group), fg (SIGCONT), and the window resized (SIGWINCH) mid-run: it finishes."""
    t = _mid_run(tmp_path, images, tiny_ckpt)
    t.signal_group(signal.SIGTSTP)
    time.sleep(0.5)
    t.signal_group(signal.SIGCONT)
    for cols in (40, 200, 20):
        t.resize(cols)
        time.sleep(0.1)
    r = t.finish(120)
    assert r.code == 0 and "Traceback" not in r.text, r.text
    assert SUMMARY.search(_screen_lines(r.text)[-2]).groups() == ("80", "80"), r.text


class _HungUp:
    """A stream on a terminal that has hung up: every write fails with EIO."""

    def write(self, s):
        raise OSError(errno.EIO, "Input/output error")

    def flush(self):
        raise OSError(errno.EIO, "Input/output error")

    def isatty(self):
        return True


def test_the_bar_on_a_hung_up_terminal_fails_no_run(monkeypatch):
    """The estimate line and the bar, written from the writer's thread, used to raise EIO once the terminal had
    gone (SIGHUP ignored): the run failed, blamed on the disk. Now the terminal's streams are sent to /dev/null."""
    from xaibatch import console
    from xaibatch.pipeline.progress import Progress

    silenced = []
    monkeypatch.setattr(console, "_is_char_device", lambda fd: True)
    monkeypatch.setattr(console, "to_devnull", silenced.append)
    clock = [100.0]
    p = Progress(10, bar=True, heartbeat=0, log=None, emit=lambda e: None, json_events=False, clock=lambda: clock[0])
    monkeypatch.setattr(sys, "stderr", _HungUp())
    p._bar.fp = _HungUp()
    clock[0] += 10
    p.update(2)  # the estimate, written above the bar
    p.within(1, 2)
    p.close()
    assert silenced and silenced[0] == [1, 2]
    assert p.done == 2
