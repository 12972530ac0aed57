"""--help at a usual and at narrow terminal widths: no option or method name split over two lines."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from xaibatch.cli import cli

# click's formatter is at least 50 columns wide; a terminal of 80 columns gives it 78
WIDTHS = (78, 58, 50)
COMMANDS = ((),) + tuple((name,) for name in cli.commands)


def _help(path: tuple[str, ...], width: int) -> str:
    r = CliRunner().invoke(cli, [*path, "--help"], terminal_width=width, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _words(text: str) -> str:
    return " ".join(text.split())


def _wrapped_texts(path: tuple[str, ...]) -> list[str]:
    """Every text click rewraps in the command's help: the options' help, the paragraphs of the description
    (not the ``\\b`` blocks it keeps as written), and a group's commands' summaries."""
    cmd = cli.commands[path[0]] if path else cli
    texts = [p.help for p in cmd.params if isinstance(p, click.Option) and p.help]
    texts += [par for par in (cmd.help or "").split("\n\n") if not par.lstrip().startswith("\b")]
    if isinstance(cmd, click.Group):
        texts += [c.get_short_help_str(limit=1000) for c in cmd.commands.values()]
    return texts


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "xaibatch")
def test_help_never_splits_a_word(path, width):
    """Each sentence reads back word for word from the wrapped help: no ``--image-`` / ``size``, no
    ``guided-`` / ``gradcam``, no ``examples/cifake_cn`` / ``n.py`` cut in a narrow column."""
    text = _help(path, width)
    joined = _words(text)
    for sentence in _wrapped_texts(path):
        assert _words(sentence) in joined, f"split at width {width}: {sentence!r}\n{text}"
    assert not re.search(r"\w-\n", text), text


def test_help_keeps_the_hyphens_it_does_not_break_at():
    """The stand-in that keeps a hyphen from breaking a line never reaches the reader."""
    text = _help(("run",), 58)
    assert "--image-size" in text and "guided-gradcam" in text
    assert text.isascii()


def test_help_at_80_columns_keeps_clicks_layout():
    """Only narrow terminals get a narrower option column: at 80 columns the help starts beside a name of up to
    30 columns, as click lays it out."""
    lines = _help(("run",), 78).splitlines()
    method = next(line for line in lines if line.lstrip().startswith("-m, --method TEXT"))
    assert method.index("Explanation method") == 2 + 30 + 2


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "xaibatch")
def test_help_under_python_oo_is_the_same(path):
    """PYTHONOPTIMIZE=2 (python -OO: docstrings stripped, set by some images and services) left ``xaibatch --help``
    with no command described and each command's --help without its description and examples."""
    import subprocess
    import sys

    from helpers import ENV, REPO

    def helped(optimize: str) -> str:
        env = {**ENV, "PYTHONOPTIMIZE": optimize, "COLUMNS": "100"}
        argv = [sys.executable, "-c", "from xaibatch.cli import main; main()", *path, "--help"]
        r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    plain, stripped = helped(""), helped("2")
    assert len(plain.splitlines()) > 10
    assert stripped == plain
