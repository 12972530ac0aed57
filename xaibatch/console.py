"""The command's own stdout and stderr: lines that a reader gone away (``| head -1``), a terminal hung up
(a closed window, a lost ssh session) or a log file that cannot grow (its disk full: cron's ``>> xaibatch.log``)
cannot turn into an error; the command carries on with the exit code it would have had."""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import IO


def write_line(text: str, stream: IO[str] | None = None) -> None:
    """Write one line to stdout (or ``stream``) and flush it. A reader that went away (``| head -1``) is no error:
    the stream's file descriptor becomes /dev/null and the command carries on (a run finishes its images), with
    the exit code it would have had. So is a file that refuses the line (a log on a full disk, over its quota or
    ``ulimit -f``): that stream's output is dropped from then on; the run's own files are elsewhere, and stopping it
    there blamed OUT's disk for the log's."""
    stream = stream or sys.stdout
    if not can_encode(text, stream):  # a name outside a Latin-1 locale's characters: \u65e5, not an internal error
        encoding = getattr(stream, "encoding", None) or "utf-8"
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    try:
        stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:
        silence(stream)
    except OSError as e:
        if terminal_gone(e):
            silence_terminals()
        elif not log_lost(stream):
            raise


def can_encode(text: str, stream: IO[str]) -> bool:
    """Whether ``stream`` takes ``text`` as it is: its encoding (a locale's, such as ISO-8859-1, or
    PYTHONIOENCODING's) has every character, or it replaces those it lacks itself (stderr's backslashreplace)."""
    encoding = getattr(stream, "encoding", None)
    errors = getattr(stream, "errors", None) or "strict"
    if not isinstance(encoding, str) or errors != "strict":
        return True
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    except LookupError:
        return True
    return True


def log_lost(stream: IO[str]) -> bool:
    """``stream``, stdout or stderr (a file, a device such as /dev/full), refused a write: its output goes to
    /dev/null from then on. False for any other stream."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    if fd not in (1, 2):
        return False
    to_devnull([fd])
    return True


def open_std_streams() -> None:
    """Give stdin, stdout and stderr a file when the command started without one (``>&-``, a daemon that closed
    them): /dev/null. Else Python's ``sys.stdout`` is None (an internal error at the first line), and the next file
    the command opens takes descriptor 1 or 2, so that its lines are written into that file (the manifest)."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))


def silence(stream: IO[str]) -> None:
    """Point ``stream``'s file descriptor at /dev/null: what is still buffered, what follows and Python's flush at
    exit go nowhere (its reader went away)."""
    to_devnull([stream.fileno()])


def to_devnull(fds: list[int]) -> None:
    """Point these file descriptors at /dev/null (quietly: one that cannot be is left as it is)."""
    if not fds:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        for fd in fds:
            try:
                os.dup2(null, fd)
            except OSError:
                pass
    finally:
        os.close(null)


def terminal_gone(e: OSError) -> bool:
    """``e`` (from a write to stdout or stderr) says the terminal has hung up (window closed, ssh session lost,
    SIGHUP ignored): every later write there fails the same way."""
    return e.errno == errno.EIO and any(_is_char_device(fd) for fd in (1, 2))


def silence_terminals() -> None:
    """The terminal is gone: stdout and stderr, where they were on it (character devices), now lead to /dev/null,
    so that the bar, the summary and an error line are dropped instead of failing the command."""
    to_devnull([fd for fd in (1, 2) if _is_char_device(fd)])


def _is_char_device(fd: int) -> bool:
    try:
        return stat.S_ISCHR(os.fstat(fd).st_mode)
    except OSError:
        return False


def reader_gone(stream: IO[str]) -> bool:
    """True when ``stream`` is a pipe whose reader has closed it (``| head -1`` after its line)."""
    import select

    try:
        poll = select.poll()
        poll.register(stream.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's StringIO), a closed stream
        return False
