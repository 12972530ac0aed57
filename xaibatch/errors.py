"""One exception root, one exit-code table and one rule for what any error tells a user (:func:`outcome`); only the
CLI's boundary (cli/boundary.py), the servers and explain() say it."""

from __future__ import annotations

import difflib
import errno
import os
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterable, Literal

from . import layout
from .runstatus import RunStatus

# whose options an error's advice names (memory_message): a run's, sanity's, explain()'s keywords, bench's, train's,
# or none (the report command, serve)
Caller = Literal["run", "sanity", "explain", "bench", "train", "other"]


class ExitCode(IntEnum):
    """What a scheduler sees: each exit code with its run status and meaning (README and --help use these)."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    RUNTIME = 3
    LOCKED = 4
    INTERRUPTED = 5

    @property
    def status(self) -> str:
        return _STATUS[self]

    @property
    def meaning(self) -> str:
        return _MEANING[self]


_STATUS = {  # a run's exit codes: its run row's status; the others: no run row (refused before one was started)
    ExitCode.OK: RunStatus.OK.value,
    ExitCode.SOME_FAILED: RunStatus.SOME_FAILED.value,
    ExitCode.USAGE: "usage-error",
    ExitCode.RUNTIME: RunStatus.ERROR.value,
    ExitCode.LOCKED: "locked",
    ExitCode.INTERRUPTED: RunStatus.INTERRUPTED.value,
}
_MEANING = {
    ExitCode.OK: "success",
    ExitCode.SOME_FAILED: "success, but some images could not be read (listed in the report)",
    ExitCode.USAGE: "usage error (bad option, folder, model or checkpoint)",
    ExitCode.RUNTIME: "runtime error",
    ExitCode.LOCKED: "another run holds the output folder's lock (see --wait)",
    ExitCode.INTERRUPTED: "interrupted (SIGINT/SIGTERM/SIGHUP); finished batches are saved, the next run continues",
}

# The names the code and tests use.
EXIT_OK = ExitCode.OK
EXIT_SOME_FAILED = ExitCode.SOME_FAILED
EXIT_USAGE = ExitCode.USAGE
EXIT_RUNTIME = ExitCode.RUNTIME
EXIT_LOCKED = ExitCode.LOCKED
EXIT_INTERRUPTED = ExitCode.INTERRUPTED


class XaibatchError(Exception):
    """Base of every error xaibatch reports to a user as one line."""

    exit_code = ExitCode.RUNTIME


class UsageError(XaibatchError):
    """The user asked for something that cannot work (bad option, bad folder)."""

    exit_code = ExitCode.USAGE


class ModelError(UsageError):
    """The model, checkpoint or layer cannot be used as asked."""


class InputError(UsageError):
    """The input folder is missing, empty or unusable."""


class DecodeError(XaibatchError):
    """One image could not be read; the run skips it and goes on."""


# The first words of the DecodeError reasons that the file's own bytes decide: the same size, mtime and ctime give the
# same answer, so a run need not read such a file again (pipeline/plan.py). data.py and scan.py start each such
# reason with its constant, so a reworded message stays lasting. "cannot read: ...", "not a regular file", "out of
# memory" may pass, and any other words (an unexpected exception's) are retried too.
EMPTY_FILE = "empty file"
FILE_TOO_LARGE = "file too large"
CORRUPT_IMAGE = "corrupt or truncated image"
NOT_AN_IMAGE = "not an image"
TIFF_VARIANT = "unsupported TIFF variant"
TOO_MANY_PIXELS = "refused: the image has"  # was "... declares": such refusals of a JPEG are read again
UNUSABLE_DECODE = "decoded to an unusable"
MALFORMED_IMAGE = "malformed image"
LASTING_REASONS = (
    EMPTY_FILE,
    FILE_TOO_LARGE,
    CORRUPT_IMAGE,
    NOT_AN_IMAGE,
    TIFF_VARIANT,
    TOO_MANY_PIXELS,
    UNUSABLE_DECODE,
    MALFORMED_IMAGE,
)


# An image the scan listed that is gone when its batch reads it (moved, renamed or deleted meanwhile, as a labelling
# tool or a sync does): no failure of the image. The run leaves it to the next one, which finds where it went
# (dataset.ImageDataset words it; compute.account and writer.commit keep it out of the failures and the exit code).
VANISHED = "gone since the scan"


def vanished(reason: str) -> bool:
    """Whether an image's reason says it was moved or deleted after the scan (see VANISHED)."""
    return reason.startswith(VANISHED)


def lasting(reason: str) -> bool:
    """Whether reading the same bytes again gives the same failure (see LASTING_REASONS)."""
    return reason.startswith(LASTING_REASONS)


def close_names(name: str, among: Iterable[object]) -> list[str]:
    """Up to three of ``among`` close to ``name``, whatever their case ("fake" for the class FAKE), closest first:
    the hint of a name that is not one of ``among``."""
    by_lower: dict[str, list[str]] = {}
    for x in map(str, among):
        by_lower.setdefault(x.lower(), []).append(x)
    return [x for low in difflib.get_close_matches(name.lower(), by_lower, n=3) for x in by_lower[low]][:3]


def did_you_mean(name: str, among: Iterable[object]) -> str:
    """``; did you mean ...?`` naming :func:`close_names`, or nothing."""
    near = close_names(name, among)
    return f"; did you mean {', '.join(map(repr, near))}?" if near else ""


class UnknownName(UsageError, LookupError):
    """An image, method or class a caller named that an output folder does not hold (``xaibatch.open_results``);
    its line names the close matches. A LookupError too, as a missing key is."""


class MissingOutput(XaibatchError, FileNotFoundError):
    """A file the manifest names is not on disk (deleted, or not copied with the folder)."""


class ChangedSince(XaibatchError):
    """A file ``open_results`` names was made again by a run since it read the folder: it no longer belongs to the
    record (an image changed, or new settings), so it is not read as if it did."""


class LockHeld(XaibatchError):
    """Another run holds the output folder."""

    exit_code = ExitCode.LOCKED


class StorageError(XaibatchError, OSError):
    """The output folder's file system refused a write: full, over quota, a file size limit, read-only, failing.

    The run stops after the batch it was writing; what was committed before stays (exit code 3). Still an OSError
    with its ``errno``, for callers that catch those.
    """

    exit_code = ExitCode.RUNTIME


class Interrupted(XaibatchError):
    """SIGINT, SIGTERM or SIGHUP stopped the run after saving what was done."""

    exit_code = ExitCode.INTERRUPTED


def interrupted_by(e: KeyboardInterrupt) -> str:
    """ "interrupted", or "interrupted by SIGTERM" for a KeyboardInterrupt that names its signal (Ctrl-C's does not)."""
    return " ".join(["interrupted", *map(str, e.args)])


CPU_ALLOCATOR = "DefaultCPUAllocator: can't allocate memory"  # torch's RuntimeError when the host's memory is out
# A GPU's memory out where torch's caching allocator is not the one asking, said as a plain RuntimeError (from
# torch 2.8 its subclass AcceleratorError): a CUDA call's own allocation, cuBLAS making its handle (often while
# the cache holds the memory: the halves start after torch.cuda.empty_cache), cuDNN's workspace.
DEVICE_ALLOCATION_FAILED = ("CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def out_of_memory(exc: BaseException) -> str | None:
    """``"device"`` when ``exc`` is torch's OutOfMemoryError (a GPU's memory) or a CUDA library's failed
    allocation, ``"host"`` when it is the host's (torch's CPU allocator failing, a MemoryError), else None. Named
    without importing torch."""
    if type(exc).__name__ == "OutOfMemoryError":
        return "device"
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in DEVICE_ALLOCATION_FAILED):
        return "device"
    if isinstance(exc, MemoryError) or CPU_ALLOCATOR in str(exc):
        return "host"
    return None


_LOADER_DIED = re.compile(
    r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) (exited unexpectedly|is killed by signal: [\w ]+)"
)


def loader_died(exc: BaseException) -> str | None:
    """torch's RuntimeError when a DataLoader worker died (killed by the out-of-memory killer, a bus error on a
    full /dev/shm, or ended because it could not hand over a batch: pipeline/loader.py) as one line that says
    what to do; None for any other error."""
    m = _LOADER_DIED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if m is None:
        return None
    how = m.group(2).replace("is killed by signal: ", "killed by signal ").rstrip(". ")
    return (
        f"a DataLoader worker (pid {m.group(1)}) {how}: out of memory or of /dev/shm space (see the lines above); "
        "run again with fewer --workers or a smaller --batch-size, or give the container more memory or "
        "/dev/shm (docker run --shm-size=1g)"
    )


class OneImageTooLarge(XaibatchError):
    """One image alone did not fit in memory: a batch was split down to one image (methods/explainer.Fitting: a
    run's batches, sanity's and explain()'s)."""

    exit_code = ExitCode.RUNTIME


class BatchSplitWarning(UserWarning):
    """explain() split a batch that did not fit in memory (its maps are unchanged): pass a smaller batch_size."""


def memory_message(message: str, memory: str, alone: bool = False, caller: Caller = "run") -> str:
    """torch's out-of-memory message (a paragraph about allocator settings; the CPU allocator's "[enforce fail at
    alloc_cpu.cpp:...] ... you tried to allocate N bytes"; a MemoryError's) as one line that says what to do.
    ``memory``: out_of_memory's answer; ``alone``: it happened to one image at a time, when a smaller batch cannot
    help. ``caller``: whose options the advice names: "run" (a run's), "sanity" (its batches split, and the image
    size and methods' options are the run's), "explain" (explain()'s keywords), "bench" (its --batch-size and
    --lime-batch-size), "train" (its --batch-size), "other" (serve, report, demo-data: no batch of theirs to
    shrink)."""
    if memory == "device":
        tried = re.search(r"Tried to allocate ([\d.]+ \w+)", message)
        free = re.search(r"total capacity of ([\d.]+ \w+) of which ([\d.]+ \w+) is free", message)
        what = ", ".join(
            ([f"{tried.group(1)} asked for"] if tried else [])
            + ([f"{free.group(2)} free of {free.group(1)}"] if free else [])
        )
        head = f"the GPU ran out of memory{f' ({what})' if what else ''}"
    else:
        tried = re.search(r"tried to allocate (\d+) bytes", message)
        head = f"out of memory{f' ({int(tried.group(1)) / 2**30:.2f} GiB asked for)' if tried else ''}"
    cpu_or_free = "try --device cpu" if memory == "device" else "free memory and try again"
    if caller == "sanity":
        if alone:
            cause = "with one image at a time, at the run's image size and with its methods' options"
        else:  # the model's load, its randomized copy: the batches themselves are split to fit
            cause = "outside the batches (they are split to fit)"
        return f"{head} {cause}: {cpu_or_free}"
    if caller == "other":
        return f"{head}: {cpu_or_free}"
    if caller == "train":
        return (
            f"{head}: try a smaller --batch-size, or --device cpu"
            if memory == "device"
            else f"{head}: try a smaller --batch-size"
        )
    if caller == "bench":
        return f"{head}: try a smaller --batch-size (LIME's model batches: --lime-batch-size N)"
    if caller == "explain":
        inner = "method_options={'lime': {'batch_size': N}" + (
            "}" if memory == "device" else ", 'captum:NAME': {'internal_batch_size': N}}"
        )
        size, batch, cpu, kept = "input_size", "batch_size", "; or the model on the CPU (model.cpu())", ""
    else:
        inner = "LIME's model batches: --method-option lime.batch_size=N"
        if memory != "device":
            inner += "; captum's: --method-option captum:NAME.internal_batch_size=N"
        size, batch, cpu, kept = "--image-size", "--batch-size", "; or --device cpu", "; what a run finished is kept"
    if alone:
        cpu = cpu if memory == "device" else ""
        return f"{head} with one image at a time: try a smaller {size}, smaller inner batches ({inner}){cpu}{kept}"
    return f"{head}: try a smaller {batch} ({inner}){kept}"


# Write errors that no retry fixes: the run stops, and the message says what to do (storage_error).
_STORAGE_ADVICE = {
    errno.ENOSPC: "free space and run again",
    errno.EDQUOT: "free space (or raise the quota) and run again",
    errno.EFBIG: "raise the file size limit (ulimit -f) and run again",
    errno.EROFS: "make the folder writable and run again",
    errno.EIO: "check the disk and run again",
}
# SQLITE_FULL (also a full quota), SQLITE_IOERR, SQLITE_READONLY (the manifest, or its folder, refuses writes)
_SQLITE_ERRNO = {13: errno.ENOSPC, 10: errno.EIO, 8: errno.EACCES}
_SQLITE_READONLY_DIRECTORY = 8 | 6 << 8  # the manifest's folder refuses its -wal and -shm files
# The same primary codes by SQLite's own words for them (sqlite3_errstr), for a sqlite3.Error that carries no
# sqlite_errorcode: Python 3.10's never do (3.11 added it). 3.10 cannot tell SQLITE_READONLY_DIRECTORY (the folder
# refuses) from SQLITE_READONLY (the manifest itself): both read as the manifest's.
_SQLITE_MESSAGES = {"database or disk is full": 13, "disk I/O error": 10, "attempt to write a readonly database": 8}
# A file or folder under OUT that refuses writes (its mode, an immutable attribute): the fix is its folder's (the
# manifest's own, for a read-only manifest). Only under OUT: an input file or a checkpoint can be refused so too.
_DENIED = (errno.EACCES, errno.EPERM)


def storage_error(exc: BaseException, out: str | os.PathLike[str]) -> StorageError | None:
    """``exc`` as the run's one-line StorageError when it is a full disk (or quota, file size limit, read-only or
    failing file system, a folder under ``out`` that refuses new files) met writing under ``out``, by a file write
    or by the manifest's SQLite; else None."""
    if isinstance(exc, StorageError):
        return exc
    code = _sqlite_code(exc)
    if isinstance(code, int):
        err = _SQLITE_ERRNO.get(code & 0xFF)
        path = os.path.join(out, layout.MANIFEST)
        refuses = path if err == errno.EACCES and code != _SQLITE_READONLY_DIRECTORY else os.fspath(out)
    elif isinstance(exc, OSError):
        err = exc.errno
        path = exc.filename if isinstance(exc.filename, str) and exc.filename else None
        refuses = (os.path.dirname(path) or ".") if path else None
    else:
        return None
    if err in _DENIED and path is not None and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(out)):
        advice = f"make {refuses} writable and run again"
    elif err in _STORAGE_ADVICE:
        advice = _STORAGE_ADVICE[err]
    else:
        return None
    where = f"writing {path}" if path else f"writing to {out}"
    full = StorageError(f"{os.strerror(err).lower()} {where}: {advice}; finished images are kept")
    full.errno = err
    return full


def _sqlite_code(exc: BaseException) -> int | None:
    """The SQLite result code of a sqlite3.Error (not an OSError): its ``sqlite_errorcode`` (Python 3.11+), else
    the primary code its message names (Python 3.10); None for any other exception."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    if type(exc).__module__ != "sqlite3" or not exc.args:
        return None
    return _SQLITE_MESSAGES.get(str(exc.args[0]))


def exit_code_for(exc: BaseException) -> int:
    """The exit code of any outcome: an xaibatch error's own, 5 for Ctrl-C, 3 for anything unexpected."""
    if isinstance(exc, XaibatchError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    code = getattr(exc, "exit_code", None)  # click's usage errors carry theirs
    if isinstance(code, int):
        return code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else EXIT_RUNTIME
    return EXIT_RUNTIME


@dataclass(frozen=True)
class Outcome:
    """What a user is told of an error: one ``line``, the exit ``code``; ``internal``: not an error xaibatch
    foresaw (a bug, or a library's surprise), whose traceback XAIBATCH_DEBUG=1 shows."""

    line: str
    code: int
    internal: bool = False


def outcome(exc: BaseException, caller: Caller = "run") -> Outcome:
    """The one line and exit code of ``exc``: an xaibatch error's own; a signal's "interrupted"; an OSError with
    the file it names; running out of memory as what to do (``caller``: whose options the advice names, see
    :func:`memory_message`); anything else as an internal error. The CLI's Error: line, the JSON end event's
    ``error`` and ``serve``'s answer all say this."""
    if isinstance(exc, XaibatchError):
        return Outcome(str(exc), exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):  # "by SIGTERM" from signals.stops_interrupt; none from Ctrl-C
        return Outcome(interrupted_by(exc), ExitCode.INTERRUPTED)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return Outcome(f"{exc.strerror or exc}{where}", ExitCode.RUNTIME)
    memory = out_of_memory(exc)  # torch's OutOfMemoryError (a GPU's), its CPU allocator's, a MemoryError
    if memory is not None:
        return Outcome(memory_message(str(exc), memory, caller=caller), ExitCode.RUNTIME)
    died = loader_died(exc)
    if died is not None:
        return Outcome(died, ExitCode.RUNTIME)
    return Outcome(f"internal error: {type(exc).__name__}: {exc}", ExitCode.RUNTIME, internal=True)
