"""Start-up: help never loads the heavy libraries (torch, timm, captum, lime, pytorch-grad-cam, matplotlib)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "timm", "captum", "lime", "pytorch_grad_cam", "matplotlib", "skimage", "sklearn")


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
