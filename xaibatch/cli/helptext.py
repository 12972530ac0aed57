"""--help's formatter: click's, except that a line never breaks at a hyphen.

click wraps help with textwrap's default ``break_on_hyphens=True``: an option or a method named in a sentence came
out split over two lines (``--image-`` / ``size``, ``guided-`` / ``gradcam``), which a reader cannot search for
nor copy. click's formatter has no switch for it, so its text goes through click's wrapping with every hyphen
stood in for by a character textwrap does not break at (U+2011, one column wide, as the hyphen), put back as the
formatter writes the lines. On a narrow terminal the options' names take less than click's 30 columns (a longer name
gets a line of its own, as in click), so that the text beside them is still wide enough for a path or an option
with its value: click cuts a word longer than its column in two. Only click's public API: ``HelpFormatter``, ``Context.formatter_class``,
``Command.context_class``.
"""

from __future__ import annotations

import sys

import click

_HYPHEN = "-"
_KEPT = "\u2011"  # NON-BREAKING HYPHEN: no line breaks after it; the help text itself never holds one
TEXT_MIN = 36  # columns of an option's help beside its name: the longest word in it ("examples/cifake_cnn.py:build).")


def _kept(text: str) -> str:
    return text.replace(_HYPHEN, _KEPT)


class HelpFormatter(click.HelpFormatter):
    """click's HelpFormatter whose wrapped text (usage, paragraphs, the options' and commands' help) breaks lines
    only at spaces."""

    def write(self, string: str) -> None:
        super().write(string.replace(_KEPT, _HYPHEN))

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, _kept(args), prefix)

    def write_text(self, text: str) -> None:
        super().write_text(_kept(text))

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        # click's text column is width - first column - 2 wide; its width is never under 50
        col_max = max(min(col_max, self.width - self.current_indent - col_spacing - TEXT_MIN), 8)
        super().write_dl([(first, _kept(second)) for first, second in rows], col_max, col_spacing)


class Context(click.Context):
    formatter_class = HelpFormatter


def docstring(callback) -> str | None:
    """``callback``'s docstring, which click takes as its command's help; under ``python -OO`` (PYTHONOPTIMIZE=2,
    which strips docstrings) read from its source, else ``--help`` described no command. None without one."""
    if callback is None:
        return None
    if sys.flags.optimize < 2:
        return callback.__doc__
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(callback))))
    except (OSError, TypeError, SyntaxError):  # no source (a .pyc-only install): no help, as before
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    return ast.get_docstring(node, clean=False)


class Command(click.Command):
    """A command whose --help is written by HelpFormatter (every xaibatch command is one), its help its
    docstring under ``python -OO`` too."""

    context_class = Context

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.help is None:
            self.help = docstring(self.callback)
