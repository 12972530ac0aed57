"""A model whose forward already ends in a sigmoid (one output) or a softmax returns probabilities, not logits.

Read as a logit a sigmoid's output was squashed twice: every image got P(positive) = sigmoid(p) in (0.5, 0.73),
so every image was predicted positive at the default threshold, and the maps explained that wrong class.
A softmax's output, softmaxed again, kept the argmax but not the probabilities (two classes: all within
0.27-0.73), so a --threshold other than 0.5 and every confidence were wrong.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import invoke, manifest_value
from xaibatch.model.heads import count_outputs

NETS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, tail):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 1)
        self.tail = tail

    def forward(self, x):
        z = self.fc(self.features(x).mean((2, 3)))
        if self.tail == "sigmoid":
            return torch.sigmoid(z)
        if self.tail == "module":  # nn.Sigmoid, then the batch dimension only
            return nn.Sigmoid()(z).squeeze(1)
        if self.tail in ("pair", "softmax"):  # two classes: logits [0, z]
            pair = torch.cat([torch.zeros_like(z), z], dim=1)
            return pair.softmax(dim=1) if self.tail == "softmax" else pair
        return z


def make(tail):
    torch.manual_seed(0)
    net = Net(tail)
    with torch.no_grad():  # dark and bright images get logits of opposite signs: both classes predicted
        net.fc.weight.mul_(40)
        tail, net.tail = net.tail, "logit"
        dark, bright = net(torch.stack([torch.full((3, 32, 32), v) for v in (-1.1, 1.5)])).flatten()
        net.fc.bias -= (dark + bright) / 2
        net.tail = tail
    return net


def logit():
    return make("logit")


def prob():
    return make("sigmoid")


def prob_module():
    return make("module")


def pair():
    return make("pair")


def softmax():
    return make("softmax")
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sig")
    (root / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    for cls, low in (("FAKE", 0), ("REAL", 150)):  # dark and bright noise
        (root / "in" / cls).mkdir(parents=True)
        for i in range(3):
            a = rng.integers(low, low + 100, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / "in" / cls / f"{i}.png")
    ns: dict = {}
    exec(compile(NETS, "nets", "exec"), ns)
    return {"root": root, "ns": ns}


def _run(world, factory: str, out, *extra):
    root = world["root"]
    r = invoke(
        "run", str(root / "in"), "--model", f"{root / 'nets.py'}:{factory}", "--out", str(out), "--image-size", "32",
        "--workers", "0", "--device", "cpu", "-q", *extra,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(out / "predictions.csv", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("tail", ["sigmoid", "module"])
def test_a_probability_output_is_detected(world, tail):
    got = count_outputs(world["ns"]["make"](tail), 32, "the model")
    assert (got.count, got.probability) == (1, True)
    plain = count_outputs(world["ns"]["make"]("logit"), 32, "the model")
    assert (plain.count, plain.probability, plain.softmax) == (1, False, False)
    soft = count_outputs(world["ns"]["make"]("softmax"), 32, "the model")
    assert (soft.count, soft.probability, soft.softmax) == (2, False, True)


def test_one_wrapper_by_the_outputs_for_runs_and_explain(world):
    """heads.wrap reads a module by its Outputs, for a run's model (heads.adapt) and explain()'s alike."""
    from xaibatch.model.heads import OneLogitHead, SoftmaxOutputHead, wrap

    def wrapped(tail: str):
        net = world["ns"]["make"](tail)
        return net, wrap(net, count_outputs(net, 32, "the model"))

    for tail, kind in [("sigmoid", OneLogitHead), ("logit", OneLogitHead), ("softmax", SoftmaxOutputHead)]:
        net, head = wrapped(tail)
        assert type(head) is kind and head.net is net, tail
    assert wrapped("sigmoid")[1].probability and not wrapped("logit")[1].probability
    net, head = wrapped("pair")
    assert head is net


def test_a_softmax_output_is_read_as_the_models_probabilities(world, tmp_path):
    ref = _run(world, "pair", tmp_path / "ref", "--threshold", "0.7")
    got = _run(world, "softmax", tmp_path / "got", "--threshold", "0.7")
    for k in sorted(ref):
        assert abs(float(got[k]["p_REAL"]) - float(ref[k]["p_REAL"])) < 2e-6, (k, got[k], ref[k])
        assert got[k]["pred"] == ref[k]["pred"]
    assert any(0.5 <= float(r["p_REAL"]) < 0.7 or float(r["p_REAL"]) > 0.73 for r in ref.values())
    cfg = manifest_value(tmp_path / "got", "SELECT config_json FROM runs")
    assert '"output": "softmax"' in cfg


@pytest.mark.parametrize("factory", ["prob", "prob_module"])
def test_a_run_reads_the_models_own_probability(world, tmp_path, factory):
    ref = _run(world, "logit", tmp_path / "ref")
    got = _run(world, factory, tmp_path / "got")
    p_ref = np.array([float(ref[k]["p_REAL"]) for k in sorted(ref)])
    p_got = np.array([float(got[k]["p_REAL"]) for k in sorted(got)])
    assert 0 < (p_ref >= 0.5).sum() < len(p_ref)  # both classes predicted: a case the bug got wrong
    np.testing.assert_allclose(p_got, p_ref, atol=2e-6)
    assert [got[k]["pred"] for k in sorted(got)] == [ref[k]["pred"] for k in sorted(ref)]
    for rel in sorted(ref):  # the same class explained, the same map as the logit model's
        npy = manifest_value(tmp_path / "got", "SELECT npy FROM maps WHERE rel = ?", (rel,))
        a = np.load(tmp_path / "got" / npy)
        b = np.load(tmp_path / "ref" / npy)
        np.testing.assert_allclose(a, b, atol=1e-4)
    cfg = manifest_value(tmp_path / "got", "SELECT config_json FROM runs")
    assert '"one_logit_output": "probability"' in cfg  # the run's record says how it read the output


def test_explain_reads_the_models_own_probability(world):
    import xaibatch

    images = sorted((world["root"] / "in").rglob("*.png"))
    ref = xaibatch.explain(world["ns"]["logit"](), images, ["gradcam"], input_size=32, device="cpu")
    net = world["ns"]["prob"]()
    got = xaibatch.explain(net, images, ["gradcam"], input_size=32, device="cpu")
    assert 0 < int(ref.preds.sum()) < 6
    torch.testing.assert_close(got.probs, ref.probs, atol=2e-6, rtol=0)
    assert torch.equal(got.preds, ref.preds)
    torch.testing.assert_close(got.maps["gradcam"], ref.maps["gradcam"], atol=1e-4, rtol=0)
    soft = xaibatch.explain(world["ns"]["softmax"](), images, ["gradcam"], input_size=32, device="cpu")
    torch.testing.assert_close(soft.probs, ref.probs, atol=2e-6, rtol=0)


def test_the_report_says_the_probability_is_the_models_own():
    from xaibatch.report.metrics import decision_words

    d = {"positive": "REAL", "threshold": 0.5, "one_logit": True, "one_logit_output": "probability"}
    assert decision_words(d) == "one output, P(positive) = the model's own sigmoid; REAL when P(REAL) ≥ 0.5"
    assert decision_words({**d, "one_logit_output": None}).startswith("one logit, P(positive) = sigmoid(z); ")


def test_a_one_logit_model_against_three_class_folders_says_it_has_two_classes(world, tmp_path):
    """It said "the model has 2 outputs" of a model with one: the two classes its sigmoid logit stands for."""
    import shutil

    inp = tmp_path / "in"
    shutil.copytree(world["root"] / "in", inp)
    shutil.copytree(inp / "REAL", inp / "OTHER")
    r = invoke("run", inp, "--model", f"{world['root'] / 'nets.py'}:logit", "--image-size", "32",
               "--out", tmp_path / "out", "--workers", "0", catch_exceptions=True)  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "the model has 2 outputs (one sigmoid logit: two classes); check --checkpoint" in r.output
