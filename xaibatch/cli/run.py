"""``xaibatch run``: its option groups into RunOptions, the run's result into a summary, JSON lines, an exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import __version__
from ..errors import EXIT_OK, EXIT_SOME_FAILED
from .helptext import Command
from .boundary import EXIT_CODES_HELP, notes, reported, say
from .options import RUN_MODEL_HELP, NonEmptyPath, model_options, seed_option, template_dir_option
from .run_options import (
    check_engine_options,
    check_faithfulness_given,
    check_lime_given,
    compute_options,
    control_options,
    engine_options,
    explain_options,
    faith_options,
    folder_options,
    lime_options,
    max_map_side_option,
    target_option,
)

if TYPE_CHECKING:
    from ..scan import Failure

PROGRESS_EVERY_S = 60.0  # off a terminal, a progress line (or a JSON event) this often


class RunCommand(Command):
    """With --log-json, an option error still ends with a JSON line (exit code 2)."""

    def parse_args(self, ctx, args):
        wants_json = "--log-json" in args  # before parsing: click consumes the list
        try:
            rest = super().parse_args(ctx, args)
            check_engine_options(ctx)
            check_lime_given(ctx)
            check_faithfulness_given(ctx)
            return rest
        except click.UsageError as e:
            if wants_json:
                from ..runlog import JsonLog

                JsonLog(sys.stdout).end(e.exit_code, error=e.format_message())
            raise


@click.command(cls=RunCommand, epilog=EXIT_CODES_HELP)
@click.argument("input_dir", type=NonEmptyPath(path_type=Path, file_okay=False))
@explain_options
@model_options(RUN_MODEL_HELP)
@target_option
@compute_options
@folder_options
@lime_options
@max_map_side_option
@seed_option(
    "Seed of LIME and the other random methods (captum's GradientShap, NoiseTunnel): same seed, same maps (e.g. --seed 7)."
)
@template_dir_option
@control_options
@faith_options
@engine_options
@reported
def run(
    input_dir, explain, model, target, compute, folders, lime, max_map_side, seed, template_dir, control, faith, engine
):
    """Explain every image under INPUT_DIR and write maps plus an HTML report.

    \b
    Examples:
      xaibatch run data/CIFAKE/test --method gradcam
      xaibatch run data/CIFAKE/test -m gradcam -m guided-gradcam -m lime --out reports/cifake
      xaibatch run photos/ --arch resnet18 --checkpoint my.pt --image-size 224 --device cuda
      xaibatch run data/CIFAKE/test --model examples/cifake_cnn.py:build --checkpoint cnn.pt --threshold 0.7

    Re-runs are incremental: unchanged images (same size, mtime and ctime, or
    same sha256) with unchanged settings are skipped; new and changed images are
    computed; images gone from INPUT_DIR leave the report and their files are
    deleted. One run per --out at a time (see --wait). Not on a terminal there is
    no progress bar: once the first batches are done a line estimates the time
    left, then a progress line follows about every minute (JSON "progress"
    events with --log-json; none with -q), and one summary line at the end.
    """
    from ..errors import exit_code_for, outcome
    from ..pipeline import RunOptions, default_out
    from ..pipeline import run as run_pipeline
    from ..console import write_line
    from ..runlog import JsonLog

    out = folders.out or default_out(input_dir)
    quiet = control.quiet
    jlog = JsonLog(sys.stdout) if control.log_json else None
    human = not quiet and not control.log_json
    if jlog:
        jlog.start(
            pid=os.getpid(),
            input_dir=str(input_dir),
            out_dir=str(out),
            methods=list(explain.methods),
            version=__version__,
        )
    method_option = explain.method_option
    opts = RunOptions(
        input_dir=input_dir,
        out_dir=out,
        methods=list(explain.methods),
        **model.fields(),
        target=target,
        **compute.fields(),
        labeled=False if folders.unlabeled else None,
        follow_links=folders.follow_links,
        check_ctime=not folders.no_ctime,
        max_map_side=max_map_side,
        method_options={**method_option, "lime": {**lime.options(), **method_option.get("lime", {})}},
        seed=seed,
        template_dir=template_dir,
        progress=human and sys.stdout.isatty() and sys.stderr.isatty(),
        heartbeat=0.0 if quiet else PROGRESS_EVERY_S,
        wait=control.wait,
        wait_timeout=control.wait_timeout,
        on_event=jlog,
        replace=folders.replace,
        faithfulness=faith.config(),
        **engine.fields(),
    )
    from ..imports import defer_hub

    defer_hub()  # this process runs nothing else: timm may import without the Hub's client (imports.py)
    try:
        result = run_pipeline(opts, log=notes(quiet))
    except BaseException as e:  # the summary of an interrupted run, the JSON end line of any failure
        partial = getattr(e, "result", None)
        if partial is not None and human:
            list_failures(partial.failed)
            write_line(partial.summary_line())
        if jlog:  # the same line as the Error: line (errors.outcome), less its XAIBATCH_DEBUG hint
            line = e.format_message() if isinstance(e, click.ClickException) else outcome(e).line
            jlog.end(exit_code_for(e), partial, error=line or type(e).__name__)
        raise
    code = EXIT_SOME_FAILED if result.failed else EXIT_OK
    if human:
        list_failures(result.failed)
        write_line(result.summary_line())
    if jlog:
        jlog.end(code, result)
    sys.exit(code)


def list_failures(failed: list[Failure], limit: int = 20) -> None:
    """The images that could not be read and the folders not scanned (each Failure's kind), on stderr (the first
    ``limit``; the report lists them all)."""
    if not failed:
        return
    from ..scan import printable

    folders = sum(f.kind == "folder" for f in failed)
    counts = [f"{len(failed) - folders} image(s) could not be read"] if len(failed) > folders else []
    counts += [f"{folders} folder(s) not scanned"] if folders else []
    say(f"xaibatch: {', '.join(counts)}:")

    for f in failed[:limit]:  # names quoted: a newline or an ANSI code in one cannot forge log lines
        say(f"  {printable(f.rel)}: {printable(f.reason)}")
    if len(failed) > limit:
        say(f"  ... and {len(failed) - limit} more (all listed in the report)")
