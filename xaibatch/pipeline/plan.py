"""Plan a run against the manifest: which images are new, changed or gone, and which maps are stale."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, NamedTuple

from .. import MAP_FORMAT_VERSION, layout, targets
from ..layout import assign_stems
from ..scan import MAX_FILE_BYTES, Failure, ImageEntry, Scan
from ..files import file_sha256, walk_files
from ..manifest import ImageRow, Manifest, MapRow
from ..defaults import DEFAULT_MAX_MAP_SIDE, cpu_count
from ..errors import lasting

if TYPE_CHECKING:
    from .prepare import Prepared


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Hashes:
    """The configuration a prediction and each method's maps were computed under (see README, incremental runs)."""

    predict: str
    methods: dict[str, str]  # method name -> its hash (which includes ``predict``)
    predict_config: dict[str, Any]
    faith: dict[str, str] | None = None  # method -> hash its faithfulness scores must carry; None: not scored
    model: str = ""  # the model's part of ``predict`` (``predict`` is ``model+decision`` under a threshold rule)
    # --target pred,label: key (targets.label_key) -> hash of each method's map of the true class, which a
    # misclassified image gets besides its prediction's; empty otherwise
    labels: dict[str, str] = field(default_factory=dict)
    # --max-map-side: the maps of images over it x it pixels were saved scaled down (pictures.map_size), not as
    # the method returned them (a non-default value is in each method's hash too)
    max_map_side: int = DEFAULT_MAX_MAP_SIDE


def config_hashes(
    prepared: Prepared, target: str, faithfulness: Any = None, max_map_side: int = DEFAULT_MAX_MAP_SIDE
) -> Hashes:
    """Hash what decides the predictions (model, input, classes, target) and, per method, its maps."""
    from ..methods.base import IMAGE_SEEDS  # torch is loaded: there is a prepared model

    model, layer = prepared.model, prepared.layer
    predict_config = {
        "arch": model.arch,
        "checkpoint_sha256": model.checkpoint_sha256,
        **model.preprocess.record(),  # input_size, mean, std
        "classes": prepared.names,
        "target": targets.maps_target(target),
        "map_format": MAP_FORMAT_VERSION,
    }
    if model.code_sha256 is not None:  # a --model factory's file: an edited forward is a new model
        predict_config["code_sha256"] = model.code_sha256
    decision = model.decision
    if decision is not None and decision.one_logit:  # which class sigmoid(z) is changes every probability
        predict_config["one_logit_positive"] = decision.positive_name
    if decision is not None and decision.probability:  # the output read as P(positive), not as a logit
        predict_config["one_logit_output"] = "probability"
    if model.softmax:  # the outputs read as class probabilities, not as logits
        predict_config["output"] = "softmax"
    # Maps depend on the model (model_hash) and on each image's target class; the decision rule only moves
    # the prediction, so it sits in the predict hash alone: a new threshold re-decides from the stored
    # probabilities, and only images whose target class flips get new maps (see make_plan).
    model_hash = config_hash(predict_config)
    predict = model_hash if decision is None else f"{model_hash}+{config_hash(decision.config())}"
    methods = {
        m.name: config_hash(
            {
                "predict": model_hash,
                "method": m.name,
                "config": m.config(),
                "layer": layer.name if (layer and (m.needs_activations or m.needs_layer)) else None,
                # random methods: how each image is seeded (base.IMAGE_SEEDS); maps of an earlier rule are redone
                **({"image_seeds": IMAGE_SEEDS} if m.takes_seed else {}),
                # only a non-default value joins the hash: existing folders stay valid
                **({"max_map_side": max_map_side} if max_map_side != DEFAULT_MAX_MAP_SIDE else {}),
            }
        )
        for m in prepared.methods
    }
    faith = None
    if faithfulness is not None:
        from ..evaluation.faithfulness import hashes as faith_hashes

        faith = faith_hashes(faithfulness, methods)
    labels = {}
    if targets.label_maps(target):  # the same maps --target label computes, so the same hashes
        labels = {
            targets.label_key(m): h for m, h in config_hashes(prepared, "label", None, max_map_side).methods.items()
        }
    return Hashes(predict, methods, predict_config, faith, model_hash, labels, max_map_side)


class Failed(NamedTuple):
    """An image the manifest lists as unreadable."""

    reason: str
    # (size, mtime_ns, ctime_ns) as scanned before its bytes were refused (Manifest.stamp_failures): a file being
    # rewritten then (cp -p puts size and mtime back when it is done) has a new ctime, and is read again
    stamp: tuple[int, int, int | None] | None

    def still(self, e: ImageEntry) -> bool:
        """Whether reading ``e`` again would surely fail the same way: same bytes, a reason they decide."""
        if self.stamp is None or not lasting(self.reason):
            return False
        # no ctime: a stamp an older xaibatch wrote (or a run under --no-ctime), read by size and mtime as then
        size, mtime, ctime = self.stamp
        return (size, mtime) == (e.size, e.mtime_ns) and (ctime is None or e.ctime_ns in (None, ctime))


@dataclass
class Known:
    """What the manifest holds when a run starts."""

    images: dict[str, ImageRow]
    # rel -> method -> row, without what only the report shows (Manifest.maps(shown=False): no info, faith or
    # view): a row that goes back into the manifest (a move, a migration) is read whole first (Manifest.maps(rels=))
    maps: dict[str, dict[str, MapRow]]
    failures: dict[str, Failed]  # rel -> why it failed, and the file's stamp then

    @classmethod
    def read(cls, manifest: Manifest) -> Known:
        maps: dict[str, dict[str, MapRow]] = defaultdict(dict)
        for (rel, m), row in manifest.maps(shown=False).items():
            maps[rel][m] = row
        stamps = manifest.failure_stamps()
        failures = {rel: Failed(reason, stamps.get(rel)) for rel, reason in manifest.failures()}
        return cls(manifest.images(), maps, failures)

    def move(self, moves: list[Move], exists: Callable[[str], bool]) -> Callable[[str], bool]:
        """Hold each moved image at its new path (its rows there, see Move) and no longer at its old one: what the
        manifest holds once :func:`.apply.apply_removals` has committed the moves, which the rest of the run plans
        and computes against. Returns ``exists`` for that state: a new path's file is there when its old one is
        (the link is made before the rows are committed)."""
        if not moves:
            return exists
        for mv in moves:
            self.images.pop(mv.old, None)
            self.maps.pop(mv.old, None)
            self.images[mv.new] = mv.image_row()
            self.maps[mv.new] = mv.map_rows()
        linked = {new: old for mv in moves for old, new in mv.links()}
        return lambda path: exists(linked.get(path, path))

    def files_of(self, rels: Iterable[str]) -> list[str]:
        """Output files of these images as the manifest records them (their stored stem, not a recomputed one)."""
        paths: list[str] = []
        for rel in rels:
            for row in self.maps.get(rel, {}).values():
                paths += row.files.paths()
            row = self.images.get(rel)
            if row is not None:
                paths += layout.image_files(row.stem)
        return paths


@dataclass
class Work:
    """One image to go through the model."""

    entry: ImageEntry
    methods: list[str]  # methods whose maps are missing or stale
    fresh: bool  # new content or a new model: the prediction is made (and stored) again
    # the display copy's files are written: a new or changed image, or its files gone (they depend on the image's
    # bytes only: a new model or threshold leaves them as they are)
    display: bool = False


@dataclass(frozen=True)
class Move:
    """An image the manifest holds at a path gone from the scan whose bytes (sha256) the scan found at a path it does
    not hold: moved to another class folder (a relabel) or renamed. Its rows and files go to the new path (files
    linked under the new stem, :func:`.apply.link_moved`): the run goes on as if the file had always been there, with
    its label now the new folder's (:meth:`_Planner.relabeled` decides which maps that leaves due)."""

    row: ImageRow  # the manifest's row at the old path
    maps: dict[str, MapRow]  # its maps there
    entry: ImageEntry  # the scan's image at the new path
    stem: str  # the new path's output stem (layout.assign_stems)

    @property
    def old(self) -> str:
        return self.row.rel

    @property
    def new(self) -> str:
        return self.entry.rel

    def image_row(self) -> ImageRow:
        """The image row at the new path: the same prediction, the file's new stamp and stem (the label is the old
        one: the planner re-labels it as it does an image whose label changed in place)."""
        e = self.entry
        return dataclasses.replace(
            self.row, rel=e.rel, stem=self.stem, size=e.size, mtime_ns=e.mtime_ns, ctime_ns=e.ctime_ns
        )

    def map_rows(self, whole: dict[str, MapRow] | None = None) -> dict[str, MapRow]:
        """The map rows at the new path, their files named from the new stem. A true-class map
        (``<method>@label``) explains the old label: it goes along only while the label stays (else
        :func:`label_todo` asks for it again where the image is misclassified under its new label). ``whole``: the
        old path's rows as the manifest holds them, with what the report shows (``maps`` is Known's, without it),
        for the rows the manifest is given."""
        relabeled = self.row.label != self.entry.label
        rows = {}
        for m, r in self.maps.items():
            r = (whole or {}).get(m, r)
            if relabeled and targets.is_label_key(m):
                continue
            files = layout.MapFiles.of(m, self.stem, self.row.width, self.row.height)
            rows[m] = dataclasses.replace(
                r, rel=self.new, npy=files.npy, png=files.png, thumb=files.thumb if r.thumb else None
            )
        return rows

    def old_files(self) -> list[str]:
        """Every file of the old path's rows: dropped once the report no longer shows them."""
        return [*layout.image_files(self.row.stem), *(p for r in self.maps.values() for p in r.files.paths())]

    def links(self) -> list[tuple[str, str]]:
        """(old file, new file) for each file the new path's rows point at: the display copy, its thumbnail, the
        maps' arrays, overlays and thumbnails."""
        r, pairs = self.row, {}
        pairs[layout.image_png(r.stem)] = layout.image_png(self.stem)
        pairs[layout.image_thumb(r.stem, r.width, r.height)] = layout.image_thumb(self.stem, r.width, r.height)
        for m, new in self.map_rows().items():
            old = self.maps[m]
            pairs.update(zip(old.files.paths(), new.files.paths()))
        return [(a, b) for a, b in pairs.items() if a != b]


@dataclass
class Plan:
    added: list[ImageEntry]
    changed: list[ImageEntry]
    touched: list[ImageEntry]  # same bytes, new size/mtime: only the manifest's record moves
    work: dict[str, Work]
    removed: list[str]  # in the manifest, gone from the input
    stems: dict[str, str]  # rel -> output file stem
    dead_maps: list[tuple[str, str]] = field(default_factory=list)  # (rel, method): files lost, method not asked
    redecided: list[ImageRow] = field(default_factory=list)  # new threshold or label: rows re-decided, no forward pass
    retarget: list[str] = field(default_factory=list)  # ... whose target class flipped: their maps go, all anew
    repaired: int = 0  # images whose committed files were found missing
    ctime_only: tuple[int, int] = (0, 0)  # images hashed because their ctime alone moved, and those the same
    still_failed: list[Failure] = field(default_factory=list)  # images failed as before, unchanged: not read again
    # images moved or renamed (same bytes at a new path, the old one gone): neither added nor removed; their rows and
    # files go to the new path before anything is computed (apply.apply_removals), and ``work`` holds only what the
    # new path needs besides (a map whose target class moved with the label)
    moves: list[Move] = field(default_factory=list)
    # rel -> the methods whose faithfulness scores are due while their maps are current (--faithfulness turned on
    # or its settings changed): scored from the saved .npy (pipeline/rescore.py), no method run; not in ``work``
    # (no map is computed: these images count as unchanged)
    scored: dict[str, Scored] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """An image whose maps stay and whose faithfulness scores are due: each of ``methods`` is scored from its saved
    map. Only where that map is the method's own (the image at the model's input size: the .npy was not resized)."""

    entry: ImageEntry
    methods: tuple[str, ...]


def make_plan(
    found: Scan,
    known: Known,
    hashes: Hashes,
    exists: Callable[[str], bool] = lambda rel: True,
    redecide: Callable[[ImageRow], ImageRow] | None = None,
    on_disk: Collection[str] = (),
) -> Plan:
    """Decide per image what must be (re)computed: size, mtime and ctime first, content hash only when those moved.

    Failed images are retried (they count as neither added nor changed), except one whose bytes were refused
    and whose size, mtime and ctime are still those it had then: it stays failed unread (``still_failed``). Output files of
    skipped images are looked up with ``exists`` (see existing_files): a deleted display copy is written
    again, a deleted map of a requested method recomputed, and one of a method not requested dropped.
    When only the decision rule changed (the predict hash is ``model+decision``), ``redecide`` gives the
    new row from the stored probabilities, with no forward pass; images whose target class it flips are
    listed in ``retarget`` and get every requested map anew (the caller removes their old maps).
    With ``hashes.labels`` (``--target pred,label``) see :func:`label_todo`. ``on_disk``: the files under
    images/, thumbs/ and maps/ (see existing_files), which new images' stems go round (layout.assign_stems).
    An image moved or renamed (:func:`find_moves`) is planned at its new path as an image whose label changed in
    place: ``known`` is updated to hold it there (Known.move), as the manifest will once the moves are applied.
    """
    present = {e.rel for e in found.images}
    stems = assign_stems([e.rel for e in found.images], known.images, on_disk)
    moves = find_moves(found, known, stems)
    exists = known.move(moves, exists)
    gone = {m.old for m in moves}
    moved_same = moved_but_same(found, known)  # after the moves: a moved row already holds its new file's stamps
    planner = _Planner(
        known,
        hashes,
        exists,
        redecide,
        moved_same,
        Plan(
            added=[],
            changed=[],
            touched=[],
            work={},
            removed=[r for r in known.images if r not in present and r not in gone],
            stems=stems,
            moves=moves,
        ),
    )
    for e in found.images:
        planner.add(e)
    planner.plan.ctime_only = ctime_only(found, known, moved_same)
    return planner.plan


def ctime_only(found: Scan, known: Known, moved_same: dict[str, bool]) -> tuple[int, int]:
    """Of the images moved_but_same read, those with the size, mtime and a ctime recorded as before (their ctime
    alone moved: chmod, chown, a hard link, a volume re-owned), and how many of them held the same bytes."""
    n = same = 0
    for e in found.images if moved_same else ():  # none read (an unchanged re-run): no second pass
        row = known.images.get(e.rel)
        if e.rel in moved_same and row is not None and row.ctime_ns is not None:
            if (row.size, row.mtime_ns) == (e.size, e.mtime_ns):  # the ctime alone moved
                n += 1
                same += moved_same[e.rel]
    return n, same


def find_moves(found: Scan, known: Known, stems: dict[str, str]) -> list[Move]:
    """The images moved or renamed since the manifest was written: each row whose path is gone from the scan paired
    with at most one new path (not in the manifest) holding the same bytes.

    Only new files of a vanished row's size are hashed (in parallel, into ``found.digests``). Several vanished rows
    or new paths with the same bytes (duplicates) pair deterministically: a new path with the old one's file name
    first (``REAL/x.png`` -> ``FAKE/x.png``), then the rest in path order; what is left over is removed or added as
    before. A copy (the old path still there) is an added image: its old path keeps its rows and files.
    """
    present = {e.rel for e in found.images} | {f.rel for f in found.skipped}  # unreadable there: not moved away
    vanished = sorted(r for r in known.images if r not in present)
    if not vanished:
        return []
    sizes = {known.images[r].size for r in vanished}
    fresh = [
        e
        for e in found.images
        if e.rel not in known.images
        and e.size in sizes
        and not ((f := known.failures.get(e.rel)) is not None and f.still(e))
    ]
    if not fresh:
        return []
    digests = _digests(found, fresh)
    by_sha: dict[str, list[ImageEntry]] = defaultdict(list)
    for e in sorted(fresh, key=lambda e: e.rel):
        if digests.get(e.rel) is not None:
            by_sha[digests[e.rel]].append(e)
    moves = []
    for rel in vanished:
        row = known.images[rel]
        candidates = by_sha.get(row.sha256)
        if not candidates:
            continue
        name = rel.rpartition("/")[2]
        e = next((c for c in candidates if c.rel.rpartition("/")[2] == name), candidates[0])
        candidates.remove(e)
        moves.append(Move(row, dict(known.maps.get(rel, {})), e, stems[e.rel]))
    return moves


def _digests(found: Scan, entries: list[ImageEntry]) -> dict[str, str | None]:
    """The sha256 of each entry's file (None: unreadable now), hashed in parallel (hashlib releases the GIL); a digest
    the scan already holds is reused, a new one kept there (a cached setup's plan hashes once for the run)."""

    def digest(e: ImageEntry) -> str | None:
        d = found.digests.get(e.rel)
        if d is None:
            try:  # a file grown past the limit since the scan is not read: it fails as it decodes
                d = found.digests[e.rel] = file_sha256(e.path, MAX_FILE_BYTES)
            except OSError:
                return None
        return d

    if len(entries) == 1:
        return {entries[0].rel: digest(entries[0])}
    with ThreadPoolExecutor(max_workers=min(8, cpu_count())) as pool:
        return dict(zip((e.rel for e in entries), pool.map(digest, entries)))


@dataclass
class _Planner:
    """make_plan's per-image decisions, filed into ``plan`` in the scan's order."""

    known: Known
    hashes: Hashes
    exists: Callable[[str], bool]
    redecide: Callable[[ImageRow], ImageRow] | None
    moved_same: dict[str, bool]  # see moved_but_same
    plan: Plan

    def add(self, e: ImageEntry) -> None:
        """Plan one image: what it is (new, changed, touched), then which of its maps and files are due."""
        row = self.known.images.get(e.rel)
        failed = self.known.failures.get(e.rel) if row is None else None
        if failed is not None and failed.still(e):
            self.plan.still_failed.append(Failure(e.rel, failed.reason, "image"))
            return
        content_same = self.classify(e, row)
        fresh = row is None or not content_same or row.predict_hash != self.hashes.predict
        flipped = False
        now = row  # the image row the report will show (None: the batch decides it)
        if fresh and row is not None and content_same and self.threshold_only(row):
            now, flipped = self.redecided(e, row)
            fresh = False
        if not fresh and now is not None and now.label != e.label:
            now, moved = self.relabeled(e, now)
            flipped = flipped or moved
        maps = {} if flipped else self.known.maps.get(e.rel, {})
        todo = stale_methods(self.hashes, maps, fresh)
        redisplay = repaired = False
        if not fresh:  # an image that stays: are its committed files all still there?
            redisplay, lost, repaired = self.lost_files(e.rel, row, maps, todo)
            todo += lost
        label_todo_, label_dead = label_todo(self.hashes, maps, None if fresh else now, self.exists)
        todo += label_todo_
        # a current true-class map asked for again: its files were lost
        repaired = repaired or (
            not fresh and any(k in maps and maps[k].config_hash == self.hashes.labels[k] for k in label_todo_)
        )
        self.plan.repaired += repaired
        self.plan.dead_maps += [(e.rel, k) for k in label_dead]
        if todo and not (fresh or redisplay or label_todo_) and now is not None and self.scored_only(now, maps, todo):
            self.plan.scored[e.rel] = Scored(e, tuple(todo))
            return
        if todo or fresh or redisplay:
            display = redisplay or row is None or not content_same or (fresh and not self.display_there(row))
            self.plan.work[e.rel] = Work(e, todo, fresh, display)

    def scored_only(self, row: ImageRow, maps: dict[str, MapRow], todo: list[str]) -> bool:
        """Whether every map ``todo`` asks for is current but for its faithfulness scores, and can be scored from its
        saved .npy: the image is at the model's input size and within --max-map-side (the map was saved as the method
        returned it, not resized: the scores are those a recompute gives) and its files are there."""
        side = self.hashes.predict_config.get("input_size")
        size = (side, side) if isinstance(side, int) else tuple(side or ())
        if self.hashes.faith is None or (row.height, row.width) != size:
            return False
        if 0 < self.hashes.max_map_side**2 < row.height * row.width:  # saved scaled down (pictures.map_size)
            return False
        return all(
            m in maps
            and maps[m].config_hash == self.hashes.methods.get(m)
            and all(self.exists(p) for p in maps[m].files.paths())
            for m in todo
        )

    def classify(self, e: ImageEntry, row: ImageRow | None) -> bool:
        """File the image as added, changed or touched; returns whether its content is the manifest's."""
        if row is None:
            if e.rel not in self.known.failures:
                self.plan.added.append(e)
            return False
        content_same = self.moved_same.get(e.rel, True)
        if e.rel in self.moved_same and content_same:
            self.plan.touched.append(e)
        if not content_same:
            self.plan.changed.append(e)
        return content_same

    def threshold_only(self, row: ImageRow) -> bool:
        """Whether only the decision rule moved since ``row`` (same model, new threshold) and can re-decide it."""
        return self.redecide is not None and row.predict_hash.split("+")[0] == self.hashes.model

    def redecided(self, e: ImageEntry, row: ImageRow) -> tuple[ImageRow, bool]:
        """The row re-decided from its stored probabilities, with the scan's stamps of ``e`` (the row is written
        after the touches: stale stamps would undo them), and whether its target class flipped."""
        new = dataclasses.replace(self.redecide(row), size=e.size, mtime_ns=e.mtime_ns, ctime_ns=e.ctime_ns)
        self.plan.redecided.append(new)
        flipped = new.target != row.target
        if flipped:
            self.plan.retarget.append(e.rel)
        return new, flipped

    def relabeled(self, e: ImageEntry, row: ImageRow) -> tuple[ImageRow, bool]:
        """The row with the label the scan gives now (``--unlabeled`` added or dropped, or a Move to another class
        folder: the bytes are the same, no forward pass), and whether its target class moved with it (``--target label``: its maps go, all anew)."""
        by_label = targets.by_label(self.hashes.predict_config.get("target", "pred")) and e.label is not None
        new = dataclasses.replace(
            row,
            label=e.label,
            target=e.label if by_label else row.target,
            size=e.size,
            mtime_ns=e.mtime_ns,
            ctime_ns=e.ctime_ns,
        )
        if self.plan.redecided and self.plan.redecided[-1].rel == e.rel:
            self.plan.redecided[-1] = new  # re-decided under a new threshold too: one row says both
        else:
            self.plan.redecided.append(new)
        flipped = new.target != row.target
        if flipped and e.rel not in self.plan.retarget:
            self.plan.retarget.append(e.rel)
        return new, flipped

    def display_there(self, row: ImageRow) -> bool:
        """Whether the image's display copy files (the copy, its thumbnail when it has one) are on disk."""
        return self.exists(layout.image_png(row.stem)) and self.exists(
            layout.image_thumb(row.stem, row.width, row.height)
        )

    def lost_files(
        self, rel: str, row: ImageRow, maps: dict[str, MapRow], todo: list[str]
    ) -> tuple[bool, list[str], bool]:
        """Whether the display copy must be written again, the requested methods whose map files are lost, and
        whether anything was lost (the image counts as repaired).

        The lost maps of methods not requested now are dropped (``dead_maps``). True-class maps: see label_todo.
        """
        redisplay = not self.display_there(row)
        missing = [
            m
            for m, mrow in maps.items()
            if m not in todo
            and not targets.is_label_key(m)  # see label_todo
            and not all(self.exists(p) for p in mrow.files.paths())
        ]
        self.plan.dead_maps += [(rel, m) for m in missing if m not in self.hashes.methods]
        return redisplay, [m for m in self.hashes.methods if m in missing], bool(redisplay or missing)


def stale_methods(hashes: Hashes, maps: dict[str, MapRow], fresh: bool) -> list[str]:
    """The requested methods an image's maps are due for: all when it is fresh, else those missing or stale."""
    return [
        m
        for m, h in hashes.methods.items()
        if fresh
        or m not in maps
        or maps[m].config_hash != h
        or (hashes.faith is not None and maps[m].faith_hash != hashes.faith.get(m))
    ]


def moved_but_same(found: Scan, known: Known) -> dict[str, bool]:
    """Per known image whose size, mtime or ctime moved: whether its content is the same (a touch, not an edit).

    The ctime catches a rewrite that put size and mtime back (cp -p, touch -r); it also moves on chmod, chown, a new
    hard link or a rename, which cost one hash and no recompute. A row without one (an older xaibatch's) with its
    size and mtime is taken as the same, as that version took it, and gains the ctime (touched): an upgrade reads
    no image (a 100,000-photo folder would have read every byte of it once).

    Those files are hashed in parallel (hashlib releases the GIL); a digest the scan already holds is reused.
    """
    suspects, upgraded = [], {}
    for e in found.images:
        row = known.images.get(e.rel)
        if row is None:
            continue
        stamps = row.size == e.size and row.mtime_ns == e.mtime_ns
        if stamps and (e.ctime_ns is None or row.ctime_ns == e.ctime_ns):  # None: --no-ctime
            continue
        if stamps and row.ctime_ns is None:
            upgraded[e.rel] = True
        else:
            suspects.append(e)
    if not suspects:
        return upgraded

    digests = _digests(found, suspects)  # a cached setup that found work planned over this scan already hashed them
    return upgraded | {e.rel: digests[e.rel] == known.images[e.rel].sha256 for e in suspects}


def label_todo(
    hashes: Hashes, maps: dict[str, MapRow], row: ImageRow | None, exists: Callable[[str], bool]
) -> tuple[list[str], list[str]]:
    """The true-class map keys (``hashes.labels``) one image needs computed, and those of its rows to remove.

    ``row``: the image's row as the report will show it (re-decided under a new threshold); None when the
    batch decides its prediction anew: then every key is asked for and the batch computes them only if the
    image turns out misclassified (pipeline/labelmaps.py). A known misclassified image needs the keys
    whose row is missing, stale or lost files; a correct one, or any image of a run that does not ask for
    them, loses its rows (a threshold that flips an image to correct drops only that image's rows).
    """
    have = [k for k in maps if targets.is_label_key(k)]
    if row is None:
        return list(hashes.labels), []
    if not hashes.labels or not targets.misclassified(row.label, row.pred):
        return [], have

    def lost(k: str) -> bool:
        return not all(exists(p) for p in (maps[k].npy, maps[k].png, maps[k].thumb) if p)

    todo = [k for k, h in hashes.labels.items() if k not in maps or maps[k].config_hash != h or lost(k)]
    return todo, [k for k in have if k not in hashes.labels and lost(k)]  # a method not asked now: as its maps


def resumed_by(found: Scan, known: Known, plan: Plan, hashes: Hashes, unfinished: Collection[int]) -> Counter[int]:
    """Of the images the plan leaves alone, those that runs which did not finish (``unfinished``:
    Manifest.unfinished_runs) computed: their image row, or the row of a map asked for now, is one of those runs'.
    Run id -> how many, each image under the newest of them. They count as resumed, not unchanged: this run
    continues where those stopped."""
    by: Counter[int] = Counter()
    if not unfinished:
        return by
    # this run's own work on an image (computed, re-decided under a new threshold, its maps retargeted) is not a
    # stopped run's: only what this run leaves as that run left it is resumed
    redone = {f.rel for f in plan.still_failed} | {r.rel for r in plan.redecided} | set(plan.retarget)
    keys = [*hashes.methods, *hashes.labels]
    for e in found.images:
        row = known.images.get(e.rel)
        if row is None or e.rel in plan.work or e.rel in plan.scored or e.rel in redone:
            continue
        maps = known.maps.get(e.rel, {})
        ids = [i for i in (row.run_id, *(maps[k].run_id for k in keys if k in maps)) if i in unfinished]
        if ids:
            by[max(ids)] += 1
    return by


def existing_files(out: Path) -> set[str]:
    """Every file under images/, thumbs/ and maps/ as a relative POSIX path.

    One directory listing instead of a stat per committed file: about 5x cheaper at 10,000 files.
    """
    return {rel for rel, _path in walk_files(out, layout.PICTURE_DIRS)}


@dataclass
class Tally:
    """What a run's compute step did so far (read by run.py for the run row, also after an error)."""

    computed: int = 0
    done: int = 0  # computed + failed
    scored: int = 0  # images of Plan.scored done (their saved maps scored, or left to the next run: unreadable)
    failed: list[Failure] = field(default_factory=list)  # the scan's, the plan's and the batches'
    vanished: list[Failure] = field(default_factory=list)  # images moved or deleted since the scan: the next run's
    first_batch: float | None = None  # time.monotonic() when the first batch was explained
