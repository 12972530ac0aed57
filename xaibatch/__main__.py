"""``python -m xaibatch``: the same as the ``xaibatch`` command (entry.main: a Ctrl-C while starting is one line)."""

from .entry import main

if __name__ == "__main__":
    main()
