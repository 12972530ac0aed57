"""The one place where library errors become a one-line message and an exit code."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import click

from ..errors import (
    Caller,
    ExitCode,
    XaibatchError,
    outcome,
)
from ..console import reader_gone, silence, write_line
from .helptext import Context, docstring


def exit_codes_help(meanings: dict[ExitCode, str] | None = None) -> str:
    """A command's help epilog: the exit codes it can end with and what each means (default: run's table)."""
    rows = meanings if meanings is not None else {c: c.meaning for c in ExitCode}
    return "\b\nExit codes:\n" + "\n".join(f"  {int(c)}  {m}" for c, m in rows.items())


EXIT_CODES_HELP = exit_codes_help()


class Failure(click.ClickException):
    """A one-line error with xaibatch's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        write_line(f"Error: {self.format_message()}", sys.stderr)  # a gone terminal: the line goes nowhere


# A bare `xaibatch` (or a group without its command) shows the help, as click's usage error: left as it is.
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def one_line(e: click.UsageError, command_path: str | None = None) -> click.ClickException:
    """click's usage error (a usage line, a hint and the error: four lines) as one line that names the help;
    ``command_path``: the command's, for an error click raised without its context ("Option '-m' requires an
    argument.")."""
    if isinstance(e, _HELP):
        return e
    message = e.format_message()
    path = e.ctx.command_path if e.ctx is not None else command_path
    # a message that already says where to look (e.g. "see `xaibatch methods`") keeps its one pointer
    where = f" (see '{path} --help')" if path and "see `" not in message else ""
    return Failure(f"{message}{where}", e.exit_code)


def echo(text: str) -> None:
    """Print one line of a command's output (a listing, a table, a verdict): a reader that went away
    (``| head -1``) is no error, the rest goes nowhere and the command ends as it would have (console.write_line)."""
    write_line(text)


def say(text: str) -> None:
    """One line on stderr (progress, a warning, what a recovery cleaned): a terminal that has gone (closed while the
    command ignores SIGHUP) fails nothing (console.write_line)."""
    write_line(text, sys.stderr)


def _say_nothing(text: str) -> None:
    pass


def notes(quiet: bool) -> Callable[[str], None]:
    """The ``log`` of a command: :func:`say`, or with ``-q`` nowhere (its ``Error:`` line still comes, from here)."""
    return _say_nothing if quiet else say


def _reader_went_away() -> bool:
    """After a BrokenPipeError: True (and stdout silenced) when it was stdout's reader that left."""
    if not reader_gone(sys.stdout):
        return False
    silence(sys.stdout)
    return True


_COMMAND_PATH = "xaibatch.command_path"  # ctx.meta: the command the group resolved, for one_line


class Group(click.Group):
    """A command group whose usage errors, its own and its commands' (parsing or raised by a command), are one
    line: a scheduler's log gets one line per failure, and a terminal the command's --help to read.

    Output cut short by its reader (``xaibatch run --help | head -1``; click would exit 1 silently) ends with
    exit 0: what was left to print was all that remained (help, version, a command's last table)."""

    context_class = Context  # --help never breaks a line at a hyphen (helptext.py)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.help is None:  # python -OO: the docstring read from the source (helptext.docstring)
            self.help = docstring(self.callback)

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise one_line(e) from None
        except BrokenPipeError:
            if not _reader_went_away():
                raise
            raise click.exceptions.Exit(0) from None

    def format_commands(self, ctx, formatter):
        """Each command's first sentence in full (wrapped), never click's cut "... and an HTML..."."""
        rows = [
            (name, cmd.get_short_help_str(limit=1000))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            ctx.meta[_COMMAND_PATH] = f"{ctx.command_path} {cmd.name}"
        return name, cmd, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise one_line(e, ctx.meta.get(_COMMAND_PATH, ctx.command_path)) from None
        except BrokenPipeError:
            if not _reader_went_away():
                raise
            raise click.exceptions.Exit(0) from None


def reported(fn=None, *, caller: Caller = "run"):
    """Turn library errors (and OS errors such as a full disk) into one line and an exit code. ``caller``: whose
    options the advice of an out-of-memory error names (errors.memory_message): ``@reported(caller="sanity")``."""
    if fn is None:
        return functools.partial(reported, caller=caller)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (KeyboardInterrupt, Exception) as e:
            if isinstance(e, BrokenPipeError) and reader_gone(sys.stdout):
                raise  # the command's output was cut short by its reader: Group ends it with exit 0
            if os.environ.get("XAIBATCH_DEBUG") and not isinstance(e, (XaibatchError, KeyboardInterrupt, OSError)):
                raise  # the traceback of what xaibatch did not foresee (running out of memory included)
            said = outcome(e, caller)  # (run and sanity split their batches first: explainer.Fitting, OneImageTooLarge)
            hint = " (set XAIBATCH_DEBUG=1 for the traceback)" if said.internal else ""
            raise Failure(said.line + hint, said.code) from None

    return wrapper


def checked(parse, param_hint: str | None = None):
    """Run a parameter check of the library; its UsageError becomes click's (one line, exit 2)."""
    try:
        return parse()
    except XaibatchError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None
