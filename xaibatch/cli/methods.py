"""``xaibatch methods``: every explanation method the registry holds."""

from __future__ import annotations

import click

from .helptext import Command
from .boundary import echo


@click.command("methods", cls=Command)
def methods_cmd():
    """List every explanation method: its library, how it batches, signed or not, its options and defaults.

    \b
    Examples:
      xaibatch methods
      xaibatch run photos/ -m cam:gradcam++ -m captum:IntegratedGradients \\
          --method-option captum:IntegratedGradients.n_steps=32
    """
    from ..methods import list_methods

    for r in list_methods():
        opts = ", ".join(f"{k}={v}" for k, v in r.options.items()) or "-"
        echo(
            f"{r.name}\n    {r.title}; {r.library}; {r.batching}; {'signed' if r.signed else 'unsigned'}"
            f"\n    options: {opts}\n    use: {r.summary}"
        )
