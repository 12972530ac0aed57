"""Odd folders and names: unreadable subfolders, clashing or too long stems, empty classes, links out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_images
from oddnames import make_unreadable
from xaibatch.cli import cli
from xaibatch.data import scan


def test_unreadable_subfolder_is_skipped_and_the_rest_scanned(tmp_path, monkeypatch):
    root = tmp_path / "in"
    write_images(root / "FAKE", 2)
    write_images(root / "REAL", 2, seed=1)
    write_images(root / "REAL" / "locked", 1, seed=2)
    try:
        make_unreadable(root / "REAL" / "locked", monkeypatch)
        found = scan(root)
    finally:
        (root / "REAL" / "locked").chmod(0o755)
    assert [e.rel for e in found.images] == ["FAKE/img_000.png", "FAKE/img_001.png", "REAL/img_000.png",
                                             "REAL/img_001.png"]
    assert [rel for rel, _ in found.skipped] == ["REAL/locked"]
    assert "cannot list folder" in found.skipped[0][1]
