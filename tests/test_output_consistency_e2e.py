"""One hostile folder end to end: odd names, links out, unreadable and empty folders, corrupt files; then
deletions and a re-run; the output folder is checked for consistency after each run (tests/outcheck.py)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from oddnames import make_unreadable
from outcheck import check_output_folder
from xaibatch.cli import cli
from xaibatch.tools import synth

LONG = "x" * 247


def _hostile(root: Path, outside: Path) -> None:
    fake, real = root / "FAKE", root / "REAL"
    for rel in [
        "a.jpg",
        "a.html/b.png",
        f"{LONG}.png",
        f"{LONG}.jpg",
        "photo.jpg",
        "photo.png/c.png",
        '=HYPERLINK("http://evil","x").png',
        "+1.png",
        "@SUM(A1).png",
        "<b>bold</b>.png",
        "plain.png",
    ]:
        synth.solid(fake / rel)
    (fake / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    bad = os.fsencode(fake) + b"/bad\xffname.png"
    with open(bad, "wb") as f:
        f.write((fake / "plain.png").read_bytes())
    os.makedirs(os.fsencode(fake) + b"/folder\xfe", exist_ok=True)
    with open(os.fsencode(fake) + b"/folder\xfe/in.png", "wb") as f:
        f.write((fake / "plain.png").read_bytes())
    synth.solid(fake / "locked" / "hidden.png")
    synth.solid(outside / "secret.png")
    os.symlink(outside, fake / "out_link")
    synth.solid(outside / "private.png")
    os.chmod(outside / "private.png", 0o600)
    os.symlink(outside / "private.png", fake / "innocent.png")  # a file link out: refused as folder links are
    os.symlink(fake / "plain.png", fake / "alias.png")  # a file link inside the input: an image like any other
    with (fake / "big.png").open("wb") as f:  # sparse, 16 TB less a page: never read, let alone hashed
        f.write((fake / "plain.png").read_bytes())
        f.truncate(16 * 1024**4 - 4096)
    for i in range(3):
        synth.solid(real / f"r{i}.png", (10, 10 * i, 200))
    (root / "EMPTY").mkdir()
    # Hostile ground-truth masks (issue 22 item 7): skipped with a reason, never a crash of the report.
    import numpy as np

    np.save(fake / "plain.mask.npy", np.zeros((10, 12), dtype=[("a", "<i4"), ("b", "<f4")]))
    np.save(fake / "photo.mask.npy", np.zeros((3000, 3334), bool))  # 10M pixels
    os.mkfifo(fake / "+1.mask.npy")
    os.symlink("/dev/zero", real / "r0.mask.npy")


@pytest.mark.slow
def test_hostile_folder_end_to_end(tmp_path, tiny_ckpt, monkeypatch):
    root, outside, out = tmp_path / "in", tmp_path / "outside", tmp_path / "out"
    _hostile(root, outside)
    make_unreadable(root / "FAKE" / "locked", monkeypatch)
    args = [
        "run",
        str(root),
        "--checkpoint",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--workers",
        "0",
        "-m",
        "gradcam",
        "-m",
        "lime",
        "--lime-samples",
        "20",
        "--batch-size",
        "4",
    ]

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output  # some failed, none fatal
    assert "Traceback" not in r.output and "internal error" not in r.output
    stems = check_output_folder(out, root)
    assert len(stems) == 15
    assert "FAKE/out_link/secret.png" not in stems and "FAKE/alias.png" in stems
    db_failures = {line.split(":")[0].strip() for line in r.output.splitlines() if line.startswith("  ")}
    for rel in (
        "FAKE/corrupt.png",
        "FAKE/locked",
        "FAKE/out_link",
        "FAKE/bad\\xffname.png",
        "FAKE/folder\\xfe",
        "FAKE/innocent.png",
        "FAKE/big.png",
    ):
        assert rel in db_failures, (rel, r.output)
    assert "FAKE/innocent.png: symlink to a file outside the input folder; not followed" in r.output
    assert "FAKE/big.png: file too large (17,592,186,040,320 bytes" in r.output
    assert not list(out.rglob("innocent*"))
    assert "class folder 'EMPTY' holds no images; ignored" in r.output
    with (out / "predictions.csv").open(newline="") as f:
        cells = [c for row in csv.reader(f) for c in row[:3]]
    assert not [c for c in cells if c[:1] in "=+-@"]

    # A link planted below the report's detail folder (issue 22 item 4) is never written through.
    os.symlink(outside, out / "detail" / "FAKE")
    (out / ".xaibatch-report.json").unlink()

    # Deletions: a whole class folder emptied, a clashing name gone, then a re-run.
    for p in (root / "REAL").iterdir():
        p.unlink()
    (root / "FAKE" / "a.jpg").unlink()
    (root / "FAKE" / f"{LONG}.jpg").unlink()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert "5 removed" in r.output and "class folder 'REAL' holds no images; kept as a class" in r.output
    stems2 = check_output_folder(out, root)
    assert set(stems2) == set(stems) - {"REAL/r0.png", "REAL/r1.png", "REAL/r2.png", "FAKE/a.jpg", f"FAKE/{LONG}.jpg"}
    assert all(stems2[k] == stems[k] for k in stems2)  # stems are kept for good
    assert sorted(p.name for p in outside.iterdir()) == ["private.png", "secret.png"]  # nothing written there
    os.unlink(out / "detail" / "FAKE")

    # A third run changes nothing and stays consistent.
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and " 0 computed" in r.output, r.output
    check_output_folder(out, root)
