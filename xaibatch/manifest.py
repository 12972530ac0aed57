"""The SQLite manifest: the report's memory and the basis of incremental re-runs.

One row per image (content hash, label, prediction, probabilities), one row per
(image, method) map with the configuration hash it was computed under, one row
per run with its configuration, timings and counts, and one row per file that
could not be read. Writes happen in transactions, so a run killed at any moment
leaves the last committed state intact. The tables and their upgrade: :mod:`.manifest_schema`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import layout, manifest_schema
from .errors import UsageError, XaibatchError, storage_error
from .files import file_stamp
from .runstatus import ENDED_BADLY, FINISHED, RunStatus, sql_list

FILENAME = layout.MANIFEST  # the name tests and tools import
# Rows read at a time: a table's rows are built from a chunk of SQLite's tuples (and one json.loads over each
# of its JSON columns), not from all of them at once (at 20,000 images, the tuples alone took 5 MiB).
# Equal strings (a rel in images and maps, a method, a hash) are one object: a report holds every row.
_CHUNK = 4096
# The images columns put_images writes, named: ctime_ns is last whether the file was made with it or upgraded.
_IMAGE_COLUMNS = (
    "rel, stem, size, mtime_ns, sha256, width, height, label, pred, target, confidence, probs_json, predict_hash, run_id,"
    " ctime_ns"
)


@dataclass
class RunCounts:
    """A run's image counts: the run row's ``n_*`` columns and RunResult's numbers."""

    seen: int = 0  # images found, plus the files skipped by the scan
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    computed: int = 0
    # images not computed because runs before this one that did not finish (Manifest.unfinished_runs) had committed
    # them: not counted as unchanged. NULL in the rows of an older xaibatch, which counted them as unchanged.
    resumed: int = 0

    @property
    def skipped(self) -> int:
        """The images not computed again, resumed ones included, as counted before ``resumed`` was apart: the one
        place of that rule (RunResult.unchanged, the ``plan`` event's ``unchanged``, the ``end`` event's
        ``skipped``)."""
        return self.unchanged + self.resumed


@dataclass(frozen=True)
class RunRecord:
    """One row of the runs table as read (Manifest.runs and the other run reads); the columns by name."""

    id: int
    started_at: float
    finished_at: float | None
    status: str  # a RunStatus word (one this xaibatch does not know, a newer one's, is kept as read)
    input_dir: str
    config_json: str = field(repr=False)  # the run's record: runconfig.read_run (a page of JSON: not in the repr)
    predict_hash: str
    seconds: float | None
    # the counts (RunCounts' fields); NULL: not known (a killed run's failures, what a run killed before its plan
    # found; n_resumed: a row an older xaibatch wrote)
    n_seen: int | None
    n_added: int | None
    n_changed: int | None
    n_removed: int | None
    n_unchanged: int | None
    n_failed: int | None
    n_computed: int | None
    reason: str | None  # why it ended "error": the line it exited with
    n_resumed: int | None

    @property
    def ended(self) -> bool:
        """Whether the run ended, whatever its status (runstatus.ENDED; not only FINISHED): not running."""
        return self.status != RunStatus.RUNNING

    def counts(self) -> dict[str, int | None]:
        """Its counts by RunCounts' names (seen, added, ...), None where not known."""
        return {f.name: getattr(self, f"n_{f.name}") for f in fields(RunCounts)}


@dataclass
class ImageRow:
    rel: str
    stem: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    label: int | None
    pred: int
    target: int
    confidence: float
    probs: list[float]
    predict_hash: str
    run_id: int
    ctime_ns: int | None = None  # the file's ctime when scanned (scan.ImageEntry); None: an older xaibatch's row


@dataclass
class MapRow:
    rel: str
    method: str
    config_hash: str
    npy: str
    png: str
    thumb: str | None
    info: dict[str, Any] | None
    run_id: int
    deletion: float | None = None
    insertion: float | None = None
    faith: dict[str, Any] | None = None  # the curves, see faithfulness.Scores.rows
    faith_hash: str | None = None
    # What the report shows of the map without reading the .npy back, computed with its picture
    # (pipeline/writer.py:map_views): "scale" (the value drawn at full colour, overlay.display_scale),
    # "peak" ([row, column] of its maximum, LIME: of its strongest evidence for the class) and "shape"; "zero"
    # and "nowhere" for a map that shows nothing (overlay.views_batch; "nowhere" is on every view since views
    # lacking it, stored by an older xaibatch, are computed again once: report.detail.backfill_views).
    view: dict[str, Any] | None = None

    @property
    def files(self) -> layout.MapFiles:
        """The map's files as this row records them (the stem and layout of the run that wrote them)."""
        return layout.MapFiles(self.npy, self.png, self.thumb)


_COUNT_COLUMNS = tuple(f"n_{f.name}" for f in fields(RunCounts))  # the runs table's n_* columns, in RunCounts' order
# The runs table's columns a RunRecord holds, named: a column a newer xaibatch adds in place is not read.
_RUN_COLUMNS = ", ".join(f.name for f in fields(RunRecord))

STALE_REASON = (
    "it ended without recording how: killed (SIGKILL, out of memory, a reboot), its disk became read-only or "
    "failed, or this folder is a copy taken while it ran; the next run swept what it left"
)


class ManifestError(XaibatchError):
    """The manifest file exists but SQLite cannot use it (exit code 3)."""


T = TypeVar("T")
_SNAPSHOT_TRIES = 5
_EMPTY_WAIT_S = 0.1  # a manifest without its tables yet: a first run is making them (milliseconds), read again after


class _NothingYet(ManifestError):
    """The manifest file is there without its tables: a first run is creating it, or one stopped before it could."""


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def commit_stamp(path: Path) -> tuple[Any, ...]:
    """What changes when a run commits to the manifest at ``path``: its file's and its -wal file's stamps (readers
    that keep what they read: ``open_results``'s checks, ``serve``'s report rows)."""
    return tuple(file_stamp(p) for p in (path, f"{path}-wal"))


def read_snapshot(path: Path, read: Callable[[Manifest], T]) -> T:
    """``read(manifest)`` over one committed state of the manifest at ``path``, leaving no trace in its folder: no
    file made or changed there, not even for a moment (the folder's listing and mtimes stay), also while a run
    writes into it (``xaibatch.open_results``).

    With a ``-wal`` file there (a run is writing, or one was killed while writing) it is read through it, read-only
    (``mode=ro``, in one read transaction: a read-only connection never checkpoints). Without one the file holds
    every committed row and is read as it stands (``immutable``); a run that started meanwhile changes the file
    only when it checkpoints, which its stamps show: then it is read again."""
    path = Path(path)
    for attempt in range(_SNAPSHOT_TRIES):
        wal = os.path.lexists(f"{path}-wal")  # read through: consistent whatever a checkpoint changes
        before = None if wal or not path.is_file() else _stamp(path)
        try:
            m = Manifest(path, read_only=True)
        except _NothingYet:  # opened the moment a first run made the file: its tables follow at once
            if attempt == _SNAPSHOT_TRIES - 1:
                raise
            time.sleep(_EMPTY_WAIT_S)
            continue
        try:
            with m.reading():
                out = read(m)
        except sqlite3.DatabaseError as e:  # torn by a checkpoint under an immutable read: read again
            if attempt == _SNAPSHOT_TRIES - 1:
                raise ManifestError(f"cannot read the manifest {path}: {e}") from None
            continue
        finally:
            m.close()
        if before is None or before == _stamp(path):
            return out
    raise ManifestError(f"cannot read the manifest {path}: it kept changing while it was read; try again")


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes the manifest nor makes a file beside it, not even for a moment (see
    :func:`read_snapshot`): with no ``-wal`` file there (no run writing, nor one killed while writing) the file is
    read as it stands (SQLite's ``immutable``), else read-only (``mode=ro``) through the files the run made. Works in
    a folder or on a file system that refuses writes."""
    if not path.is_file():
        raise ManifestError(f"cannot read the manifest {path}: no such file")
    uri = path.resolve().as_uri() + ("?mode=ro" if os.path.lexists(f"{path}-wal") else "?immutable=1")
    db = None
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as e:
        empty = db is not None and _no_tables(db)
        if db is not None:
            db.close()
        if empty:
            raise _NothingYet(
                f"the manifest {path} holds nothing yet: a first run is creating it (open the folder again once "
                "the run has begun), or one stopped before it could (the next run makes it)"
            ) from None
        raise ManifestError(f"cannot read the manifest {path}: {e}") from None
    try:
        schema = int(row[0]) if row else 0
    except (TypeError, ValueError):
        schema = 0
    if schema != manifest_schema.SCHEMA_VERSION:
        db.close()
        newer = schema > manifest_schema.SCHEMA_VERSION
        raise ManifestError(
            f"the manifest {path} was written by {'a newer' if newer else 'an older'} xaibatch (its schema "
            f"{schema}; this one reads {manifest_schema.SCHEMA_VERSION}): "
            + ("upgrade xaibatch" if newer else f"run xaibatch report {path.parent} once where it can be written")
        )
    return db


def _no_tables(db: sqlite3.Connection) -> bool:
    try:
        return db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def _create_as_others(path: Path) -> None:
    """Create the manifest, when missing, as other tools create files: mode 0666 less the umask. SQLite makes a new
    database (and so its -wal and -shm files) 0644 whatever the umask, so that a group sharing a folder under
    ``umask 002`` could not run into it after the first member (every other file of the folder is group-writable)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError:  # there already, or not creatable: SQLite says why when it opens it
        return
    os.close(fd)


class Manifest:
    """A thin typed layer over the SQLite file; one instance per thread."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        """``read_only``: only read, leaving no trace (:func:`read_snapshot`, the way to read one committed state:
        ``open_results``, ``serve``'s view of a report); the file must exist and be of this xaibatch's schema."""
        self.path = Path(path)
        if self.path.is_symlink():  # SQLite follows it: a link planted in a shared --out redirected every write
            raise UsageError(
                f"the manifest {self.path} is a symbolic link: refusing to open it (xaibatch never makes one)"
            )
        if read_only:
            self.db = _open_read_only(self.path)
            return
        _create_as_others(self.path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise ManifestError(f"cannot open the manifest {self.path}: {e}") from None
        try:
            manifest_schema.refuse_newer(self.db)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            manifest_schema.create(self.db)
        except manifest_schema.NewerSchema as e:
            self.db.close()
            raise UsageError(
                f"the manifest {self.path} was written by a newer xaibatch (its schema {e.args[0]}; this one knows "
                f"up to {manifest_schema.SCHEMA_VERSION}): upgrade xaibatch (pip install -U xaibatch) or choose "
                "another folder; nothing was changed"
            ) from None
        except sqlite3.DatabaseError as e:
            self.db.close()
            full = storage_error(e, self.path.parent)  # a full disk: not a damaged manifest
            if full is not None:
                raise full from None
            raise ManifestError(
                f"the manifest {self.path} is unusable ({e}); move it (and the folder's other files) away "
                "to start a fresh report there"
            ) from None

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Manifest]:
        """Reads that all see one committed state, whatever a run commits meanwhile (one read transaction)."""
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            self.db.execute("COMMIT")

    # -- meta ----------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def holds_results(self) -> bool:
        """Whether any run got as far as an image: an image or a failure row."""
        row = self.db.execute("SELECT EXISTS (SELECT 1 FROM images) OR EXISTS (SELECT 1 FROM failures)").fetchone()
        return bool(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def content_version(self) -> int:
        """A number that moves whenever an image, map or failure row changes (kept by triggers)."""
        return int(self.get_meta("content_version") or 0)

    # -- transactions -------------------------------------------------------
    def transaction(self):
        return _Transaction(self.db)

    # -- runs ---------------------------------------------------------------
    def start_run(self, input_dir: str, config: Any, predict_hash: str) -> int:
        """Record a started run; ``config``: a runconfig.RunConfig (or its dict). Its counts are NULL (not known)
        until it records them: its plan's (plan_counts), then all of them as it ends (finish_run)."""
        text = config.to_json() if hasattr(config, "to_json") else json.dumps(config, sort_keys=True)
        counts = ", ".join(_COUNT_COLUMNS)
        cur = self.db.execute(
            f"INSERT INTO runs (started_at, status, input_dir, config_json, predict_hash, {counts})"
            f" VALUES (?, ?, ?, ?, ?{', NULL' * len(_COUNT_COLUMNS)})",
            (time.time(), RunStatus.RUNNING.value, input_dir, text, predict_hash),
        )
        return int(cur.lastrowid)

    def plan_counts(self, run_id: int, counts: RunCounts) -> None:
        """Record what a run found and planned, before it computes: a run killed later (SIGKILL, out of memory)
        still says so. Failed and computed stay unknown: they grow while it computes (see close_stale_runs)."""
        self.db.execute(
            "UPDATE runs SET n_seen = ?, n_added = ?, n_changed = ?, n_removed = ?, n_unchanged = ?, n_resumed = ?"
            " WHERE id = ?",
            (counts.seen, counts.added, counts.changed, counts.removed, counts.unchanged, counts.resumed, run_id),
        )

    def finish_run(
        self, run_id: int, status: RunStatus, seconds: float, counts: RunCounts | None, reason: str | None = None
    ) -> None:
        """Record how the run ended; ``counts`` None: the run stopped before it counted anything."""
        names = list(_COUNT_COLUMNS) if counts is not None else []
        values = astuple(counts) if counts is not None else ()
        cols = "".join(f", {name} = ?" for name in names)
        self.db.execute(
            f"UPDATE runs SET status = ?, finished_at = ?, seconds = ?, reason = ?{cols} WHERE id = ?",
            (RunStatus(status).value, time.time(), seconds, reason, *values, run_id),
        )

    def set_status(self, run_id: int, status: RunStatus) -> None:
        self.db.execute("UPDATE runs SET status = ? WHERE id = ?", (RunStatus(status).value, run_id))

    def close_stale_runs(self) -> list[int]:
        """Mark runs left ``running`` by a killed process as ``killed``, saying what may have happened (a run whose
        disk turned read-only or failed could not record its end either); call only while holding the lock.

        What such a run did is filled in where it can be known: its plan's counts it recorded itself (plan_counts),
        and as computed, the images whose rows it committed, predictions or maps (nothing has replaced them: this
        runs before the next run computes; an image only re-decided under a new threshold counts too). How many
        files it failed to read is not known (NULL, the report's "unknown"); nor are the counts of a run an older
        xaibatch left, which recorded none (its zeros are the columns' defaults)."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM runs WHERE status = ?", (RunStatus.RUNNING.value,))]
        if not ids:
            return ids
        with self.transaction():
            for i in ids:  # a scan of the image and map rows each (no index on run_id): only after a kill
                (committed,) = self.db.execute(
                    "SELECT COUNT(*) FROM (SELECT rel FROM images WHERE run_id = ? UNION SELECT rel FROM maps"
                    " WHERE run_id = ?)",
                    (i, i),
                ).fetchone()
                self.db.execute(
                    "UPDATE runs SET status = ?, reason = COALESCE(reason, ?), n_computed = ?, n_failed = NULL"
                    " WHERE id = ?",
                    (RunStatus.KILLED.value, STALE_REASON, committed, i),
                )
                self.db.execute(  # a row an older xaibatch started: no count recorded, only the columns' defaults
                    "UPDATE runs SET n_seen = NULL, n_added = NULL, n_changed = NULL, n_removed = NULL,"
                    " n_unchanged = NULL WHERE id = ? AND n_seen = 0 AND n_added = 0 AND n_changed = 0"
                    " AND n_removed = 0 AND n_unchanged = 0",
                    (i,),
                )
        return ids

    def newest_run_with(self, predict_hash: str) -> RunRecord | None:
        """The newest run row that recorded ``predict_hash`` (the model that predicted some images); None: none."""
        row = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE predict_hash = ? ORDER BY id DESC LIMIT 1", (predict_hash,)
        ).fetchone()
        return None if row is None else RunRecord(*row)

    def unfinished_runs(self) -> dict[int, RunStatus]:
        """The runs after the last one that finished (runstatus.FINISHED: ok, some-failed) that ended badly
        (runstatus.ENDED_BADLY: interrupted, killed, error), oldest first: run id -> status. Call while holding the
        lock, after close_stale_runs and before start_run. Read newest first and only back to that finished run (a
        cron job's runs table is long)."""
        out: dict[int, RunStatus] = {}
        for run_id, status in self.db.execute("SELECT id, status FROM runs ORDER BY id DESC"):
            if status in FINISHED:
                break
            if status in ENDED_BADLY:
                out[run_id] = RunStatus(status)
        return dict(sorted(out.items()))

    def last_status(self) -> str | None:
        """The status of the newest run row (None: no run yet)."""
        row = self.db.execute("SELECT status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def finished_with(self, request: str) -> Iterator[tuple[int, str, str]]:
        """Id, config and predict hash of the finished runs (runstatus.FINISHED) made with this request key (see pipeline.setup), newest
        first, read as the caller goes (it wants the newest, now and then the one before)."""
        cur = self.db.execute(
            f"SELECT id, config_json, predict_hash FROM runs WHERE status IN {sql_list(FINISHED)}"
            " AND config_json LIKE ? ORDER BY id DESC",
            (f'%"request": "{request}"%',),
        )
        while row := cur.fetchone():
            yield row[0], row[1], row[2]

    def runs(self, newest: int | None = None) -> list[RunRecord]:
        """The runs in order, oldest first; with ``newest``, only that many of the latest."""
        limit = "" if newest is None else f" LIMIT {int(newest)}"
        cur = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM (SELECT * FROM runs ORDER BY id DESC{limit}) ORDER BY id")
        return [RunRecord(*r) for r in cur.fetchall()]

    def runs_newest_first(self) -> Iterator[RunRecord]:
        """The runs from the latest back, read a chunk at a time (a caller may stop early)."""
        cur = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id DESC")
        while rows := cur.fetchmany(256):
            yield from (RunRecord(*r) for r in rows)

    def runs_not_ok(self, before: int, most: int) -> list[RunRecord]:
        """The latest ``most`` runs with an id below ``before`` that did not end ok (nor are running), newest first."""
        cur = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id < ?"
            f" AND status NOT IN {sql_list({RunStatus.OK, RunStatus.RUNNING})} ORDER BY id DESC LIMIT ?",
            (before, most),
        )
        return [RunRecord(*r) for r in cur.fetchall()]

    def run_statuses(self) -> dict[str, int]:
        """How many runs ended with each status."""
        return dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status"))

    # -- images and maps ----------------------------------------------------
    def images(self) -> dict[str, ImageRow]:
        cur = self.db.execute(
            "SELECT rel, stem, size, mtime_ns, sha256, width, height, label, pred, target, confidence, probs_json,"
            " predict_hash, run_id, ctime_ns FROM images"
        )
        out: dict[str, ImageRow] = {}
        same: dict[str, str] = {}  # one object per distinct predict hash
        while rows := cur.fetchmany(_CHUNK):
            probs = _json_column([r[11] for r in rows])
            for r, p in zip(rows, probs, strict=True):
                h = same.setdefault(r[12], r[12])
                out[r[0]] = ImageRow(sys.intern(r[0]), *r[1:11], p, h, r[13], r[14])
        return out

    def maps(self, shown: bool = True, rels: Iterable[str] | None = None) -> dict[tuple[str, str], MapRow]:
        """Every map row, or those of ``rels``. ``shown`` False: without what only the report shows of a map (its
        ``info``, ``faith`` and ``view`` left None), which is most of a row's bytes and of the time its reading takes:
        what a run plans with (:meth:`.pipeline.plan.Known.read`); a row read so is never written back."""
        data = "info_json, run_id, deletion, insertion, faith_json, faith_hash, view_json"
        if not shown:
            data = "NULL, run_id, deletion, insertion, NULL, faith_hash, NULL"
        query = f"SELECT rel, method, config_hash, npy, png, thumb, {data} FROM maps"
        if rels is not None:  # a few images (a night's moved ones): a look-up each
            out: dict[tuple[str, str], MapRow] = {}
            for rel in dict.fromkeys(rels):
                out.update(self._map_rows(self.db.execute(query + " WHERE rel = ?", (rel,)), shown))
            return out
        return self._map_rows(self.db.execute(query), shown)

    def _map_rows(self, cur: sqlite3.Cursor, shown: bool) -> dict[tuple[str, str], MapRow]:
        out: dict[tuple[str, str], MapRow] = {}
        same: dict[Any, Any] = {None: None}  # one object per distinct method and hash
        while rows := cur.fetchmany(_CHUNK):
            none = [None] * len(rows)
            infos, faiths, views = (_json_column([r[k] for r in rows]) if shown else none for k in (6, 10, 12))
            for r, info, faith, view in zip(rows, infos, faiths, views, strict=True):
                rel, method, png = sys.intern(r[0]), same.setdefault(r[1], r[1]), r[4]
                thumb = png if r[5] == png else r[5]  # small pictures are their own thumbnails
                h, fh = same.setdefault(r[2], r[2]), same.setdefault(r[11], r[11])
                out[(rel, method)] = MapRow(rel, method, h, r[3], png, thumb, info, r[7], r[8], r[9], faith, fh, view)
        return out

    def image_rels(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT rel FROM images")]

    def image_targets(self) -> list[tuple[str, str, int]]:
        """(rel, sha256, target class) of every image: what the faithfulness chance sample is drawn from."""
        return self.db.execute("SELECT rel, sha256, target FROM images").fetchall()

    def map_made(self, rel: str, key: str) -> tuple[int, str] | None:
        """The (run_id, config_hash) of one map's row, None: no such row (open_results: is a file still the map
        its record names?)."""
        row = self.db.execute(
            "SELECT run_id, config_hash FROM maps WHERE rel = ? AND method = ?", (rel, key)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def map_methods(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT method FROM maps")}

    def failures(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT rel, reason FROM failures ORDER BY rel"))

    def failure_stamps(self) -> dict[str, tuple[int, int, int | None]]:
        """rel -> (size, mtime_ns, ctime_ns) of each failed file whose bytes were read and refused (see
        stamp_failures); ctime_ns None in a stamp an older xaibatch wrote."""
        rows = self.db.execute(
            "SELECT s.rel, s.size, s.mtime_ns, s.ctime_ns FROM failure_stamps s JOIN failures f ON f.rel = s.rel"
        )
        return {rel: (size, mtime, ctime) for rel, size, mtime, ctime in rows}

    def stamp_failures(self, stamps: Iterable[tuple[str, int, int, int | None]]) -> None:
        """Record (rel, size, mtime_ns, ctime_ns) of files that failed in this run; stamps of files no longer failing
        go."""
        with self.transaction():
            self.db.execute("DELETE FROM failure_stamps WHERE rel NOT IN (SELECT rel FROM failures)")
            self.db.executemany(
                "INSERT OR REPLACE INTO failure_stamps (rel, size, mtime_ns, ctime_ns)"
                " SELECT rel, ?, ?, ? FROM failures WHERE rel = ?",
                ((size, mtime, ctime, rel) for rel, size, mtime, ctime in stamps),
            )

    def put_image(self, row: ImageRow) -> None:
        self.put_images([row])

    def put_images(self, rows: Iterable[ImageRow]) -> None:
        """Insert or replace image rows (one statement for all: a batch's commit), clearing their failures."""
        params = [
            (
                row.rel,
                row.stem,
                row.size,
                row.mtime_ns,
                row.sha256,
                row.width,
                row.height,
                row.label,
                row.pred,
                row.target,
                row.confidence,
                json.dumps(row.probs),
                row.predict_hash,
                row.run_id,
                row.ctime_ns,
            )
            for row in rows
        ]
        self.db.executemany(
            f"INSERT OR REPLACE INTO images ({_IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params,
        )
        if self.db.execute("SELECT 1 FROM failures LIMIT 1").fetchone():  # none: no statement per row
            self.db.executemany("DELETE FROM failures WHERE rel = ?", ((p[0],) for p in params))

    def touch_image(self, rel: str, mtime_ns: int, ctime_ns: int | None) -> None:
        """The scan's new stamps of an image whose bytes (so its size too) are the row's: columns no page shows, so
        content_version stays (manifest_schema.SHOWN_IMAGE_COLUMNS)."""
        self.db.execute("UPDATE images SET mtime_ns = ?, ctime_ns = ? WHERE rel = ?", (mtime_ns, ctime_ns, rel))

    def put_map(self, row: MapRow) -> None:
        self.put_maps([row])

    def put_maps(self, rows: Iterable[MapRow]) -> None:
        """Insert or replace map rows (one statement for all: a batch's commit)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO maps (rel, method, config_hash, npy, png, thumb, info_json, run_id, deletion,"
            " insertion, faith_json, faith_hash, view_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    row.rel,
                    row.method,
                    row.config_hash,
                    row.npy,
                    row.png,
                    row.thumb,
                    json.dumps(row.info) if row.info else None,
                    row.run_id,
                    row.deletion,
                    row.insertion,
                    json.dumps(row.faith) if row.faith else None,
                    row.faith_hash,
                    json.dumps(row.view) if row.view else None,
                )
                for row in rows
            ],
        )

    def set_faith(self, rows: Iterable[tuple[str, str, dict[str, Any]]], run_id: int) -> None:
        """Store faithfulness scores on map rows that stay (pipeline/rescore.py): (rel, method, the MapRow fields
        writer.faith_fields gives); the row's ``run_id`` becomes ``run_id``, the run that last wrote it."""
        self.db.executemany(
            "UPDATE maps SET deletion = ?, insertion = ?, faith_json = ?, faith_hash = ?, run_id = ?"
            " WHERE rel = ? AND method = ?",
            [
                (
                    f["deletion"],
                    f["insertion"],
                    json.dumps(f["faith"]) if f.get("faith") else None,
                    f["faith_hash"],
                    run_id,
                    rel,
                    method,
                )
                for rel, method, f in rows
            ],
        )

    def maps_without_view(self) -> list[tuple[str, str, str, str, int, int, str | None]]:
        """The map rows written before views existed (MapRow.view None) or before they flagged a map that shows
        nothing (a view without "nowhere", see overlay.flat_view): (rel, method, config_hash, npy, the image's
        width and height, the view as stored), for the report to store their views (report.detail.backfill_views)."""
        return self.db.execute(
            "SELECT m.rel, m.method, m.config_hash, m.npy, i.width, i.height, m.view_json"
            " FROM maps m JOIN images i USING (rel)"
            """ WHERE m.view_json IS NULL OR m.view_json NOT LIKE '%"nowhere"%'"""
        ).fetchall()

    def maps_without_grid(self) -> list[tuple[str, str, str, str, int, int, str | None]]:
        """The map rows whose view has no summary grid (stored before the mean maps, see overlay.grids_batch), as
        :meth:`maps_without_view` gives them, for ``xaibatch report`` to add it (report.detail.backfill_grids)."""
        return self.db.execute(
            "SELECT m.rel, m.method, m.config_hash, m.npy, i.width, i.height, m.view_json"
            " FROM maps m JOIN images i USING (rel)"
            """ WHERE m.view_json IS NULL OR m.view_json NOT LIKE '%"grid"%'"""
        ).fetchall()

    def set_views(self, views: Iterable[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Store maps' views computed after the fact (older folders): (rel, method, config_hash, view); a row
        recomputed meanwhile (another config_hash) keeps its own."""
        self.db.executemany(
            "UPDATE maps SET view_json = ? WHERE rel = ? AND method = ? AND config_hash = ?",
            ((json.dumps(v), rel, m, h) for rel, m, h, v in views),
        )

    def put_failure(self, rel: str, reason: str, run_id: int) -> None:
        """An image that cannot be read now leaves the report: its image and map rows go (files: the caller)."""
        # The same reason again (every run retries it) leaves the row alone, so content_version does not move.
        self.db.execute(
            "INSERT INTO failures VALUES (?, ?, ?) ON CONFLICT (rel) DO UPDATE SET reason = excluded.reason,"
            " run_id = excluded.run_id WHERE failures.reason IS NOT excluded.reason",
            (rel, reason, run_id),
        )
        self.db.execute("DELETE FROM images WHERE rel = ?", (rel,))
        self.db.execute("DELETE FROM maps WHERE rel = ?", (rel,))

    def remove_failures(self, rels: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM failures WHERE rel = ?", ((r,) for r in rels))

    def referenced_files(self) -> set[str]:
        """Every output path (relative to the folder) the manifest points at."""
        out: set[str] = set()
        for stem, width, height in self.db.execute("SELECT stem, width, height FROM images"):
            out.add(layout.image_png(stem))
            out.add(layout.image_thumb(stem, width, height))
        for npy, png, thumb in self.db.execute("SELECT npy, png, thumb FROM maps"):
            out.update(p for p in (npy, png, thumb) if p)
        return out

    def remove_images(self, rels: Iterable[str]) -> None:
        rels = list(rels)
        self.db.executemany("DELETE FROM images WHERE rel = ?", ((r,) for r in rels))
        self.db.executemany("DELETE FROM maps WHERE rel = ?", ((r,) for r in rels))
        self.db.executemany("DELETE FROM failures WHERE rel = ?", ((r,) for r in rels))

    def remove_map(self, rel: str, method: str) -> None:
        self.db.execute("DELETE FROM maps WHERE rel = ? AND method = ?", (rel, method))


def _json_column(texts: list[str | None]) -> list[Any]:
    """Each JSON text parsed (None and "" as None), in one json.loads over the column rather than one a row
    (a 20,000-image report reads 80,000 of them); a text that is not one JSON value alone is parsed by itself."""
    present = [t for t in texts if t]
    if not present:
        return [None] * len(texts)
    try:
        parsed = json.loads("[" + ",".join(present) + "]")
    except ValueError:
        parsed = None
    if parsed is None or len(parsed) != len(present):  # a damaged row: say which, as json.loads alone would
        parsed = [json.loads(t) for t in present]
    it = iter(parsed)
    return [next(it) if t else None for t in texts]


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
