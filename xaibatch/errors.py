"""One exception root; only the CLI turns these into messages and exit codes."""


class XaibatchError(Exception):
    """Base of every error xaibatch reports to a user as one line."""

    exit_code = 3  # runtime error


class UsageError(XaibatchError):
    """The user asked for something that cannot work (bad option, bad folder)."""

    exit_code = 2


class ModelError(UsageError):
    """The model, checkpoint or layer cannot be used as asked."""


class InputError(UsageError):
    """The input folder is missing, empty or unusable."""


class DecodeError(XaibatchError):
    """One image could not be read; the run skips it and goes on."""


class LockHeld(XaibatchError):
    """Another run holds the output folder."""

    exit_code = 4


class Interrupted(XaibatchError):
    """SIGINT or SIGTERM stopped the run after saving what was done."""

    exit_code = 5


# Exit codes, documented in README and `xaibatch run --help`.
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 5
