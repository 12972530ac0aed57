"""What the plan changes without the model: rows of images gone, stale maps, new thresholds; and, once the report
no longer shows them, the files of the rows the run dropped.

:func:`apply_removals` runs before any batch is computed and drops rows only: the report on disk still shows those
images and maps (for the hours a LIME run may compute, or for good after a kill) and links their files, so the files
stay until the run has written its new report, when :func:`delete_dropped` deletes those no row points at then (a
new image may have taken the same path meanwhile). A run stopped before that leaves them to the next run's recovery
sweep of unreferenced files. :func:`redecider` gives :func:`.plan.make_plan` an image's new prediction from the
probabilities it already has when only the decision rule changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from .. import layout, targets
from ..files import OutputDir, remove_files
from ..lock import OutputLock
from ..manifest import ImageRow, Manifest
from ..scan import Scan
from .plan import Known, Plan
from .setup import Setup


def link_moved(out: Path, plan: Plan) -> int:
    """Give each moved image's files their names under its new stem (a hard link, or a copy where the file system has
    none: nothing recomputed), before the rows that point at them are committed; how many. The old names stay until
    the new report no longer shows them. A file gone meanwhile is not linked: the next run finds it lost and writes
    it again, as it does any committed file deleted."""
    with OutputDir(out) as files:  # all at once: an image renamed to where another's files were (a chain)
        return files.link([pair for mv in plan.moves for pair in mv.links()])


def apply_removals(
    out: Path,
    manifest: Manifest,
    lock: OutputLock,
    found: Scan,
    plan: Plan,
    known: Known,
    run_id: int,
    emit: Callable[[dict[str, Any]], None],
) -> set[str]:
    """Images gone from the input or no longer readable leave the manifest, as do maps that are lost or explain a
    target no longer the image's; moved images' rows go to their new paths once their files are linked there
    (:func:`link_moved`; a kill in between leaves files no row points at, which the next run links again). Returns
    the files this run may leave without a row: those of these rows (a moved image's old names), and those of the
    images it computes anew (maps of methods not asked this time, an image that fails now), for
    :func:`delete_dropped` once the new report is written."""
    present = {e.rel for e in found.images} | {f.rel for f in found.skipped}
    rels = {*plan.removed, *(f.rel for f in found.skipped), *plan.work, *(rel for rel, _ in plan.dead_maps)}
    dropped = set(known.files_of(rels | set(plan.retarget)))
    dropped.update(p for mv in plan.moves for p in mv.old_files())
    link_moved(out, plan)
    stale = {rel: known.maps.pop(rel, {}) for rel in plan.retarget}  # the target flipped: maps explain the old one
    whole = manifest.maps(rels=[mv.old for mv in plan.moves]) if plan.moves else {}  # Known's rows lack the views
    with manifest.transaction():
        lock.check()
        manifest.remove_images(plan.removed)  # rows first: a kill now leaves only unreferenced files
        for mv in plan.moves:  # as the planner holds them (Known.move); re-labeled below with the re-decided rows
            manifest.remove_images([mv.old])
            manifest.put_image(mv.image_row())
            manifest.put_maps(mv.map_rows({m: whole[(mv.old, m)] for m in mv.maps if (mv.old, m) in whole}).values())
        manifest.remove_failures(r for r in known.failures if r not in present)
        for f in found.skipped:
            manifest.put_failure(f.rel, f.reason, run_id)
        for e in plan.touched:
            manifest.touch_image(e.rel, e.mtime_ns, e.ctime_ns)
        for rel, m in plan.dead_maps:  # lost files of a method not asked for now: it leaves the report
            manifest.remove_map(rel, m)
        for row in plan.redecided:  # a new threshold: new predictions from the stored probabilities
            manifest.put_image(row)
        for rel, rows in stale.items():
            for m in rows:
                manifest.remove_map(rel, m)
    for f in found.skipped + plan.still_failed:  # unreadable as before, read again or not
        emit({"event": "failure", "path": f.rel, "reason": f.reason})
    return dropped


def delete_dropped(out: Path, dropped: set[str], lock: OutputLock) -> int:
    """Delete the files of ``dropped`` that no manifest row points at now, and the folders that leaves empty; how
    many went. Call once the report that no longer shows them is written, under the lock: a file a row points at
    again (an image renamed or replaced, whose new files took the same path) stays."""
    if not dropped:
        return 0
    manifest = Manifest(out / layout.MANIFEST)
    try:
        lock.check()  # a run that took the folder meanwhile owns these files now
        gone = sorted(dropped - manifest.referenced_files())
    finally:
        manifest.close()
    return remove_files(out, gone, layout.PICTURE_DIRS)


def redecider(setup: Setup, target: str, run_id: int) -> Callable[[ImageRow], ImageRow] | None:
    """An image's row under a new decision rule, from the probabilities it already has (no forward pass)."""
    decision = setup.prepared.model.decision if setup.prepared is not None else None
    if decision is None:
        return None
    from ..model import heads

    def redecide(row: ImageRow) -> ImageRow:
        pred = heads.predict_one(row.probs, decision)
        return dataclasses.replace(
            row,
            pred=pred,
            target=targets.target_class(target, pred, row.target),  # under --target label: its label, kept
            confidence=float(row.probs[pred]),
            predict_hash=setup.hashes.predict,
            run_id=run_id,
        )

    return redecide
