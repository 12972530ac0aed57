"""What a scheduler sees: JSON lines for ``--log-json`` and the exit code of any outcome.

Events, one JSON object per line on stdout, each with ``event`` and ``time``:

* ``start``: pid, host, input_dir, out_dir, methods, version.
* ``notice``: a warning the run says before its plan, as its stderr line does (kind, text, and the kind's fields;
  ``pipeline/notices.py``): about its classes ``empty-class``, ``classes-by-case``, ``class-order``; about its
  model ``random-weights`` (model: a ``--model`` without ``--checkpoint``), ``input-size`` (input_size: the model
  declares none), ``normalization`` (mean, std: it names none, ImageNet's assumed), ``ema-weights``; about its
  folder ``restarted`` (checked, damaged: files a restart of the machine left damaged, deleted to be written again).
* ``plan``: what this run will do (seen, added, changed, removed, unchanged, to_compute, resumed, resumed_from,
  moved: images found at a new path, their results taken along; maps: per method, in the order of -m, the images
  whose map it computes, ``<method>@label`` for true-class maps of images known misclassified (an image predicted
  anew gets one if its batch finds it misclassified: ``estimate`` guesses those): a method added to a folder
  computes its own alone; scored: images whose maps stay and get only their faithfulness scores, from the saved
  maps (counted as unchanged, not in to_compute).
  ``resumed``: of the ``unchanged`` images (all those not computed again), those that runs before this one that
  did not finish (interrupted, killed, stopped by an error) had done, ``resumed_from`` those runs' ids.
* ``failure``: one per image that could not be read (path, reason).
* ``vanished``: one per image the scan listed that was moved or deleted before its batch read it (path, reason):
  no failure (it does not make exit code 1), left to the next run, which finds where it went.
* ``estimate``: what a slow method will cost (method, images, label_maps, text), before the first batch;
  ``images`` counts every map it will compute, ``label_maps`` those of the true class (``--target pred,label``);
  method ``faithfulness``: the images whose saved maps are scored (plan's ``scored``).
* ``batch_split``: a batch did not fit in memory and the run explains fewer images at a time from now on
  (batch_size: the images of the batch that did not fit, size: the images per part now, memory: ``device`` or
  ``host``, text: the warning line); once, again only if a later batch must be split smaller.
* ``progress``: done, total, elapsed_s, eta_s (null before the first image), batch_percent (null unless a
  method reports it), method (only while a batch of several methods runs one: its name, or ``faithfulness``;
  ``<method> (true class)`` in the true-class pass): once when the first batches give an estimate, then about
  every minute; ``phase: "scoring"`` in the pass that scores saved maps (its own done, total and estimate).
* ``end``: status, exit_code, counts (seen, computed, skipped, resumed, failed, vanished, added, changed,
  removed), seconds, report; plus ``error`` when the run stopped on an error. ``skipped``: images not computed again
  (as before ``resumed`` existed), ``resumed`` the part of them unfinished runs had done (see ``plan``); seen =
  computed + skipped + failed + vanished once a run has got to its end.
"""

from __future__ import annotations

import json
import socket
import sys
from datetime import datetime, timezone
from typing import IO, Any

from .console import can_encode, write_line
from .errors import ExitCode


def counts(result: Any) -> dict[str, Any]:
    """The end-of-run numbers of a :class:`~xaibatch.pipeline.RunResult`."""
    return {
        "seen": result.seen,
        "computed": result.computed,
        "skipped": result.unchanged,
        "resumed": result.resumed,
        "failed": len(result.failed),
        "vanished": len(result.vanished),
        "added": result.added,
        "changed": result.changed,
        "removed": result.removed,
        "seconds": round(result.seconds, 3),
        "report": str(result.report) if result.report else None,
        "run_id": result.run_id,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


class JsonLog:
    """Writes one JSON object per line and flushes, so a log collector sees each event at once."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, event: str, **fields: Any) -> None:
        rec = {"event": event, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
        line = json.dumps(rec, default=str, ensure_ascii=False)
        if not can_encode(line, self.stream):  # a stdout in ISO-8859-1: the same JSON, names as \u escapes
            line = json.dumps(rec, default=str)
        write_line(line, self.stream)

    def __call__(self, event: dict[str, Any]) -> None:
        """Adapter for ``RunOptions.on_event``: ``{"event": name, ...}``."""
        fields = dict(event)
        self.emit(fields.pop("event"), **fields)

    def start(self, **fields: Any) -> None:
        self.emit("start", host=socket.gethostname(), **fields)

    def end(self, exit_code: int, result: Any = None, error: str | None = None) -> None:
        status = ExitCode(exit_code).status if exit_code in ExitCode._value2member_map_ else "error"
        fields: dict[str, Any] = {"status": status, "exit_code": int(exit_code)}
        if result is not None:
            fields.update(counts(result))
        if error:
            fields["error"] = error
        self.emit("end", **fields)
