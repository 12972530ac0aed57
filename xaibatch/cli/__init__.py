"""The click layer: options in, library calls out, errors to one line and an exit code (boundary.py).

One module per command (or small family of commands); the options several share are defined once in options.py.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__, defaults
from ..console import open_std_streams, write_line
from ..errors import EXIT_INTERRUPTED, ExitCode
from .bench import bench
from .boundary import Group
from .methods import methods_cmd
from .options import BUILTIN_METHODS
from .report import report
from .run import run
from .sanity import sanity
from .serve import serve
from .train import demo_data, train

__all__ = ["BUILTIN_METHODS", "cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xaibatch")
def cli() -> None:
    """Explain an image classifier over whole folders: Grad-CAM, Guided Grad-CAM, LIME, and an HTML report.

    \b
    Quick start:
      xaibatch demo-data data/demo
      xaibatch run data/demo/test --method gradcam
    """


for _command in (run, report, train, bench, methods_cmd, sanity, serve, demo_data):
    cli.add_command(_command)


def openmp_env() -> None:
    """How torch's OpenMP threads behave, set before anything loads torch (main)."""
    # Before anything loads torch's OpenMP runtime (GNU libgomp, in the Linux wheels, reads this once): an idle
    # OpenMP thread spins 10k rounds instead of 300k before it sleeps, so the writer thread and the DataLoader
    # workers get the cores the model is not using instead of losing them to spinning threads. On 2 CPUs a
    # Grad-CAM run is 15-25% faster end to end; batched and per-image compute alone do not change
    # (measured with `xaibatch bench`). A value already in the environment wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    # Under a CPU quota (docker --cpus=4, a pod's limits.cpu) torch would start one thread per core of the host,
    # which the quota then throttles: as many as the quota gives (defaults.cpu_count). A value already set wins.
    if (threads := defaults.quota_threads()) is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


# glibc's mallopt parameters: the size from which an allocation is its own mmap, and the free memory at the top of
# the heap past which free() gives it back to the system
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = 1 << 30  # both, in bytes


def keep_freed_memory() -> bool:
    """Let freed memory up to 1 GiB be reused instead of given back to the system (glibc; elsewhere nothing):
    whether it was set.

    A model's activations for a batch are tens of MB each, and glibc makes each allocation that large an mmap of
    its own (its dynamic threshold stops at 32 MiB) and unmaps it when freed, so every forward faulted its pages
    in anew: LIME on 64 demo images (250 samples, 2-core box) spent 9.2-9.4 s in the kernel; with these, 0.8 s,
    and computed in 13.5-15.5 s instead of 22-24 s; the model alone at 32 px went from 2,800 to 3,500 images/s.
    The peak memory is the same (640 MB in both)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED))
    except (OSError, AttributeError):  # no glibc (macOS, musl without mallopt)
        return False


def main() -> None:
    open_std_streams()  # before any file is opened: none may take a closed stdout's descriptor
    working_folder_exists()
    openmp_env()
    keep_freed_memory()
    try:
        cli(prog_name="xaibatch")
    except KeyboardInterrupt:  # outside a command (click's own parsing): still one line and exit 5
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        if "torch" in sys.modules:
            exit_now(e.code)  # returns when it cannot: the usual exit
        raise


def working_folder_exists() -> None:
    """Exit 2 with one line when the working folder has been deleted (a release folder replaced under a cron job,
    a shell left in a removed folder): importing torch ended the process with "Intel oneMKL FATAL ERROR: Cannot
    load libtorch_cpu.so", and the default --out with "Error: No such file or directory". ``--help`` and
    ``--version`` need no folder: they answer anywhere."""
    if any(a in ("--help", "-h", "--version") for a in sys.argv[1:]):
        return
    try:
        os.getcwd()
    except FileNotFoundError:
        write_line(
            "Error: the working folder no longer exists (deleted since this shell entered it): cd to a folder that "
            "exists and run again",
            sys.stderr,
        )
        sys.exit(int(ExitCode.USAGE))


def exit_now(code: object) -> None:
    """End the process with ``code`` once the output is flushed and the atexit handlers have run, without the
    interpreter's teardown (freeing every object and module, torch's C++ destructors): with torch loaded that
    takes most of a second after the run has ended (0.7 s on the 2-core box after a 20,000-image run).

    The command has finished: its files are closed, its child processes reaped. Returns (for the usual exit)
    when the code is not a number or a thread that is not a daemon still runs (it would be waited for), or
    when the output cannot be flushed (a closed pipe: the usual exit reports it), and under a profiler or a
    tracer (``python -m cProfile -o ...`` writes its file after the command returns; a debugger, coverage).
    """
    import atexit
    import threading

    if code is not None and not isinstance(code, int):
        return
    if _observed():
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    if not _flushed():
        return
    atexit._run_exitfuncs()  # multiprocessing's (children joined, finalizers), logging's, torch's
    _flushed()
    os._exit(code or 0)


def _observed() -> bool:
    """Whether a profiler, debugger or coverage tool watches the process: through sys.setprofile/settrace, or
    through sys.monitoring (Python 3.12's cProfile uses it, and sys.getprofile() says None: the GPU machine's
    profile was never written)."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is None:
        return False
    tools = (monitoring.DEBUGGER_ID, monitoring.COVERAGE_ID, monitoring.PROFILER_ID)
    return any(monitoring.get_tool(i) is not None for i in tools)


def _flushed() -> bool:
    """Flush stdout and stderr; False when one cannot be (a closed pipe or stream, none at all)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        return False
    return True
