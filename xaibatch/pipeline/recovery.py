"""Clean up after a run that did not finish: stale temporary files and files no manifest row points at; and the
run rows of runs killed while they ran or wrote their report.

Temporary files go at once. Files no row points at go only after the next report is written (:func:`sweep_due`):
the report on disk may still link them (the images a killed run removed), for as long as the next run computes.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .. import layout
from ..defaults import cgroup_memory
from ..errors import UsageError
from ..files import remove_files, temp_pid, walk_files
from ..lock import WAIT_HINT, OutputLock, describe, holder_command, pid_alive
from ..manifest import Manifest, RunCounts, RunStatus
from . import restart


def sweep_temp_files(out: Path, stale: Callable[[int], bool]) -> int:
    """Delete temporary files (files.temp_name) whose writer ``stale(pid)``, where
    xaibatch writes (:func:`_where_runs_write`).

    Walks every folder xaibatch writes, so it runs only after an unclean stop; call it only while holding the lock.
    """

    def ours(path: str) -> bool:
        pid = temp_pid(path)
        return pid is not None and stale(pid)

    return _delete(path for path in _where_runs_write(out) if ours(path))


def _where_runs_write(out: Path) -> Iterator[str]:
    """Every file xaibatch may have written under ``out``: the folder's own files (not below them), those under its
    OUTPUT_DIRS and flagged/ (``serve``). Another folder there is a user's, even with a temporary file's name."""
    try:
        with os.scandir(out) as it:
            top = [e.path for e in it if not e.is_dir(follow_symlinks=False)]
    except OSError:
        top = []
    yield from top
    yield from (path for _rel, path in walk_files(out, (*layout.OUTPUT_DIRS, layout.FLAGGED)))


def sweep_orphans(out: Path, manifest: Manifest) -> int:
    """Delete map/image files under images/, thumbs/, maps/ that no manifest row points at, and the folders that
    leaves empty; never a file that was there before the folder's first run (:func:`note_foreign_files`).

    A run killed after writing a batch's files but before committing its rows
    leaves such files; normally the next run rewrites them, but not if the image
    has left the input meanwhile; one killed after dropping rows leaves their files.
    Only after an unclean stop (it walks every file), once the report no longer links them (:func:`sweep_due`).
    """
    if manifest.last_status() is None:  # no run row yet: no run wrote a picture (a run killed before noting them)
        return 0
    keep = manifest.referenced_files() | foreign_files(manifest)
    orphans = [
        rel
        for rel, _path in walk_files(out, layout.PICTURE_DIRS)
        if rel.endswith(layout.PICTURE_SUFFIXES) and rel not in keep
    ]
    return remove_files(out, orphans, layout.PICTURE_DIRS)  # and the folders that leaves empty


FOREIGN = "foreign_files"  # meta: JSON list of the picture files a folder held before its first run row


def note_foreign_files(out: Path, manifest: Manifest) -> None:
    """Before a folder's first run row: note the files already under images/, thumbs/ and maps/ as not xaibatch's
    (a user's site taken with --replace), so that :func:`sweep_orphans` never deletes them. No run has written a
    picture there yet (pictures come after the run row), so what is there is the user's; a run killed before its
    row leaves the next one to note it again. A run may still overwrite one with an image's file of that name
    (--replace says so); should its row go with a run killed before deleting its files, that file stays."""
    if manifest.last_status() is not None:  # a folder with a run row: its picture folders are the runs' own
        return
    found = sorted(rel for rel, _path in walk_files(out, layout.PICTURE_DIRS) if rel.endswith(layout.PICTURE_SUFFIXES))
    if found or manifest.get_meta(FOREIGN):
        with manifest.transaction():
            manifest.set_meta(FOREIGN, json.dumps(found) if found else "")


def foreign_files(manifest: Manifest) -> set[str]:
    """The files :func:`note_foreign_files` noted (none for a folder xaibatch made, or one from before the note)."""
    try:
        found = json.loads(manifest.get_meta(FOREIGN) or "[]")
    except ValueError:
        return set()
    return {rel for rel in found if isinstance(rel, str)} if isinstance(found, list) else set()


def _delete(paths: Iterable[str]) -> int:
    """Delete each of ``paths`` as they come; how many went (one that cannot be deleted is passed over)."""
    n = 0
    for path in paths:
        try:
            os.unlink(path)
            n += 1
        except OSError:
            pass
    return n


SWEEP = "sweep_due"  # meta: files no row points at go after the next report (JSON: why, temporary files swept)


def recover(
    out: Path,
    manifest: Manifest,
    lock: OutputLock,
    log: Callable[[str], None],
    then: str = "; what it finished is kept",
) -> None:
    """After a run that died (SIGKILL, power): sweep its temporary files now, and files no committed row points at
    once the next report is written (:func:`sweep_due`; noted in the manifest, so that a run that stops before
    its report leaves the sweep to the one after). ``then``: what the caller does next, said at once after "the
    previous run did not finish" ("": nothing is said until the sweep).

    Such a run left its run row 'running' or its holder record in the lock file.
    A run that ended ``interrupted`` or ``error`` released the lock cleanly but may have been stopped (a second
    signal, a lost lock) between committing a removal and deleting its files: its leftovers are swept too.
    """
    killed = manifest.close_stale_runs()
    lock.check()
    killed = killed or killed_while_reporting(manifest)
    last = manifest.last_status()
    if killed or lock.previous:
        prev = lock.previous.get("pid") if lock.previous else None
        swept = sweep_temp_files(out, lambda pid: pid == prev or not pid_alive(pid))
        who = f" ({describe(lock.previous)})" if lock.previous else ""
        # a report or sanity killed while it held the folder (no run row left running) is named as such
        command = None if killed else holder_command(lock.previous)
        what = f"xaibatch {command}" if command else "run"
        sweep_later(manifest, f"the previous {what} did not finish", swept)  # said again when swept: without a time
        if then:
            log(f"xaibatch: the previous {what}{who} did not finish{memory_note()}{then}")
    elif last in (RunStatus.INTERRUPTED, RunStatus.ERROR):  # released the lock (KILLED did not: handled above)
        swept = sweep_temp_files(out, lambda pid: not pid_alive(pid))
        sweep_later(manifest, f"the previous run ended {last}", swept)


def memory_note(limit: int | None = None) -> str:
    """Under a cgroup memory limit (``limit``: read when None) the out-of-memory killer ends a run with SIGKILL,
    which no run can report: what the next run says of the one that did not finish, or "" without a limit."""
    limit = cgroup_memory() if limit is None else limit
    if not limit:
        return ""
    return (
        f" (under this container's memory limit, {limit / 2**30:.1f} GiB, the out-of-memory killer ends a run "
        "without a word: if that was it, a smaller --batch-size or fewer --workers need less)"
    )


def sweep_later(manifest: Manifest, why: str, swept: int) -> None:
    """Note that files no row points at are to be swept after the next report (added to a note still there)."""
    due = _due(manifest)
    with manifest.transaction():
        manifest.set_meta(SWEEP, json.dumps({"why": why, "swept": swept + (due["swept"] if due else 0)}))


def _due(manifest: Manifest) -> dict | None:
    raw = manifest.get_meta(SWEEP)
    if not raw:
        return None
    try:
        due = json.loads(raw)
        return {"why": str(due["why"]), "swept": int(due["swept"])}
    except (ValueError, KeyError, TypeError):
        return {"why": "the previous run did not finish", "swept": 0}


def sweep_due(out: Path, lock: OutputLock, log: Callable[[str], None]) -> None:
    """Once a report is written (it links no file without a row): sweep the files no row points at, when an
    unclean stop left the sweep due; says how many went (temporary files included), then notes it done."""
    manifest = Manifest(out / layout.MANIFEST)
    try:
        due = _due(manifest)
        if due is None:
            return
        lock.check()  # the files are ours to delete only while the folder is
        swept = due["swept"] + sweep_orphans(out, manifest)
        with manifest.transaction():
            manifest.set_meta(SWEEP, "")
    finally:
        manifest.close()
    if swept:
        log(f"xaibatch: {due['why']}; cleaned {swept} leftover file(s)")


@contextmanager
def held_output(
    out: Path, log: Callable[[str], None], command: str, wait: bool = False, wait_timeout: float | None = None
) -> Iterator[OutputLock]:
    """``out``'s lock for a command that renders from its manifest without running (``report``, ``sanity``), the
    folder recovered as a run recovers it: a run killed before must not stay "running" on the pages they render.
    The body writes the report; then the sweep a recovery left due runs. After a restart of the machine the files
    its last seconds damaged are deleted first (restart.py).
    Torch-free, so a run holding the folder is refused at once (exit 4); a folder without a manifest is refused
    before a lock file is made in it. ``command``: ``report`` or ``sanity``, named to a run refused meanwhile.
    ``wait`` (the commands' --wait; ``wait_timeout`` implies it): queue behind the holder as a run's --wait does,
    saying so once through ``log``; a stop signal (KeyboardInterrupt, see signals.stops_interrupt) ends the wait."""
    if not (out / layout.MANIFEST).is_file():
        raise UsageError(
            f"{out} is not an xaibatch output folder (no xaibatch manifest, {layout.MANIFEST}); make one with "
            "xaibatch run"
        )
    lock = OutputLock(out, named=str(out), command=command)  # the command's argument, not an --out
    lock.acquire(wait=wait or wait_timeout is not None, timeout=wait_timeout, on_wait=log, hint=WAIT_HINT)
    try:
        manifest = Manifest(out / layout.MANIFEST)
        try:
            recover(out, manifest, lock, log, then="")  # nothing here continues the run (the next run does)
            found = restart.check(out, manifest, foreign_files(manifest))  # the report is then built in full
        finally:
            manifest.close()
        restart.say(found, log, then="deleted: the report's are written again now, the pictures by the next run")
        yield lock
        sweep_due(out, lock, log)  # the command wrote the report (an error skips this: the sweep stays due)
    finally:
        lock.release()


REPORTING = "reporting_run"  # meta: the run whose report is being written (its row already says how it ended)


def mark_run(
    out: Path,
    run_id: int | None,
    status: RunStatus | None,
    seconds: float,
    counts: RunCounts | None,
    reason: str | None = None,
) -> None:
    """After the report: set the run's status (and why) when it failed (None: it did not), and note that the report
    is done. On a failed run's path a manifest that refuses this is passed over (the original error is the one to
    tell); on a finished run's it raises, for the run to say (left unsaid, the note would make the next run call
    this one killed while reporting, without a word now)."""
    if run_id is None:
        return
    try:
        manifest = Manifest(out / layout.MANIFEST)
        try:
            with manifest.transaction():
                if status is not None:
                    manifest.finish_run(run_id, status, seconds, counts, reason)
                manifest.set_meta(REPORTING, "")
        finally:
            manifest.close()
    except Exception:
        if status is None:
            raise


def killed_while_reporting(manifest: Manifest) -> bool:
    """A run killed while it wrote its report said "ok" already: its row says "killed" now. Whether there was one."""
    run_id = manifest.get_meta(REPORTING)
    if not run_id:
        return False
    with manifest.transaction():
        manifest.set_status(int(run_id), RunStatus.KILLED)
        manifest.set_meta(REPORTING, "")
    return True
