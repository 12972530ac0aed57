"""The run row's counts: one typed RunCounts from the run to the manifest's n_* columns."""

from __future__ import annotations

import dataclasses

import pytest

from xaibatch.manifest import FILENAME, Manifest, RunCounts

COLUMNS = "n_seen, n_added, n_changed, n_removed, n_unchanged, n_failed, n_computed, n_resumed"


def test_finish_run_writes_every_count_by_name(tmp_path):
    m = Manifest(tmp_path / FILENAME)
    run_id = m.start_run(str(tmp_path), {"x": 1}, "p")
    counts = RunCounts(seen=7, added=1, changed=2, removed=3, unchanged=4, failed=5, computed=6)
    m.finish_run(run_id, "some-failed", 1.5, counts, "why")
    row = m.db.execute(f"SELECT status, reason, {COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    m.close()
    assert tuple(row) == ("some-failed", "why", *dataclasses.astuple(counts))
    assert [f.name for f in dataclasses.fields(RunCounts)] == [c.strip()[2:] for c in COLUMNS.split(",")]


def test_finish_run_without_counts_keeps_the_rows_counts(tmp_path):
    m = Manifest(tmp_path / FILENAME)
    run_id = m.start_run(str(tmp_path), {"x": 1}, "p")
    m.finish_run(run_id, "ok", 1.0, RunCounts(seen=3, computed=3))
    m.finish_run(run_id, "error", 2.0, None, "disk full")  # after the report: the status and why only
    row = m.db.execute(f"SELECT status, reason, {COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    m.close()
    assert tuple(row) == ("error", "disk full", 3, 0, 0, 0, 0, 0, 3, 0)


def _image(rel: str, run_id: int):
    from xaibatch.manifest import ImageRow

    return ImageRow(rel, rel[:-4], 10, 1, "0" * 64, 4, 4, 0, 0, 0, 0.9, [0.9, 0.1], "p", run_id)


def test_a_batch_of_image_rows_clears_their_failures_and_costs_no_statement_per_row_without_any(tmp_path):
    """#20: put_images deleted each row's failure, one statement per image in every batch, also when the table was
    empty (most runs): a sixth of the writer thread's commit. Now only when there are failures, and still each
    image's own."""
    m = Manifest(tmp_path / FILENAME)
    run_id = m.start_run(str(tmp_path), {"x": 1}, "p")
    statements = []
    m.db.set_trace_callback(statements.append)
    m.put_images([_image(f"img_{i}.png", run_id) for i in range(3)])
    assert not [s for s in statements if "DELETE FROM failures" in s], statements
    m.put_failure("bad.png", "not an image", run_id)
    m.put_failure("other.png", "not an image", run_id)
    m.put_images([_image("bad.png", run_id), _image("img_9.png", run_id)])  # bad.png now reads
    m.db.set_trace_callback(None)
    assert m.failures() == [("other.png", "not an image")]
    assert len(m.images()) == 5
    m.close()


def test_a_killed_run_is_closed_with_its_plan_and_the_images_it_committed(tmp_path):
    """A run left 'running' (SIGKILL) was closed as 'killed' with every count 0. Its counts are NULL (unknown) from
    its start; its plan's it records itself; closing it adds, as computed, the images whose rows it committed."""
    from xaibatch.manifest import MapRow

    m = Manifest(tmp_path / FILENAME)
    older = m.start_run(str(tmp_path), {"x": 1}, "p")
    m.put_images([_image("old.png", older)])
    m.finish_run(older, "ok", 1.0, RunCounts(seen=1, added=1, computed=1))
    run_id = m.start_run(str(tmp_path), {"x": 1}, "p")
    assert m.db.execute(f"SELECT {COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone() == (None,) * 8
    m.plan_counts(run_id, RunCounts(seen=4, added=3, changed=0, removed=1, unchanged=1, failed=2, computed=9))
    m.put_images([_image(f"img_{i}.png", run_id) for i in range(3)])
    m.put_maps([MapRow("old.png", "gradcam", "h", "a.npy", "a.png", None, None, run_id)])  # a map only: computed too
    m.put_maps([MapRow("img_0.png", "gradcam", "h", "b.npy", "b.png", None, None, run_id)])
    m.db.execute(  # a row an older xaibatch left running: it counted nothing, the columns hold their defaults
        "INSERT INTO runs (started_at, status, input_dir, config_json, predict_hash)"
        " VALUES (1, 'running', '', '{}', 'p')"
    )
    legacy = m.db.execute("SELECT max(id) FROM runs").fetchone()[0]
    assert m.close_stale_runs() == [run_id, legacy]
    rows = {i: tuple(r) for i, *r in m.db.execute(f"SELECT id, status, {COLUMNS} FROM runs")}
    m.close()
    assert rows[run_id] == ("killed", 4, 3, 0, 1, 1, None, 4, 0)  # failed: not known; computed: 3 images + 1 map
    assert rows[legacy] == ("killed", None, None, None, None, None, None, 0, None)
    assert rows[older] == ("ok", 1, 1, 0, 0, 0, 0, 1, 0)


def test_a_run_records_its_plan_before_it_computes(tmp_path, tiny_ckpt):
    """What a run found and planned is in its row before the first batch: a run killed while it computes keeps it."""
    from helpers import manifest_rows, run_opts, write_images
    from xaibatch.pipeline import run

    write_images(tmp_path / "in", 3, seed=1)
    seen_at_plan = []

    def on_event(event):
        if event["event"] == "plan":
            seen_at_plan.extend(manifest_rows(tmp_path / "out", f"SELECT status, {COLUMNS} FROM runs"))

    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt, on_event=on_event), log=lambda s: None)
    assert seen_at_plan == [("running", 3, 3, 0, 0, 0, None, None, 0)]


def test_the_run_statuses_are_the_words_every_xaibatch_stored(tmp_path):
    """RunStatus names the status words once: the strings a folder holds stay those an older xaibatch wrote and
    reads, the exit codes' statuses are the same words, and "finished" (ok, some-failed) is not "ended"."""
    from xaibatch.errors import ExitCode
    from xaibatch.runstatus import ENDED, ENDED_BADLY, FINISHED, RunStatus

    assert [s.value for s in RunStatus] == ["running", "ok", "some-failed", "interrupted", "error", "killed"]
    assert {c.status for c in ExitCode} - {"usage-error", "locked"} == {"ok", "some-failed", "error", "interrupted"}
    assert FINISHED == {"ok", "some-failed"} and ENDED_BADLY == {"interrupted", "error", "killed"}
    assert ENDED == set(RunStatus) - {RunStatus.RUNNING}
    assert f"ended {RunStatus.SOME_FAILED}" == "ended some-failed"
    m = Manifest(tmp_path / FILENAME)
    ids = [m.start_run(str(tmp_path), {"x": 1}, "p") for _ in range(4)]
    assert m.db.execute("SELECT DISTINCT status, typeof(status) FROM runs").fetchall() == [("running", "text")]
    m.finish_run(ids[0], RunStatus.OK, 1.0, None)
    m.finish_run(ids[1], RunStatus.INTERRUPTED, 1.0, None)
    m.finish_run(ids[2], "error", 1.0, None)  # a plain word is one too
    assert m.close_stale_runs() == [ids[3]]
    assert m.unfinished_runs() == {ids[1]: "interrupted", ids[2]: "error", ids[3]: "killed"}
    assert all(type(s) is RunStatus for s in m.unfinished_runs().values())
    assert [r[0] for r in m.db.execute("SELECT status FROM runs ORDER BY id")] == [
        "ok",
        "interrupted",
        "error",
        "killed",
    ]
    with pytest.raises(ValueError):  # an unknown word is never stored
        m.finish_run(ids[3], "done", 1.0, None)
    m.close()


def test_run_rows_are_read_as_run_records_by_column_name(tmp_path):
    """The run reads hand RunRecords, one field per column of the runs table, read by name: a column a newer
    xaibatch adds in place (as n_resumed was) is not read, and the runs still read."""
    from xaibatch.manifest import RunRecord

    m = Manifest(tmp_path / FILENAME)
    columns = [r[1] for r in m.db.execute("PRAGMA table_info(runs)")]
    assert sorted(columns) == sorted(f.name for f in dataclasses.fields(RunRecord))
    older = m.start_run("in", {"x": 1}, "p")
    m.finish_run(older, "error", 1.5, RunCounts(seen=2, computed=1, failed=1), "why")
    m.db.execute("ALTER TABLE runs ADD COLUMN n_newer INTEGER")  # before any column this xaibatch reads
    m.db.execute("ALTER TABLE runs ADD COLUMN label TEXT DEFAULT 'x'")
    newer = m.start_run("in", {"x": 2}, "q")
    (first, last) = m.runs()
    assert (first.id, first.status, first.reason, first.seconds, first.input_dir) == (older, "error", "why", 1.5, "in")
    assert first.counts() == dataclasses.asdict(RunCounts(seen=2, computed=1, failed=1))
    assert (last.id, last.status, last.ended, last.config_json, last.predict_hash) == (
        newer,
        "running",
        False,
        '{"x": 2}',
        "q",
    )
    assert set(last.counts().values()) == {None}  # not counted yet
    assert [r.id for r in m.runs_newest_first()] == [newer, older]
    assert m.runs_not_ok(newer + 1, 5) == [first] and m.newest_run_with("p") == first
    m.close()
