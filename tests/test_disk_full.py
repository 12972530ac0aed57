"""A full disk (or quota, file size limit, failing file system) part-way through a run, then a re-run.

What a run must do (docs/robustness.md): stop after the batch it was writing, keep every committed batch (rows only
after their files), say one line ("Error: no space left on device writing OUT/...: free space and run again;
finished images are kept"), exit 3, mark its run row ``error`` with that line; the next run sweeps what it left and
computes only the rest. Three ways to make the disk fail:

* the writes of ``xaibatch/files.py`` fail part-way for one file (its ``os`` swapped for one whose ``write`` writes
  half and raises ENOSPC; forked writer processes inherit it): every place that writes pictures or the report;
* a real file size limit (``RLIMIT_FSIZE``) on a real ``xaibatch run`` process: EFBIG from the kernel, no seam;
* a real full file system: a small tmpfs in a user namespace (``unshare -Urm``; skipped where that is not allowed).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers
from helpers import REPO, manifest_rows, manifest_value, run_opts, write_images
from outcheck import check_output_folder
from xaibatch import errors
from xaibatch.pipeline import run

BATCH = 4


def full_disk_at(monkeypatch, needle: str, err: int = errno.ENOSPC) -> None:
    """Writes through xaibatch/files.py to a file whose name holds ``needle`` write half their bytes, then fail
    with ENOSPC, as a disk that fills up mid-file; every other write goes through. A file written unnamed and then
    linked (OutputDir in writer processes) has its name only at the link, which fails with ENOSPC instead."""
    import xaibatch.files as files

    names: dict[int, str] = {}

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        fd = os.open(path, flags, mode, dir_fd=dir_fd)
        names[fd] = os.fspath(path)
        return fd

    def write(fd, data):
        if needle in names.get(fd, ""):
            os.write(fd, bytes(data)[: len(data) // 2])
            raise OSError(err, os.strerror(err))
        return os.write(fd, data)

    def close(fd):
        names.pop(fd, None)
        os.close(fd)

    def link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
        if needle in os.fspath(dst):  # a file written unnamed (O_TMPFILE) is named here: the disk fills then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(
        files,
        "os",
        types.SimpleNamespace(**{**vars(os), "open": open_, "write": write, "close": close, "link": link}),
    )


def last_run(out: Path) -> tuple[str, str | None]:
    return manifest_rows(out, "SELECT status, reason FROM runs ORDER BY id DESC LIMIT 1")[0]


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def assert_committed_whole(out: Path) -> int:
    """Every committed row's files exist and are complete; no temporary file is left. The images committed."""
    for (npy,) in manifest_rows(out, "SELECT npy FROM maps"):
        assert np.load(out / npy, allow_pickle=False).ndim == 2
    for (png,) in manifest_rows(out, "SELECT png FROM maps"):
        with Image.open(out / png) as im:
            im.load()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    return manifest_value(out, "SELECT count(*) FROM images")


@pytest.mark.parametrize("writers", [0, 2])
def test_disk_full_while_writing_a_batch(tmp_path, tiny_ckpt, monkeypatch, writers):
    """In the writer thread (0) or in a writer process (2): the batch before stays, the run row says why, the
    re-run sweeps the failed batch's files and computes only what is missing."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 12)
    full_disk_at(monkeypatch, "img_005")  # the second batch: img_004 .. img_007
    r = helpers.invoke(
        "run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q", "--workers", "0", "--batch-size", BATCH,
        "--writers", writers,
    )  # fmt: skip
    assert r.exit_code == errors.EXIT_RUNTIME == 3, r.output
    line = error_line(r.output)
    assert line == (
        f"Error: no space left on device writing {out}/images/img_005.png: free space and run again; "
        "finished images are kept"
    )
    assert last_run(out) == ("error", line.removeprefix("Error: "))
    assert assert_committed_whole(out) == BATCH  # the first batch; nothing of the second
    monkeypatch.undo()  # space freed
    if writers:  # the other share of the failed batch was written, never committed
        from xaibatch.manifest import Manifest
        from xaibatch.pipeline.plan import existing_files

        m = Manifest(out / "xaibatch.sqlite")
        assert existing_files(out) - m.referenced_files()
        m.close()

    again = run(run_opts(inp, out, tiny_ckpt), log=helpers.quiet)
    assert (again.status, again.computed, again.unchanged, again.resumed) == ("ok", 12 - BATCH, BATCH, BATCH)
    check_output_folder(out, inp)  # those files written again and committed (or swept after the report)


def test_a_disk_that_turned_read_only_is_named_in_the_next_runs_history(tmp_path, tiny_ckpt, monkeypatch):
    """A read-only (or failing) disk refuses the run row's last write too: the row stays 'running', and the next
    run marks it 'killed'. It said nothing more; now its reason says what may have happened."""
    from xaibatch.manifest import STALE_REASON, Manifest

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 8)
    full_disk_at(monkeypatch, "img_005", errno.EROFS)

    def read_only(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Manifest, "finish_run", read_only)
    r = helpers.invoke("run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q", "--workers", "0", "--batch-size", 4)
    assert r.exit_code == errors.EXIT_RUNTIME, r.output
    assert "read-only file system writing" in error_line(r.output)
    assert last_run(out) == ("running", None)  # nothing could record its end
    monkeypatch.undo()  # the disk is writable again

    said: list[str] = []
    assert run(run_opts(inp, out, tiny_ckpt), log=said.append).status == "ok"
    assert manifest_rows(out, "SELECT status, reason FROM runs ORDER BY id") == [
        ("killed", STALE_REASON),
        ("ok", None),
    ]
    assert any("did not finish" in s for s in said)


def test_disk_full_in_the_manifest_commit(tmp_path, tiny_ckpt, monkeypatch):
    """SQLite's "database or disk is full" (SQLITE_FULL) is a full disk, never "the manifest is damaged"."""
    from xaibatch.manifest import Manifest

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 12)
    real = Manifest.put_maps
    calls = []

    def put_maps(self, rows):
        calls.append(1)
        if len(calls) == 2:  # the second batch's commit, as SQLite raises it when its log cannot grow
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode, e.sqlite_errorname = 13, "SQLITE_FULL"
            raise e
        real(self, rows)

    monkeypatch.setattr(Manifest, "put_maps", put_maps)
    r = helpers.invoke(
        "run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q", "--workers", "0", "--batch-size", BATCH
    )
    assert r.exit_code == 3, r.output
    line = error_line(r.output)
    assert line == (
        f"Error: no space left on device writing {out}/xaibatch.sqlite: free space and run again; "
        "finished images are kept"
    )
    assert last_run(out) == ("error", line.removeprefix("Error: "))
    assert assert_committed_whole(out) == BATCH
    monkeypatch.undo()
    again = run(run_opts(inp, out, tiny_ckpt), log=helpers.quiet)
    assert (again.status, again.computed, again.unchanged, again.resumed) == ("ok", 12 - BATCH, BATCH, BATCH)
    check_output_folder(out, inp)


def test_disk_full_while_writing_the_report(tmp_path, tiny_ckpt, monkeypatch):
    """Every image is committed; only the report is missing: the re-run computes nothing and writes it."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 6)
    full_disk_at(monkeypatch, "index.html")
    r = helpers.invoke("run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q", "--workers", "0")
    assert r.exit_code == 3, r.output
    line = error_line(r.output)
    assert line == (
        f"Error: no space left on device writing {out}/index.html: free space and run again; finished images are kept"
    )
    assert last_run(out) == ("error", line.removeprefix("Error: "))
    assert assert_committed_whole(out) == 6
    assert not (out / "index.html").exists()
    monkeypatch.undo()
    again = run(run_opts(inp, out, tiny_ckpt), log=helpers.quiet)
    assert (again.status, again.computed, again.unchanged, again.resumed) == ("ok", 0, 6, 6)  # the failed run's
    check_output_folder(out, inp)
    reason = line.removeprefix("Error: ")
    assert f'<td class="status-error" title="{reason}">error</td>' in (out / "history.html").read_text()


def test_storage_errors_name_the_file_and_what_to_do(tmp_path):
    from xaibatch.errors import storage_error

    out = tmp_path / "o"
    said = {
        code: str(storage_error(OSError(code, os.strerror(code), f"{out}/maps/a.npy"), out))
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
    }
    assert said[errno.EDQUOT] == (
        f"disk quota exceeded writing {out}/maps/a.npy: free space (or raise the quota) and run again; "
        "finished images are kept"
    )
    assert said[errno.EFBIG].startswith(f"file too large writing {out}/maps/a.npy: raise the file size limit")
    assert said[errno.EROFS].startswith("read-only file system writing")
    assert said[errno.EIO].startswith("input/output error writing")
    assert str(storage_error(OSError(errno.ENOSPC, "x"), out)) == (
        f"no space left on device writing to {out}: free space and run again; finished images are kept"
    )
    assert storage_error(OSError(errno.EACCES, "Permission denied"), out) is None  # no file: no folder to name
    assert storage_error(ValueError("x"), out) is None
    damaged = sqlite3.DatabaseError("file is not a database")
    damaged.sqlite_errorcode = 26  # SQLITE_NOTADB: still "damaged", see test_run_errors.py
    assert storage_error(damaged, out) is None


def test_sqlite_errors_without_a_code_are_read_by_their_message(tmp_path):
    """Python 3.10's sqlite3 errors carry no ``sqlite_errorcode`` (3.11 added it): SQLITE_FULL, SQLITE_IOERR and
    SQLITE_READONLY are still the full disk, failing disk and refused manifest they are (on 3.10 a full disk while
    the manifest was created said "the manifest is unusable ... move it away"); other sqlite3 errors stay theirs."""
    from xaibatch.errors import storage_error

    out = tmp_path / "o"
    said = {
        msg: str(storage_error(sqlite3.OperationalError(msg), out))
        for msg in ("database or disk is full", "disk I/O error", "attempt to write a readonly database")
    }
    assert said["database or disk is full"] == (
        f"no space left on device writing {out}/xaibatch.sqlite: free space and run again; finished images are kept"
    )
    assert said["disk I/O error"].startswith(f"input/output error writing {out}/xaibatch.sqlite: check the disk")
    assert said["attempt to write a readonly database"].startswith(
        f"permission denied writing {out}/xaibatch.sqlite: make {out}/xaibatch.sqlite writable"
    )
    assert storage_error(sqlite3.DatabaseError("file is not a database"), out) is None  # damaged: not storage
    assert storage_error(sqlite3.ProgrammingError("Cannot operate on a closed database."), out) is None
    assert storage_error(RuntimeError("database or disk is full"), out) is None  # only SQLite's own errors


def test_a_refused_write_under_out_names_the_file_and_the_folder_to_fix(tmp_path):
    """EACCES (EPERM: an immutable folder) under OUT is the folder's state, as a full disk is: one line naming the
    file and what to make writable; the same errno for a file outside OUT (an input) stays the reader's."""
    from xaibatch.errors import storage_error

    out = tmp_path / "o"
    npy = f"{out}/maps/gradcam/REAL/real_00001.npy"
    assert str(storage_error(PermissionError(errno.EACCES, "Permission denied", npy), out)) == (
        f"permission denied writing {npy}: make {out}/maps/gradcam/REAL writable and run again; "
        "finished images are kept"
    )
    folder = f"{out}/maps/gradcam/REAL/sub"  # a folder that could not be made: its parent is the one to fix
    assert f"writing {folder}: make {out}/maps/gradcam/REAL writable" in str(
        storage_error(PermissionError(errno.EACCES, "Permission denied", folder), out)
    )
    assert str(storage_error(OSError(errno.EPERM, "Operation not permitted", npy), out)).startswith(
        f"operation not permitted writing {npy}: make {out}/maps/gradcam/REAL writable"
    )
    assert storage_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "in/a.png")), out) is None
    read_only = sqlite3.OperationalError("attempt to write a readonly database")
    read_only.sqlite_errorcode = 8 | 6 << 8  # SQLITE_READONLY_DIRECTORY: OUT refuses the manifest's -wal file
    assert str(storage_error(read_only, out)) == (
        f"permission denied writing {out}/xaibatch.sqlite: make {out} writable and run again; finished images are kept"
    )
    read_only.sqlite_errorcode = 8  # SQLITE_READONLY: the manifest itself
    assert f"make {out}/xaibatch.sqlite writable" in str(storage_error(read_only, out))


def test_a_refused_temporary_file_is_named_as_the_file_meant(tmp_path, monkeypatch):
    """A folder that refuses new files refuses the temporary name first: the error names the file meant, never
    ".real_00001.npy.2.1307.tmp"."""
    import xaibatch.files as files

    def refuse(path, *args, **kwargs):  # a new file's temporary name; the folder itself opens
        if not os.fspath(path).endswith(".tmp"):
            return os.open(path, *args, **kwargs)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch.setattr(files, "os", types.SimpleNamespace(**{**vars(os), "open": refuse}))
    with files.OutputDir(tmp_path) as d, pytest.raises(PermissionError) as raised:
        d.write("maps/a.npy", b"x")
    assert raised.value.filename == str(tmp_path / "maps" / "a.npy")
    monkeypatch.setattr(files, "open", refuse, raising=False)
    with pytest.raises(PermissionError) as raised:
        files.atomic_write_bytes(tmp_path / "b.json", b"{}")
    assert raised.value.filename == str(tmp_path / "b.json")


def test_no_room_for_the_manifest_says_so_too(tmp_path, tiny_ckpt, monkeypatch):
    """A real SQLITE_FULL while the manifest is created: the same line, never "the manifest is unusable"."""
    import xaibatch.manifest as mf

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 2)

    def connect(*a, **k):
        db = sqlite3.connect(*a, **k)
        db.execute("PRAGMA max_page_count = 1")  # no room for a table
        return db

    monkeypatch.setattr(mf, "sqlite3", types.SimpleNamespace(**{**vars(sqlite3), "connect": connect}))
    r = helpers.invoke("run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q", "--workers", "0")
    assert r.exit_code == 3, r.output
    assert error_line(r.output) == (
        f"Error: no space left on device writing {out}/xaibatch.sqlite: free space and run again; "
        "finished images are kept"
    )


# -- real failures: a file size limit, a full tmpfs ------------------------------------------------------------------


def _cli(*args, limit: int | None = None) -> subprocess.CompletedProcess:
    def preexec():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it fail with EFBIG

    return subprocess.run(
        [sys.executable, "-m", "xaibatch", *map(str, args)],
        cwd=REPO,
        env=helpers.ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )


def test_an_atomic_write_refused_midway_leaves_the_old_file_whole(tmp_path):
    """files.atomic_write_bytes (sanity.json, faithfulness-chance.json, serve's flags) writes a temporary file and
    renames it over the target: a write the file system refuses halfway (here a file size limit, EFBIG) leaves the
    previous file as it was and no temporary file, never a truncated target."""
    target = tmp_path / "sanity.json"
    target.write_bytes(b"the previous run's verdicts")
    code = (
        "import errno, sys\n"
        "from pathlib import Path\n"
        "from xaibatch.files import atomic_write_bytes\n"
        "try:\n"
        "    atomic_write_bytes(Path(sys.argv[1]), b'x' * 65536)\n"
        "except OSError as e:\n"
        "    sys.exit(0 if e.errno == errno.EFBIG else 1)\n"
        "sys.exit(2)\n"
    )
    limit = 4096
    p = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=REPO,
        env=helpers.ENV,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert p.returncode == 0, p.stderr
    assert target.read_bytes() == b"the previous run's verdicts"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["sanity.json"]


def test_a_file_size_limit_in_writer_processes(tmp_path, tiny_ckpt):
    """No seam: the kernel refuses a large image's files in a writer process (EFBIG, SIGXFSZ ignored by Python)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 12)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (640, 640, 3), dtype=np.uint8)).save(inp / "img_005.png")  # > 1 MB out
    p = _cli("run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q", "--workers", 0, "--batch-size", BATCH, "--writers", 2,
             limit=1 << 20)  # fmt: skip
    assert p.returncode == 3, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    m = re.fullmatch(
        rf"Error: file too large writing {re.escape(str(out))}/(\S+): raise the file size limit \(ulimit -f\) and "
        r"run again; finished images are kept\n",
        p.stderr,
    )
    assert m and "img_005" in m.group(1), p.stderr
    assert last_run(out) == ("error", p.stderr.strip().removeprefix("Error: "))
    assert assert_committed_whole(out) == BATCH
    again = run(run_opts(inp, out, tiny_ckpt), log=helpers.quiet)  # no limit now
    assert (again.status, again.computed, again.unchanged, again.resumed) == ("ok", 12 - BATCH, BATCH, BATCH)
    check_output_folder(out, inp)


@pytest.mark.parametrize("writers", [0, 2])
def test_a_folder_made_read_only_under_out(tmp_path, tiny_ckpt, writers):
    """chmod a-w OUT/maps/gradcam/REAL: a new image there, and a new folder below it, each stop the run with one
    line naming the file (never its temporary name) and the folder to make writable, exit 3; then a re-run
    finishes."""
    prefix = helpers.without_file_permission_override()
    out = helpers.small_run(tmp_path, tiny_ckpt, 2)
    inp, real = tmp_path / "in", out / "maps" / "gradcam" / "REAL"
    write_images(inp / "REAL" / "sub", 1, seed=7)
    (fresh,) = write_images(tmp_path / "fresh", 1, seed=9)  # new bytes (a renamed image would keep its maps)
    fresh.rename(inp / "REAL" / "new.png")  # a new image: its map is a new file in REAL
    real.chmod(0o555)
    try:
        p = subprocess.run(
            [*prefix, sys.executable, "-m", "xaibatch", "run", inp, "--out", out, "--checkpoint", tiny_ckpt, "-q",
             "--workers", "0", "--writers", str(writers)],
            cwd=REPO, env=helpers.ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        real.chmod(0o755)
    assert p.returncode == 3, p.stderr
    m = re.fullmatch(
        rf"Error: permission denied writing {re.escape(str(real))}/(new\.npy|new\.png|sub): make "
        rf"{re.escape(str(real))} writable and run again; finished images are kept\n",
        p.stderr,
    )
    assert m, p.stderr
    assert last_run(out) == ("error", p.stderr.strip().removeprefix("Error: "))
    again = run(run_opts(inp, out, tiny_ckpt), log=helpers.quiet)
    assert (again.status, again.computed) == ("ok", 2)
    check_output_folder(out, inp)


IN_NAMESPACE = r"""
import json, os, shutil, subprocess, sys
inp, ckpt, mnt, keep, size, writers = sys.argv[1:7]
os.makedirs(mnt, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
out = os.path.join(mnt, "out")
argv = [sys.executable, "-m", "xaibatch", "run", inp, "--out", out, "--checkpoint", ckpt, "-q", "--workers", "0",
        "--batch-size", "4", "--writers", writers]
done = {}
first = subprocess.run(argv, capture_output=True, text=True)
shutil.copytree(out, os.path.join(keep, "failed"))
subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)  # space freed
second = subprocess.run(argv, capture_output=True, text=True)
shutil.copytree(out, os.path.join(keep, "rerun"))
print(json.dumps({"rc": [first.returncode, second.returncode], "stderr": [first.stderr, second.stderr]}))
"""


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = "mkdir -p /tmp/.xb-probe && mount -t tmpfs -o size=64k tmpfs /tmp/.xb-probe"
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("writers", [0, 2])
def test_a_real_full_file_system(tmp_path, tiny_ckpt, writers):
    """A tmpfs of 640 KiB fills up part-way (in a writer or the manifest); the re-run after it grows finishes."""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -Urm)")
    inp, keep = tmp_path / "in", tmp_path / "keep"
    write_images(inp, 60)
    p = subprocess.run(
        ["unshare", "-Urm", sys.executable, "-c", IN_NAMESPACE, inp, tiny_ckpt, tmp_path / "mnt", keep, "640k",
         str(writers)],
        cwd=REPO, env=helpers.ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    print(got["stderr"][0])
    assert got["rc"] == [3, 0], got
    mnt_out = f"{tmp_path / 'mnt'}/out"
    assert re.fullmatch(
        rf"Error: no space left on device writing {re.escape(mnt_out)}/\S+: free space and run again; "
        r"finished images are kept\n",
        got["stderr"][0],
    ), got["stderr"][0]
    failed = keep / "failed"
    status, reason = last_run(failed)
    assert status == "error" and reason == got["stderr"][0].strip().removeprefix("Error: ")
    kept = assert_committed_whole(failed)
    assert 0 < kept < 60
    rerun = keep / "rerun"
    assert manifest_rows(rerun, "SELECT status, n_computed, n_unchanged, n_resumed FROM runs ORDER BY id")[-1] == (
        "ok",
        60 - kept,
        0,
        kept,
    )
    check_output_folder(rerun, inp)


def test_a_finished_run_that_cannot_note_its_report_is_done_says_so(tmp_path, tiny_ckpt, monkeypatch):
    """The last write of a run notes that its report is done (recovery.mark_run). That write failing was passed
    over in silence, and the note left behind made the next run record this finished run as "killed" while
    reporting: now the run says so in a warning. Its images and report are done: its exit code stays theirs (0),
    not a full disk's 3 nor a "damaged manifest" for a lock another SQLite client held too long."""
    from xaibatch.manifest import Manifest
    from xaibatch.pipeline.recovery import REPORTING

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 4)
    real = Manifest.set_meta

    def set_meta(self, key, value):
        if key == REPORTING and value == "":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, key, value)

    monkeypatch.setattr(Manifest, "set_meta", set_meta)
    r = helpers.invoke("run", inp, "--out", out, "--checkpoint", tiny_ckpt, "--workers", "0")
    assert r.exit_code == 0, r.output
    warned = [line for line in r.output.splitlines() if "could not note" in line]
    assert len(warned) == 1 and warned[0].startswith(
        "xaibatch: warning: could not note in the manifest that the report is done (no space left on device"
    ), r.output
    assert warned[0].endswith("the next run will list this run as killed while reporting")
    assert "Error" not in r.output
