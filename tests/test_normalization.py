"""--mean and --std: a model's own normalization given on the command line (and to explain()), recorded, hashed and
rebuilt by sanity; a model that names none is run with ImageNet's, which the run says."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from helpers import invoke, manifest_value
from xaibatch.tools.demo import write_demo_data

MODELS_SRC = """
from torch import nn


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def plain():  # a CNN trained on pixels in [0, 1] that says nothing of it
    return _net()


def declared():  # the same CNN, naming its normalization as timm's models do
    net = _net()
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    return net
"""

WARNING = "the model names no normalization"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("norm")
    write_demo_data(root / "demo", 4, 6, 0)
    (root / "models.py").write_text(MODELS_SRC)
    ns: dict = {}
    exec(compile(MODELS_SRC, "models", "exec"), ns)
    torch.manual_seed(0)
    net = ns["plain"]()
    with torch.no_grad():  # weights whose outputs move far with the input's scale
        for p in net.parameters():
            p.normal_(0, 0.5)
    torch.save(net.state_dict(), root / "w.pt")
    return root


def _run(world, out, factory, *extra):
    return invoke(
        "run",
        world / "demo" / "test",
        "--model",
        f"{world}/models.py:{factory}",
        "--checkpoint",
        world / "w.pt",
        "--image-size",
        "32",
        "--out",
        out,
        "--workers",
        "0",
        *extra,
    )


def _probs(out):
    with open(out / "predictions.csv", newline="") as f:
        return {r["path"]: (r["p_FAKE"], r["p_REAL"]) for r in csv.DictReader(f)}


def _maps(out):
    return {p.relative_to(out).as_posix(): np.load(p) for p in sorted((out / "maps").rglob("*.npy"))}


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--mean", "127.5"],
            "--mean must be from 0 to 1, in units of pixels scaled to [0, 1] (0-255 units? "
            "divided by 255: --mean 0.5,0.5,0.5)",
        ),
        (["--mean", "0.5,0.5"], "--mean must be one number or three (R, G, B), not '0.5,0.5'"),
        (["--std", "0"], "--std must be above 0 and at most 1"),
        (["--std", "0.2,nan,0.2"], "--std must be one number or three (R, G, B)"),
        (["--mean", "-0.1"], "--mean must be from 0 to 1"),
    ],
)
def test_a_bad_mean_or_std_is_one_line_before_anything_is_written(tmp_path, args, words):
    (tmp_path / "in" / "A").mkdir(parents=True)
    r = invoke("run", tmp_path / "in", "--out", tmp_path / "o", *args, catch_exceptions=True)
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0], r.output
    assert not (tmp_path / "o").exists()


def test_mean_and_std_given_are_what_the_model_names_itself(world, tmp_path):
    """--mean 0 --std 1 on a model that names nothing gives the predictions and maps of the same weights naming
    mean 0 and std 1 themselves; without them the run says it assumed ImageNet's, and its outputs differ."""
    given = _run(
        world, tmp_path / "given", "plain", "--mean", "0", "--std", "1", "-m", "gradcam,lime", "--lime-samples", "50"
    )
    assert given.exit_code == 0, given.output
    own = _run(world, tmp_path / "own", "declared", "-m", "gradcam,lime", "--lime-samples", "50")
    assert own.exit_code == 0, own.output
    assert WARNING not in given.output and WARNING not in own.output
    assert _probs(tmp_path / "given") == _probs(tmp_path / "own")
    a, b = _maps(tmp_path / "given"), _maps(tmp_path / "own")
    assert a.keys() == b.keys() and len(a) == 24
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    assumed = _run(world, tmp_path / "assumed", "plain", "--log-json")
    assert assumed.exit_code == 0, assumed.output
    events = [json.loads(line) for line in assumed.stdout.splitlines()]
    notice = [e for e in events if e["event"] == "notice" and e["kind"] == "normalization"]
    assert len(notice) == 1 and WARNING in notice[0]["text"]
    assert notice[0]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert _probs(tmp_path / "assumed") != _probs(tmp_path / "own")


def test_a_new_mean_recomputes_and_the_same_one_does_not(world, tmp_path):
    out = tmp_path / "o"
    assert _run(world, out, "plain", "--mean", "0.5", "--std", "0.5").exit_code == 0
    again = _run(world, out, "plain", "--mean", "0.5,0.5,0.5", "--std", "0.5")  # the same, spelled out
    assert again.exit_code == 0 and "0 computed, 12 skipped (unchanged)" in again.output, again.output
    other = _run(world, out, "plain", "--mean", "0", "--std", "1")
    assert other.exit_code == 0 and "12 computed" in other.output, other.output
    config = json.loads(manifest_value(out, "SELECT config_json FROM runs ORDER BY id DESC LIMIT 1"))
    assert config["source"]["mean"] == [0.0, 0.0, 0.0] and config["source"]["std"] == [1.0, 1.0, 1.0]
    assert config["model"]["mean"] == [0.0, 0.0, 0.0]


def test_sanity_rebuilds_the_model_with_the_runs_mean_and_std(world, tmp_path):
    from xaibatch.evaluation.rebuild import rebuild_options
    from xaibatch.manifest import Manifest
    from xaibatch.runconfig import read_run

    out = tmp_path / "o"
    assert _run(world, out, "plain", "--mean", "0.25", "--std", "0.5").exit_code == 0
    m = Manifest(out / "xaibatch.sqlite")
    try:
        record = read_run(m.runs()[-1])
    finally:
        m.close()
    opts = rebuild_options(record, world / "demo" / "test", out, "cpu")
    assert list(opts.mean) == [0.25] * 3 and list(opts.std) == [0.5] * 3
    r = invoke("sanity", out, "--images", "4", "-q")
    assert r.exit_code == 0, r.output


def test_explain_applies_mean_and_std_over_a_checkpoints_own(tmp_path):
    """explain() took its mean and std only for a module: with a checkpoint path its own silently won."""
    import xaibatch
    from xaibatch.resources import default_checkpoint

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    own = xaibatch.explain(default_checkpoint(), images, methods=["gradcam"])
    given = xaibatch.explain(default_checkpoint(), images, methods=["gradcam"], mean=0.5, std=[0.25, 0.25, 0.25])
    assert given.preprocess.mean == (0.5, 0.5, 0.5) and given.preprocess.std == (0.25, 0.25, 0.25)
    assert own.preprocess.mean != given.preprocess.mean
    assert not torch.equal(own.probs, given.probs)


def test_one_request_whatever_the_spelling(tmp_path):
    """RunOptions(mean=0.5) and mean=[0.5, 0.5, 0.5] are one request (an unchanged re-run loads no model)."""
    from xaibatch.pipeline.options import RunOptions
    from xaibatch.pipeline.setup import request_key
    from xaibatch.scan import Scan

    def key(**kw):
        return request_key(
            RunOptions(input_dir=tmp_path, out_dir=tmp_path / "o", methods=["gradcam"], **kw),
            Scan(tmp_path, ["A", "B"], [], []),
            "0" * 64,
        )

    assert key(mean=0.5, std=(1, 1, 1)) == key(mean=[0.5, 0.5, 0.5], std=1.0) != key(mean=0.4, std=1.0)


@pytest.mark.parametrize("one", [np.float32(0.5), np.array(0.5), torch.tensor(0.5), "0.5", 0.5])
def test_one_number_of_any_type_stands_for_all_three_channels(one):
    """np.float32(0.5) (a value read from a numpy config) was refused: "mean must be one number or three"."""
    from xaibatch.preprocess import channel_values

    assert channel_values("mean", one) == (0.5, 0.5, 0.5)
    assert channel_values("std", [one, one, one]) == (0.5, 0.5, 0.5)


def test_sanity_on_a_record_with_a_damaged_mean_says_so_in_one_line(world, tmp_path):
    """A recorded mean that does not read as one ("x", [5, 5, 5]) was "internal error: ValueError" in sanity."""
    import sqlite3

    out = tmp_path / "o"
    assert _run(world, out, "plain", "--mean", "0.25", "--std", "0.5").exit_code == 0
    db = sqlite3.connect(out / "xaibatch.sqlite")
    run_id, config = db.execute("SELECT id, config_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    config = json.loads(config)
    config["source"]["mean"] = [5, 5, 5]
    db.execute("UPDATE runs SET config_json = ? WHERE id = ?", (json.dumps(config), run_id))
    db.commit()
    db.close()
    r = invoke("sanity", out, "--images", "2")
    assert r.exit_code != 0 and "internal error" not in r.output, r.output
    assert "the manifest's record of the run is damaged (ValueError: mean must be from 0 to 1" in r.output
    assert invoke("report", out, "-q").exit_code == 0  # the report is built all the same


def test_mean_alone_on_a_model_that_names_none_says_the_std_is_imagenets(world, tmp_path):
    """--mean 0.5 alone (for Normalize(0.5, 0.5)) left the std ImageNet's 0.229 without a word."""
    alone = _run(world, tmp_path / "alone", "plain", "--mean", "0.5")
    assert alone.exit_code == 0, alone.output
    assert f"{WARNING}: its inputs are normalized with ImageNet's std;" in alone.output, alone.output
    declared = _run(world, tmp_path / "declared", "declared", "--mean", "0.5")  # its own std stands
    assert declared.exit_code == 0 and WARNING not in declared.output, declared.output
