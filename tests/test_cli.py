"""`xaibatch run` end to end through click, on generated folders and tiny models."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from xaibatch.cli import cli

from helpers import invoke, make_checkpoint, manifest_rows, manifest_value, write_images


def test_run_labeled_folder_writes_maps_manifest_csv_and_report(tmp_path, labeled_dir, tiny_ckpt):
    out = tmp_path / "out"
    r = invoke("run", labeled_dir, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, "--batch-size", 4)
    assert r.exit_code == 0, r.output
    assert "10 images seen, 10 computed" in r.output
    for cls in ("FAKE", "REAL"):
        for i in range(5):
            m = np.load(out / "maps" / "gradcam" / cls / f"img_{i:03d}.npy")
            assert m.dtype == np.float32 and m.shape == (32, 32)
            assert 0.0 <= m.min() and m.max() <= 1.0
            assert (out / "maps" / "gradcam" / cls / f"img_{i:03d}.png").is_file()
    assert manifest_value(out, "SELECT COUNT(*) FROM images") == 10
    assert manifest_value(out, "SELECT COUNT(*) FROM maps WHERE method='gradcam'") == 10
    labels = dict(manifest_rows(out, "SELECT rel, label FROM images"))
    assert labels["FAKE/img_000.png"] == 0 and labels["REAL/img_000.png"] == 1
    cfg = manifest_value(out, "SELECT config_json FROM runs")
    assert '"layer": "layer' in cfg
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 10 and {r["label"] for r in rows} == {"FAKE", "REAL"}
    # the model that predicted each row: the run's predict hash, the last run's model (not an earlier one)
    assert {(r["model_hash"], r["earlier_model"]) for r in rows} == {
        (manifest_value(out, "SELECT predict_hash FROM runs"), "0")
    }
    html = (out / "index.html").read_text()
    assert "Misclassified" in html and "Correct" in html


def test_unlabeled_folder_groups_by_prediction(tmp_path, flat_dir, tiny_ckpt):
    out = tmp_path / "out"
    r = invoke("run", flat_dir, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    assert r.exit_code == 0, r.output
    assert manifest_value(out, "SELECT COUNT(*) FROM images WHERE label IS NULL") == 6
    html = (out / "index.html").read_text()
    assert "predicted" in html and "Misclassified" not in html


def test_target_label_explains_the_label(tmp_path, labeled_dir, tiny_ckpt):
    out = tmp_path / "out"
    assert (
        invoke(
            "run", labeled_dir, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, "--target", "label"
        ).exit_code
        == 0
    )
    assert all(t == l for t, l in manifest_rows(out, "SELECT target, label FROM images"))


def test_plain_state_dict_with_arch(tmp_path, labeled_dir):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    sd = tmp_path / "plain.pt"
    torch.save(model.state_dict(), sd)
    out = tmp_path / "out"
    r = invoke(
        "run",
        labeled_dir,
        "--arch",
        "test_resnet",
        "--checkpoint",
        sd,
        "--image-size",
        32,
        "--out",
        out,
        "--workers",
        0,
    )
    assert r.exit_code == 0, r.output
    assert len(list((out / "maps" / "gradcam").rglob("*.npy"))) == 10


def test_decodes_in_worker_processes(tmp_path, labeled_dir, tiny_ckpt):
    out = tmp_path / "out"
    r = invoke("run", labeled_dir, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 2, "--batch-size", 3)
    assert r.exit_code == 0, r.output
    assert len(list((out / "maps" / "gradcam").rglob("*.npy"))) == 10


def test_maps_have_the_original_size_and_deep_folders_work(tmp_path, tiny_ckpt):
    root = tmp_path / "in"
    d = root / "REAL" / "a" / "b"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(d / "wide.jpg")
    write_images(root / "FAKE", 1)
    out = tmp_path / "out"
    assert invoke("run", root, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0).exit_code == 0
    assert np.load(out / "maps/gradcam/REAL/a/b/wide.npy").shape == (40, 70)


def test_default_out_is_outputs_slash_parent_dash_folder_name(tmp_path, labeled_dir, tiny_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("run", labeled_dir, "--checkpoint", tiny_ckpt, "--workers", 0).exit_code == 0
    # outputs/<parent>-<name>: data/demo/test and data/CIFAKE/test must not share a folder
    assert (tmp_path / "outputs" / f"{labeled_dir.parent.name}-{labeled_dir.name}" / "index.html").is_file()


def test_help_lists_every_option_with_an_example():
    r = invoke("run", "--help")
    for opt in (
        "--method",
        "--arch",
        "--checkpoint",
        "--image-size",
        "--target-layer",
        "--target",
        "--batch-size",
        "--device",
        "--workers",
        "--out",
        "--quiet",
    ):
        assert opt in r.output
    assert r.output.count("e.g.") >= 10
    assert "Exit codes" in r.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "{missing}"], "does not exist"),
        (["run", "{empty}"], "holds no images"),
        (["run", "{labeled}", "--arch", "resnet_does_not_exist", "--checkpoint", "{plain}"], "unknown --arch"),
        (["run", "{labeled}", "--arch", "resnet18", "--checkpoint", "{plain}"], "does not fit --arch resnet18"),
        (["run", "{labeled}", "--device", "cuda:7"], "--device"),
        (["run", "{labeled}", "--device", "tpu"], "--device"),
        (["run", "{labeled}", "--checkpoint", "{garbage}"], "garbage.pt"),
        (["run", "{labeled}", "--checkpoint", "{three}"], "do not match"),
        (["run", "{labeled}", "--arch", "test_resnet"], "needs --checkpoint"),
        (["run", "{labeled}", "--method", "nope"], "Invalid value for '--method'"),
        (["run", "{labeled}", "--target-layer", "no.such.layer"], "has no layer"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, labeled_dir, tiny_ckpt, args, needle):
    torch.manual_seed(0)
    plain = tmp_path / "plain.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=2).state_dict(), plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    three = make_checkpoint(tmp_path / "three.pt", classes=["A", "B", "C"])
    (tmp_path / "empty").mkdir()
    subs = {
        "{missing}": tmp_path / "missing",
        "{empty}": tmp_path / "empty",
        "{labeled}": labeled_dir,
        "{plain}": plain,
        "{garbage}": garbage,
        "{three}": three,
    }
    full = [str(subs.get(a, a)) for a in args]
    if "--checkpoint" not in full and "--arch" not in full:
        full += ["--checkpoint", str(tiny_ckpt)]
    r = CliRunner().invoke(cli, full + ["--out", str(tmp_path / "o"), "--workers", "0"])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1


def test_the_clis_lime_defaults_engines_and_map_side_are_the_librarys():
    """The CLI shows what the library does when an option is left out (defined once, in defaults.py)."""
    from xaibatch.methods import lime
    from xaibatch.pipeline import RunOptions

    run = {p.name: p for p in cli.commands["run"].params}
    assert run["lime_samples"].default == str(lime.DEFAULTS["samples"])
    assert run["lime_samples_max"].default == lime.DEFAULTS["samples_max"]
    assert run["lime_segments"].default == lime.DEFAULTS["segments"]
    assert run["lime_hide"].default == lime.DEFAULTS["hide"]
    assert tuple(run["lime_hide"].type.choices) == lime.HIDE_MODES
    opts = RunOptions(input_dir=None, out_dir=None, methods=[])
    assert run["engine"].default == opts.engine
    assert run["max_map_side"].default == opts.max_map_side
    serve = {p.name: p for p in cli.commands["serve"].params}
    assert serve["lime_samples"].default == lime.DEFAULTS["samples"]


def test_the_clis_faithfulness_choices_and_defaults_are_the_librarys():
    from xaibatch.evaluation.faithfulness import BASELINES, FaithConfig

    run = {p.name: p for p in cli.commands["run"].params}
    assert tuple(run["faithfulness_baseline"].type.choices) == BASELINES
    assert run["faithfulness_baseline"].default == FaithConfig().baseline
    assert run["faithfulness_steps"].default == FaithConfig().steps


def test_serve_help_lists_only_the_exit_codes_serve_can_end_with():
    # serve has no lock, no unreadable images, no batches: run's table (4 "see --wait", 1, 5 "batches") misled
    text = " ".join(invoke("serve", "--help").output.split())
    assert "Exit codes: 0 stopped with Ctrl-C, SIGTERM or a closed terminal (SIGHUP) 2 usage error" in text
    assert "3 runtime error" in text
    assert "another run holds" not in text and "could not be read" not in text and "batches" not in text


def test_run_help_says_seed_seeds_every_random_method():
    # --seed also seeds captum's GradientShap and NoiseTunnel (prepare.py passes it to every takes_seed method)
    text = " ".join(invoke("run", "--help").output.split())
    assert "Seed of LIME and the other random methods" in text
