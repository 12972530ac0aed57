"""How this file system takes crash-safe small files from several processes at once: the writer's floor (one
atomic file = a temporary name, one write, close, rename; no encoding) with 1, 2, 4, 8 processes, all into one
folder and each into a folder of its own, and the same with O_TMPFILE + linkat (what the writer uses where the
kernel has it).

    python benchmarks/fs_scale.py --root /tmp --files 12000 --procs 1,2,4,8

A run writes a class's maps, overlays and display copies into one folder each (``maps/gradcam/REAL/`` ...), so
several writer processes create files in the same folders at once: where the kernel serialises the creations in
one folder (its inode lock; overlay file systems add their own), more writer processes do not write faster, and
the writer's processes against the floor of one thread (``xaibatch bench``'s "writer alone / file system floor")
says so. Prints files/s per configuration and against one process in one folder. Rounds alternate the
configurations and each keeps its fastest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing import get_context


def _named(d: int, i: int, body: bytes) -> None:
    fd = os.open(f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=d)
    os.write(fd, body)
    os.close(fd)
    os.rename(f".{i}.tmp", f"{i}", src_dir_fd=d, dst_dir_fd=d)


def _unnamed(d: int, i: int, body: bytes) -> None:
    fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=d)
    try:
        os.write(fd, body)
        os.link(f"/proc/self/fd/{fd}", f"{i}", dst_dir_fd=d, follow_symlinks=True)
    finally:
        os.close(fd)


def _worker(folder: str, first: int, n: int, size: int, how: str, start, done) -> None:
    body = bytes(size)
    d = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    write = _unnamed if how == "tmpfile" else _named
    start.wait()
    for i in range(first, first + n):
        write(d, i, body)
    os.close(d)
    done.put(time.perf_counter())


def one(root: str, files: int, procs: int, shared: bool, size: int, how: str) -> float:
    """files/s for ``files`` files written by ``procs`` processes (into one folder if ``shared``)."""
    ctx = get_context("fork")
    top = tempfile.mkdtemp(prefix="fs-scale-", dir=root)
    try:
        folders = [os.path.join(top, "one" if shared else f"p{k}") for k in range(procs)]
        for f in set(folders):
            os.makedirs(f, exist_ok=True)
        start, done = ctx.Barrier(procs + 1), ctx.Queue()
        per = files // procs
        ps = [
            ctx.Process(target=_worker, args=(folders[k], k * per, per, size, how, start, done)) for k in range(procs)
        ]
        for p in ps:
            p.start()
        start.wait()
        t0 = time.perf_counter()
        ends = [done.get() for _ in ps]
        for p in ps:
            p.join()
        return per * procs / (max(ends) - t0)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=tempfile.gettempdir(), help="the file system to measure (a folder on it)")
    ap.add_argument("--files", type=int, default=12000)
    ap.add_argument("--procs", default="1,2,4,8")
    ap.add_argument("--size", type=int, default=3000, help="bytes a file (a 32 px overlay is about 3 KB)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops it: its folders are removed on the way
    hows = ["named"] + (["tmpfile"] if hasattr(os, "O_TMPFILE") and sys.platform == "linux" else [])
    configs = [(p, s, h) for h in hows for s in (True, False) for p in map(int, a.procs.split(",")) if s or p > 1]
    best: dict[tuple, float] = {}
    for _ in range(a.rounds):
        for c in configs:
            try:
                r = one(a.root, a.files, c[0], c[1], a.size, c[2])
            except OSError as e:  # O_TMPFILE refused by this file system
                print(f"{c}: {e}", file=sys.stderr)
                continue
            best[c] = max(best.get(c, 0.0), r)
    print(f"{a.root}: {a.files} files of {a.size} bytes, {os.cpu_count()} CPUs, best of {a.rounds} rounds")
    print("| how | processes | folders | files/s | vs 1 process |")
    print("|---|---:|---|---:|---:|")
    for (p, s, h), r in best.items():
        base = best.get((1, True, h))
        print(f"| {h} | {p} | {'one' if s else 'one each'} | {r:,.0f} | {r / base:.2f}x |" if base else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
