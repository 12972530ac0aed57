"""Every documented path with every other: entry point x model source x method family (issue 21).

Each cell either works (its output folder passes tests/outcheck.py, or its maps are finite) or is
refused before any compute with one line (REFUSED; README lists each). Tiny models, six 24 px images.
A run's output is computed once per (source, family) and copied by the cells that build on it.
The default tier covers every entry and family on an xaibatch checkpoint, and a plain run of every
source with the native methods; the rest, and every Ray cell, are slow (``-m slow``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from helpers import make_checkpoint, manifest_value, quiet, run_opts, write_images
from outcheck import check_output_folder
from xaibatch.errors import UsageError
from xaibatch.pipeline import RayOptions, RunOptions, run

ENTRIES = ("run", "run-faithfulness", "run-ray", "sanity", "explain", "rerun-threshold")
SOURCES = ("bundled", "xaibatch-checkpoint", "state_dict-arch", "factory", "torchvision", "one-logit")
FAMILIES = {"native": ["gradcam", "guided-gradcam", "lime"], "cam": ["cam:gradcam++"], "captum": ["captum:Saliency"]}
OPTIONS = {"lime": {"samples": 16, "segments": 8}}

# (entry, source, family) -> the one line that refuses the cell before any compute (None: any family/source).
REFUSED: dict[tuple[str, str | None, str | None], str] = {}

FACTORY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs))
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward(self, x):
        return self.head(self.features(x))


def build():
    torch.manual_seed(0)
    return Tiny(2)


def one_logit():
    torch.manual_seed(0)
    return Tiny(1)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    inp = root / "in"
    write_images(inp / "FAKE", 3, size=24, seed=1)
    write_images(inp / "REAL", 3, size=24, seed=2)
    (root / "net.py").write_text(FACTORY)
    torch.manual_seed(0)
    sd = root / "timm_sd.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), sd)
    import torchvision

    torch.manual_seed(0)
    tv = root / "tv_resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tv)
    sources = {
        "bundled": {},
        "xaibatch-checkpoint": {"checkpoint": make_checkpoint(root / "xb.pt", size=32)},
        "state_dict-arch": {"checkpoint": sd, "arch": "test_resnet", "image_size": 32},
        "factory": {"model": f"{root / 'net.py'}:build"},
        "torchvision": {"model": "torchvision:resnet18", "checkpoint": tv, "image_size": 32},
        "one-logit": {"model": f"{root / 'net.py'}:one_logit"},
    }
    return {"root": root, "inp": inp, "sources": sources, "bases": {}}


def _opts(world, out: Path, source: str, family: str, **kw) -> RunOptions:
    methods = FAMILIES[family]
    options = {m: OPTIONS[m] for m in methods if m in OPTIONS}
    return run_opts(
        world["inp"], out, None, methods, device="cpu", method_options=options, **world["sources"][source], **kw
    )


def _base(world, source: str, family: str) -> Path:
    """The plain run's output for (source, family), computed once."""
    key = (source, family)
    if key not in world["bases"]:
        out = world["root"] / f"base-{source}-{family}"
        res = run(_opts(world, out, source, family), log=quiet)
        assert res.computed == 6 and not res.failed
        world["bases"][key] = out
    return world["bases"][key]


def _copy(world, source, family, tmp_path) -> Path:
    out = tmp_path / "o"
    shutil.copytree(_base(world, source, family), out)
    return out


def _maps_rows(out: Path) -> int:
    return manifest_value(out, "SELECT count(*) FROM maps")


def _module(world, source: str):
    """What a notebook user hands explain() for this source: a path it loads, or the module they built."""
    from xaibatch.resources import default_checkpoint
    from xaibatch.model.user import build_factory

    src = world["sources"][source]
    if source == "bundled":
        return default_checkpoint()
    if source == "xaibatch-checkpoint":
        return src["checkpoint"]
    if source == "state_dict-arch":
        net = timm.create_model("test_resnet", pretrained=False, num_classes=2)
        net.load_state_dict(torch.load(src["checkpoint"], weights_only=True))
        return net
    if source == "torchvision":
        import torchvision

        net = torchvision.models.resnet18(num_classes=2)
        net.load_state_dict(torch.load(src["checkpoint"], weights_only=True))
        return net
    return build_factory(src["model"])[0]


def _cell(entry: str, source: str, family: str, world, tmp_path) -> None:
    if entry == "run":
        check_output_folder(_base(world, source, family), world["inp"])
    elif entry == "run-faithfulness":
        from xaibatch.evaluation.faithfulness import FaithConfig

        out = _copy(world, source, family, tmp_path)
        res = run(_opts(world, out, source, family, faithfulness=FaithConfig(steps=4)), log=quiet)
        assert not res.failed
        check_output_folder(out, world["inp"])
        _assert_scored(out)
    elif entry == "run-ray":
        pytest.importorskip("ray")
        out = tmp_path / "o"
        run(_opts(world, out, source, family, engine="ray", ray=RayOptions(workers=1)), log=quiet)
        check_output_folder(out, world["inp"])
        assert _maps_rows(out) == 6 * len(FAMILIES[family])
    elif entry == "sanity":
        from xaibatch.evaluation.sanity import run_sanity

        out = _copy(world, source, family, tmp_path)
        result = run_sanity(out, n=4, device="cpu", batch_size=4)
        assert {c.method for c in result.curves} == set(FAMILIES[family])
        assert all(np.isfinite(c.rank).all() for c in result.curves)
        assert json.loads((out / "sanity.json").read_text())["images"] == 4
        check_output_folder(out, world["inp"])
    elif entry == "explain":
        import xaibatch

        paths = sorted(world["inp"].rglob("*.png"))
        methods = FAMILIES[family]
        got = xaibatch.explain(
            _module(world, source),
            paths,
            methods,
            input_size=32,
            device="cpu",
            batch_size=4,
            method_options={m: OPTIONS[m] for m in methods if m in OPTIONS},
        )
        for m in methods:
            assert tuple(got.maps[m].shape) == (6, 32, 32) and torch.isfinite(got.maps[m]).all()
        assert got.probs.shape == (6, 2) and torch.allclose(got.probs.sum(1), torch.ones(6), atol=1e-5)
    elif entry == "rerun-threshold":
        out = _copy(world, source, family, tmp_path)
        res = run(_opts(world, out, source, family, threshold=0.3), log=quiet)
        assert res.computed <= 6 and not res.failed
        check_output_folder(out, world["inp"])
    else:  # pragma: no cover
        raise AssertionError(entry)


def _assert_scored(out: Path) -> None:
    missing = manifest_value(out, "SELECT count(*) FROM maps WHERE deletion IS NULL OR insertion IS NULL")
    assert missing == 0


def _refusal(entry: str, source: str, family: str) -> str | None:
    for (e, s, f), line in REFUSED.items():
        if e == entry and s in (None, source) and f in (None, family):
            return line
    return None


def _fast(entry: str, source: str, family: str) -> bool:
    if entry == "run-ray":
        return False
    return source == "xaibatch-checkpoint" or (entry == "run" and family == "native")


CELLS = [
    pytest.param(e, s, f, id=f"{e}-{s}-{f}", marks=() if _fast(e, s, f) else pytest.mark.slow)
    for e in ENTRIES
    for s in SOURCES
    for f in FAMILIES
]


@pytest.mark.parametrize("entry,source,family", CELLS)
def test_cell(entry, source, family, world, tmp_path):
    line = _refusal(entry, source, family)
    if line is None:
        _cell(entry, source, family, world, tmp_path)
        return
    out = tmp_path / "o"
    with pytest.raises(UsageError) as e:
        _cell(entry, source, family, world, tmp_path)
    assert line in str(e.value) and "\n" not in str(e.value)
    assert not (out / "maps").exists() or _maps_rows(out) == _maps_rows(_base(world, source, family))


def test_every_refusal_is_a_cell():
    cells = {(e, s, f) for e in ENTRIES for s in SOURCES for f in FAMILIES}
    for e, s, f in REFUSED:
        assert any(c[0] == e and s in (None, c[1]) and f in (None, c[2]) for c in cells), (e, s, f)
    assert dataclasses.is_dataclass(RunOptions)
