"""``--target pred,label`` (issue 21, item 11): a misclassified image also gets each method's map of its true class,
as map rows of their own, shown beside the prediction's maps in the detail view ("why" / "why not").

The model: the tiny randomly initialised checkpoint, which calls most of these images REAL, so the FAKE ones are
misclassified, deterministically (every test checks that both kinds are there before it relies on them).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_images
from helpers import manifest_value
from outcheck import check_output_folder, detail_records
from xaibatch import layout
from xaibatch.cli import cli
from xaibatch.errors import UsageError
from xaibatch.pipeline import RunOptions, run
from xaibatch.runconfig import RunConfig
from xaibatch.tools import synth

LIME = {"lime": {"samples": 32, "segments": 8}}


@pytest.fixture
def inp(tmp_path) -> Path:
    root = tmp_path / "in"
    write_images(root / "FAKE", 4, seed=1)
    write_images(root / "REAL", 4, seed=2)
    return root


def opts(inp: Path, out: Path, ckpt: Path, target: str = "pred,label", methods=("gradcam",), **kw) -> RunOptions:
    return RunOptions(
        input_dir=inp,
        out_dir=out,
        methods=list(methods),
        checkpoint=ckpt,
        target=target,
        workers=0,
        batch_size=3,  # several batches, misclassified and correct images mixed in them
        handle_signals=False,
        **kw,
    )


def go(o: RunOptions):
    return run(o, log=lambda s: None)


def rows(out: Path) -> tuple[dict[str, tuple], dict[tuple[str, str], tuple]]:
    """images: rel -> (label, pred, run_id, probs); maps: (rel, key) -> (config_hash, npy, run_id)."""
    db = sqlite3.connect(out / layout.MANIFEST)
    try:
        images = {
            r[0]: (r[1], r[2], r[3], json.loads(r[4]))
            for r in db.execute("SELECT rel, label, pred, run_id, probs_json FROM images")
        }
        maps = {(r[0], r[1]): r[2:] for r in db.execute("SELECT rel, method, config_hash, npy, run_id FROM maps")}
    finally:
        db.close()
    return images, maps


def wrong(images) -> set[str]:
    return {rel for rel, (label, pred, *_r) in images.items() if label is not None and label != pred}


def label_rels(maps, key: str = "gradcam@label") -> set[str]:
    return {rel for rel, k in maps if k == key}


def test_true_class_maps_exist_exactly_for_misclassified_images(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    r = go(opts(inp, out, tiny_ckpt))
    images, maps = rows(out)
    bad = wrong(images)
    assert bad and bad != set(images), "the fixture model must misclassify some images and not all"
    assert r.computed == len(images)
    assert label_rels(maps) == bad
    assert {k for _rel, k in maps} == {"gradcam", "gradcam@label"}
    for rel in bad:  # the method's real name and the target are both in the key; the folder is method_dir's
        assert maps[(rel, "gradcam@label")][1] == layout.map_npy("gradcam@label", rel.rsplit(".", 1)[0])
    check_output_folder(out, inp)  # every row's files exist, no file without a row
    # The gallery and predictions.csv are as a --target pred run makes them: no "gradcam@label" method.
    assert "gradcam@label" not in (out / "gallery" / "page-1.html").read_text()
    pred_out = tmp_path / "pred"
    go(opts(inp, pred_out, tiny_ckpt, target="pred"))
    assert (out / "predictions.csv").read_bytes() == (pred_out / "predictions.csv").read_bytes()
    # The prediction maps are those of --target pred: same hashes, same numbers.
    _i, pred_maps = rows(pred_out)
    for rel in images:
        assert maps[(rel, "gradcam")][0] == pred_maps[(rel, "gradcam")][0]
        np.testing.assert_array_equal(
            np.load(out / maps[(rel, "gradcam")][1]), np.load(pred_out / pred_maps[(rel, "gradcam")][1])
        )


def test_true_class_maps_are_what_target_label_computes(inp, tmp_path, tiny_ckpt):
    """Both ways a true-class map is made: in the batch that decides a new prediction (``both``), and for a known
    misclassified image in a batch of its own (``later``: a --target pred run first, then pred,label)."""
    both, later, label = tmp_path / "both", tmp_path / "later", tmp_path / "label"
    methods = ("gradcam", "lime")  # LIME: its superpixels are made for the true-class pass too
    go(opts(inp, both, tiny_ckpt, methods=methods, method_options=LIME))
    go(opts(inp, later, tiny_ckpt, target="pred", methods=methods, method_options=LIME))
    go(opts(inp, later, tiny_ckpt, methods=methods, method_options=LIME))
    go(opts(inp, label, tiny_ckpt, target="label", methods=methods, method_options=LIME))
    _li, label_maps = rows(label)
    for out in (both, later):
        images, maps = rows(out)
        bad = wrong(images)
        assert bad and label_rels(maps, "lime@label") == label_rels(maps, "gradcam@label") == bad
        for rel in bad:
            for m in methods:
                mine, theirs = maps[(rel, f"{m}@label")], label_maps[(rel, m)]
                assert mine[0] == theirs[0]  # the same configuration hash
                np.testing.assert_allclose(np.load(out / mine[1]), np.load(label / theirs[1]), rtol=1e-5, atol=1e-6)


def test_an_unchanged_rerun_computes_nothing_and_switching_from_pred_adds_only_label_maps(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    first = go(opts(inp, out, tiny_ckpt, target="pred"))
    before_images, before = rows(out)
    bad = wrong(before_images)
    second = go(opts(inp, out, tiny_ckpt))  # pred -> pred,label: the prediction maps stay, label maps join
    images, maps = rows(out)
    assert (first.computed, second.computed) == (len(images), len(bad))
    assert {k: v for k, v in maps.items() if k[1] == "gradcam"} == before  # untouched (same run id)
    assert label_rels(maps) == bad
    third = go(opts(inp, out, tiny_ckpt))
    assert (third.computed, third.unchanged) == (0, len(images))
    assert rows(out) == (images, maps)
    fourth = go(opts(inp, out, tiny_ckpt, target="pred"))  # back to pred: the true-class rows and files go
    _i, after = rows(out)
    assert fourth.computed == 0 and after == before
    assert not (out / "maps" / layout.method_dir("gradcam@label")).exists() or not any(
        (out / "maps" / layout.method_dir("gradcam@label")).rglob("*.npy")
    )
    check_output_folder(out, inp)


def test_an_unchanged_pred_label_rerun_imports_no_torch(inp, tmp_path, tiny_ckpt):
    from test_startup import _modules_after

    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt))
    probe = f"""
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(tiny_ckpt)!r}), target="pred,label", workers=0, batch_size=3,
                           handle_signals=False), log=lambda s: None)
        assert (r.computed, r.unchanged) == (0, 8), r
    """
    assert _modules_after(probe) == []


def flip_threshold(images) -> float:
    """A threshold on P(REAL) that turns at least one FAKE and one REAL image's prediction to FAKE, not all."""
    p = sorted({round(probs[1], 6) for _l, _p, _r, probs in images.values()})
    lowest = {label: min(probs[1] for lab, _p, _r, probs in images.values() if lab == label) for label in (0, 1)}
    cut = max(lowest.values())
    above = [v for v in p if v > cut]
    assert above, "the fixture model's probabilities leave no threshold that flips only some images"
    return (cut + above[0]) / 2


def test_a_threshold_flip_adds_and_removes_only_the_flipped_images_rows(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, threshold=0.5))
    images, maps = rows(out)
    assert wrong(images) == {rel for rel in images if rel.startswith("FAKE/")}  # the model says REAL to all
    t = flip_threshold(images)
    again = go(opts(inp, out, tiny_ckpt, threshold=t))
    new_images, new_maps = rows(out)
    flipped = {rel for rel in images if images[rel][1] != new_images[rel][1]}
    assert flipped and flipped != set(images)
    assert {rel for rel in flipped if rel.startswith("FAKE/")} and {rel for rel in flipped if rel.startswith("REAL/")}
    assert again.computed == len(flipped)  # the flipped images only: their prediction maps explain another class
    assert label_rels(new_maps) == wrong(new_images)
    stay = set(images) - flipped
    for (rel, key), row in maps.items():
        if rel in stay:
            assert new_maps[(rel, key)] == row  # the same row, from the first run
    for rel in flipped:  # FAKE now correct: its true-class row went; REAL now misclassified: it has one
        assert ((rel, "gradcam@label") in new_maps) == rel.startswith("REAL/")
    check_output_folder(out, inp)
    # The report follows (its reuse key moves with the map rows): the flipped REAL images now show two rows.
    recs = detail_records(out)
    for rel in new_images:
        assert bool(recs[rel].get("label_maps")) == (rel in wrong(new_images))
    # Back to 0.5: the flipped images return to their first state; nothing else moves.
    third = go(opts(inp, out, tiny_ckpt, threshold=0.5))
    back_images, back_maps = rows(out)
    assert third.computed == len(flipped)
    assert label_rels(back_maps) == wrong(back_images) == wrong(images)
    assert {k: v for k, v in back_maps.items() if k[0] in stay} == {k: v for k, v in maps.items() if k[0] in stay}
    check_output_folder(out, inp)


def test_a_threshold_flip_stopped_before_its_report_leaves_every_file_the_report_links(
    inp, tmp_path, tiny_ckpt, monkeypatch
):
    """A new threshold drops, before it computes, the maps of the images whose target it flips, among them the
    true-class maps of those now correct, which it does not compute again. The report on disk shows them until
    the run writes its new one: their files stay till then (they went at once: a run stopped before its report
    left a report linking missing maps)."""
    import xaibatch.report
    from outcheck import check_report_links

    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, threshold=0.5))
    images, _maps = rows(out)
    links = check_report_links(out)
    t = flip_threshold(images)

    def no_report(*args, **kwargs):
        raise RuntimeError("no report this time")

    with monkeypatch.context() as m:
        m.setattr(xaibatch.report, "write_report", no_report)
        with pytest.raises(RuntimeError, match="no report this time"):
            go(opts(inp, out, tiny_ckpt, threshold=t))
    new_images, new_maps = rows(out)
    assert label_rels(new_maps) == wrong(new_images) != wrong(images)  # computed and committed, not reported
    assert check_report_links(out) == links
    go(opts(inp, out, tiny_ckpt, threshold=t))
    check_output_folder(out, inp)  # and no file of a dropped map is left


def test_the_detail_data_holds_both_maps_of_a_misclassified_image(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime"), method_options=LIME))
    images, maps = rows(out)
    recs = detail_records(out)
    names = ["FAKE", "REAL"]
    for rel, (label, pred, *_r) in images.items():
        rec = recs[rel]
        assert [m["m"] for m in rec["maps"]] == ["gradcam", "lime"]
        if label == pred:
            assert "label_maps" not in rec
            continue
        assert [m["m"] for m in rec["label_maps"]] == ["gradcam", "lime"]  # the real method names
        assert [m["npy"] for m in rec["label_maps"]] == [
            maps[(rel, "gradcam@label")][1],
            maps[(rel, "lime@label")][1],
        ]
        assert rec["pred"] == names[pred] and rec["label"] == names[label]
        assert f"probability of {names[label]}" in rec["label_maps"][1]["note"]  # LIME's scale, of the true class
        assert f"probability of {names[pred]}" in rec["maps"][1]["note"]
    assert "Maps explain" in (out / "index.html").read_text()
    assert "also its true class" in (out / "index.html").read_text()


def test_faithfulness_scores_the_prediction_maps_only(inp, tmp_path, tiny_ckpt):
    from xaibatch.evaluation.faithfulness import FaithConfig

    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, faithfulness=FaithConfig(5, "blur")))
    db = sqlite3.connect(out / layout.MANIFEST)
    try:
        scored = dict(db.execute("SELECT method, COUNT(deletion) FROM maps GROUP BY method").fetchall())
    finally:
        db.close()
    images, maps = rows(out)
    assert scored == {"gradcam": len(images), "gradcam@label": 0} and label_rels(maps) == wrong(images)
    header = (out / "predictions.csv").read_text().splitlines()[0]
    scores = [c for c in header.split(",") if c.startswith(("deletion_", "insertion_"))]
    assert scores == ["deletion_gradcam", "insertion_gradcam"]  # none of "gradcam@label"
    again = go(opts(inp, out, tiny_ckpt, faithfulness=FaithConfig(5, "blur")))
    assert again.computed == 0  # unscored true-class maps are not "missing their scores"


def test_bad_targets_are_one_line_errors_before_any_import(inp, tmp_path, tiny_ckpt, flat_dir):
    res = CliRunner().invoke(cli, ["run", str(inp), "--out", str(tmp_path / "o"), "--target", "label,pred"])
    assert res.exit_code == 2 and "pred,label" in res.output and "Traceback" not in res.output
    with pytest.raises(UsageError, match=r"^--target must be pred, label or pred,label, not 'both'$"):
        go(opts(inp, tmp_path / "o2", tiny_ckpt, target="both"))
    assert not (tmp_path / "o2").exists()
    with pytest.raises(UsageError, match="--target pred,label needs a labeled folder"):
        go(opts(flat_dir, tmp_path / "o3", tiny_ckpt))


@pytest.mark.parametrize("spelling, mode", [("PRED", "pred"), ("Pred, Label", "pred,label")])
def test_target_is_read_in_any_case_and_with_spaces_as_explain_reads_it(inp, tmp_path, tiny_ckpt, spelling, mode):
    """``--target PRED`` and ``--target 'pred, label'`` were refused by click's choice; explain() takes them too."""
    out = tmp_path / "o"
    args = ["run", str(inp), "--out", str(out), "--checkpoint", str(tiny_ckpt), "--target", spelling, "-q"]
    res = CliRunner().invoke(cli, [*args, "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert RunConfig.from_json(manifest_value(out, "SELECT config_json FROM runs")).target_mode() == mode


def test_sanity_after_a_pred_label_run_checks_the_prediction_maps(inp, tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt))
    res = CliRunner().invoke(cli, ["sanity", str(out), "--images", "4"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / layout.SANITY).read_text())
    assert [c["method"] for c in data["curves"]] == ["gradcam"]  # no "gradcam@label" method


@pytest.mark.slow
def test_the_ray_engine_writes_the_same_rows(inp, tmp_path, tiny_ckpt):
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import ray

    from xaibatch.pipeline import RayOptions

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        a, b = tmp_path / "local", tmp_path / "ray"
        go(opts(inp, a, tiny_ckpt))
        go(opts(inp, b, tiny_ckpt, engine="ray", ray=RayOptions(workers=2, cpus_per_worker=1)))
    finally:
        ray.shutdown()
    ia, ma = rows(a)
    ib, mb = rows(b)
    assert set(ma) == set(mb) and label_rels(mb) == wrong(ib)
    for key, row in ma.items():
        np.testing.assert_allclose(np.load(a / row[1]), np.load(b / mb[key][1]), rtol=1e-5, atol=1e-6)


# -- the detail view in a browser --------------------------------------------------------------------------------

try:
    from test_report_browser import CHROMEDRIVER, CHROMIUM, check_page, detail_urls, driver, open_page  # noqa: F401
except ImportError:  # pragma: no cover
    CHROMIUM = CHROMEDRIVER = Path("/nonexistent")


@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs chromium and chromedriver")
def test_the_detail_view_shows_why_and_why_not_rows(driver, inp, tmp_path, tiny_ckpt):  # noqa: F811
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "lime"), method_options=LIME))
    images, _maps = rows(out)
    bad = sorted(wrong(images))
    good = sorted(set(images) - set(bad))
    urls = detail_urls(out)
    check_page(driver, urls[bad[0]])  # every picture loads, every link resolves, no console error
    rows_shown = driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('.views'), function (v) {"
        "  var s = v.closest('section.why');"
        "  return {target: s ? s.dataset.target : null, heading: s ? s.querySelector('h2').textContent : null,"
        "    methods: Array.prototype.map.call(v.querySelectorAll('figure[data-method]'), f => f.dataset.method),"
        "    boxes: Array.prototype.map.call(v.querySelectorAll('figure > img'), function (i) {"
        "      var r = i.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; })}; })"
    )
    assert [(r["target"], r["heading"]) for r in rows_shown] == [("pred", "Why REAL"), ("label", "Why not FAKE")]
    assert [r["methods"] for r in rows_shown] == [["gradcam", "lime"], ["gradcam", "lime"]]
    sizes = {tuple(b) for r in rows_shown for b in r["boxes"]}
    assert len(sizes) == 1, sizes  # every picture of both rows at one size
    alts = driver.execute_script("return Array.prototype.map.call(document.querySelectorAll('.why img'), i => i.alt)")
    # class names are user data: between bidi isolate marks, as file names are
    assert any(a.endswith("for class \u2068FAKE\u2069") for a in alts)
    assert any(a.endswith("for class \u2068REAL\u2069") for a in alts)
    check_page(driver, urls[good[0]])
    assert driver.execute_script("return document.querySelectorAll('.views').length") == 1
    assert driver.execute_script("return document.querySelectorAll('section.why').length") == 0


def test_the_lime_estimate_counts_the_true_class_maps(inp, tmp_path, tiny_ckpt):
    """The cost LIME announces at the start counts every map it will fit: known misclassified images' true-class
    maps exactly; new images' at the error rate the manifest knows, or all labelled ones on a first run."""

    def estimate(out: Path, target: str = "pred,label") -> dict:
        events: list[dict] = []
        go(opts(inp, out, tiny_ckpt, target=target, methods=("lime",), method_options=LIME, on_event=events.append))
        (e,) = [e for e in events if e["event"] == "estimate"]
        return e

    first = estimate(tmp_path / "a")  # a first run: which new images are misclassified is not known yet
    images, _maps = rows(tmp_path / "a")
    bad = wrong(images)
    assert bad and bad != set(images)
    assert (first["images"], first["label_maps"]) == (16, 8) and "at most" in first["text"]
    assert "16 image(s) x 32 samples" in first["text"]

    later = tmp_path / "b"  # a known misclassified image whose true-class map is missing: counted exactly
    assert estimate(later, target="pred")["label_maps"] == 0
    second = estimate(later)
    assert (second["images"], second["label_maps"]) == (len(bad), len(bad))
    assert "estimated" not in second["text"] and "at most" not in second["text"]

    rng = np.random.default_rng(5)  # 6 new labelled images: estimated at the error rate the manifest knows
    for i in range(6):
        synth.save(synth.noise(rng, 32), inp / "FAKE" / f"new_{i}.png")
    third = estimate(tmp_path / "a")
    guess = round(6 * len(bad) / 8)
    assert (third["images"], third["label_maps"]) == (6 + guess, guess)
    if guess:
        assert f"{guess} of them estimated" in third["text"]


def test_the_first_maps_explain_the_label_only_under_target_label():
    """targets.target_class: the one rule that the run's rows, a re-decided row, the Explainer and explain() read."""
    import torch

    from xaibatch import targets

    assert [targets.target_class(m, 1, 0) for m in targets.MODES] == [1, 0, 1]
    pred, label = torch.tensor([1, 1]), torch.tensor([0, 1])
    assert torch.equal(targets.target_class("label", pred, label), label)
    assert torch.equal(targets.target_class("pred,label", pred, label), pred)


def test_under_target_label_the_report_still_groups_by_the_prediction(inp, tmp_path, tiny_ckpt):
    """--target label changes what the maps explain, not whether an image is correct: a misclassified image (label
    not its prediction) stays in the gallery's misclassified group, and the accuracy counts it wrong. The card's
    target under this mode is the label, which would make every image look correct."""
    out = tmp_path / "out"
    go(opts(inp, out, tiny_ckpt, target="label"))
    images, _ = rows(out)
    bad = wrong(images)
    assert bad and len(bad) < len(images), "the fixture needs misclassified and correct images"
    records = detail_records(out)
    for rel, (label, pred, *_r) in images.items():
        side = "wrong" if rel in bad else "right"
        assert records[rel]["group"] == f"{side}-{label}", rel
    html = (out / "index.html").read_text()
    assert f"({len(images) - len(bad)} correct, {len(bad)} misclassified" in html


def test_the_plan_counts_the_true_class_maps_it_knows_it_computes(inp, tmp_path, tiny_ckpt):
    """The plan event's ``maps`` (and the "maps to compute" line) counted ``gradcam@label`` for every image predicted
    anew: "gradcam@label: 8" on a first run that computed 4, one per misclassified image, which nobody knows before
    the model runs (the estimate guesses them). It counts those of images known misclassified."""
    out, events = tmp_path / "out", []
    go(opts(inp, out, tiny_ckpt, on_event=events.append))
    images, maps = rows(out)
    bad = wrong(images)
    assert 0 < len(bad) < len(images)
    (plan,) = [e for e in events if e["event"] == "plan"]
    assert plan["maps"] == {"gradcam": len(images)}
    events.clear()
    go(opts(inp, out, tiny_ckpt, methods=("gradcam", "captum:Saliency"), on_event=events.append))
    (plan,) = [e for e in events if e["event"] == "plan"]
    assert plan["maps"] == {"captum:Saliency": len(images), "captum:Saliency@label": len(bad)}
    assert label_rels(rows(out)[1], "captum:Saliency@label") == bad
