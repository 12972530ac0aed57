"""After the machine restarted (a power cut, a kernel crash): the files its last seconds may have left empty or cut
short, found and deleted, so that the next write mends them.

Nothing xaibatch writes is fsynced: on ext4 or XFS a file renamed into place just before a power cut is often left
at 0 bytes while the manifest row that points at it survived. Each command that writes into a folder (``run``,
``report``, ``sanity``) records the kernel's boot id and when it started (meta ``boot``). The next one that finds
another boot id (a restart, or the folder copied to another machine) checks every picture and report file modified
since an hour before that start (:data:`MARGIN`: clock steps), with cheap structural checks (:func:`intact`),
deletes those that fail them (a run's lost-files path writes them again: plan.lost_files) and the report's state
(the next report is built in full, every page compared with what is on disk), then records the present boot: once
per restart. Off Linux (no boot id): nothing is recorded or checked.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sqlite3
import stat
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from .. import layout
from ..files import walk_files
from ..lock import boot_id
from ..manifest import Manifest

BOOT = "boot"  # meta: JSON {"boot_id": the kernel's, "since": when the last command that wrote here started}
# Files modified from this long before the recorded start are checked: writeback holds data for about 30 s
# (dirty_expire_centisecs), the command before may have written minutes before, and the clock may have stepped.
MARGIN = 3600.0
REPORT_DIRS = ("gallery", "detail", "assets", "figures")
REPORT_FILES = (layout.INDEX, layout.HISTORY, layout.SKIPPED, layout.CSV, layout.SANITY, layout.FAITH_CHANCE)
CHUNK, THREADS = 512, 8  # files one task checks; threads at most
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


@dataclass(frozen=True)
class Checked:
    """What the check after a restart found: how many files it read, and those it deleted (relative paths)."""

    files: int
    damaged: list[str]


def check(out: Path, manifest: Manifest, keep: Collection[str] = ()) -> Checked | None:
    """When the machine restarted since a command last wrote into ``out``, check and delete; then record this boot.

    None when there was no restart (the same boot id, none recorded yet, or none to read). ``keep``: files never
    deleted (recovery.foreign_files: a user's, from before the folder's first run). Call it under the folder's lock
    and before the folder is listed for a plan (plan.existing_files). A manifest that refuses the record leaves the
    check to the next command.
    """
    current = boot_id()
    if current is None:
        return None
    last = recorded(manifest)
    found = None
    if last is not None and last[0] != current:
        found = repair(out, last[1], keep)
    try:
        record(manifest, current)
    except (sqlite3.Error, OSError):  # read-only, full: the command fails on its own writes, with its own line
        if manifest.db.in_transaction:  # a COMMIT refused leaves it open
            manifest.db.execute("ROLLBACK")
    return found


def recorded(manifest: Manifest) -> tuple[str, float] | None:
    """The boot id and start time the last writing command recorded; None when none did (an older xaibatch's
    folder, a new one). A value that does not read as one is taken as another boot at an unknown time."""
    raw = manifest.get_meta(BOOT)
    if not raw:
        return None
    try:
        value = json.loads(raw)
        return str(value["boot_id"]), float(value["since"])
    except (ValueError, KeyError, TypeError):
        return "", float("-inf")


def record(manifest: Manifest, current: str | None = None) -> None:
    """Record this boot and now as the start of this command's writes (nothing without a boot id)."""
    current = current or boot_id()
    if current is None:
        return
    with manifest.transaction():
        manifest.set_meta(BOOT, json.dumps({"boot_id": current, "since": time.time()}))


def repair(out: Path, since: float, keep: Collection[str] = ()) -> Checked:
    """Check the files modified from ``since`` less the margin (every file when ``since`` is later than the clock
    now: one of the two clocks was wrong), delete those that fail, and the report's state."""
    now = time.time()
    after = since - MARGIN if since <= now else float("-inf")
    files = [(rel, path) for rel, path in _files(out) if rel not in keep]
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    # threads: after a reboot nothing is cached, and the reads wait on the disk (the GIL is released meanwhile)
    with ThreadPoolExecutor(min(THREADS, len(chunks)) or 1) as pool:
        found = list(pool.map(lambda chunk: _check(chunk, after), chunks))
    bad = [rel for _n, damaged in found for rel in damaged]
    for rel in bad:
        _unlink(out / rel)
    _unlink(out / layout.REPORT_STATE)  # the next report is built in full: every page compared with the disk's
    return Checked(sum(n for n, _damaged in found), bad)


def _check(files: list[tuple[str, str]], after: float) -> tuple[int, list[str]]:
    """Of ``files`` (relative and full paths), how many were modified from ``after`` on, and those damaged."""
    n, bad = 0, []
    for rel, path in files:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if st.st_mtime < after or not stat.S_ISREG(st.st_mode):  # a link or a FIFO is nobody's write: left alone
            continue
        n += 1
        if not intact(path):
            bad.append(rel)
    return n, bad


def _files(out: Path):
    """The pictures (by suffix: temporary files are recovery's) and the report's files."""
    for rel, path in walk_files(out, layout.PICTURE_DIRS):
        if rel.endswith(layout.PICTURE_SUFFIXES):
            yield rel, path
    for rel, path in walk_files(out, REPORT_DIRS):
        if rel.endswith((".html", ".js", ".css", ".svg")):
            yield rel, path
    for rel in REPORT_FILES:
        if os.path.isfile(out / rel):
            yield rel, str(out / rel)


def intact(path: str) -> bool:
    """Cheap structural checks, no decoding: not empty; a .npy's header parses and its data fills the file to the
    byte; a PNG starts with its signature and ends with its IEND chunk; an SVG ends with its closing tag; a JSON
    file parses (they are small); anything else: not empty."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        if path.endswith(".npy"):
            return _npy_whole(fd, size)
        if path.endswith(".png"):
            return os.pread(fd, 8, 0) == PNG_SIGNATURE and os.pread(fd, 12, max(0, size - 12)) == PNG_END
        if path.endswith(".svg"):
            return os.pread(fd, 64, max(0, size - 64)).rstrip().endswith(b"</svg>")
        if path.endswith(".json"):
            json.loads(os.pread(fd, size, 0))
        return True
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)


def _npy_whole(fd: int, size: int) -> bool:
    """Whether a .npy file's header parses and its data ends where the file does."""
    head = os.pread(fd, 256, 0)
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        return False
    start, width = (10, "<H") if head[6] == 1 else (12, "<I")
    (length,) = struct.unpack_from(width, head, 8)
    if len(head) < start + length:
        head = os.pread(fd, start + length, 0)
    data = _npy_data_bytes(head[: start + length])
    return data is not None and start + length + data == size


@functools.lru_cache(maxsize=256)  # the maps of images of one size share their header
def _npy_data_bytes(prefix: bytes) -> int | None:
    """The data bytes the .npy header ``prefix`` (magic to the header's end) announces; None when it does not parse."""
    import numpy as np
    from numpy.lib import format as npy

    f = io.BytesIO(prefix)
    try:
        version = npy.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return None
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _fortran, dtype = read(f)
    except (ValueError, SyntaxError, TypeError):  # numpy's header parse raises each
        return None
    if dtype.hasobject or f.tell() != len(prefix):
        return None  # xaibatch never writes objects
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def say(
    found: Checked | None,
    log: Callable[[str], None],
    emit: Callable[[dict[str, Any]], None] = lambda event: None,
    lines: bool = True,
    then: str = "written again",
) -> None:
    """One line (and a ``notice`` event, kind ``restarted``) when the check deleted damaged files; nothing when it
    found none (a cron job stays quiet). ``then``: what becomes of them."""
    if found is None or not found.damaged:
        return
    text = (
        f"the machine restarted since this folder was last written: checked {found.files} file(s), "
        f"{len(found.damaged)} {'was' if len(found.damaged) == 1 else 'were'} damaged ({then})"
    )
    if lines:
        log(f"xaibatch: {text}")
    emit({"event": "notice", "kind": "restarted", "text": text, "checked": found.files, "damaged": len(found.damaged)})
