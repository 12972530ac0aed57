"""`xaibatch sanity` rebuilds exactly the run's model and methods from what the run recorded (issue 21, 1-3)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import timm
import torch

from helpers import invoke, make_checkpoint, manifest_value, quiet, run_opts, write_images
from xaibatch.pipeline import RunOptions, run
from xaibatch.runconfig import RunConfig


@pytest.fixture
def inp(tmp_path) -> Path:
    root = tmp_path / "in"
    write_images(root / "FAKE", 3, size=24, seed=1)
    write_images(root / "REAL", 3, size=24, seed=2)
    return root


def _sanity(out: Path, *extra: str):
    return invoke("sanity", out, "--images", "4", "--device", "cpu", *extra)


def _run(inp: Path, out: Path, methods, **kw) -> None:
    run(run_opts(inp, out, None, methods, device="cpu", **kw), log=quiet)


def test_sanity_after_lime_rebuilds_its_options(inp, tiny_ckpt, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["lime"], checkpoint=tiny_ckpt, method_options={"lime": {"samples": 12, "segments": 6}})
    res = _sanity(out)
    assert res.exit_code == 0, res.output
    assert "lime:" in res.output


@pytest.mark.parametrize("method", ["cam:gradcam++", "captum:Saliency"])
def test_sanity_after_a_library_method(inp, tiny_ckpt, tmp_path, method):
    out = tmp_path / "o"
    _run(inp, out, [method], checkpoint=tiny_ckpt)
    res = _sanity(out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "sanity.json").read_text())["curves"][0]["method"] == method


def _state_dict(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    p = tmp_path / "weights.pth"
    torch.save(net.state_dict(), p)
    return p


def test_sanity_after_a_state_dict_with_arch(inp, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=_state_dict(tmp_path), arch="test_resnet", image_size=32)
    res = _sanity(out)
    assert res.exit_code == 0, res.output


FACTORY = """
import timm, torch
def build():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=2)
"""


def test_sanity_after_a_factory_with_checkpoint(inp, tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], model=f"{tmp_path / 'net.py'}:build", checkpoint=_state_dict(tmp_path), image_size=32)
    assert _sanity(out).exit_code == 0


def test_sanity_after_torchvision(inp, tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "rn.pth"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], model="torchvision:resnet18", checkpoint=weights, image_size=32)
    res = _sanity(out)
    assert res.exit_code == 0, res.output


def test_random_weights_cannot_be_rebuilt_and_it_says_so(inp, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], model="timm:test_resnet", image_size=32)
    res = _sanity(out)
    assert res.exit_code == 2 and "random weights" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_relative_paths_are_recorded_absolute(inp, tiny_ckpt, tmp_path, monkeypatch):
    """From another folder, with a decoy ./in there: sanity still uses the run's images and checkpoint."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(inp, work / "in")
    shutil.copy(tiny_ckpt, work / "m.pt")
    monkeypatch.chdir(work)
    run(
        RunOptions(
            input_dir=Path("in"),
            out_dir=Path("o"),
            methods=["gradcam"],
            checkpoint=Path("m.pt"),
            workers=0,
            handle_signals=False,
        ),
        log=quiet,
    )
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere / "in" / "FAKE", 3, size=24, seed=7)  # same names, other pictures
    write_images(elsewhere / "in" / "REAL", 3, size=24, seed=8)
    monkeypatch.chdir(elsewhere)
    res = _sanity(work / "o")
    assert res.exit_code == 0, res.output
    assert json.loads((work / "o" / "sanity.json").read_text())["input_dir"] == str(work / "in")


def test_a_changed_checkpoint_is_refused_with_how_to_pass_it(inp, tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=ck)
    make_checkpoint(ck, seed=5)  # other weights under the same name
    res = _sanity(out)
    assert res.exit_code == 2, res.output
    assert "not the run's" in res.output and "--checkpoint" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_changed_images_are_refused(inp, tiny_ckpt, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=tiny_ckpt)
    for i, p in enumerate(sorted(inp.rglob("*.png"))):
        write_images(p.parent, 3, size=24, seed=40 + i)  # same names, new content
    res = _sanity(out)
    assert res.exit_code == 2 and "not the ones the run explained" in res.output, res.output


def test_bad_json_in_the_manifest_is_one_line_not_internal(inp, tiny_ckpt, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=tiny_ckpt)
    db = sqlite3.connect(out / "xaibatch.sqlite")
    db.execute("UPDATE runs SET config_json = '{not json'")
    db.commit()
    db.close()
    res = _sanity(out)
    assert res.exit_code == 3 and "damaged" in res.output and "internal error" not in res.output, res.output


def test_run_config_round_trips(inp, tiny_ckpt, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["gradcam", "lime"], checkpoint=tiny_ckpt, method_options={"lime": {"samples": 12}})
    text = manifest_value(out, "SELECT config_json FROM runs")
    cfg = RunConfig.from_json(text)
    assert cfg.to_json() == text
    assert cfg.source.kind == "checkpoint" and cfg.source.checkpoint == str(tiny_ckpt)
    assert cfg.methods["lime"].options["samples"] == 12 and cfg.input_dir == str(inp)


def test_a_moved_checkpoint_is_named_and_can_be_passed(inp, tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=ck)
    moved = ck.rename(tmp_path / "moved.pt")
    res = _sanity(out)
    assert res.exit_code == 2 and "cannot rebuild" in res.output and "--checkpoint" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    res = _sanity(out, "--checkpoint", str(moved))
    assert res.exit_code == 0, res.output


def test_a_folder_written_before_the_record_existed(inp, tiny_ckpt, tmp_path):
    """An older run row (no source, no options, a relative input folder): inferred from what it has."""
    out = tmp_path / "o"
    _run(
        inp,
        out,
        ["lime", "cam:gradcam++"],
        checkpoint=tiny_ckpt,
        method_options={"lime": {"samples": 12, "segments": 6}},
    )
    db = sqlite3.connect(out / "xaibatch.sqlite")
    cfg = json.loads(db.execute("SELECT config_json FROM runs").fetchone()[0])
    for key in ("source", "input_dir"):
        del cfg[key]
    for m in cfg["methods"].values():
        del m["options"]
    db.execute("UPDATE runs SET config_json = ?, input_dir = 'in'", (json.dumps(cfg, sort_keys=True),))
    db.commit()
    db.close()
    res = _sanity(out)
    assert res.exit_code == 0, res.output
