"""--faithfulness turned on (or its settings changed) over maps that stay: the maps are scored from their saved .npy,
not computed again (pipeline/rescore.py), and the scores are those a full recompute gives."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import manifest_rows, quiet, run_opts, write_images
from xaibatch.evaluation.faithfulness import FaithConfig
from xaibatch.pipeline import run

LIME = {"lime": {"samples": 24, "seed": 3}}
CFG = FaithConfig(4, "mean")


def _scores(out) -> dict:
    rows = manifest_rows(out, "SELECT rel, method, deletion, insertion, faith_json, faith_hash FROM maps")
    return {(r, m): (d, i, json.loads(f), h) for r, m, d, i, f, h in rows}


def _csv(out) -> dict:
    with open(out / "predictions.csv", newline="") as f:
        return {row["path"] if "path" in row else next(iter(row.values())): row for row in csv.DictReader(f)}


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        (d1, i1, f1, h1), (d2, i2, f2, h2) = a[k], b[k]
        assert h1 == h2 and h1
        assert d1 == pytest.approx(d2, abs=1e-5) and i1 == pytest.approx(i2, abs=1e-5), k
        for c in ("deletion_curve", "insertion_curve"):
            assert f1[c] == pytest.approx(f2[c], abs=1e-4), (k, c)


@pytest.mark.parametrize("method", ["gradcam", "lime"])
def test_turning_faithfulness_on_scores_the_saved_maps_as_a_recompute_does(tmp_path, tiny_ckpt, method):
    """Turning --faithfulness on for a folder computed every map again (LIME over 50,000 images: hours of work on disk
    already); now the saved maps are scored, nothing computed, and the scores, the CSV's columns and the results
    are those of a run that computed the maps with --faithfulness from the start."""
    inp = tmp_path / "in"
    write_images(inp, 6, seed=1)
    opts = dict(methods=[method], method_options=LIME if method == "lime" else None)
    ref = tmp_path / "ref"
    run(run_opts(inp, ref, tiny_ckpt, faithfulness=CFG, **opts), log=quiet)
    out = tmp_path / "out"
    assert run(run_opts(inp, out, tiny_ckpt, **opts), log=quiet).computed == 6
    maps_before = manifest_rows(out, "SELECT rel, config_hash, npy FROM maps")
    events: list[dict] = []
    r = run(run_opts(inp, out, tiny_ckpt, faithfulness=CFG, on_event=events.append, heartbeat=0.001, **opts), log=quiet)
    assert r.status == "ok" and r.computed == 0 and r.counts.skipped == 6
    (plan,) = [e for e in events if e["event"] == "plan"]
    assert (plan["to_compute"], plan["scored"], plan["maps"]) == (0, 6, {})
    assert any(e["event"] == "estimate" and e["method"] == "faithfulness" and e["images"] == 6 for e in events)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["phase"] == "scoring" and e["total"] == 6 for e in progress), progress
    assert manifest_rows(out, "SELECT rel, config_hash, npy FROM maps") == maps_before  # the maps stay
    _close(_scores(out), _scores(ref))
    got, want = _csv(out), _csv(ref)
    assert got.keys() == want.keys()
    for k in want:
        for col in (f"deletion_{method}", f"insertion_{method}"):
            assert float(got[k][col]) == pytest.approx(float(want[k][col]), abs=1e-5)
    from xaibatch import open_results

    a = {i.rel: i.faithfulness[method].deletion for i in open_results(out)}
    b = {i.rel: i.faithfulness[method].deletion for i in open_results(ref)}
    assert a == pytest.approx(b, abs=1e-5)
    assert run(run_opts(inp, out, tiny_ckpt, faithfulness=CFG, **opts), log=quiet).computed == 0  # nothing due now


def test_a_scoring_pass_stopped_midway_resumes_with_the_rest(tmp_path, tiny_ckpt, monkeypatch):
    """Each batch's scores are committed as it is scored: a run that stops after the first batch (here: an error in
    the second; a kill leaves the same commits) keeps them, and the next run scores only the rest."""
    import xaibatch.pipeline.rescore as rescore

    inp, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    write_images(inp, 10, seed=2)
    run(run_opts(inp, ref, tiny_ckpt, faithfulness=CFG), log=quiet)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    real, calls = rescore._score_batch, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the disk went away")
        return real(*a, **k)

    monkeypatch.setattr(rescore, "_score_batch", failing)
    with pytest.raises(RuntimeError, match="disk went away"):
        run(run_opts(inp, out, tiny_ckpt, faithfulness=CFG), log=quiet)
    monkeypatch.undo()
    assert len([h for _rel, h in manifest_rows(out, "SELECT rel, faith_hash FROM maps") if h]) == 4  # batch 1
    events: list[dict] = []
    r = run(run_opts(inp, out, tiny_ckpt, faithfulness=CFG, on_event=events.append), log=quiet)
    assert r.status == "ok" and r.computed == 0
    assert [e["scored"] for e in events if e["event"] == "plan"] == [6]
    _close(_scores(out), _scores(ref))


def test_maps_saved_at_another_size_are_computed_again(tmp_path, tiny_ckpt):
    """An image not at the model's input size has its map saved resized: the method's own map is not on disk, and
    scores from the resized one would not be a recompute's. Those images compute as before."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 2, seed=1)
    write_images(inp / "big", 2, size=48, seed=4)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    events: list[dict] = []
    r = run(run_opts(inp, out, tiny_ckpt, faithfulness=CFG, on_event=events.append), log=quiet)
    assert r.computed == 2
    assert [(e["to_compute"], e["scored"]) for e in events if e["event"] == "plan"] == [(2, 2)]
    assert all(h for _rel, h in manifest_rows(out, "SELECT rel, faith_hash FROM maps"))


def test_maps_saved_smaller_by_max_map_side_are_computed_again(tmp_path, tiny_ckpt):
    """--max-map-side under the model's input size saves every map scaled down, also an image at the input size: the
    scoring pass read those smaller arrays and the run stopped with "maps of shape (3, 16, 16) do not match the
    input", on every re-run. Those maps are computed again, as other resized ones are."""
    inp, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    write_images(inp, 3, seed=1)  # 32 px: the tiny model's input size
    run(run_opts(inp, ref, tiny_ckpt, max_map_side=16, faithfulness=CFG), log=quiet)
    run(run_opts(inp, out, tiny_ckpt, max_map_side=16), log=quiet)
    events: list[dict] = []
    r = run(run_opts(inp, out, tiny_ckpt, max_map_side=16, faithfulness=CFG, on_event=events.append), log=quiet)
    assert r.status == "ok" and r.computed == 3
    assert [(e["to_compute"], e["scored"]) for e in events if e["event"] == "plan"] == [(3, 0)]
    _close(_scores(out), _scores(ref))


def test_the_scoring_pass_leaves_the_callers_random_state_as_it_was(tmp_path, tiny_ckpt):
    """A script that seeds torch and turns --faithfulness on between its steps: the scoring pass's DataLoader drew
    its seed from the caller's generator (a run that computes leaves it alone: test_long_lived)."""
    import torch

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 3, seed=1)
    run(run_opts(inp, out, tiny_ckpt), log=quiet)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    events: list[dict] = []
    run(run_opts(inp, out, tiny_ckpt, faithfulness=CFG, on_event=events.append), log=quiet)
    assert [e["scored"] for e in events if e["event"] == "plan"] == [3]
    assert torch.equal(torch.get_rng_state(), before)
