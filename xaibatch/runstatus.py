"""A run row's status (the manifest's ``runs.status``), named once; no imports, so that :mod:`.errors` (the exit
codes' statuses) and :mod:`.manifest` both use it.

"Finished" means one thing: the run got to its end, ``ok`` or ``some-failed`` (:data:`FINISHED`): a later run may
reuse its setup (Manifest.finished_with), and it ends the list of runs whose images a run resumes
(Manifest.unfinished_runs). A run that stopped early (:data:`ENDED_BADLY`) has *ended*, not finished; so has every
run that is not ``running`` (:data:`ENDED`), which is what ``sanity`` and the report's "last run" read.
The stored strings are these members' values, exactly as every xaibatch wrote them.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """A run row's status; a str, equal to (and hashed as) the word stored in the manifest."""

    RUNNING = "running"  # started, not ended yet (or killed: the next run's recovery says "killed")
    OK = "ok"
    SOME_FAILED = "some-failed"  # got to its end; some images could not be read
    INTERRUPTED = "interrupted"  # a signal stopped it after saving what was done
    ERROR = "error"  # an error stopped it (its row's reason: the line it exited with)
    KILLED = "killed"  # found "running" (or reporting) after its process died: SIGKILL, out of memory, a reboot

    def __str__(self) -> str:  # "ok", not "RunStatus.OK", in f-strings and messages (Python 3.10 has no StrEnum)
        return self.value

    __format__ = str.__format__


FINISHED = frozenset({RunStatus.OK, RunStatus.SOME_FAILED})  # got to its end
ENDED_BADLY = frozenset({RunStatus.INTERRUPTED, RunStatus.ERROR, RunStatus.KILLED})  # stopped before its end
ENDED = FINISHED | ENDED_BADLY  # every status but RUNNING


def sql_list(statuses) -> str:
    """``statuses`` as an SQL list of string literals, in a fixed order: ``('ok', 'some-failed')``."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses, key=list(RunStatus).index)) + ")"
