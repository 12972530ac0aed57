"""A model that declares no input size runs at 224 px: the run says so, once, with how to give another.

An own CNN trained on CIFAKE's 32 px images, given as ``--model FILE.py:build`` without ``--image-size``, was
run at 224 px in silence (the report's configuration showed it; nothing else did): its predictions are then of
images eight times larger than any it saw in training. A model that declares its size (``--image-size``, an
xaibatch checkpoint, timm's ``pretrained_cfg``) gets no such line.
"""

from __future__ import annotations

import json

from helpers import invoke, make_checkpoint, write_images

MODEL = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
"""


def _inputs(tmp_path):
    write_images(tmp_path / "in" / "FAKE", 2, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 2, size=32, seed=2)
    (tmp_path / "own.py").write_text(MODEL)
    return tmp_path / "in", f"{tmp_path / 'own.py'}:build"


def notices(output: str, kind: str) -> list[dict]:
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "notice" and e["kind"] == kind]


def test_a_model_without_an_input_size_says_the_size_it_is_run_at(tmp_path):
    inp, model = _inputs(tmp_path)
    r = invoke("run", inp, "--out", tmp_path / "o1", "--model", model, "--device", "cpu", "--workers", "0")
    assert r.exit_code == 0, r.output
    said = [line for line in r.output.splitlines() if "declares no input size" in line]
    assert said == [
        "xaibatch: warning: the model declares no input size: images are resized to 224x224 px; if it was trained "
        "at another size, give that size with --image-size (e.g. --image-size 32 for CIFAKE's images)"
    ]
    r = invoke("run", inp, "--out", tmp_path / "o2", "--model", model, "--device", "cpu", "--log-json")
    assert [e["input_size"] for e in notices(r.output, "input-size")] == [224]
    assert "declares no input size" not in r.stderr  # --log-json: the event only


def test_a_model_whose_size_is_known_says_nothing_of_it(tmp_path):
    inp, model = _inputs(tmp_path)
    sized = invoke("run", inp, "--out", tmp_path / "o1", "--model", model, "--image-size", 32, "--log-json")
    ckpt = make_checkpoint(tmp_path / "m.pt", size=32)  # an xaibatch checkpoint records its size
    recorded = invoke("run", inp, "--out", tmp_path / "o2", "--checkpoint", ckpt, "--log-json")
    timm = invoke("run", inp, "--out", tmp_path / "o3", "--model", "timm:test_resnet", "--log-json")
    for r in (sized, recorded, timm):
        assert r.exit_code == 0, r.output
        assert notices(r.output, "input-size") == []
