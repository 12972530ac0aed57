"""Start-up: help never loads the heavy libraries (torch, timm, captum, lime, pytorch-grad-cam, matplotlib, ray)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "timm", "captum", "lime", "pytorch_grad_cam", "matplotlib", "skimage", "sklearn", "ray")


def _modules_after(code: str) -> list[str]:
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_nothing_heavy():
    loaded = _modules_after("""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        for args in (["--help"], *([c, "--help"] for c in cli.commands)):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 0 and "Usage:" in r.output, (args, r.output)
    """)
    assert loaded == []


def test_the_package_and_its_light_modules_import_nothing_heavy():
    loaded = _modules_after("""
        import xaibatch, xaibatch.cli, xaibatch.errors, xaibatch.layout, xaibatch.defaults, xaibatch.runlog
    """)
    assert loaded == []


def test_unchanged_rerun_never_imports_torch(tmp_path, tiny_ckpt):
    """Cron over a folder with nothing new: a scan, a manifest read and the report, but no model load."""
    from conftest import write_images

    from xaibatch.pipeline import RunOptions, run

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 6)
    first = run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt, workers=0,
                           handle_signals=False), log=lambda s: None)
    assert first.computed == 6
    probe = f"""
        import sys
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(tiny_ckpt)!r}), workers=0, handle_signals=False), log=lambda s: None)
        assert (r.computed, r.unchanged, r.layer) == (0, 6, {first.layer!r}), r
    """
    assert _modules_after(probe) == []  # no torch, timm, captum, lime; no matplotlib: no figure changed (issue 20)
    # Something to compute (a new image): the model loads as before, with the same hashes.
    write_images(inp, 7)
    again = run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt, workers=0,
                           handle_signals=False), log=lambda s: None)
    assert (again.computed, again.unchanged) == (1, 6)
    # A changed option (another method) is a new request: it loads the model and computes only that method.
    third = run(RunOptions(input_dir=inp, out_dir=out, methods=["gradcam", "guided-gradcam"], checkpoint=tiny_ckpt,
                           workers=0, handle_signals=False), log=lambda s: None)
    assert (third.computed, third.unchanged) == (7, 0)


def test_the_clis_builtin_method_names_are_the_registrys():
    from xaibatch.cli import BUILTIN_METHODS
    from xaibatch.methods import METHODS

    assert set(BUILTIN_METHODS) <= set(METHODS)
    assert {m for m in METHODS if ":" not in m} == set(BUILTIN_METHODS)


def test_an_unchanged_rerun_from_the_cli_imports_no_torch(tmp_path, tiny_ckpt):
    from click.testing import CliRunner

    from conftest import write_images
    from xaibatch.cli import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 4)
    args = ["run", str(inp), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        r = CliRunner().invoke(cli, {args!r})
        assert r.exit_code == 0, r.output
    """)
    assert "torch" not in loaded and "timm" not in loaded
