"""Write files so a crash never leaves a half-written one, and never outside the output folder."""

from __future__ import annotations

import errno
import io
import itertools
import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from .errors import UsageError


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``path``, None where it cannot be looked at: what a rewrite renamed into place changes."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def plain_relative(rel: object) -> bool:
    """Whether ``rel`` is a plain relative POSIX path: a non-empty str, not absolute, no ``..`` part, no NUL byte."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return False
    pure = PurePosixPath(rel)
    return bool(pure.parts) and not pure.is_absolute() and all(p not in ("..", "") for p in pure.parts)


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing anything that would land outside ``root``.

    ``rel`` must be a plain relative POSIX path: not absolute, no ``..`` part, no NUL byte; and the
    result, symlinks resolved, must still be under ``root`` (so a symlink planted inside the output
    folder cannot redirect a write either).
    """
    if not plain_relative(rel):
        raise UsageError(f"refusing to write {rel!r}: not a plain relative path")
    path = root.joinpath(*PurePosixPath(rel).parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UsageError(f"refusing to write {rel!r}: it resolves outside {root}")
    return path


_tmp_counter = itertools.count()


def blocked_by_file(path: Path) -> Path | None:
    """The nearest existing path above ``path`` when it is not a folder (a file, a device: ``path`` cannot be
    made), else None."""
    above = next((p for p in Path(path).parents if os.path.lexists(p)), None)
    return above if above is not None and not above.is_dir() else None


def make_dirs(path: Path) -> None:
    """``mkdir -p`` without recursion: ``Path.mkdir(parents=True)`` and ``os.makedirs`` recurse once per
    missing level and hit Python's recursion limit past about 1000 (deeply nested input folders)."""
    missing = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over the target.

    The temporary name is short (a 250-byte file name must still leave room for it), created
    exclusively (never follows a symlink left at that name), and removed when the write fails, so
    a full disk leaves neither a truncated target nor a stray temporary file.
    """
    tmp, f = open_temporary(path)
    try:
        with f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        name_target(e, path)
        raise


def open_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file beside ``path`` (its folder made), open for writing: :func:`temp_name`'s, created
    exclusively, never a name in use (a user's ``<name>.tmp``, another process's temporary file)."""
    make_dirs(path.parent)
    for _ in range(1000):  # a stale temporary file (same pid after a crash) is skipped, not reused
        tmp = path.with_name(temp_name(path.name))
        try:
            return tmp, open(tmp, "xb")
        except FileExistsError:
            continue
        except OSError as e:  # a folder that refuses new files: name the file meant
            name_target(e, path)
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def name_target(e: BaseException, path: Path) -> None:
    """Let an OSError from writing ``path`` name it (a failed ``write`` names no file; a temporary name is none of
    the user's business), so that the message of a full disk or a refused folder says which file."""
    if isinstance(e, OSError) and not (e.filename and os.path.isabs(e.filename) and not temporary(e.filename)):
        e.filename = str(path)


def temp_name(name: str, pid: int | None = None) -> str:
    """A temporary file's name for ``name``: ``.<name cut to 32 characters>.<n>.<pid>.tmp``, unique in this process
    (``n``), the pid last: a sweep after a crash (:func:`temp_pid`) removes those whose process is gone. Short,
    so that a 250-byte file name still leaves room for it."""
    return f".{name[:32]}.{next(_tmp_counter)}.{pid or os.getpid()}.tmp"


# what temp_name makes, and what xaibatch wrote to test a folder until November 2026 (".xaibatch-write-test.<pid>")
_TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$|^\.xaibatch-write-test\.(\d+)$")


def temp_pid(name: str | os.PathLike[str]) -> int | None:
    """The pid of the process that wrote the temporary file ``name`` (:func:`temp_name`), or None if it is none."""
    m = _TEMP_RE.match(os.path.basename(os.fsdecode(name)))
    return int(m.group(1) or m.group(2)) if m else None


def temporary(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a temporary file's (:func:`temp_name`)."""
    return temp_pid(name) is not None


class Reserve:
    """A little disk space held back under ``out`` while a run writes, freed when a write fails for want of it:
    then the run's row can still say ``error`` (SQLite must grow its log to record it). A temporary file's name
    (:func:`temp_name`), so a sweep after a killed run removes it."""

    SIZE = 256 * 1024  # some 60 pages of the manifest's log; random bytes, which no file system compresses away

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / temp_name("xaibatch-reserve")
        try:
            atomic_write_bytes(self.path, os.urandom(self.SIZE))
        except OSError as e:
            e.filename = str(out)  # no room for the reserve: the message names the folder, not this file
            raise

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


class NotRegularFile(OSError):
    """A path that should be a regular file is a FIFO, a device, a folder, ..."""


def open_regular(path: Path | str) -> tuple[int, os.stat_result]:
    """Open a file for reading that must be a regular file; return its descriptor and ``fstat``.

    ``O_NONBLOCK``: a FIFO swapped in for the file must not block the open; ``fstat`` on the opened
    descriptor (not a second ``stat`` of the path) then refuses anything that is not a regular file,
    such as a FIFO or a symlink to ``/dev/zero``, which would otherwise be read forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class InputFolder:
    """Regular files opened for reading under one folder, as ``open_regular(safe_join(root, rel))`` would, at the
    cost of one ``open`` and one ``fstat`` a file.

    :func:`safe_join` resolves the root and the path on every call (an ``lstat`` per component: most of the time
    of reading a small file). Here the root is resolved once, each subfolder is opened once by walking down from
    it one name at a time without following a symlink (``O_NOFOLLOW``), and a file is opened relative to its
    folder's descriptor, again without following a symlink. A path reached that way cannot lie outside the root:
    no ``..`` part (refused as by :func:`safe_join`), no symlink on the way. Where there is a symlink (the file,
    or a folder above it) or the open fails (missing, a folder replaced since it was opened), the path takes
    :func:`safe_join`'s road: a link is followed only where it resolves inside the root, and an error is the one
    it was before. At most ``max_open`` folders are held open at a time.
    """

    def __init__(self, root: Path, max_open: int = 64) -> None:
        self.root = root if isinstance(root, Path) else Path(root)
        self.max_open = max_open
        self._root: int | None = None  # the root, resolved once
        self._fds: dict[str, int] = {}  # subfolder -> descriptor, oldest first

    def open(self, rel: str) -> tuple[int, os.stat_result]:
        """The descriptor and ``fstat`` of the regular file ``root/rel`` (see :func:`open_regular`); raises as
        ``open_regular(safe_join(root, rel))`` does: UsageError for a path that leads outside, OSError else."""
        if not _WALKS or not isinstance(rel, str) or "\0" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
            return open_regular(safe_join(self.root, rel))  # refused with the reason, or a path it takes apart
        rel_dir, _, name = rel.rpartition("/")
        try:
            fd = os.open(name, _READ_NOFOLLOW, dir_fd=self._folder(rel_dir))
        except OSError:  # a symlink on the way (ELOOP), or an error to raise as before
            return open_regular(safe_join(self.root, rel))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(errno.EINVAL, "not a regular file", str(self.root / rel))
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _folder(self, rel_dir: str) -> int:
        """The descriptor of the subfolder ``rel_dir`` (the root: ""), opened by walking down from the nearest folder
        already open without following a symlink (iterative: no recursion limit on deep folders); raises OSError
        where a part is a symlink (ELOOP), not a folder (ENOTDIR), missing, ..."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        if self._root is None:
            self._root = os.open(os.path.realpath(self.root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if not rel_dir:
            return self._root
        parts = rel_dir.split("/")
        prefixes = list(itertools.accumulate(parts, lambda a, b: f"{a}/{b}"))
        i = len(parts)
        while i and prefixes[i - 1] not in self._fds:
            i -= 1
        fd = self._fds[prefixes[i - 1]] if i else self._root
        for name, prefix in zip(parts[i:], prefixes[i:]):
            fd = os.open(name, _DIR_NOFOLLOW, dir_fd=fd)  # ELOOP: a symlink; ENOTDIR: a file
            if len(self._fds) >= self.max_open:  # close the oldest (never the one just opened)
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[prefix] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._root is not None:
            os.close(self._root)
            self._root = None


_WALKS = all(hasattr(os, f) for f in ("O_NOFOLLOW", "O_DIRECTORY", "O_NONBLOCK"))  # else: safe_join for every file
_READ_NOFOLLOW = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_NOFOLLOW = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def hash_open_file(f, size: int, digest) -> None:
    """Feed the first ``size`` bytes of the open file ``f`` to ``digest`` (never more: a growing file ends)."""
    left = size
    while left > 0 and (chunk := f.read(min(1 << 20, left))):
        digest.update(chunk)
        left -= len(chunk)


def read_hashed(f, size: int, digest) -> bytes:
    """The first ``size`` bytes of the open file ``f`` (never more: a growing file ends there), fed to ``digest``.

    An image is decoded from these bytes in memory, not from the file again: a file rewritten while a run reads it
    (a labelling tool, ``cp`` over it) is then explained from exactly the bytes whose hash the manifest keeps."""
    data = f.read(size)
    digest.update(data)
    return data


def file_sha256(path: Path, max_bytes: int | None = None) -> str:
    """SHA-256 of a regular file (anything else raises OSError), read in 1 MiB chunks up to its size.

    A file over ``max_bytes`` raises OSError (EFBIG) without being read.
    """
    fd, st = open_regular(path)
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise OSError(errno.EFBIG, f"file over {max_bytes} bytes", str(path))
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        hash_open_file(f, st.st_size, h)
    return h.hexdigest()


class OutputDir:
    """Atomic writes under one output folder, each folder checked and opened once rather than per file.

    The writer saves several small files per image; resolving every path again (as :func:`safe_join`
    does) and walking it from the root cost more than the write itself. A folder is checked with
    :func:`safe_join` and created on first use, then kept open (at most ``max_open`` at a time); each file
    is written to a temporary name and renamed relative to the folder's descriptor. The name carries ``pid``
    (default: this process): writer processes give their run's, so that a sweep after the run was killed
    finds their temporary files even before the kernel has reaped them. ``unnamed``: a new file is written with no
    name (``O_TMPFILE``) and linked under its name once complete (see :meth:`_write_unnamed`; writer processes
    sharing folders), an existing one replaced as above.
    """

    def __init__(self, root: Path, max_open: int = 256, pid: int | None = None, unnamed: bool = False) -> None:
        self.root = Path(root)
        self.unnamed = unnamed and hasattr(os, "O_TMPFILE")  # new files written unnamed, then linked
        self.max_open = max_open
        self.pid = pid
        self._fds: dict[str, int] = {}
        self._last: str | None = None

    def _folder(self, rel_dir: str) -> int:
        fd = self._fds.get(rel_dir)
        if fd is not None and rel_dir == self._last:  # the folder of the previous file: already most recent
            return fd
        self._last = rel_dir
        fd = self._fds.pop(rel_dir, None)
        if fd is None:
            path = safe_join(self.root, rel_dir) if rel_dir else self.root
            make_dirs(path)
            if rel_dir:
                safe_join(self.root, rel_dir)  # again: what mkdir made must still lie under root
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if len(self._fds) >= self.max_open:  # close the least recently used
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[rel_dir] = fd  # most recently used last
        return fd

    def write(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``root/rel`` atomically (see :func:`atomic_write_bytes`)."""
        rel_dir, _, name = rel.rpartition("/")
        if not name or name in (".", ".."):
            safe_join(self.root, rel)  # raises with the reason
        dir_fd = self._folder(rel_dir)
        if self.unnamed and self._write_unnamed(dir_fd, name, data, rel):
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(1000):
            tmp = temp_name(name, self.pid)
            try:
                fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
            except OSError as e:  # a folder that refuses new files: name the file meant
                name_target(e, self.root / rel)
                raise
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary file name", rel_dir)
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except IsADirectoryError:  # a folder in the file's place (what an input folder x.png/ left)
                _free_place(dir_fd, name, self.root / rel)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as e:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            name_target(e, self.root / rel)
            raise

    def _write_unnamed(self, dir_fd: int, name: str, data: bytes, rel: str) -> bool:
        """Write ``data`` to a file with no name in the folder (``O_TMPFILE``), then link it as ``name``: one change
        to the folder instead of two (create and rename), which is what processes writing into one folder wait for
        each other on (measured: 2 processes 1.14-1.37x one in one tmpfs folder this way, 1.6-1.8x unnamed). A
        crash leaves nothing (the file never had a name). False, nothing written, where ``name`` exists (then
        :meth:`write` replaces it) or the system cannot (no ``O_TMPFILE`` in this file system, no ``/proc``)."""
        try:
            fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
        except OSError:  # EOPNOTSUPP, EISDIR (a kernel without O_TMPFILE), ...
            self.unnamed = False
            return False
        try:
            _write_all(fd, data)
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            return True
        except FileExistsError:
            return False
        except BaseException as e:
            if isinstance(e, OSError) and not os.path.exists(f"/proc/self/fd/{fd}"):
                self.unnamed = False  # no /proc to link through
                return False
            name_target(e, self.root / rel)
            raise
        finally:
            os.close(fd)

    def link(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Give each regular file ``root/src`` the name ``root/rel`` too, for each ``(src, rel)``: hard links (copies
        where the file system links nothing) made under temporary names first, then renamed over whatever each
        ``rel`` was, so that a ``src`` that is also another pair's ``rel`` (renames in a chain: ``b`` -> ``c``,
        ``a`` -> ``b``) is read before it is replaced. A ``src`` that is not a regular file (gone, a link, a
        folder) is passed over; a ``rel`` that is ``src`` already counts as done. Returns how many are in place."""
        staged: list[tuple[str, str, str]] = []  # (rel's folder, temporary name, name)
        done = 0
        try:
            for src, rel in pairs:
                step = self._stage_link(src, rel)
                if step is True:
                    done += 1
                elif step:
                    staged.append(step)
            while staged:
                rel_dir, tmp, name = staged[0]
                dir_fd = self._folder(rel_dir)
                try:
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except IsADirectoryError:  # a folder in the file's place (what an input folder x.png/ left)
                    _free_place(dir_fd, name, self.root / rel_dir / name)
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                staged.pop(0)
                done += 1
        except BaseException as e:
            for rel_dir, tmp, name in staged:
                try:
                    os.unlink(tmp, dir_fd=self._folder(rel_dir))
                except OSError:
                    pass
            if staged:
                name_target(e, self.root / staged[0][0] / staged[0][2])
            raise
        return done

    def _stage_link(self, src: str, rel: str) -> tuple[str, str, str] | bool:
        """``src`` linked (or copied) to a temporary name beside ``rel``: (rel's folder, that name, rel's name); True
        when ``rel`` is ``src`` already; False, nothing done, when ``src`` is not a regular file."""
        src_dir, _, src_name = src.rpartition("/")
        rel_dir, _, name = rel.rpartition("/")
        if not name or name in (".", "..") or not src_name or src_name in (".", ".."):
            safe_join(self.root, rel), safe_join(self.root, src)  # raises with the reason
        if src_dir and not os.path.isdir(safe_join(self.root, src_dir)):
            return False
        dir_fd = self._folder(rel_dir)
        src_fd = self._folder(src_dir)  # the most recently used now: dir_fd stays open (max_open > 1)
        try:
            st = os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):  # linked by a run killed before its commit
                return True
        except OSError:
            pass
        for _ in range(1000):
            tmp = temp_name(name, self.pid)
            try:
                os.link(src_name, tmp, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                return rel_dir, tmp, name
            except FileExistsError:
                continue
            except FileNotFoundError:  # deleted since the stat
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    name_target(e, self.root / rel)
                    raise
                break
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary file name", rel_dir)
        data = self.read(src, st.st_size)  # no hard links here: the bytes copied
        if data is None:
            return False
        dir_fd = self._folder(rel_dir)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
        try:
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(tmp, dir_fd=dir_fd)
            raise
        return rel_dir, tmp, name

    def read(self, rel: str, size: int) -> bytes | None:
        """The bytes of ``root/rel`` when it is a regular file of exactly ``size`` bytes (never a link, never
        outside root), else None: what a writer compares with before rewriting a file unchanged."""
        rel_dir, _, name = rel.rpartition("/")
        try:
            if rel_dir and not os.path.isdir(safe_join(self.root, rel_dir)):
                return None  # not there yet: do not create it just to look
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._folder(rel_dir))
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return None
            return f.read(size + 1)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._last = None

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _free_place(dir_fd: int, name: str, path: Path) -> None:
    """Remove the folder ``name`` standing where a file is to go when it is empty; else raise one line naming it
    (never its files: they are not ours to delete)."""
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise IsADirectoryError(
            errno.EISDIR,
            "a folder that is not empty stands where this file goes: move it away and run again",
            str(path),
        ) from None


_NPY_HEADERS: dict[tuple[tuple[int, ...], str], bytes] = {}


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes ``np.save`` writes for a C-contiguous array, with the header built once per shape and dtype."""
    a = np.ascontiguousarray(array)
    key = (a.shape, a.dtype.str)
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
        header = _NPY_HEADERS.setdefault(key, buf.getvalue())
    return header + a.tobytes()


def _write_all(fd: int, data: bytes) -> None:
    done = os.write(fd, data)  # one call for a small file; a short write goes on from there
    if done < len(data):
        view = memoryview(data)[done:]
        while view:
            view = view[os.write(fd, view) :]


def remove_files(out: Path, paths: Iterable[str], roots: tuple[str, ...] = ()) -> int:
    """Delete these files under ``out`` (relative paths), quietly passing over any that are gone, cannot be deleted
    or would lie outside it; how many went.

    Then each folder this leaves empty goes too, up the tree but never ``out/<root>`` itself nor anything outside
    ``roots`` (top-level folders of ``out``): a folder left empty would stand in the way of a file of its name
    later (an input folder ``x.png/`` replaced by a file ``x.png`` gives ``images/x.png``).
    """
    n = 0
    folders: set[str] = set()
    for p in paths:
        try:
            safe_join(out, p).unlink()
            n += 1
        except (OSError, UsageError):
            continue
        folders.add(p.rpartition("/")[0])
    folders = {d for d in folders if "/" in d and d.split("/", 1)[0] in roots}
    while folders:  # deepest first, a level at a time: a folder is empty only once those below it went
        depth = max(d.count("/") for d in folders)
        level = {d for d in folders if d.count("/") == depth}
        folders -= level
        for d in level:
            try:
                os.rmdir(safe_join(out, d))  # only an empty folder; never one a symlink leads to (ENOTDIR)
            except (OSError, UsageError):
                continue
            parent = d.rpartition("/")[0]
            if "/" in parent:
                folders.add(parent)
    return n


def walk_files(root: Path, tops: tuple[str, ...] = ("",)) -> Iterator[tuple[str, str]]:
    """(relative POSIX path, full path) of every file under ``root``'s folders ``tops`` ("": root itself).

    Iterative (no recursion limit), never follows a symlink, and skips what cannot be listed.
    """
    stack = [(os.path.join(root, top) if top else str(root), f"{top}/" if top else "") for top in tops]
    while stack:
        d, rel = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for ent in it:
                try:
                    if ent.is_dir(follow_symlinks=False):
                        stack.append((ent.path, f"{rel}{ent.name}/"))
                    else:
                        yield f"{rel}{ent.name}", ent.path
                except OSError:
                    pass
