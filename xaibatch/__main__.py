"""``python -m xaibatch``: the same as the ``xaibatch`` command."""

try:
    from .cli import main
except KeyboardInterrupt:  # before cli's own guard is in place
    import sys

    sys.stderr.write("Error: interrupted while starting\n")
    raise SystemExit(5) from None

if __name__ == "__main__":
    main()
