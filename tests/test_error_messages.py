"""Small defects found by trying to break xaibatch (issue 22, item 10): each with the message the user now sees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import write_images
from xaibatch import layout
from xaibatch.errors import UsageError
from xaibatch.manifest import Manifest
from xaibatch.pipeline import RunOptions
from xaibatch.pipeline.guards import check_same_input, default_out


def test_the_out_collision_message_suggests_a_free_folder(tmp_path, monkeypatch):
    """a/demo/test and b/demo/test share the default --out outputs/demo-test: never suggest the refused one."""
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a" / "demo" / "test", tmp_path / "b" / "demo" / "test"
    write_images(a, 1), write_images(b, 1)
    out = default_out(b)
    assert out == default_out(a) == Path("outputs/demo-test")
    out.mkdir(parents=True)
    m = Manifest(out / layout.MANIFEST)
    m.set_meta("input_dir", str(a.resolve()))
    m.put_failure("img_000.png", "corrupt", m.start_run(str(a), {}, "p"))  # a report of a (one without rows: of none)
    m.close()
    with pytest.raises(UsageError) as ei:
        check_same_input(RunOptions(input_dir=b, out_dir=out, methods=["gradcam"]), out)
    assert "(e.g. --out outputs/demo-test-2)" in str(ei.value)
    Path("outputs/demo-test-2").mkdir()
    with pytest.raises(UsageError, match=r"e\.g\. --out outputs/demo-test-3\)"):
        check_same_input(RunOptions(input_dir=b, out_dir=out, methods=["gradcam"]), out)


def test_names_in_stderr_cannot_forge_log_lines(tmp_path, tiny_ckpt):
    from click.testing import CliRunner

    from xaibatch.cli import cli

    inp = tmp_path / "in"
    write_images(inp, 2)
    (inp / "x\nxaibatch: done, all good\x1b[32m.png").write_bytes(b"not an image at all")
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(inp),
            "--unlabeled",
            "--checkpoint",
            str(tiny_ckpt),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "0",
        ],
    )
    assert r.exit_code == 1, r.output
    assert "\x1b" not in r.output
    assert "  x\\nxaibatch: done, all good\\x1b[32m.png: not an image" in r.output
    assert not [line for line in r.output.splitlines() if line.startswith("xaibatch: done")]


@pytest.mark.parametrize("spp,bits,fmt", [(3, 32, 3), (5, 32, 3), (4, 64, 3)])
def test_tiffs_pil_cannot_decode_are_named_as_tiffs(tmp_path, spp, bits, fmt):
    from tinytiff import tiff

    from xaibatch.data import load_image
    from xaibatch.errors import DecodeError

    p = tmp_path / "x.tif"
    p.write_bytes(tiff(spp, bits, fmt))
    with pytest.raises(DecodeError) as ei:
        load_image(p)
    assert str(ei.value).startswith("unsupported TIFF variant (unknown pixel mode): PIL cannot decode its samples")


def test_an_all_zero_checkpoint_gets_a_whole_sentence_and_no_unsafe_advice(tmp_path):
    from xaibatch.errors import ModelError
    from xaibatch.model.loading import read_checkpoint

    p = tmp_path / "zero.pt"
    p.write_bytes(bytes(4096))
    with pytest.raises(ModelError) as ei:
        read_checkpoint(p)
    msg = str(ei.value)
    assert "weights_only=False" not in msg and "`" not in msg
    assert msg == (
        f"{p}: not a PyTorch checkpoint xaibatch can read (torch's legacy .tar format, or another kind of "
        "file such as an all-zero one); re-save the weights with torch.save(model.state_dict(), ...)"
    )


def test_long_error_lines_are_cut_at_a_word():
    from xaibatch.model.loading import _first_line

    cut = _first_line(ValueError("word " * 100))
    assert cut.endswith("word …") and len(cut) <= 202


def test_a_signal_during_the_report_says_interrupted(tmp_path, tiny_ckpt, monkeypatch):
    """A double SIGTERM while the report is written (KeyboardInterrupt): the run row said "error" with exit 5."""
    import xaibatch.report as report
    from xaibatch.pipeline import run

    inp = tmp_path / "in"
    write_images(inp, 2)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    opts = RunOptions(
        input_dir=inp,
        out_dir=tmp_path / "o",
        methods=["gradcam"],
        checkpoint=tiny_ckpt,
        workers=0,
        labeled=False,
        handle_signals=False,
    )
    with pytest.raises(KeyboardInterrupt):
        run(opts, log=lambda s: None)
    m = Manifest(tmp_path / "o" / layout.MANIFEST)
    try:
        assert m.runs()[-1].status == "interrupted"
        assert not m.get_meta("reporting_run")
    finally:
        m.close()


def test_an_out_path_too_long_for_sqlite_is_refused_before_it_is_created(tmp_path):
    from xaibatch.pipeline.guards import check_folders

    write_images(tmp_path / "in", 1)
    out = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 120)
    with pytest.raises(
        UsageError,
        match=r"is too long a path: the manifest's files there would take \d+ bytes, and "
        r"SQLite opens at most 511; choose a shorter --out",
    ):
        check_folders(RunOptions(input_dir=tmp_path / "in", out_dir=out, methods=["gradcam"]))
    assert not (tmp_path / ("d" * 200)).exists()
    ok = tmp_path / ("d" * 100)
    check_folders(RunOptions(input_dir=tmp_path / "in", out_dir=ok, methods=["gradcam"]))


def test_folders_deeper_than_path_max_are_reported(tmp_path):
    import os

    from xaibatch.scan import scan

    root = tmp_path / "in"
    write_images(root, 1)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:  # 20 levels of 250 bytes: past PATH_MAX (4096), made relative to descriptors
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            new = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write((root / "img_000.png").read_bytes())
    finally:
        os.close(fd)
    found = scan(root)
    assert [e.rel for e in found.images] == ["img_000.png"]
    assert len(found.skipped) == 1
    rel, reason = found.skipped[0]
    assert rel.startswith("d" * 250 + "/") and reason.startswith("path too long to open (")
    assert reason.endswith("the system's limit is 4096): its images are not scanned")


def test_ctrl_c_while_the_cli_imports_is_one_line_and_exit_5(monkeypatch, capsys):
    """The console script's entry point catches a Ctrl-C during the import of click and the CLI (no traceback,
    no exit 130)."""
    import builtins
    import sys

    from xaibatch import entry

    real_import = builtins.__import__

    def importing(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "cli" and level == 1 or name == "xaibatch.cli":
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.delitem(sys.modules, "xaibatch.cli", raising=False)
    monkeypatch.setattr(builtins, "__import__", importing)
    with pytest.raises(SystemExit) as ei:
        entry.main()
    assert ei.value.code == 5
    assert capsys.readouterr().err == "Error: interrupted while starting\n"


def test_the_console_script_uses_the_guarded_entry_point():
    # Read as text, not with tomllib: tomllib is Python 3.11+, and requires-python says 3.10.
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    scripts = text.split("\n[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    assert re.findall(r'^xaibatch\s*=\s*"([^"]*)"\s*$', scripts, re.M) == ["xaibatch.entry:main"]


def test_an_unknown_target_layer_names_close_ones_the_top_level_and_says_which_convs_it_lists():
    # "--target-layer nope" listed only the last 12 conv layers, as if they were all, and never the stages (s3:
    # the automatic layer the report shows); a near miss got no suggestion.
    import timm

    from xaibatch.errors import ModelError
    from xaibatch.model.layers import find_target_layer

    model = timm.create_model("regnetx_002", pretrained=False, num_classes=2)
    with pytest.raises(ModelError) as e:
        find_target_layer(model, 64, "s3.b1.conv9")
    line = str(e.value)
    assert "\n" not in line and line.startswith("model has no layer 's3.b1.conv9'; did you mean s3.b1.conv3")
    assert "its top-level layers: stem, s1, s2, s3, s4, final_conv, head" in line
    assert "the last 12 of its 44 conv layers: s4.b4.conv1.conv," in line
