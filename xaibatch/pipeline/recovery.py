"""Clean up after a run that did not finish: stale temporary files and files no manifest row points at."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable

from ..manifest import Manifest


_TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$|^\.xaibatch-write-test\.(\d+)$")


def sweep_temp_files(out: Path, stale: Callable[[int], bool]) -> int:
    """Delete temporary files (``.<name>.<pid>.tmp``, see files.atomic_write_bytes) whose writer ``stale(pid)``.

    Walks the whole folder, so it runs only after an unclean stop; call it only while holding the lock.
    """
    n = 0
    stack = [out]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for ent in it:
                try:
                    if ent.is_dir(follow_symlinks=False):
                        stack.append(Path(ent.path))
                    elif (m := _TEMP_RE.match(ent.name)) and stale(int(m.group(1) or m.group(2))):
                        os.unlink(ent.path)
                        n += 1
                except OSError:
                    pass
    return n


_OWN_DIRS = ("images", "thumbs", "maps")


_OWN_SUFFIXES = (".png", ".npy")


def sweep_orphans(out: Path, manifest: Manifest) -> int:
    """Delete map/image files under images/, thumbs/, maps/ that no manifest row points at.

    A run killed after writing a batch's files but before committing its rows
    leaves such files; normally the next run rewrites them, but not if the image
    has left the input meanwhile. Only run after an unclean stop (it walks every file).
    """
    referenced = manifest.referenced_files()
    n = 0
    for top in _OWN_DIRS:
        root = out / top
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if not name.endswith(_OWN_SUFFIXES):
                    continue
                full = os.path.join(dirpath, name)
                rel = PurePosixPath(*Path(os.path.relpath(full, out)).parts).as_posix()
                if rel not in referenced:
                    try:
                        os.unlink(full)
                        n += 1
                    except OSError:
                        pass
    return n
