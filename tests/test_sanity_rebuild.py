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


def test_random_weights_xaibatch_drew_are_rebuilt_and_checked(inp, tmp_path):
    """timm:NAME without --checkpoint draws its weights from a fixed seed and records their digest, so sanity
    rebuilds the same model (it refused, saying "a rebuild draws others", which stopped being true)."""
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], model="timm:test_resnet", image_size=32)
    res = _sanity(out)
    assert res.exit_code == 0, res.output
    assert "gradcam: " in res.output


def test_random_weights_of_an_older_run_cannot_be_rebuilt_and_it_says_so(inp, tmp_path):
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], model="timm:test_resnet", image_size=32)
    db = sqlite3.connect(out / "xaibatch.sqlite")  # an older run recorded no digest of random weights
    cfg = json.loads(db.execute("SELECT config_json FROM runs").fetchone()[0])
    assert cfg["model"]["checkpoint_sha256"]
    cfg["model"]["checkpoint_sha256"] = ""
    db.execute("UPDATE runs SET config_json = ?", (json.dumps(cfg, sort_keys=True),))
    db.commit()
    db.close()
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


def test_a_moved_input_folder_says_how_to_point_the_folder_at_it(inp, tiny_ckpt, tmp_path):
    """The input folder moved or renamed: sanity said only that it "does not exist any more"; a run from the new
    path with --replace records it (computing nothing for the same images), and sanity then works."""
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=tiny_ckpt)
    moved = inp.rename(tmp_path / "moved")
    res = _sanity(out)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"xaibatch run NEW_PATH --out {out} --replace" in res.output, res.output
    again = run(run_opts(moved, out, tiny_ckpt, ["gradcam"], device="cpu", replace=True), log=quiet)
    assert again.computed == 0
    res = _sanity(out)
    assert res.exit_code == 0, res.output


def test_a_damaged_checkpoint_is_a_model_that_cannot_be_rebuilt_and_says_how_to_pass_one(inp, tmp_path):
    """Any error of the model step says the run's model cannot be rebuilt and how to pass it. Which errors did was
    decided by searching the message for "--checkpoint", "--model", "--arch" or "state_dict": the loader's
    "m.pt: not a PyTorch checkpoint: corrupted or truncated zip archive" names none of them and came out bare."""
    ck = make_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=ck)
    ck.write_bytes(ck.read_bytes()[:1000])
    res = _sanity(out)
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"Error: sanity cannot rebuild the run's model from --checkpoint {ck}: {ck}: not a")
    assert "pass the run's model: `xaibatch sanity" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_class_folders_that_no_longer_match_are_the_folders_fault_not_the_models(inp, tiny_ckpt, tmp_path):
    """A class folder added since the run is refused as the run refuses it, not as a model that cannot be rebuilt
    with advice to pass another model (the model step's wording had taken every error of that step)."""
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=tiny_ckpt)
    write_images(inp / "OTHER", 1, size=24, seed=3)
    res = _sanity(out)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: folder classes ") and "cannot rebuild" not in res.output
    assert "pass the run's model" not in res.output


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


def test_a_check_after_a_run_that_added_a_method_keeps_the_others_verdicts(inp, tiny_ckpt, tmp_path):
    """A run that only adds a method records only that method; its check used to drop the verdicts of the folder's
    other methods from sanity.json and the report. They are kept when the earlier check's model, sample size,
    seed and input folder are the same, and said to be earlier; another sample size checks only the new run's."""
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=tiny_ckpt)
    assert _sanity(out).exit_code == 0
    first = json.loads((out / "sanity.json").read_text())
    _run(inp, out, ["captum:Saliency"], checkpoint=tiny_ckpt)  # the folder now holds both methods' maps
    res = _sanity(out)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "sanity.json").read_text())
    assert [c["method"] for c in data["curves"]] == ["captum:Saliency", "gradcam"]
    kept = data["curves"][1]
    assert kept == {**first["curves"][0], "checked": first["created"]}  # the earlier curve, unchanged
    assert data["curves"][0]["checked"] == data["created"] > first["created"]
    assert "gradcam: " in res.output and "(kept from the previous check)" in res.output.splitlines()[-1]
    html = (out / "index.html").read_text()
    assert html.count("(from the check of ") == 1 and "on the same model and sample size" in html
    assert "Saliency" in html and kept["verdict"] in html

    damaged = {**data, "curves": [data["curves"][0], {k: v for k, v in kept.items() if k != "verdict"}]}
    (out / "sanity.json").write_text(json.dumps(damaged))  # a kept curve without its verdict: crashed the CLI
    res = _sanity(out)
    assert res.exit_code == 0, res.output
    assert [c["method"] for c in json.loads((out / "sanity.json").read_text())["curves"]] == ["captum:Saliency"]
    assert "Sanity check" in (out / "index.html").read_text()  # not left out of the report for the bad curve

    res = _sanity(out, "--seed", "1")  # another sample: the earlier verdicts say nothing of it
    assert res.exit_code == 0, res.output
    assert [c["method"] for c in json.loads((out / "sanity.json").read_text())["curves"]] == ["captum:Saliency"]
    assert "(from the check of " not in (out / "index.html").read_text()


def test_earlier_curves_keeps_only_what_the_same_check_of_a_method_still_held_said(tmp_path):
    from xaibatch.evaluation.sanity import FILENAME, VERSION, SanityCurve, SanityResult, earlier_curves

    steps = ["original", "head", "+stem"]
    now = {"version": VERSION, "created": 20.0, "checkpoint_sha256": "abc", "images": 4, "seed": 0, "input_dir": "/in"}
    new = SanityResult([SanityCurve("lime", steps, [1.0, 0.2, 0.1], [1.0, 0.3, 0.2], True, "lime", 4, 20.0)], **now)

    def curve(method: str, steps=steps, **more) -> dict:
        return {"method": method, "steps": steps, "rank": [1.0] * 3, "ssim": [1.0] * 3, "passed": False,
                "verdict": f"{method}: FAILS", **more}  # fmt: skip

    def kept(old: dict, held=("lime", "gradcam", "cam:eigencam")) -> list[str]:
        (tmp_path / FILENAME).write_text(json.dumps(old))
        return [c.method for c in earlier_curves(tmp_path, new, set(held))]

    curves = [curve(m) for m in ("gradcam", "lime", "cam:eigencam", "gone")]
    old = {**now, "created": 10.0, "curves": curves}
    assert kept(old) == ["gradcam", "cam:eigencam"]  # lime redone now; "gone" has no maps in the folder
    (tmp_path / FILENAME).write_text(json.dumps(old))
    assert {c.checked for c in earlier_curves(tmp_path, new, {"gradcam"})} == {10.0}
    others = [("checkpoint_sha256", "other"), ("images", 8), ("seed", 3), ("input_dir", "/else")]
    for k, v in [*others, ("version", VERSION - 1)]:  # version 1 averaged signed correlations
        assert kept({**old, k: v}) == [], k
    assert kept({**old, "curves": [curve("gradcam", ["original", "head"])]}) == []  # another model
    bad = [{"method": "gradcam", "steps": steps}, 7, curve("cam:eigencam", checked=12.0)]
    assert kept({**old, "curves": bad}) == ["cam:eigencam"]  # no verdict (damaged), no curve: not kept
    (tmp_path / FILENAME).write_text("{not json")
    assert earlier_curves(tmp_path, new, {"gradcam"}) == []
    (tmp_path / FILENAME).unlink()
    assert earlier_curves(tmp_path, new, {"gradcam"}) == []


@pytest.mark.parametrize(
    "text", ['{"version": 1, "images": 3}', '{"curves": [7]}', '{"curves": [{"method": "gradcam"}]}', "[]", "{oops"]
)
def test_a_sanity_file_without_curves_leaves_the_section_out(inp, tiny_ckpt, tmp_path, text):
    """A hand-edited or foreign sanity.json stopped the report ("'dict object' has no attribute 'curves'")."""
    from xaibatch.report import write_report

    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], checkpoint=tiny_ckpt)
    (out / "sanity.json").write_text(text)
    write_report(out)
    assert "Sanity check" not in (out / "index.html").read_text()


def _verdict_items(out: Path) -> dict[str, str]:
    """The report's sanity verdicts, by method: each list item's text."""
    import re

    html = (out / "index.html").read_text()
    items = re.findall(
        r"<li class=\"(?:good|bad)\">(.*?)</li>", html.split('<ul class="verdicts">', 1)[1].split("</ul>")[0]
    )
    return {re.sub(r"<[^>]+>", "", i).split(":")[0]: re.sub(r"<[^>]+>", "", i) for i in items}


def test_a_verdict_on_maps_recomputed_since_under_other_settings_says_so(inp, tiny_ckpt, tmp_path):
    """A cron job's command changed a method's option (same checkpoint) after `xaibatch sanity`: that method's maps
    were recomputed, and the report used to show the check of the old maps as current (it compared the checkpoint
    only). The verdict of a method whose maps no longer carry the hash it was checked with says to check again."""
    out = tmp_path / "o"
    lime = {"samples": 12, "segments": 6}
    _run(inp, out, ["gradcam", "lime"], checkpoint=tiny_ckpt, method_options={"lime": lime})
    assert _sanity(out).exit_code == 0
    again = "run xaibatch sanity again"
    assert not any(again in v for v in _verdict_items(out).values())

    _run(inp, out, ["gradcam", "lime"], checkpoint=tiny_ckpt, method_options={"lime": {**lime, "samples": 16}})
    verdicts = _verdict_items(out)
    assert set(verdicts) == {"gradcam", "lime"}
    assert again in verdicts["lime"] and again not in verdicts["gradcam"]

    assert _sanity(out).exit_code == 0  # checked again: current
    assert not any(again in v for v in _verdict_items(out).values())


def test_a_factory_whose_code_changed_since_the_run_is_refused(inp, tmp_path):
    # the weights are the run's (the factory's own seed) but its forward may not be: sanity would check another model
    net = tmp_path / "net.py"
    net.write_text(FACTORY)
    out = tmp_path / "o"
    _run(inp, out, ["gradcam"], model=f"{net}:build", checkpoint=_state_dict(tmp_path), image_size=32)
    net.write_text(FACTORY + "\n# an edit\n")
    res = _sanity(out)
    assert res.exit_code == 2, res.output
    assert "whose code is not the run's: its file changed since the run" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert _sanity(out, "--model", f"{net}:build").exit_code == 0  # given: the user's word for the code
