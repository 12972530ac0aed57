"""Move map files written under an older layout (``maps/cam:gradcam++/``) to the current one, without recomputing.

Crash-safe order, as everywhere: the files are first linked (or copied) under their new names, then the
rows are updated in one transaction; the old names stay until the run has written its new report (the report
on disk links them until then), when the run deletes them as it deletes a removed image's files
(``apply.delete_dropped``). A kill before the commit leaves new names no row points at (swept after an unclean
stop, or overwritten by the next migration); a kill after it leaves old names no row points at (swept likewise,
after the next report). Imports no torch.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from .. import layout
from ..files import make_dirs, safe_join, temp_name
from ..manifest import Manifest, MapRow


def stale_rows(maps: dict[str, dict[str, MapRow]]) -> list[tuple[MapRow, MapRow]]:
    """(recorded, moved) for every map row whose files sit under an older folder name."""
    out = []
    prefixes = {m: f"maps/{m}/" for m in set().union(*maps.values()) if layout.method_dir(m) != m}
    if not prefixes:  # only methods whose folder is their name (gradcam, lime, ...): nothing can be stale
        return out
    for rows in maps.values():
        for m, prefix in prefixes.items():
            row = rows.get(m)
            if row is None or not row.npy.startswith(prefix):
                continue
            new = dataclasses.replace(
                row,
                **{
                    f: layout.moved_map_path(getattr(row, f), row.method)
                    for f in ("npy", "png", "thumb")
                    if getattr(row, f)
                },
            )
            if new != row:
                out.append((row, new))
    return out


def _link(out: Path, old: str, new: str) -> None:
    """Give ``old``'s file the name ``new`` too (replacing whatever is there); a missing ``old`` is left alone."""
    src, dst = safe_join(out, old), safe_join(out, new)
    if not src.is_file():
        return
    if dst.is_file() and os.path.samefile(src, dst):
        return  # linked by a migration that stopped before its commit (rename() would do nothing here)
    make_dirs(dst.parent)
    tmp = dst.with_name(temp_name(dst.name))  # a crash leaves it to the sweep
    try:
        os.link(src, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def migrate_map_folders(
    out: Path, manifest: Manifest, maps: dict[str, dict[str, MapRow]], lock=None
) -> tuple[int, set[str]]:
    """Give stale map files their current names and move their rows there; returns the number of map rows moved and
    the old names, which the report on disk still links: delete them once the new report is written."""
    moves = stale_rows(maps)
    if not moves:
        return 0, set()
    pairs = {
        (getattr(old, f), getattr(new, f))
        for old, new in moves
        for f in ("npy", "png", "thumb")
        if getattr(old, f) and getattr(old, f) != getattr(new, f)
    }
    for src, dst in sorted(pairs):
        _link(out, src, dst)
    whole = manifest.maps(rels=[old.rel for old, _new in moves])  # ``maps`` are Known's: without their views
    with manifest.transaction():
        if lock is not None:
            lock.check()
        for old, new in moves:
            kept = whole.get((old.rel, old.method), old)
            manifest.put_map(dataclasses.replace(kept, npy=new.npy, png=new.png, thumb=new.thumb))
    for old, new in moves:  # the rows moved: update the caller's view too
        maps[old.rel][old.method] = new
    return len(moves), {src for src, _dst in pairs}
