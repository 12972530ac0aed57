"""``xaibatch run`` as a library call: plan, stream, explain, write, report.

The work is planned against the manifest first (which images are new, changed,
gone; which of their maps are missing or stale), then only that work streams
through the model: DataLoader workers decode, the device computes one shared
forward per batch plus what each method needs, and a writer thread saves maps
and commits the manifest one batch per transaction while the next batch runs.

Safe to run from a scheduler:

* One run per output folder (:mod:`xaibatch.lock`); ``--wait`` queues behind the holder.
* Incremental: an image is skipped when its size, mtime and ctime match the manifest
  (no hashing), or when they moved but its sha256 did not; a map is recomputed
  when its configuration hash (checkpoint sha256, arch, input size, normalization,
  classes, target, MAP_FORMAT_VERSION, method and its options, target layer,
  seed) changed. New and changed images get every requested method; an image
  whose content or model changed loses the maps of methods not requested this
  time (they described the old picture). Images gone from the input, or no longer
  readable, leave the manifest; their files are deleted once the new report is
  written (the report on disk links them until then).
* Crash-safe: files are written to a temporary name and renamed; a batch's rows
  are committed only after all its files are in place; rows of removed images
  are deleted before their files, and those files only after the report that no
  longer shows them. A killed run leaves the last committed state;
  the next run marks its run row ``killed``, deletes stale temporary files, and,
  once its own report is written, files no row points at.
* SIGINT/SIGTERM: the current batch finishes, queued batches are written, the run
  row says ``interrupted``, the report shows what is done, and
  :class:`~xaibatch.errors.Interrupted` is raised (exit code 5). A second signal
  stops at once (still consistent, just without the report).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import layout, targets
from ..engines import ComputeJob, Engine, engine_for
from ..errors import InputError, Interrupted, UsageError, XaibatchError, outcome, storage_error
from ..scan import Scan, printable, shown
from ..lock import WAIT_HINT, OutputLock
from ..manifest import Manifest, ManifestError, RunCounts, RunStatus
from .options import RunOptions, RunResult
from .guards import check_folders, check_request, check_same_input, input_path
from .plan import Known, Plan, Tally, existing_files, make_plan, resumed_by
from .setup import Setup, cached_setup, load_setup, scan_input
from .apply import apply_removals, delete_dropped, redecider
from .migrate import migrate_map_folders
from .notices import say_notices, warn_random_weights
from .recovery import REPORTING, foreign_files, mark_run, note_foreign_files, recover, sweep_due, sweep_temp_files
from . import restart
from .signals import Abandoned, Stop, catch_signals
from .warmup import Warmup
from ..files import Reserve


def run(opts: RunOptions, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> RunResult:
    """Run under the output folder's lock; raises LockHeld (another run holds it) or Interrupted (signal)."""
    t0 = time.monotonic()
    check_folders(opts)
    check_request(opts)  # options and paths, before the seconds of importing torch
    engine = engine_for(opts)  # no ray import: only whether it is installed
    out = Path(opts.out_dir)
    timings: dict[str, float] = {}
    with _autograd_on(), catch_signals(opts.handle_signals) as stop:
        lock = OutputLock(out)

        waited = [0.0]

        def acquire() -> float:
            w = lock.acquire(
                wait=opts.wait or opts.wait_timeout is not None,
                timeout=opts.wait_timeout,
                should_stop=lambda: stop.requested,
                on_wait=log,
                hint=WAIT_HINT,
            )
            waited[0] += w
            check_same_input(opts, out)
            return w

        @contextmanager
        def loading():  # nothing is written yet: a signal stops at once, even a model factory that hangs
            try:
                with stop.abandon():
                    yield
            except Abandoned:
                raise Interrupted(f"interrupted by {stop.name} while loading the model; nothing was computed") from None

        try:
            # A new output folder will compute: torch and the libraries import in a thread during the scan.
            computes = Path(opts.input_dir).is_dir() and not (out / layout.MANIFEST).is_file()
            local = engine.workers_device is None  # Ray's workers start their own GPUs
            warm = Warmup(device=opts.device if local else None) if computes else None
            if out.is_dir():  # lock first, so a second run exits before loading anything
                acquire()
                after_restart(out, opts, log)  # before anything lists the folder's files (the cached setup's plan)
                found = timed(timings, "scan", scan_input, opts)  # once: the cached setup and the model's share it
                setup = cached_setup(opts, out, found)
                if setup is None:
                    with loading():
                        setup = timed_load(opts, found, warm, timings)
            else:  # nothing to protect yet: check everything before creating the folder
                found = timed(timings, "scan", scan_input, opts)  # a missing or empty folder says so at once
                with loading():
                    setup = timed_load(opts, found, warm, timings)
                make_out(out)
                if acquire() > 0:  # the folder appeared and was busy: look at the input again
                    with loading():
                        setup = load_setup(opts)
            if warm is not None:  # started, though the setup came from the cache (a --wait that found it done):
                with loading():  # its threads end before the report's forks and the exit
                    warm.wait()
            return _run_locked(opts, engine, out, lock, setup, stop, log, t0, waited[0], timings)
        except (OSError, sqlite3.DatabaseError) as e:
            full = storage_error(e, out)  # a full disk (before the run row): never "damaged", never a traceback
            if full is not None:
                raise full from None
            if not isinstance(e, sqlite3.DatabaseError):
                raise
            raise ManifestError(  # a damaged page surfaces only when a query reaches it
                f"the manifest {out / layout.MANIFEST} is damaged ({e}); move it (and the folder's "
                "other files) away to start a fresh report there"
            ) from None
        finally:
            lock.release()


def after_restart(out: Path, opts: RunOptions, log: Callable[[str], None]) -> None:
    """The files the last seconds before a restart of the machine left damaged: deleted, for the plan to find them
    lost and write them again (restart.py); the run records its boot and start."""
    if not (out / layout.MANIFEST).is_file():
        return
    manifest = Manifest(out / layout.MANIFEST)
    try:
        found = restart.check(out, manifest, foreign_files(manifest))
    finally:
        manifest.close()
    restart.say(found, log, opts.on_event or (lambda event: None), not opts.events_only)


@contextmanager
def _autograd_on():
    """Gradients on for the run, whatever the caller's mode: a notebook's ``torch.no_grad()`` or
    ``torch.inference_mode()`` around ``xaibatch.run()`` made every gradient method fail ("the model's output does
    not depend on the target layer"). The run loads its own model, so nothing of the caller's is touched; torch
    not imported yet (the CLI) starts with gradients on, and is not imported here."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    with torch.inference_mode(False), torch.enable_grad():
        yield


def timed(timings: dict[str, float], name: str, fn: Callable[..., Any], *args: Any) -> Any:
    t = time.monotonic()
    try:
        return fn(*args)
    finally:
        timings[name] = time.monotonic() - t


def timed_load(opts: RunOptions, found: Scan, warm: Warmup | None, timings: dict[str, float]) -> Setup:
    """load_setup, after the heavy imports (begun in ``warm``'s thread, else now); times both."""
    t = time.monotonic()
    (warm or Warmup(background=False)).wait()
    timings["import"] = time.monotonic() - t  # what the imports still cost after the scan overlapped them
    return timed(timings, "model", load_setup, opts, found)


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None


@dataclass
class RunRow:
    """This run's row in the manifest while it runs: what any ending, clean or not, records there."""

    manifest: Manifest
    tally: Tally
    t0: float
    run_id: int | None = None
    counts: RunCounts | None = None
    reserve: Reserve | None = None  # should the disk fill up, room to record how this run ended
    dropped: set[str] = field(default_factory=set)  # files the run may leave without a row: deleted after the report
    resumed_from: dict[int, RunStatus] = field(default_factory=dict)  # the unfinished runs whose images it skips

    def count_tally(self) -> RunCounts:
        """The counts, with the tally's failures and images computed so far (stopped before the plan: only those)."""
        self.counts = self.counts or RunCounts()
        self.counts.failed, self.counts.computed = len(self.tally.failed), self.tally.computed
        return self.counts

    def finish(self, stopped: bool) -> RunStatus:
        """Record a run that got to its end, or to a signal's; returns its status, which the report shows."""
        counts = self.count_tally()
        status = RunStatus.INTERRUPTED if stopped else (RunStatus.SOME_FAILED if self.tally.failed else RunStatus.OK)
        with self.manifest.transaction():  # the report shows this status; a kill before its end makes it "killed"
            self.manifest.finish_run(self.run_id, status, time.monotonic() - self.t0, counts)
            self.manifest.set_meta(REPORTING, str(self.run_id))
        return status

    def fail(self, e: BaseException, out: Path) -> XaibatchError | None:
        """Record what stopped the run, once the reserve is freed and this process's temporary files are swept.

        Returns the one-line error to raise instead of ``e`` when the storage failed (a full disk), else None.
        """
        if self.reserve is not None:
            self.reserve.release()  # a full disk: room for the run row to say so
        sweep_temp_files(out, lambda pid: pid == os.getpid())  # what an error cut short in this process
        full = storage_error(e, out)
        if self.run_id is not None:
            counts = self.count_tally()
            try:
                self.manifest.finish_run(self.run_id, ending(e), time.monotonic() - self.t0, counts, reason(full or e))
            except Exception:
                pass  # the original error matters more
        return full


def _run_locked(
    opts: RunOptions,
    engine: Engine,
    out: Path,
    lock: OutputLock,
    setup: Setup,
    stop: Stop,
    log,
    t0: float,
    waited: float,
    timings: dict[str, float],
) -> RunResult:
    """Plan, compute and record the run, then write the report: the stages under the output folder's lock."""
    emit = opts.on_event or (lambda event: None)
    timings["prepare"] = time.monotonic() - t0 - waited
    if waited:
        timings["wait"] = waited
    lines = not opts.events_only  # --log-json: notices as events only
    say_notices(setup, log, emit, lines)
    warn_random_weights(opts.model, setup.config.model.checkpoint, log, emit, lines)
    t_plan = time.monotonic()
    # the row's seconds are the run's own, from when it had the folder (its started_at): not the --wait before
    row = RunRow(Manifest(out / layout.MANIFEST), Tally(failed=list(setup.found.skipped)), t0 + waited)
    try:
        known, plan = _plan_run(opts, out, lock, setup, row, log, emit)
        timings["plan"] = time.monotonic() - t_plan

        t_compute = time.monotonic()
        if (plan.work or plan.scored) and not stop.requested:
            if setup.prepared is None:  # cached_setup only stands in when there is nothing to compute
                raise RuntimeError("the plan changed under the lock")
            job = ComputeJob(
                opts, out, setup.prepared, plan, known, setup.hashes, row.run_id, stop, row.tally, emit, log, lock.check
            )
            if plan.work:
                engine.compute(job)
            if plan.scored and not stop.requested:  # maps that stay, scored from their .npy (on the driver)
                from .rescore import score_saved

                score_saved(job)
            stamp_failures(row.manifest, plan, row.tally)
            if row.tally.vanished and lines:
                gone = row.tally.vanished
                log(
                    f"xaibatch: {len(gone)} image(s) moved or deleted while the run read them (e.g. "
                    f"{printable(gone[0].rel)}): left to the next run"
                )
        if opts.faithfulness is not None and setup.prepared is not None and not stop.requested:
            chance_line(opts, out, setup, row.manifest, lock, log, stop)
        timings["compute"] = time.monotonic() - t_compute
        if row.tally.first_batch is not None:
            timings["first_batch"] = row.tally.first_batch - t0  # from the start: what a user waits for the first maps
        # a signal in the last batch: all done
        stopped = stop.requested and (row.tally.done < len(plan.work) or row.tally.scored < len(plan.scored))
        status = row.finish(stopped)
    except BaseException as e:
        full = row.fail(e, out)
        if full is not None:
            raise full from None
        raise
    finally:
        row.manifest.close()

    t_report = time.monotonic()
    report, accuracy = _report(out, opts, lock, row, log)
    timings["report"] = time.monotonic() - t_report
    result = RunResult(
        out_dir=out,
        counts=row.counts,
        failed=row.tally.failed,
        seconds=time.monotonic() - t0,
        report=report,
        layer=setup.layer,
        accuracy=accuracy,
        status=status,
        run_id=row.run_id,
        timings=timings,
        resumed_from=row.resumed_from,
        vanished=row.tally.vanished,
    )
    if status == RunStatus.INTERRUPTED:
        e = Interrupted(
            f"interrupted by {stop.name} after {row.counts.computed} of {len(plan.work)} image(s); "
            "finished batches are saved, the next run computes the rest"
        )
        e.result = result  # type: ignore[attr-defined]
        raise e
    return result


def refuse_lost_labels(opts: RunOptions, found: Scan, known: Known) -> None:
    """Refuse to read as unlabeled a folder that earlier runs read as class folders, because images now sit at its
    top: one stray file would regroup every image by prediction and drop the labels, without a word."""
    if opts.labeled is not None or found.classes is not None:
        return
    top = [e.rel for e in found.images if "/" not in e.rel]
    if top and any(r.label is not None for r in known.images.values()):
        raise InputError(
            f"{len(top)} image(s) now sit directly in {found.root} (e.g. {printable(top[0])}), which earlier runs "
            "read as class folders: move them into a class folder, or pass --unlabeled to regroup every image by "
            "its prediction"
        )


def _plan_run(
    opts: RunOptions,
    out: Path,
    lock: OutputLock,
    setup: Setup,
    row: RunRow,
    log: Callable[[str], None],
    emit: Callable[[dict[str, Any]], None],
) -> tuple[Known, Plan]:
    """Recover the folder, start the run row, plan against what is known, and apply the plan's removals.

    The manifest's state before this run (``Known``) and the plan are what the compute stage needs.
    """
    recover(out, row.manifest, lock, log)
    if restart.recorded(row.manifest) is None:  # a new folder: its first writes are checked after a restart
        restart.record(row.manifest)
    row.reserve = Reserve(out)
    known = setup.known or Known.read(row.manifest)  # a cached setup has read it, under this lock
    refuse_lost_labels(opts, setup.found, known)
    # maps/cam:gradcam++/ -> maps/cam-gradcampp/; the old names go with the dropped files, after the report
    moved, old_names = migrate_map_folders(out, row.manifest, known.maps, lock)
    if moved:
        log(f"xaibatch: moved {moved} map(s) to portable folder names (maps/<method folder>/), nothing recomputed")
    row.manifest.set_meta("input_dir", shown(str(Path(opts.input_dir).resolve())))  # what this report is of
    row.manifest.set_meta("input_path", input_path(opts.input_dir))  # and how the user names it (check_same_input)
    shown_input = shown(str(opts.input_dir))  # non-UTF-8 as text
    note_foreign_files(out, row.manifest)  # the folder's first run: pictures already there are a user's, kept
    unfinished = row.manifest.unfinished_runs()  # after recover(): a killed run says "killed" now
    row.run_id = row.manifest.start_run(shown_input, setup.config, setup.hashes.predict)
    plan = setup.plan
    if plan is None:
        on_disk = existing_files(out)
        plan = make_plan(
            setup.found, known, setup.hashes, on_disk.__contains__, redecider(setup, opts.target, row.run_id), on_disk
        )
    if plan.moves and not opts.events_only:  # --log-json: the plan event's moved
        log(
            f"xaibatch: {len(plan.moves)} image(s) moved or renamed (e.g. {printable(plan.moves[0].old)} -> "
            f"{printable(plan.moves[0].new)}): their predictions and maps go with them"
        )
    if plan.repaired:
        log(f"xaibatch: {plan.repaired} image(s) lost output files since they were committed; writing them again")
    read, same = plan.ctime_only
    if read:
        log(
            f"xaibatch: {read} image(s) read to check after their ctime alone moved (chmod, chown, a hard link, a "
            f"volume re-owned at each start), {same} with the same bytes; --no-ctime takes size and mtime alone"
        )
    row.tally.failed.extend(plan.still_failed)  # unreadable as before: listed (exit 1), not read again
    resumed = resumed_by(setup.found, known, plan, setup.hashes, unfinished)
    row.resumed_from = {i: unfinished[i] for i in sorted(resumed)}
    row.counts = planned_counts(setup.found, plan, row.tally, sum(resumed.values()))
    row.manifest.plan_counts(row.run_id, row.counts)  # a run killed from here on still says what it planned
    maps = maps_due(plan, opts.methods)
    if maps and not opts.events_only and any(maps.get(m, 0) < len(plan.work) for m in opts.methods):  # else: all
        due = ", ".join(f"{m} for {n}" for m, n in maps.items())
        log(f"xaibatch: maps to compute: {due} image(s); the others are up to date")
    emit(
        plan_event(
            row.run_id, row.counts, len(plan.work), list(row.resumed_from), len(plan.moves), maps, len(plan.scored)
        )
    )
    row.dropped = apply_removals(out, row.manifest, lock, setup.found, plan, known, row.run_id, emit) | old_names
    return known, plan


def chance_line(
    opts: RunOptions, out: Path, setup: Setup, manifest: Manifest, lock: OutputLock, log, stop: Stop
) -> None:
    """--faithfulness: the chance sample (a random map, a centred blob) scored on the images it lacks, here on the
    driver whichever engine computed the maps: drawn by content from every image the manifest holds now."""
    from ..evaluation.faithfulness import update_chance

    entries = {e.rel: e for e in setup.found.images}
    update_chance(
        out,
        opts.faithfulness,
        setup.prepared,
        setup.hashes.predict,
        manifest.image_targets(),
        entries,
        check=lock.check,
        log=(lambda line: None) if opts.events_only else log,  # --log-json: JSON only
        should_stop=lambda: stop.requested,
    )


def stamp_failures(manifest: Manifest, plan: Plan, tally: Tally) -> None:
    """Stamp the files this run read and refused with the size, mtime and ctime they were planned with: unchanged,
    the next run lists them without reading them again (plan.Failed.still). A run killed before this retries them."""
    manifest.stamp_failures(
        [(f.rel, w.entry.size, w.entry.mtime_ns, w.entry.ctime_ns) for f in tally.failed if (w := plan.work.get(f.rel))]
    )


def planned_counts(found: Scan, plan: Plan, tally: Tally, resumed: int = 0) -> RunCounts:
    """The run's counts once it has planned (nothing computed yet; the scan's failures so far). ``resumed``: the
    images left alone that unfinished runs before this one computed (plan.resumed_by), not counted as unchanged."""
    return RunCounts(
        seen=len(found.images) + len(found.skipped),
        added=len(plan.added),
        changed=len(plan.changed),
        removed=len(plan.removed),
        unchanged=len(found.images) - len(plan.work) - len(plan.still_failed) - resumed,
        failed=len(tally.failed),
        resumed=resumed,
    )


def maps_due(plan: Plan, methods: list[str]) -> dict[str, int]:
    """Per method (a ``<method>@label`` key for true-class maps), the images whose map the run computes, in the
    order of -m: a method added to a run of nine computes its maps alone, which "32 computed" did not say. A
    true-class map counts for an image known misclassified only: one predicted anew (``Work.fresh``) gets it if
    it turns out misclassified, which its batch decides (the estimate guesses those: labelmaps.expected)."""
    due = Counter(m for w in plan.work.values() for m in w.methods if not (w.fresh and targets.is_label_key(m)))
    order = {m: i for i, m in enumerate(methods)}
    return dict(sorted(due.items(), key=lambda kv: (order.get(targets.method_of(kv[0]), len(order)), kv[0])))


def plan_event(
    run_id: int,
    counts: RunCounts,
    to_compute: int,
    resumed_from: list[int],
    moved: int = 0,
    maps: dict[str, int] | None = None,
    scored: int = 0,
) -> dict[str, Any]:
    """The ``plan`` event (``--log-json``). ``moved``: images found at a new path (plan.Move), counted as unchanged
    (or to compute, where their new label asks for maps), neither added nor removed. ``maps``: maps_due.
    ``scored``: images whose maps stay and are only scored (Plan.scored), counted as unchanged, not in to_compute."""
    return {
        "event": "plan",
        "run_id": run_id,
        "seen": counts.seen,
        "added": counts.added,
        "changed": counts.changed,
        "removed": counts.removed,
        "unchanged": counts.skipped,  # as before resumed existed: ``resumed`` is a part of it
        "to_compute": to_compute,
        "resumed": counts.resumed,
        "resumed_from": resumed_from,
        "moved": moved,
        "maps": maps or {},
        "scored": scored,
    }


def _report(
    out: Path, opts: RunOptions, lock: OutputLock, row: RunRow, log: Callable[[str], None]
) -> tuple[Path, float | None]:
    """Write the report (with predictions.csv) while the folder is still ours, then delete the files of the rows the
    run dropped (shown by the report until then) and those a sweep due after an unclean stop finds; returns its
    index and the accuracy.

    A failure here is the run's: its row says how it ended, as the exit code will; the disk reserve is freed
    first, so that on a full disk the row can still say so.
    """
    from ..report import write_report

    try:
        try:
            lock.check()  # the report is written only while the folder is still ours
            written = write_report(out, template_dir=opts.template_dir)  # with predictions.csv
            delete_dropped(out, row.dropped, lock)  # files the report on disk showed until now
            sweep_due(out, lock, log)  # what a run that did not finish left (recovery.recover)
        except BaseException as e:  # the run row agrees with the exit code
            row.reserve.release()
            full = storage_error(e, out)
            mark_run(out, row.run_id, ending(e), time.monotonic() - row.t0, row.counts, reason(full or e))
            if full is not None:
                raise full from None
            raise
        try:
            mark_run(out, row.run_id, None, 0, None)  # reported
        except Exception as e:  # the run's work and report are done: only its history row is at stake
            why = str(storage_error(e, out) or e) or type(e).__name__  # a full disk's line; "database is locked"
            log(
                f"xaibatch: warning: could not note in the manifest that the report is done ({why}); "
                "the next run will list this run as killed while reporting"
            )
    finally:
        row.reserve.release()
    return written.index, written.accuracy


def ending(e: BaseException) -> RunStatus:
    """The run row's status when ``e`` stopped the run (the exit code's, see errors.ExitCode)."""
    return RunStatus.INTERRUPTED if isinstance(e, (KeyboardInterrupt, Interrupted)) else RunStatus.ERROR


def reason(e: BaseException) -> str:
    """The run row's reason: the one line the run exits with (errors.outcome, as cli/boundary.py says it)."""
    return outcome(e).line
