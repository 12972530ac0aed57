"""The ``xaibatch`` command's entry point: a Ctrl-C while the CLI is still importing is one line and exit 5.

The console script imports this module (it imports nothing), so a Ctrl-C during the import of click and
the CLI (the first fraction of a second) is caught here instead of printing a traceback with exit 130.
"""

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted while starting\n")
        raise SystemExit(5) from None
    cli_main()
