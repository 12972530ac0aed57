"""Run a command under a pseudo-terminal, as a user at a terminal would: its stdin, stdout and stderr on the
terminal (or some of them on files), in its own session with the terminal as its controlling terminal, so that
signals can go to its whole foreground process group as a terminal sends them (Ctrl-C, Ctrl-Z, a resize)."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import termios
import time
from dataclasses import dataclass


@dataclass
class Result:
    code: int  # the exit status, or -N for signal N
    text: str  # everything written on the terminal, as the user saw it (\r\n line ends)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """A child process on a pseudo-terminal; ``read`` collects what it writes there."""

    def __init__(
        self, argv: list[str], cols: int = 80, env: dict | None = None, stdout_file=None, stderr_file=None, cwd=None
    ) -> None:
        master, slave = os.openpty()
        set_size(slave, 24, cols)
        env = {**os.environ, **(env or {}), "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": "24"}
        pid = os.fork()
        if pid == 0:  # the child: a new session whose controlling terminal is the slave
            try:
                # as a shell in a terminal window starts it: a test session started under nohup (SIGHUP ignored,
                # which exec keeps) would otherwise give the child a hangup it ignores, as nohup asks
                for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                os.dup2(slave, 0)
                os.dup2(slave, 1)
                os.dup2(slave, 2)
                for fd, path in ((1, stdout_file), (2, stderr_file)):
                    if path is not None:
                        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                        os.dup2(f, fd)
                        os.close(f)
                os.close(master)
                if slave > 2:
                    os.close(slave)
                if cwd:
                    os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.slave_name = os.ttyname(slave)
        os.close(slave)
        self.pid, self.master, self.buf, self.code = pid, master, bytearray(), None
        self.hangup_sent = False  # close_window sent SIGHUP itself: another process still held the master

    def read(self, timeout: float = 0.1) -> None:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            r, _, _ = select.select([self.master], [], [], max(0.0, left))
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    data = b""
                if not data:
                    return
                self.buf += data
            elif left <= 0:
                return

    @property
    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while needle not in self.text:
            if time.monotonic() > end or self.poll() is not None:
                self.read(0.2)
                return needle in self.text
            self.read(0.2)
        return True

    def foreground_group(self) -> int:
        return self.pid  # the session leader is the group leader, and the terminal's foreground group

    def signal_group(self, sig: int) -> None:
        """As the terminal does for Ctrl-C, Ctrl-Z, a resize: the whole foreground group."""
        os.killpg(self.foreground_group(), sig)

    def resize(self, cols: int, rows: int = 24) -> None:
        set_size(self.master, rows, cols)  # the kernel sends SIGWINCH to the foreground group

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def close_window(self, timeout: float = 90) -> None:
        """Close the terminal's window (the master side; the kernel hangs up the session) and wait for the exit.

        The kernel hangs up only when every copy of the master is closed. A process forked from this one while the
        terminal was open (a library's helper in a thread of the test process) holds a copy, and then nothing is
        sent: the slave can still be opened. Then this sends what the hangup would have sent, SIGHUP and SIGCONT,
        to the terminal's foreground group (``hangup_sent``)."""
        os.close(self.master)
        self.master = os.open(os.devnull, os.O_RDONLY)
        if self._master_held_elsewhere():
            self.hangup_sent = True
            for sig in (signal.SIGHUP, signal.SIGCONT):
                try:
                    os.killpg(self.foreground_group(), sig)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + timeout
        while self.poll() is None:
            assert time.monotonic() < end, f"still running after the window closed (hangup_sent={self.hangup_sent})"
            time.sleep(0.1)
        os.close(self.master)

    def _master_held_elsewhere(self) -> bool:
        """Whether the slave still opens after this process closed its master (after a hangup it does not)."""
        try:
            fd = os.open(self.slave_name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return False
        os.close(fd)
        return True

    def finish(self, timeout: float) -> Result:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                os.killpg(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"still running after {timeout}s:\n{self.text}")
            self.read(0.2)
        self.read(0.3)
        os.close(self.master)
        return Result(self.code, self.text)


def run(argv: list[str], timeout: float = 120, **kw) -> Result:
    return Terminal(argv, **kw).finish(timeout)
