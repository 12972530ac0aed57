"""What many test files share: generated inputs, a tiny checkpoint, a run's options, the CLI in-process and as
a real process, and read-only looks into a run's manifest.

Images and checkpoints come from ``xaibatch/tools/synth.py``, which ``xaibatch bench`` and benchmarks/ use too.
Method tests' batches and tiny models: ``_methods_helpers.py``; a whole output folder's consistency:
``outcheck.py``; files that decode badly: ``badfiles.py``; odd names: ``oddnames.py``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from xaibatch.tools import synth

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # subprocesses on a shared box: one torch thread each
CLASSES = list(synth.CLASSES)
MANIFEST = "xaibatch.sqlite"


def make_checkpoint(
    path: Path, arch: str = "test_resnet", size: int = 32, classes=CLASSES, seed: int = 0, **kwargs
) -> Path:
    """A randomly initialised timm model saved in xaibatch's checkpoint format."""
    return synth.tiny_checkpoint(path, arch, size, classes, seed, **kwargs)


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0, ext: str = "png") -> list[Path]:
    """``img_000.<ext>``, ...: ``n`` noise images, the same for the same seed."""
    return synth.write_images(folder, n, size, seed, ext)


def quiet(s: str) -> None:
    """A run's ``log`` that prints nothing."""


def run_opts(inp: Path, out: Path, ckpt: Path | None = None, methods=("gradcam",), **kw):
    """A run's options as most tests want them: batches of 4, no DataLoader workers, no signal handlers.

    Any other ``RunOptions`` field (or one of these, ``checkpoint`` too) goes in ``kw``.
    """
    from xaibatch.pipeline import RunOptions

    fields = {"checkpoint": ckpt, "batch_size": 4, "workers": 0, "handle_signals": False, **kw}
    return RunOptions(input_dir=inp, out_dir=out, methods=list(methods), **fields)


def small_run(root: Path, ckpt: Path, per_class: int, seeds=(1, 2), broken: tuple[str, bytes] | None = None) -> Path:
    """A Grad-CAM run over ``root/in/{FAKE,REAL}`` (``per_class`` noise images each, one seed per class) into
    ``root/out``; ``broken``: one more file in the input (its path under ``in/``, its bytes). Returns ``out``."""
    from xaibatch.pipeline import RunOptions, run

    write_images(root / "in" / "FAKE", per_class, seed=seeds[0])
    write_images(root / "in" / "REAL", per_class, seed=seeds[1])
    if broken is not None:
        (root / "in" / broken[0]).write_bytes(broken[1])
    run(RunOptions(input_dir=root / "in", out_dir=root / "out", methods=["gradcam"], checkpoint=ckpt), log=quiet)
    return root / "out"


def run_argv(inp: Path, out: Path, ckpt: Path, *extra) -> list[str]:
    """``run INP --checkpoint CKPT --out OUT EXTRA...`` as a command line's arguments (strings)."""
    return ["run", str(inp), "--checkpoint", str(ckpt), "--out", str(out), *map(str, extra)]


def invoke(*args, catch_exceptions: bool = False):
    """``xaibatch ARGS...`` in this process (click's CliRunner); the arguments may be paths."""
    from click.testing import CliRunner

    from xaibatch.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)


def cli(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``xaibatch ARGS...`` as a real process, as a scheduler runs it (no terminal, one torch thread)."""
    return subprocess.run(
        [sys.executable, "-c", "from xaibatch.cli import main; main()", *[str(a) for a in args]],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def manifest_rows(out: Path, sql: str, params=(), timeout: float = 5.0) -> list[tuple]:
    """The rows ``sql`` selects from the manifest of the output folder ``out``.

    The connection is query-only (a test looks, it never changes what it checks) but not ``mode=ro``: a
    read-only connection cannot end the manifest's WAL, and would leave -wal and -shm files in ``out``.
    """
    db = sqlite3.connect(Path(out) / MANIFEST, timeout=timeout)
    try:
        db.execute("PRAGMA query_only = ON")
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def manifest_value(out: Path, sql: str, params=()):
    """The first column of the one row ``sql`` selects (a count, a config)."""
    rows = manifest_rows(out, sql, params)
    assert len(rows) == 1, rows
    return rows[0][0]


# File names a report must show as text and link to safely: markup, quotes, URL syntax, non-ASCII.
HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>.png",
    "with space.png",
    "hash#tag.png",
    "100%.png",
    "what?.png",
    'dq"uote.png',
    "sq'uote.png",
    "ünïcødé 日本.png",
    "a&b.png",
    "%2e%2e.png",
    "javascript:alert(1).png",
]


def wait_until(proc: subprocess.Popen, cond, what: str, timeout: float = 90.0, poll: float = 0.02) -> None:
    """Poll ``cond`` while the run ``proc`` lives; fail with its stderr if it ends first, or after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def reap(proc: subprocess.Popen, pids) -> None:
    """After a test that SIGKILLs a run: kill it if it still lives, collect it, and SIGKILL the children it
    should have taken along (``pids``), so a failing test leaves no process behind."""
    import signal

    if proc.poll() is None:
        proc.kill()
    proc.communicate()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def without_file_permission_override() -> list[str]:
    """The command prefix under which a chmod bites: none for a user; for root, setpriv without the capabilities
    that override file permissions (skipped where that is not possible)."""
    import pytest

    if os.geteuid() != 0:
        return []
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    try:
        probe = subprocess.run([*prefix, "sh", "-c", "test -w /proc/1/root"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        probe = None
    if probe is None or probe.returncode != 1:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE: chmod a-w does not bite")
    return prefix


@contextlib.contextmanager
def read_only_tree(root: Path):
    """``chmod -R a-w root`` for the block (bites under without_file_permission_override), then writable again."""
    paths = [root, *root.rglob("*")]
    modes = {p: p.stat().st_mode & 0o7777 for p in paths if not p.is_symlink()}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
