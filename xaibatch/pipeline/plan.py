"""Plan a run against the manifest: which images are new, changed or gone, and which maps are stale."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import layout
from ..layout import assign_stems
from ..data import ImageEntry, Scan
from ..files import file_sha256
from ..manifest import ImageRow, MapRow


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def index_maps(known_maps: dict[tuple[str, str], MapRow]) -> dict[str, dict[str, MapRow]]:
    index: dict[str, dict[str, MapRow]] = defaultdict(dict)
    for (rel, m), row in known_maps.items():
        index[rel][m] = row
    return index


def files_of(rels, known: dict[str, ImageRow], maps_by_rel: dict[str, dict[str, MapRow]]) -> list[str]:
    """Output files of these images as the manifest records them (their stored stem, not a recomputed one)."""
    paths: list[str] = []
    for rel in rels:
        for row in maps_by_rel.get(rel, {}).values():
            paths += [p for p in (row.npy, row.png, row.thumb) if p]
        row = known.get(rel)
        if row is not None:
            paths += layout.image_files(row.stem)
    return paths


def make_plan(found: Scan, known: dict[str, ImageRow], known_maps: dict[tuple[str, str], MapRow],
          known_failures: set[str], predict_hash: str, method_hashes: dict[str, str]) -> dict[str, Any]:
    """Decide per image what must be (re)computed: size+mtime first, content hash only when those moved.

    Failed images are retried every run (they count as neither added nor changed).
    """
    added, changed, touched = [], [], []
    work: dict[str, tuple[ImageEntry, list[str], bool]] = {}
    # Size or mtime moved: hash those files (in parallel; hashlib releases the GIL) to tell a touch from an edit.
    suspects = [e for e in found.images
                if (row := known.get(e.rel)) is not None and (row.size != e.size or row.mtime_ns != e.mtime_ns)]
    same_content: dict[str, bool] = {}
    if suspects:
        def same(e: ImageEntry) -> bool:
            try:
                return file_sha256(e.path) == known[e.rel].sha256
            except OSError:
                return False

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            same_content = dict(zip((e.rel for e in suspects), pool.map(same, suspects)))
    for e in found.images:
        row = known.get(e.rel)
        content_same = False
        if row is not None:
            content_same = same_content.get(e.rel, True)
            if e.rel in same_content and content_same:
                touched.append(e)
        if row is None:
            if e.rel not in known_failures:
                added.append(e)
        elif not content_same:
            changed.append(e)
        fresh_prediction = row is None or not content_same or row.predict_hash != predict_hash
        todo = [
            m for m, h in method_hashes.items()
            if fresh_prediction or (known_maps.get((e.rel, m)) is None) or known_maps[(e.rel, m)].config_hash != h
        ]
        if todo or fresh_prediction:
            work[e.rel] = (e, todo, fresh_prediction)
    present = {e.rel for e in found.images}
    removed = [r for r in known if r not in present]
    return {"added": added, "changed": changed, "touched": touched, "work": work, "removed": removed,
            "stems": assign_stems([e.rel for e in found.images], known)}
