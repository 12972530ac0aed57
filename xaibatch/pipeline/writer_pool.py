"""Writer processes: a batch's PNG encoding and file writes spread over several cores.

Threads do not scale for this work: at small sizes it is mostly Python (under the GIL) and system calls
(measured on an H200 host: 8 writer threads reached 0.12x of what the file system takes). So the writer
thread (:class:`.writer.Writer`) hands each batch's pictures, as raw uint8/float32 arrays, to ``n``
forked processes, one contiguous share of the batch each (its pictures in shared memory mapped before the
fork, its names over a pipe; shares.py); they encode and write the files
(:func:`.writer.write_item`, the same code as the in-thread path) and answer with an acknowledgement or
the exception they met. The writer thread commits a batch's rows only once every share is acknowledged:
rows still follow their files.

The processes are forked from the thread that makes the pool (so they need no imports and no pickled
model), ignore SIGINT/SIGTERM/SIGHUP (the run stops them after its current batch, as DataLoader workers), and
die with the run: ``PR_SET_PDEATHSIG`` on Linux (a thread watching the parent elsewhere), and a closed
pipe ends their loop. Where ``fork`` is not available :func:`can_fork` is false and the writer uses
threads.
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import queue
import select
import threading
from collections import deque
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from ..files import OutputDir
from .signals import die_with_parent, ignore_stop_signals  # imported before the fork: the child imports nothing


def can_fork() -> bool:
    return hasattr(os, "fork") and hasattr(os, "waitpid")


# Shared memory per process, made before the fork: SLOTS buffers of SLOT_BYTES, one per message in flight (the
# writer thread keeps at most six jobs out, writer.JOBS_OUT_SHARED, and fewer when their shares need more slots).
# A share whose pictures fit one crosses the pipe as its names and the places of its stacks (shares.pack); a larger
# one is cut into consecutive sub-shares that each fit (shares.split), sent to the same process one message each;
# only an item that alone does not fit, or a sub-share with no slot free, is pickled.
SLOTS = 8
SMALL_MESSAGE = 64 << 10  # a message this small goes into the socket's buffer at once: sent without a thread
# 16 MiB: a share of 19 images of 224 px with all five pictures (display copy, its thumbnail, map, overlay and its
# thumbnail: 600 KB an image; the 16-core H200 host's default 128-image batch over its 7 writers) fits, as do 64 of
# 96 px; pages
# are touched as used. Pickled instead, a 224 px share cost the writer thread 290 us an image (copies, page faults)
# against 27 us copied into a slot (docs/bench-host224.md).
SLOT_BYTES = 16 << 20


class WriterDied(RuntimeError):
    """A writer process ended without answering (killed, out of memory)."""


class WriterPool:
    """``n`` writer processes under ``out_dir``; :meth:`submit` a batch's items, :meth:`wait` for them."""

    def __init__(
        self,
        out_dir: Path,
        n: int,
        write: Callable[[Any, Any, int], Any],
        pack: Callable[[list[Any], memoryview | None], Any] = lambda items, buf: items,
        unpack: Callable[[Any, memoryview | None], list[Any]] = lambda packed, buf: packed,
        split: Callable[[list[Any], int], list[list[Any]]] = lambda items, size: [items],
    ) -> None:
        """``write(files, item, run_id)`` writes one item's files (writer.write_item, looked up per call); a
        share of items is cut into ``split(items, SLOT_BYTES)`` sub-shares, each crossing the pipe as
        ``pack(sub, buf)`` and ``unpack``-ed there with the same shared buffer ``buf`` (None: none free;
        shares.py)."""
        self.pack = pack
        self.split = split
        self.out_dir = Path(out_dir)
        self.conns: list[Connection] = []
        self.pids: list[int] = []
        self._next = 0
        self._pending: dict[int, int] = {}  # job token -> messages (sub-shares) not yet acknowledged
        self._errors: dict[int, BaseException] = {}
        self._regions = [mmap.mmap(-1, SLOTS * SLOT_BYTES) for _ in range(max(1, n))]  # MAP_SHARED: forks see it
        self._slots: list[list[int | None]] = [[None] * SLOTS for _ in self._regions]  # the job using each slot
        # Per process, (token, slot) of each message sent and not yet acknowledged, in the order sent. A process
        # reads its messages in that order and answers each once done with its slot, over one pipe: its answers
        # come back in the same order, so an answer is always for the head of this queue and frees exactly that
        # message's slot. (Freeing every slot of the answered token instead would free its later sub-shares'
        # slots before the process has read them: the next job's pictures would be written over theirs.)
        self._in_flight: list[deque[tuple[int, int | None]]] = [deque() for _ in self._regions]
        self._shared: dict[int, bool] = {}  # job token -> every share of it in shared memory
        try:
            for i in range(max(1, n)):
                self._fork(i, n > 1, write, unpack)
        except BaseException:
            self.close()
            raise
        self._start_senders()

    def _fork(
        self,
        i: int,
        unnamed: bool,
        write: Callable[[Any, Any, int], Any],
        unpack: Callable[[Any, memoryview | None], list[Any]],
    ) -> None:
        """Fork writer process ``i`` over shared region ``i``; keep our end of its pipe and its pid."""
        parent = os.getpid()
        mine, theirs = Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                mine.close()
                for c in self.conns:  # the other writers' pipes: theirs to close, not ours to keep open
                    c.close()
                _serve(theirs, self.out_dir, parent, write, unpack, self._regions[i], unnamed)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.conns.append(mine)
        self.pids.append(pid)

    def _start_senders(self) -> None:
        """The outboxes and their sender threads, and the poll over the answer pipes."""
        # One sender thread per process: a share (hundreds of KB) fills the pipe and blocks its sender until that
        # process reads it, which it does once done with its last share; sent from this thread in turn, the
        # other processes would wait for their shares meanwhile (measured: 1.33x instead of 2x at 32 px).
        # A share in shared memory is a small message: sent from this thread when its outbox is empty (no thread
        # switch); _queued[i] counts what was put in outbox i and not yet sent, so the order stays the same.
        self._outbox: list[queue.SimpleQueue[bytes | None]] = [queue.SimpleQueue() for _ in self.conns]
        self._queued = [0] * len(self.conns)
        self._queued_lock = threading.Lock()
        self._poll = select.poll()  # kept: multiprocessing's wait() builds a selector per call
        for conn in self.conns:
            self._poll.register(conn.fileno(), select.POLLIN)
        self._by_fd = {conn.fileno(): i for i, conn in enumerate(self.conns)}
        self._senders = [
            threading.Thread(target=self._send_loop, args=(i,), name=f"xaibatch-writer-send-{i}", daemon=True)
            for i in range(len(self.conns))
        ]
        for s in self._senders:
            s.start()

    def _send_loop(self, i: int) -> None:
        """Send process ``i`` what is put in its outbox, in order, until None (then the end message)."""
        while True:
            data = self._outbox[i].get()
            try:
                self.conns[i].send_bytes(pickle.dumps(None) if data is None else data)
            except OSError:  # the process is gone: submit() and wait() say so
                return
            with self._queued_lock:
                self._queued[i] -= 1
            if data is None:
                return

    def __len__(self) -> int:
        return len(self.conns)

    def _shares(self, items: list[Any]) -> list[list[list[Any]]]:
        """``items`` as one contiguous share per process (as many as items, at most), each cut into the
        sub-shares that fit a slot."""
        k = min(len(self.conns), len(items))
        return [self.split(items[i * len(items) // k : (i + 1) * len(items) // k], SLOT_BYTES) for i in range(k)]

    def room(self, items: list[Any]) -> bool:
        """Whether every sub-share of ``items`` would find a free slot now (else the writer settles older jobs
        first rather than have some pickled)."""
        return all(len(subs) <= self._slots[i].count(None) for i, subs in enumerate(self._shares(items)))

    def submit(self, items: list[Any], run_id: int) -> int:
        """Send ``items`` (WriteItems) to the processes, one contiguous share each (as one message per sub-share,
        in order); return the job's token."""
        token = self._next
        self._next += 1
        self._pending[token] = 0  # counted as sent: wait() needs an answer to each message
        self._shared[token] = True
        for i, subs in enumerate(self._shares(items)):
            if not self._senders[i].is_alive():  # it met a closed pipe: the process is gone
                raise WriterDied(f"a writer process ended unexpectedly ({self._status(i)})")
            for sub in subs:
                slot = self._free_slot(i, token)  # held until this message is acknowledged, used or not
                packed = self.pack(sub, None if slot is None else _slot_view(self._regions[i], slot))
                data = pickle.dumps((token, run_id, slot, packed), protocol=pickle.HIGHEST_PROTOCOL)
                small = len(data) <= SMALL_MESSAGE
                self._shared[token] = self._shared[token] and small
                self._pending[token] += 1
                self._in_flight[i].append((token, slot))
                self._send(i, data, small)
        return token

    def shared(self, token: int) -> bool:
        """Whether every message of job ``token`` crossed small (its pictures in shared memory)."""
        return self._shared.get(token, False)

    def _send(self, i: int, data: bytes | None, small: bool = False) -> None:
        """``data`` to process ``i``, after what its outbox holds: a small message (its pictures in shared memory)
        goes now when the outbox is empty, anything else through the sender thread (a large one would block here
        until the process reads it, and the other processes' shares with it)."""
        with self._queued_lock:
            now = small and self._queued[i] == 0
            if not now:
                self._queued[i] += 1
        if now:
            try:
                self.conns[i].send_bytes(data)
            except OSError:  # the process is gone: wait() says so
                pass
        else:
            self._outbox[i].put(data)

    def _free_slot(self, i: int, token: int) -> int | None:
        """A shared buffer of process ``i`` that no message in flight uses, now ``token``'s; None if all are."""
        slots = self._slots[i]
        for k, used in enumerate(slots):
            if used is None:
                slots[k] = token
                return k
        return None

    def wait(self, token: int) -> None:
        """Block until every message (sub-share) of ``token`` is written; raise the first error a process met for it."""
        while self._pending.get(token, 0) > 0:
            for fd, _ in self._poll.poll():
                i = self._by_fd[fd]
                try:
                    done, err = self.conns[i].recv()
                except (EOFError, OSError):
                    raise WriterDied(f"a writer process ended unexpectedly ({self._status(i)})") from None
                self._pending[done] -= 1
                sent, slot = self._in_flight[i].popleft()  # answers come in the order sent (see __init__)
                assert sent == done, (sent, done)
                if slot is not None:  # that message is written: its buffer can take the next
                    self._slots[i][slot] = None
                if err is not None:
                    self._errors.setdefault(done, err)
        self._pending.pop(token, None)
        self._shared.pop(token, None)
        err = self._errors.pop(token, None)
        if err is not None:
            raise err

    def _status(self, i: int) -> str:
        try:
            pid, status = os.waitpid(self.pids[i], os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if pid == 0:
            return "still running"
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit status {os.waitstatus_to_exitcode(status)}"

    def close(self) -> None:
        """Let the processes finish what they were sent and exit; reap them."""
        senders = getattr(self, "_senders", [])
        for i, conn in enumerate(self.conns):
            if i < len(senders):
                self._send(i, None)  # after what is queued: the sender ends with the end message
                continue
            try:
                conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass
        for conn in self.conns:  # drain: a process blocked on a full answer pipe could not read its end signal
            try:
                while conn.poll(0):
                    conn.recv_bytes()
            except (EOFError, OSError):
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for s in senders:  # its process is gone: a send still blocked returns with an error
            s.join()
        for conn in self.conns:
            conn.close()
        self.conns, self.pids, self._senders = [], [], []


def _serve(
    conn: Connection,
    out_dir: Path,
    parent: int,
    write: Callable[[Any, Any, int], Any],
    unpack: Callable[[Any, memoryview | None], list[Any]],
    region: mmap.mmap,
    unnamed: bool = False,
) -> None:
    """A writer process: write each share it is sent, answer (token, None or the error), until told to stop.
    A share's pictures are read from its slot of ``region`` before the answer (which frees the slot). ``unnamed``:
    new files are written unnamed and then linked (OutputDir), so that processes that share folders wait less."""
    ignore_stop_signals()  # the run stops us after its batch, as DataLoader workers
    gc.disable()  # the parent's heap stays shared (copy-on-write) and its objects' finalizers stay the parent's
    die_with_parent(parent)
    files = OutputDir(out_dir, pid=parent, unnamed=unnamed)  # temporary names the run's: see OutputDir
    try:
        while True:
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # the run is gone
                return
            if msg is None:
                return
            token, run_id, slot, packed = msg
            err = None
            try:
                for item in unpack(packed, None if slot is None else _slot_view(region, slot)):
                    write(files, item, run_id)
            except BaseException as e:  # reported to the writer thread, which raises it in the run
                err = _portable(e)
            conn.send((token, err))
    finally:
        files.close()


def _slot_view(region: mmap.mmap, slot: int) -> memoryview:
    return memoryview(region)[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES]


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (OSError with its errno, UsageError, ...), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
