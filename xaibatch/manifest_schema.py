"""The manifest's schema: its tables, the triggers that keep ``content_version``, and the in-place upgrade of a
file an older xaibatch wrote. What is read and written: :mod:`.manifest`."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 5  # 2: maps rows gained the faithfulness columns, 3: view_json, 4: runs.reason (added in place),
# 5: images.ctime_ns and failure_stamps.ctime_ns (an older xaibatch writes images rows without naming columns)
# runs.n_resumed was added in place without a new version: an older xaibatch names the columns it writes and reads
# (it leaves n_resumed NULL), so it may still use a folder this one wrote.

# The images columns the report shows or reads (all but the scan's mtime and ctime stamps): an UPDATE of one of
# them bumps content_version
SHOWN_IMAGE_COLUMNS = (
    "rel, stem, size, sha256, width, height, label, pred, target, confidence, probs_json, predict_hash, run_id"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,              -- running | ok | some-failed | interrupted | error | killed
    input_dir TEXT NOT NULL,
    config_json TEXT NOT NULL,
    predict_hash TEXT NOT NULL,
    seconds REAL,
    n_seen INTEGER DEFAULT 0, n_added INTEGER DEFAULT 0, n_changed INTEGER DEFAULT 0,
    n_removed INTEGER DEFAULT 0, n_unchanged INTEGER DEFAULT 0, n_failed INTEGER DEFAULT 0,
    n_computed INTEGER DEFAULT 0,
    reason TEXT,                       -- why a run stopped on an error: the message it exited with
    n_resumed INTEGER                  -- images unfinished runs before it had done (NULL: an older xaibatch's row)
);
CREATE TABLE IF NOT EXISTS images (
    rel TEXT PRIMARY KEY,
    stem TEXT NOT NULL,               -- file stem under images/, thumbs/ and maps/
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL,
    label INTEGER, pred INTEGER NOT NULL, target INTEGER NOT NULL, confidence REAL NOT NULL,
    probs_json TEXT NOT NULL,
    predict_hash TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    ctime_ns INTEGER                  -- the file's ctime when scanned (NULL: an older xaibatch's row)
);
CREATE TABLE IF NOT EXISTS maps (
    rel TEXT NOT NULL, method TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    npy TEXT NOT NULL, png TEXT NOT NULL, thumb TEXT,
    info_json TEXT,
    run_id INTEGER NOT NULL,
    deletion REAL, insertion REAL,     -- faithfulness AUCs (NULL: not computed), see faithfulness.py
    faith_json TEXT,                   -- their curves
    faith_hash TEXT,                   -- the map's hash plus the faithfulness settings they were computed under
    view_json TEXT,                    -- what the report shows of the map without reading it (MapRow.view)
    PRIMARY KEY (rel, method)
);
CREATE TABLE IF NOT EXISTS failures (
    rel TEXT PRIMARY KEY, reason TEXT NOT NULL, run_id INTEGER NOT NULL
);
-- size, mtime and ctime of a failed file when its bytes were read and refused: unchanged, it is not read again.
-- A table of its own, so that an older xaibatch (which ignores it) still reads and writes this folder.
CREATE TABLE IF NOT EXISTS failure_stamps (
    rel TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER
);
INSERT OR IGNORE INTO meta VALUES ('content_version', '0');
-- an images row's mtime and ctime are the scan's stamps, shown nowhere: a touch (chmod, chown, touch) that
-- changed neither the bytes nor anything shown must not make the report draw every page again (before schema 5
-- the trigger below fired on any UPDATE of a row)
DROP TRIGGER IF EXISTS images_update;
""" + "".join(
    # Every change to what the report shows per image bumps meta.content_version, whatever code path made it:
    # the report (report/snapshot.py) skips its per-image pages while the number has not moved.
    f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON {table} BEGIN "
    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'content_version'; END;\n"
    for table in ("images", "maps", "failures")
    for name, event in (
        (f"{table}_insert", "INSERT"),
        ("images_update_shown", f"UPDATE OF {SHOWN_IMAGE_COLUMNS}")
        if table == "images"
        else (f"{table}_update", "UPDATE"),
        (f"{table}_delete", "DELETE"),
    )
)

ADDED_COLUMNS = {
    "runs": (("reason", "TEXT"), ("n_resumed", "INTEGER")),
    "images": (("ctime_ns", "INTEGER"),),
    "failure_stamps": (("ctime_ns", "INTEGER"),),
    "maps": (
        ("deletion", "REAL"),
        ("insertion", "REAL"),
        ("faith_json", "TEXT"),
        ("faith_hash", "TEXT"),
        ("view_json", "TEXT"),
    ),
}


class NewerSchema(Exception):
    """The file was written by a newer xaibatch: its schema version, which this one must not write over."""


def refuse_newer(db: sqlite3.Connection) -> None:
    """Raise NewerSchema for a file a newer xaibatch wrote, before anything (even the journal mode) changes it."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet: a new file
        return
    try:
        version = int(row[0]) if row else 0
    except (TypeError, ValueError):
        return
    if version > SCHEMA_VERSION:
        raise NewerSchema(version)


def create(db: sqlite3.Connection) -> None:
    """Make the tables (where missing) and bring an older file up to SCHEMA_VERSION."""
    db.executescript(SCHEMA)
    migrate(db)
    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def migrate(db: sqlite3.Connection) -> None:
    """Bring a manifest written by an older xaibatch up to SCHEMA_VERSION: add the nullable columns it lacks."""
    for table, columns in ADDED_COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        missing = [(name, kind) for name, kind in columns if name not in have]
        for name, kind in missing:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:  # another connection added it first
                if "duplicate column" not in str(e):
                    raise
        if missing:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
