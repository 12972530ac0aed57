"""Odd failures give one clear line and the right exit code: Ctrl-C while starting, NaN weights, bad templates,
a damaged manifest, names that are not UTF-8, CSV formulas, huge maps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Sends this process SIGINT when torch starts loading: a Ctrl-C at the worst moment of the slow start.
_CTRL_C_AT_TORCH_IMPORT = textwrap.dedent("""
    import os, signal, sys
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                os.kill(os.getpid(), signal.SIGINT)
            return None
    sys.meta_path.insert(0, Finder())
    sys.argv = ["xaibatch", "--version"]
""")


@pytest.mark.parametrize("entry", ["from xaibatch.cli import main; main()", "import runpy; "
                                   "runpy.run_module('xaibatch', run_name='__main__')"], ids=["script", "python-m"])
def test_ctrl_c_while_importing_is_exit_5_with_one_line(entry):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", _CTRL_C_AT_TORCH_IMPORT + entry], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert p.stderr.strip() == "Error: interrupted while starting"
