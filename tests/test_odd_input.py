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


def test_folder_symlink_out_of_the_input_is_not_followed_unless_asked(tmp_path, tiny_ckpt):
    outside = tmp_path / "elsewhere"
    write_images(outside, 2, seed=5)
    root = tmp_path / "in"
    write_images(root, 1)
    os.symlink(outside, root / "out_link")
    os.symlink(root / "inner", root / "in_link")  # a link that stays inside is followed as before
    write_images(root / "inner", 1, seed=6)
    found = scan(root)
    assert [e.rel for e in found.images] == ["img_000.png", "inner/img_000.png"]
    assert [rel for rel, _ in found.skipped] == ["out_link"]
    assert "outside the input folder" in found.skipped[0][1] and "--follow-links" in found.skipped[0][1]
    assert len(scan(root, follow_links=True).images) == 4
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["run", str(root), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers",
                                 "0", "-q", "--follow-links"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "images" / "out_link").iterdir()) == ["img_000.png", "img_001.png"]
