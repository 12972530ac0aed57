"""One run per output folder: a kernel lock on ``OUT/.xaibatch.lock`` plus a holder record inside it.

The lock is a POSIX record lock (``fcntl.lockf``), not ``flock``: the kernel drops
it the moment the holding process dies, however it dies, so a lock can never go
stale; and unlike ``flock`` it is *not* inherited by forked children, so
DataLoader workers orphaned by a SIGKILLed run (they notice their parent is gone
only after a few seconds) cannot keep the folder locked. POSIX locks have one
trap: closing *any* descriptor of the file in the holding process releases the
lock, so this process never opens the lock file twice (see ``_HELD``).

The holder record (JSON: command, pid, host, start time, argv) is only there to name the
holder in the "locked" message: a ``report`` or ``sanity`` holding the folder is named as such, not as a run. It is cleared when the holder releases the lock
normally, so a record found by the next holder means the previous run was killed
before it could clean up; the pipeline then sweeps what such a run can leave.

The lock lives on the file's inode, so the file must stay in place while it is
held: a deleted one lets the next run lock a new file. Runs check that theirs is
still the one at the path before sweeping and inside every commit (``check``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import layout
from .errors import LockHeld, UsageError, XaibatchError

LOCK_NAME = layout.LOCK
BUSY_HINT = "try again when it has finished"  # the end of the refusal for a command without --wait
WAIT_HINT = "pass --wait to wait for it"  # ... and for one that has it (run, report, sanity)

# Lock files this process holds. A second OutputLock on the same folder in this
# process must not open the file (that would drop the POSIX lock on close).
_HELD: dict[str, dict[str, Any]] = {}  # lock path -> the holder record written
_HELD_GUARD = threading.Lock()
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO there never blocks the open
COMMANDS = ("run", "report", "sanity")  # the commands that take the lock, as the holder record names them
_NOT_A_FILE = "the lock file {} is {}: refusing to open it (remove it; xaibatch makes a new one)"


def pid_alive(pid: int) -> bool:
    """Running: not gone, nor a zombie that whoever started it has not reaped yet (where /proc tells)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def holder_command(holder: dict[str, Any] | None) -> str | None:
    """The command other than a run that holds (or held) the folder, ``report`` or ``sanity``; None for a run, or a
    record that does not say (an older xaibatch's)."""
    command = holder.get("command") if holder else None
    return command if command in COMMANDS and command != "run" else None


def holder_name(holder: dict[str, Any] | None) -> str:
    """What holds the folder, as the "in use by" refusal names it: ``xaibatch report``, ``xaibatch sanity``, else
    ``another xaibatch run``."""
    command = holder_command(holder)
    return f"xaibatch {command}" if command else "another xaibatch run"


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host since 2024-05-01 10:00:00 +0200 (5s ago)`` from a holder record (in this process's zone)."""
    if not holder:
        return "another process (no holder record yet)"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    started, age = holder.get("started_ts"), held_for(holder)
    if age is not None:  # when, by this clock: the holder's own may have been stepped since it started
        started = time.time() - age
    elif isinstance(started, (int, float)):
        age = max(0.0, time.time() - started)
    if isinstance(started, (int, float)):
        when = datetime.fromtimestamp(started).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        parts.append(f"since {when} ({age:.0f}s ago)")
    return " ".join(parts)


def held_for(holder: dict[str, Any]) -> float | None:
    """Seconds since the holder took the lock by the monotonic clock, when it recorded its reading on this machine
    since its last boot; else None. A wall clock that NTP stepped meanwhile (a box without a real-time clock boots
    at its last shutdown's time, or 1970) said "31536004s ago" of a run started seconds before."""
    mono, boot = holder.get("started_mono"), holder.get("boot_id")
    if not isinstance(mono, (int, float)) or not boot or boot != boot_id():
        return None
    age = time.monotonic() - mono
    return age if age >= 0 else None  # another time namespace's clock (unshare --time): not comparable


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """The running kernel's boot id, new at every boot (Linux; shared by the containers on one kernel); None off
    Linux or where it cannot be read. Monotonic readings compare within one (held_for); a folder last written
    under another was written before a restart (pipeline/restart.py)."""
    try:
        return BOOT_ID.read_text("ascii").strip() or None
    except (OSError, ValueError):
        return None


class LockLost(XaibatchError):
    """The lock file was deleted or replaced under a running run (exit code 3)."""


class OutputLock:
    """Exclusive lock on an output folder; ``acquire`` raises :class:`LockHeld` when it is taken."""

    def __init__(self, out_dir: Path, named: str | None = None, command: str = "run") -> None:
        """``named``: the folder as the command's refusals name it (``--out OUT`` for a run, ``OUT`` for ``report`` and
        ``sanity``, which take it as their argument). ``command``: which of COMMANDS holds it, for the refusals of
        the others (a cron job's run refused while someone's ``sanity`` holds the folder must not look for a run)."""
        self.out_dir = Path(out_dir)
        self.command = command
        self.named = named if named is not None else f"--out {self.out_dir}"
        self.path = self.out_dir / LOCK_NAME
        self.key = str(self.path.resolve())
        self.fd: int | None = None
        self.previous: dict[str, Any] | None = None  # record left by a holder that never released

    # -- reading the holder without taking the lock -----------------------------
    def holder(self) -> dict[str, Any] | None:
        # Under the guard: a thread of this process that took the lock while this descriptor was open would lose it
        # when it is closed (a POSIX lock ends at any close of the file by its process).
        with _HELD_GUARD:
            if self.key in _HELD:
                return _HELD[self.key]
            try:
                fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)  # another process's lock: reading cannot release it
            except OSError:
                return None
            try:
                return _parse(_read_all(fd)) if stat.S_ISREG(os.fstat(fd).st_mode) else None
            except OSError:
                return None
            finally:
                os.close(fd)

    # -- taking and releasing ---------------------------------------------------
    def try_acquire(self) -> bool:
        with _HELD_GUARD:
            if self.key in _HELD:
                return False
            try:
                # never through a link another user planted in a shared --out: the holder record truncates the file
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW, 0o666)
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(self.path):
                    raise UsageError(_NOT_A_FILE.format(self.path, "a symbolic link")) from None
                raise UsageError(f"cannot write to {self.named}: {e.strerror or e}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device planted there: never truncated
                os.close(fd)
                raise UsageError(_NOT_A_FILE.format(self.path, "not a regular file"))
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    return False
                raise UsageError(f"cannot lock {self.named}: {e.strerror or e}") from None
            rec = _HELD[self.key] = _record(self.command)
        self.fd = fd
        try:
            self.previous = _parse(_read_all(fd))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(rec).encode(), 0)
        except OSError as e:
            self.release()
            raise UsageError(f"cannot write to {self.named}: {e.strerror or e}") from None
        return True

    def acquire(
        self,
        wait: bool = False,
        timeout: float | None = None,
        poll: float = 0.5,
        should_stop: Callable[[], bool] = lambda: False,
        on_wait: Callable[[str], None] = lambda s: None,
        hint: str = BUSY_HINT,
    ) -> float:
        """Take the lock; with ``wait`` poll until it is free (or ``timeout`` seconds pass).

        Returns the seconds spent waiting (0.0 when the lock was free). ``should_stop``
        is polled while waiting so a signal can end the wait. ``hint`` ends the refusal without ``wait``: what the
        command that asked can do (WAIT_HINT for those with a --wait to offer).
        """
        if self.try_acquire():
            return 0.0
        t0 = time.monotonic()
        told = False
        while not self.try_acquire():
            holder = self.holder()
            what, who = holder_name(holder), describe(holder)
            if not wait:
                raise LockHeld(f"{self.out_dir} is in use by {what} ({who}); {hint}")
            waited = time.monotonic() - t0
            if timeout is not None and waited >= timeout:
                raise LockHeld(f"{self.out_dir} is still in use by {what} ({who}) after waiting {waited:.0f}s")
            if not told:
                by = f" ({what})" if holder_command(holder) else ""
                on_wait(f"xaibatch: waiting for {who}{by} to finish with {self.out_dir}")
                told = True
            if should_stop():
                from .errors import Interrupted

                raise Interrupted(f"interrupted while waiting for the lock on {self.out_dir}")
            time.sleep(poll if timeout is None else max(0.0, min(poll, timeout - waited)))
        return time.monotonic() - t0

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lock file at its path is still the file this lock holds.

        A POSIX lock lives on the inode: once the file is unlinked (or renamed over),
        the next run creates a new file and locks that, unaware of this one. Checked
        before anything is swept and inside each commit's transaction, so such a run
        never sweeps files this one is about to commit.
        """
        if self.fd is None:
            return
        held = os.fstat(self.fd)
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
        except OSError:
            same = False
        if not same:
            raise LockLost(
                f"the lock file {self.path} was deleted or replaced during this run, so another run may "
                f"be using {self.out_dir}; stopped without committing more (the next run completes "
                "the work)"
            )

    def release(self) -> None:
        """Clear the holder record (a clean finish) and drop the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        with _HELD_GUARD:
            os.close(self.fd)  # drops the POSIX lock
            _HELD.pop(self.key, None)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _record(command: str) -> dict[str, Any]:
    now = time.time()
    return {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_ts": now,
        "started_at": datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        "started_mono": time.monotonic(),  # how long it has held the folder (held_for), whatever the wall clock does
        "boot_id": boot_id(),
        "argv": sys.argv[1:][:20],
    }


def _read_all(fd: int) -> bytes:
    chunks, off = [], 0
    while chunk := os.pread(fd, 65536, off):
        chunks.append(chunk)
        off += len(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(data.decode()) if data.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None
