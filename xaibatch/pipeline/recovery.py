"""Clean up after a run that did not finish: stale temporary files and files no manifest row points at."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from .. import layout
from ..files import walk_files
from ..manifest import Manifest


_TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$|^\.xaibatch-write-test\.(\d+)$")


def sweep_temp_files(out: Path, stale: Callable[[int], bool]) -> int:
    """Delete temporary files (``.<name>.<pid>.tmp``, see files.atomic_write_bytes) whose writer ``stale(pid)``.

    Walks the whole folder, so it runs only after an unclean stop; call it only while holding the lock.
    """
    n = 0
    for _rel, path in walk_files(out):
        m = _TEMP_RE.match(os.path.basename(path))
        if m and stale(int(m.group(1) or m.group(2))):
            try:
                os.unlink(path)
                n += 1
            except OSError:
                pass
    return n


def sweep_orphans(out: Path, manifest: Manifest) -> int:
    """Delete map/image files under images/, thumbs/, maps/ that no manifest row points at.

    A run killed after writing a batch's files but before committing its rows
    leaves such files; normally the next run rewrites them, but not if the image
    has left the input meanwhile. Only run after an unclean stop (it walks every file).
    """
    referenced = manifest.referenced_files()
    n = 0
    for rel, path in walk_files(out, layout.PICTURE_DIRS):
        if rel.endswith(layout.PICTURE_SUFFIXES) and rel not in referenced:
            try:
                os.unlink(path)
                n += 1
            except OSError:
                pass
    return n
