"""``xaibatch serve``: the local web page (Gradio, the optional extra) over one model."""

from __future__ import annotations

from pathlib import Path

import click

from ..defaults import LIME_DEFAULTS
from ..errors import EXIT_USAGE, ExitCode
from .helptext import Command
from .boundary import Failure, exit_codes_help, reported
from .options import (
    BUILTIN_METHODS,
    SERVE_MODEL_HELP,
    NonEmptyPath,
    device_option,
    methods_option,
    model_options,
    seed_option,
)


# serve has no lock, no unreadable images and no batches to save: only these codes apply (not run's table)
SERVE_EXIT_CODES = {
    ExitCode.OK: "stopped with Ctrl-C, SIGTERM or a closed terminal (SIGHUP)",
    ExitCode.USAGE: "usage error (bad option, model or checkpoint; Gradio missing; the port in use)",
    ExitCode.RUNTIME: "runtime error",
    ExitCode.INTERRUPTED: "interrupted while starting, before it serves",
}


@click.command(cls=Command, epilog=exit_codes_help(SERVE_EXIT_CODES))
@methods_option(
    "A method the page offers; repeat or separate with commas for several (e.g. -m gradcam,cam:scorecam). "
    "All of them: xaibatch methods.",
    default=BUILTIN_METHODS,
)
@model_options(SERVE_MODEL_HELP)
@device_option("auto, cpu, cuda or cuda:N.")
@click.option(
    "--lime-samples",
    type=click.IntRange(10, 5000),
    default=LIME_DEFAULTS["samples"],
    show_default=True,
    help="LIME: the samples slider's start, 10 to 5000 (e.g. --lime-samples 500).",
)
@seed_option("Seed of LIME and the other random methods, as for run.")
@click.option(
    "--out",
    type=NonEmptyPath(path_type=Path, file_okay=False),
    default=Path("outputs/serve"),
    show_default=True,
    help="Flagged images go to OUT/flagged/<label>/; a report in OUT offers its "
    "images and links to their pages (e.g. --out reports/cifake).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The app has no login: another host (e.g. 0.0.0.0) lets anyone who "
    "reaches it use the model, read the report in OUT and write into OUT/flagged.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="On 127.0.0.1 the app answers only requests addressed to 127.0.0.1 or localhost (no DNS rebinding): "
    "another name it should answer to, e.g. a reverse proxy's that passes its own Host header "
    "(--allow-host xai.example.com); repeatable.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=7860,
    show_default=True,
    help="Port to listen on (e.g. --port 8080).",
)
@reported(caller="other")
def serve(methods, model, device, lime_samples, seed, out, host, port, allow_hosts):
    """A local web page: upload an image, see its prediction and maps, flag wrong predictions.

    \b
    Examples:
      xaibatch serve
      xaibatch serve --checkpoint models/cifake.pt --out reports/cifake --port 8080

    \b
    Needs the extra: pip install "xaibatch[serve]" (from a checkout: pip install
    -e ".[serve]"). Flagged images land in
    OUT/flagged/<label>/; xaibatch run OUT/flagged reports them like any folder.
    """
    from ..pipeline.signals import stops_interrupt

    with stops_interrupt():  # SIGTERM (systemd's stop), a closed terminal: as Ctrl-C; nohup: goes on serving
        _serve(methods, model, device, lime_samples, seed, out, host, port, allow_hosts)


def _serve(methods, model, device, lime_samples, seed, out, host, port, allow_hosts=()) -> None:
    from ..pipeline.guards import check_model_request
    from ..pipeline.options import ModelOptions
    from ..serve.address import check_listen
    from ..serve.uploads import check_private_uploads, use_private_uploads

    check_model_request(ModelOptions(**model.fields()))  # a typo answers at once, before Gradio's and torch's imports
    use_private_uploads()  # before Gradio's import, which reads $GRADIO_TEMP_DIR once
    try:
        import gradio  # noqa: F401  (the optional extra; seconds to import, and needed right after)
    except ImportError:
        raise Failure(
            'xaibatch serve needs Gradio: pip install "xaibatch[serve]" (from a checkout: pip install -e ".[serve]")',
            EXIT_USAGE,
        ) from None
    check_listen(host, port)  # a port in use or a host not of this machine: before the model loads (seconds)
    check_private_uploads()
    if host not in ("127.0.0.1", "localhost"):
        click.echo(
            f"xaibatch serve: warning: listening on {host}; the app has no login, anyone who reaches it "
            f"can use the model, read the report in {out} and write into {out}/flagged",
            err=True,
        )
    from ..serve.app import launch
    from ..serve.core import ServeOptions, Service

    service = Service(
        ServeOptions(
            out=out,
            methods=list(methods),
            **model.fields(),
            device=device,
            seed=seed,
            method_options={"lime": {"samples": lime_samples}},
        )
    )
    launch(service, host=host, port=port, log=lambda s: click.echo(s, err=True), allow_hosts=tuple(allow_hosts))
