"""Helpers for hostile-folder tests: an unreadable folder, even when the tests run as root."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def make_unreadable(folder: Path, monkeypatch) -> None:
    """Make ``folder`` unlistable (chmod 000; as root, where that does not bite, os.stat/listdir are patched)."""
    folder.chmod(0)
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return
    real_stat, real_listdir, real_scandir = os.stat, os.listdir, os.scandir
    target = os.fsencode(os.path.abspath(folder))

    def inside(p) -> bool:
        if isinstance(p, int):
            return False
        return os.path.dirname(os.fsencode(os.path.abspath(os.fspath(p)))) == target

    def is_it(p) -> bool:
        return not isinstance(p, int) and os.fsencode(os.path.abspath(os.fspath(p))) == target

    def denied(p):
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(p))

    def stat(p, *a, **k):
        if inside(p):
            raise denied(p)
        return real_stat(p, *a, **k)

    def listdir(p="."):
        if is_it(p):
            raise denied(p)
        return real_listdir(p)

    def scandir(p="."):
        if is_it(p):
            raise denied(p)
        return real_scandir(p)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)
