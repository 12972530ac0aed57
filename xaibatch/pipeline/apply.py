"""What the plan changes without the model: rows and files of images gone, stale maps, new thresholds.

:func:`apply_removals` runs before any batch is computed, rows first and files after (a kill in between leaves
only unreferenced files, which the next run's recovery sweeps); :func:`redecider` gives :func:`.plan.make_plan`
an image's new prediction from the probabilities it already has when only the decision rule changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from .. import layout
from ..files import remove_files
from ..lock import OutputLock
from ..manifest import ImageRow, Manifest
from ..scan import Scan
from .plan import Known, Plan
from .setup import Setup


def apply_removals(
    out: Path,
    manifest: Manifest,
    lock: OutputLock,
    found: Scan,
    plan: Plan,
    known: Known,
    run_id: int,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Images gone from the input or no longer readable leave the manifest, then their files go."""
    present = {e.rel for e in found.images} | {rel for rel, _ in found.skipped}
    discard = known.files_of(plan.removed) + known.files_of(rel for rel, _ in found.skipped)
    discard += [p for rel, m in plan.dead_maps for p in known.maps[rel][m].files.paths()]
    stale = {rel: known.maps.pop(rel, {}) for rel in plan.retarget}  # the target flipped: maps explain the old one
    discard += [p for rows in stale.values() for row in rows.values() for p in row.files.paths()]
    with manifest.transaction():
        lock.check()
        manifest.remove_images(plan.removed)  # rows first: a kill now leaves only unreferenced files
        manifest.remove_failures(r for r in known.failures if r not in present)
        for rel, reason in found.skipped:
            manifest.put_failure(rel, reason, run_id)
        for e in plan.touched:
            manifest.touch_image(e.rel, e.size, e.mtime_ns)
        for rel, m in plan.dead_maps:  # lost files of a method not asked for now: it leaves the report
            manifest.remove_map(rel, m)
        for row in plan.redecided:  # a new threshold: new predictions from the stored probabilities
            manifest.put_image(row)
        for rel, rows in stale.items():
            for m in rows:
                manifest.remove_map(rel, m)
    remove_files(out, discard, layout.PICTURE_DIRS)
    for rel, reason in found.skipped + plan.still_failed:  # unreadable as before, read again or not
        emit({"event": "failure", "path": rel, "reason": reason})


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
            target=row.target if target == "label" else pred,
            confidence=float(row.probs[pred]),
            predict_hash=setup.hashes.predict,
            run_id=run_id,
        )

    return redecide
