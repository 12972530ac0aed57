"""``xaibatch report``: render an output folder's report again from its manifest (no input folder, no model)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import layout
from ..errors import ExitCode
from .boundary import echo, exit_codes_help, notes, reported
from .helptext import Command
from .options import NonEmptyPath, quiet_option, template_dir_option, wait_option, wait_timeout_option

# no images are read and nothing is computed: no "some failed" (1); a run holding the folder is 4
REPORT_EXIT_CODES = {
    ExitCode.OK: "the report is up to date",
    ExitCode.USAGE: "usage error (no xaibatch output folder, a broken --template-dir)",
    ExitCode.RUNTIME: "runtime error (e.g. the disk is full)",
    ExitCode.LOCKED: "a run holds the output folder's lock (without --wait, or past --wait-timeout)",
    ExitCode.INTERRUPTED: "interrupted (SIGINT/SIGTERM/SIGHUP); the report's pages are each whole",
}


@click.command(cls=Command, epilog=exit_codes_help(REPORT_EXIT_CODES))
@click.argument("out_dir", type=NonEmptyPath(path_type=Path, file_okay=False, exists=True))
@template_dir_option
@quiet_option("No summary line, no word of what a recovery cleaned: only Error: lines (a cron job's mail).")
@wait_option("If a run (or a sanity check) holds OUT_DIR, wait for it to finish instead of exiting with code 4.")
@wait_timeout_option(
    "With --wait: give up with exit code 4 after this long (e.g. --wait-timeout 3600). Implies --wait."
)
@reported(caller="other")
def report(
    out_dir: Path, template_dir: Path | None, quiet: bool, wait: bool = False, wait_timeout: float | None = None
) -> None:
    """Render the report in OUT_DIR again from its manifest: after editing templates, upgrading xaibatch or
    copying the folder elsewhere. Needs neither the input folder nor the model; pages that did not change are
    not rewritten. Maps stored by an older xaibatch are read once for the summary's mean maps.

    \b
    Examples:
      xaibatch report outputs/demo-test
      xaibatch report outputs/demo-test --template-dir my_templates
      xaibatch report outputs/demo-test -q
      xaibatch report outputs/demo-test -q --wait   # a cron job beside the folder's runs: queues behind them
    """
    from ..pipeline.recovery import held_output
    from ..pipeline.signals import stops_interrupt
    from ..report import check_templates, write_report

    check_templates(template_dir)
    with stops_interrupt(), held_output(out_dir, notes(quiet), "report", wait, wait_timeout):
        stats = write_report(out_dir, template_dir, fill_grids=True)
    if not quiet:
        done = f"{stats.written} file(s) written" if stats.written else "all up to date"
        grids = f"; {stats.grids:,} maps of an older xaibatch read for the mean maps" if stats.grids else ""
        echo(f"xaibatch: {stats.pages} page(s), {done}{grids} -> {out_dir / layout.INDEX}")
