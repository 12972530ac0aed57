"""The timm ecosystem's own checkpoints load as a timm user expects: train.py's ``model_best.pth.tar`` (with its
``argparse.Namespace``), ``.safetensors`` files and Hub folders (``save_for_hf``), each giving the same predictions
as the same weights saved as a plain state_dict with ``--arch``; each broken form is one line."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_for_hf  # timm.models exports it from timm 1.0.16 only
from timm.utils import CheckpointSaver, ModelEmaV3

from helpers import invoke, quiet, run_opts, write_images
from xaibatch.errors import ModelError, UsageError
from xaibatch.model.loading import load_model
from xaibatch.pipeline import run

ARCH = "test_resnet"
MEAN = [0.4, 0.45, 0.5]  # not test_resnet's own (0.5): shows where a file's mean/std came from


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(ARCH, pretrained=False, num_classes=2).eval()


def _hub(model: torch.nn.Module, where: Path, **kw) -> Path:
    data = {"input_size": (3, 32, 32), "mean": MEAN, "std": (0.2, 0.2, 0.2)}
    # as the model's pretrained_cfg, which every timm saves (save_for_hf's data_config= is newer than pyproject's timm)
    model.pretrained_cfg = {**model.pretrained_cfg, **data}
    save_for_hf(model, where, model_config={"label_names": ["FAKE", "REAL"]}, **kw)
    return where


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The same weights as a plain state_dict, a train.py checkpoint (with EMA weights that differ), a
    .safetensors file and a Hub folder (both weights files)."""
    root = tmp_path_factory.mktemp("timm")
    model = _model()
    torch.save(model.state_dict(), root / "plain.pt")
    save_file(model.state_dict(), root / "model.safetensors")
    args = argparse.Namespace(model=ARCH, input_size=None, img_size=32, mean=MEAN, std=None, model_kwargs={})
    ema = ModelEmaV3(model)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1.0)  # not the model's weights: only state_dict is explained
    train = root / "output" / "train"
    train.mkdir(parents=True)
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, model_ema=ema,
                            checkpoint_dir=str(train), recovery_dir=str(train))  # fmt: skip
    saver.save_checkpoint(epoch=0, metric=50.0)
    _hub(model, root / "hub", safe_serialization="both")
    return {"root": root, "plain": root / "plain.pt", "best": train / "model_best.pth.tar",
            "st": root / "model.safetensors", "hub": root / "hub"}  # fmt: skip


def _probs(loaded, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.module(x).softmax(1)


X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_timm_train_checkpoint_loads_without_arch(files):
    """Before, torch.load(weights_only=True) refused the file's argparse.Namespace ("asks to import
    argparse.Namespace")."""
    ref = load_model(files["plain"], ARCH, 32)
    got = load_model(files["best"])
    assert got.arch == ARCH and got.class_names is None  # the classes: the run's folders, as for a state_dict
    assert got.input_size == 32  # args.img_size (test_resnet's own is 160)
    assert got.preprocess.mean == tuple(MEAN)  # args.mean
    assert got.preprocess.std == ref.preprocess.std  # args.std None: the model's own, as timm reads it
    assert torch.equal(_probs(got, X), _probs(ref, X))  # state_dict, not state_dict_ema
    assert load_model(files["best"], ARCH).checkpoint_sha256 == got.checkpoint_sha256  # --arch that agrees


def test_timm_train_checkpoint_refuses_another_arch_and_any_other_global(files, tmp_path):
    with pytest.raises(ModelError, match="was trained as test_resnet, not --arch resnet18"):
        load_model(files["best"], "resnet18")
    obj = torch.load(files["best"], weights_only=False)
    obj["args"].out = Path("somewhere")  # a global that is not argparse.Namespace: still refused
    torch.save(obj, tmp_path / "other.pth.tar")
    with pytest.raises(ModelError, match="asks to import pathlib"):
        load_model(tmp_path / "other.pth.tar")


def test_timm_train_checkpoint_without_args_needs_arch(files, tmp_path):
    obj = torch.load(files["best"], weights_only=False)
    del obj["args"]
    obj["arch"] = "resnet"  # what CheckpointSaver writes without args: the class's name
    torch.save(obj, tmp_path / "noargs.pth.tar")
    with pytest.raises(UsageError, match="saved without its args.*--arch NAME"):
        load_model(tmp_path / "noargs.pth.tar")
    got = load_model(tmp_path / "noargs.pth.tar", ARCH, 32)
    assert torch.equal(_probs(got, X), _probs(load_model(files["plain"], ARCH, 32), X))


def test_safetensors_with_arch_gives_the_state_dicts_predictions(files, tmp_path):
    ref = load_model(files["plain"], ARCH, 32)
    got = load_model(files["st"], ARCH, 32)
    assert torch.equal(_probs(got, X), _probs(ref, X))
    shutil.copy(files["st"], tmp_path / "weights.bin")  # another name: told by its header
    assert torch.equal(_probs(load_model(tmp_path / "weights.bin", ARCH, 32), X), _probs(ref, X))
    with pytest.raises(UsageError, match=r"\.safetensors file of plain weights: say which timm model"):
        load_model(files["st"])


@pytest.mark.parametrize("cut", [4, 100, -1000])
def test_a_damaged_safetensors_file_is_one_line(files, tmp_path, cut):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(files["st"].read_bytes()[:cut])
    with pytest.raises(ModelError, match="not a safetensors file xaibatch can read") as e:
        load_model(bad, ARCH)
    assert "\n" not in str(e.value)


def test_hub_folder_names_its_model_classes_and_preprocessing(files, tmp_path):
    ref = load_model(files["plain"], ARCH, 32)
    got = load_model(files["hub"])
    assert (got.arch, got.class_names, got.input_size) == (ARCH, ["FAKE", "REAL"], 32)
    assert got.preprocess.mean == pytest.approx(MEAN) and got.preprocess.std == pytest.approx([0.2] * 3)
    assert torch.equal(_probs(got, X), _probs(ref, X))
    bin_only = shutil.copytree(files["hub"], tmp_path / "bin")
    (bin_only / "model.safetensors").unlink()
    assert torch.equal(_probs(load_model(bin_only), X), _probs(ref, X))  # pytorch_model.bin when alone
    cfg = json.loads((bin_only / "config.json").read_text())
    cfg["label_names"] = {"1": "REAL", "0": "FAKE"}  # {id: name}
    (bin_only / "config.json").write_text(json.dumps(cfg))
    assert load_model(bin_only).class_names == ["FAKE", "REAL"]


def _folder(tmp_path: Path, config: dict | None, weights=("model.safetensors",)) -> Path:
    d = tmp_path / "f"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    for name in weights:
        save_file(_model().state_dict(), d / name)
    return d


@pytest.mark.parametrize(
    "config, weights, said",
    [
        ({"architectures": ["ViTForImageClassification"], "model_type": "vit"}, ("model.safetensors",),
         r"a Hugging Face transformers model \(ViTForImageClassification\), not a timm one.*--model FILE\.py:FACTORY"),
        ({"architecture": ARCH, "num_classes": 2}, (), "a timm Hub folder without its weights"),
        (None, ("model.safetensors",), "no config.json: give the weights file and its timm model"),
        (None, (), "a folder, not a checkpoint"),
        ({"architecture": ARCH, "pretrained_cfg": {"input_size": [3, 32, 48]}}, ("model.safetensors",),
         r"takes 32x48 \(height x width\) inputs; xaibatch explains square inputs: give --image-size N"),
    ],
)  # fmt: skip
def test_folders_that_are_not_timm_hub_folders_say_what_they_are(tmp_path, config, weights, said):
    d = _folder(tmp_path, config, weights)
    with pytest.raises(UsageError, match=said) as e:
        load_model(d)
    assert "\n" not in str(e.value)


def test_a_non_square_hub_folder_runs_at_the_size_given(tmp_path):
    d = _folder(tmp_path, {"architecture": ARCH, "pretrained_cfg": {"input_size": [3, 32, 48]}})
    assert load_model(d, image_size=40).input_size == 40


def test_the_cli_takes_each_form_and_sanity_rebuilds_it(files, tmp_path):
    """run, sanity and serve's --checkpoint took no folder (click: "is a directory"); a train.py checkpoint
    needs no --arch."""
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 2, seed=1)
    write_images(inp / "REAL", 2, seed=2)
    for name, extra in (("hub", ()), ("best", ()), ("st", ("--arch", ARCH, "--image-size", "32"))):
        out = tmp_path / f"out-{name}"
        res = invoke("run", inp, "--checkpoint", files[name], "--out", out, "--workers", "0", *extra)
        assert res.exit_code == 0, (name, res.output)
        assert ("also holds EMA weights (state_dict_ema)" in res.output) == (name == "best"), res.output
        assert ("the model names no classes" in res.output) == (name != "hub"), res.output  # folders assumed
        res = invoke("sanity", out, "--images", "2", "--device", "cpu")
        assert res.exit_code == 0, (name, res.output)
    transformers = _folder(tmp_path, {"architectures": ["ViTForImageClassification"]})
    for argv in (("run", inp, "--out", tmp_path / "o"), ("serve",), ("sanity", tmp_path / "out-hub")):
        res = invoke(*argv, "--checkpoint", transformers)
        assert res.exit_code == 2, (argv, res.output)
        assert "a Hugging Face transformers model" in res.output and "Traceback" not in res.output, argv


def test_a_hub_folder_rerun_recomputes_when_its_weights_or_model_config_change(files, tmp_path):
    from xaibatch.model.formats import checkpoint_digest

    hub = shutil.copytree(files["hub"], tmp_path / "hub")
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 2, seed=1)
    write_images(inp / "REAL", 2, seed=2)
    out = tmp_path / "out"
    first = run(run_opts(inp, out, hub), log=quiet)
    assert first.computed == 4
    cfg = json.loads((hub / "config.json").read_text())
    cfg["license"] = "mit"  # a field that changes no prediction
    (hub / "config.json").write_text(json.dumps(cfg))
    again = run(run_opts(inp, out, hub), log=quiet)
    assert again.computed == 0 and "model" not in again.timings  # the cached setup: the digest matched, no torch
    for field, value in (("mean", [0.1, 0.1, 0.1]), ("input_size", [3, 48, 48])):
        # before: the digest was the weights' alone, and a re-run reused maps of the old normalization or size
        cfg["pretrained_cfg"][field] = value
        (hub / "config.json").write_text(json.dumps(cfg))
        assert run(run_opts(inp, out, hub), log=quiet).computed == 4, field
    cfg["label_names"] = ["REAL", "FAKE"]
    (hub / "config.json").write_text(json.dumps(cfg))
    assert run(run_opts(inp, out, hub), log=quiet).computed == 4
    before = checkpoint_digest(hub)
    save_file(_model(seed=1).state_dict(), hub / "model.safetensors")
    assert checkpoint_digest(hub) != before
    assert run(run_opts(inp, out, hub), log=quiet).computed == 4


def test_explain_takes_a_hub_folder_and_a_train_checkpoint(files, tmp_path):
    """explain()'s checkpoint path: the Hub folder names its classes; a .safetensors file says what to pass."""
    import xaibatch

    paths = write_images(tmp_path / "imgs", 2, seed=4)
    hub = xaibatch.explain(files["hub"], paths, device="cpu")
    best = xaibatch.explain(files["best"], paths, device="cpu")
    assert hub.classes == ("FAKE", "REAL") and best.classes is None
    module = load_model(files["plain"], ARCH, 32).module
    for got, mean, std in ((hub, MEAN, [0.2] * 3), (best, MEAN, [0.5] * 3)):  # each file's own normalization
        assert xaibatch.explain(module, paths, device="cpu", input_size=32, mean=mean, std=std).probs.allclose(
            got.probs, atol=1e-6
        )
    with pytest.raises(UsageError, match="explain\\(\\) loads checkpoints that name their model"):
        xaibatch.explain(files["st"], paths, device="cpu")


FACTORY = """
import timm
def build():
    return timm.create_model("test_resnet", pretrained=False, num_classes=2)
"""


def test_a_factory_loads_a_safetensors_file_and_refuses_a_folder(files, tmp_path):
    from xaibatch.model.user import load_user_model

    (tmp_path / "net.py").write_text(FACTORY)
    spec = f"{tmp_path / 'net.py'}:build"
    got = load_user_model(spec, files["st"], 32, None)
    assert torch.equal(_probs(got, X), _probs(load_model(files["plain"], ARCH, 32), X))
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 1, seed=1)
    res = invoke("run", inp, "--model", spec, "--checkpoint", files["hub"], "--out", tmp_path / "o")
    assert res.exit_code == 2 and "a folder; --model" in res.output and "loads a weights file" in res.output


def test_a_plain_state_dict_builds_its_model_once(tmp_path, monkeypatch):
    """The classes are counted from the weights with timm's registry: the model is built once, not a 2-class probe
    first and again at the file's count (a resnet50's load: 0.47 s of CPU, now 0.32 s)."""
    torch.manual_seed(0)
    net = timm.create_model(ARCH, pretrained=False, num_classes=3).eval()
    torch.save(net.state_dict(), tmp_path / "three.pt")
    built = []
    create_model = timm.create_model

    def counted(*a, **kw):  # the models built (a resnet refuses img_size before building anything)
        built.append(create_model(*a, **kw))
        return built[-1]

    monkeypatch.setattr(timm, "create_model", counted)
    got = load_model(tmp_path / "three.pt", ARCH, 32)
    assert len(built) == 1 and got.num_classes == 3
    assert torch.equal(_probs(got, X), net(X).softmax(1).detach())


def test_an_arch_with_a_tag_is_the_same_model_and_model_args_need_no_in_chans(files, tmp_path):
    obj = torch.load(files["best"], weights_only=False)
    obj["args"].model = obj["arch"] = f"{ARCH}.r160_in1k"  # train.py --model NAME.TAG
    torch.save(obj, tmp_path / "tagged.pth.tar")
    assert load_model(tmp_path / "tagged.pth.tar", ARCH).arch == ARCH  # was "trained as ..., not --arch ..."
    hub = shutil.copytree(files["hub"], tmp_path / "hub")
    cfg = json.loads((hub / "config.json").read_text())
    cfg.setdefault("model_args", {})["in_chans"] = (
        None  # was "a model of None input channels" (older timm: no model_args)
    )
    (hub / "config.json").write_text(json.dumps(cfg))
    assert load_model(hub).class_names == ["FAKE", "REAL"]


def test_a_one_logit_hub_folder_takes_two_label_names(tmp_path):
    """A one-logit head is read as two classes (heads.adapt): before, its two label_names were refused ("name 2
    classes, its weights have 1 outputs"), and one name made the run refuse the folder's two classes."""
    torch.manual_seed(0)
    one = timm.create_model(ARCH, pretrained=False, num_classes=1).eval()
    save_for_hf(one, tmp_path / "two", model_config={"label_names": ["FAKE", "REAL"]})
    got = load_model(tmp_path / "two")
    assert (got.num_classes, got.class_names) == (1, ["FAKE", "REAL"])
    save_for_hf(one, tmp_path / "one", model_config={"label_names": ["REAL"]})
    assert load_model(tmp_path / "one").class_names is None  # the run's own rule names them
    write_images(tmp_path / "in" / "FAKE", 2, seed=1)
    write_images(tmp_path / "in" / "REAL", 2, seed=2)
    for folder in ("two", "one"):
        res = run(run_opts(tmp_path / "in", tmp_path / f"out-{folder}", tmp_path / folder, image_size=32), log=quiet)
        assert (res.counts.computed, res.counts.failed) == (4, 0)


def test_a_hub_folder_without_a_classifier_says_so(tmp_path):
    """Before: "does not fit its architecture test_resnet: 2 missing key(s), e.g. fc.weight"."""
    save_for_hf(timm.create_model(ARCH, pretrained=False, num_classes=0), tmp_path / "features")
    with pytest.raises(ModelError, match=r"without a classifier \(num_classes 0"):
        load_model(tmp_path / "features")
    # timm <= 1.0.28 (pyproject allows 1.0.16) writes no model_args, only the top-level num_classes 0
    config = tmp_path / "features" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "model_args"}))
    with pytest.raises(ModelError, match=r"without a classifier \(num_classes 0"):
        load_model(tmp_path / "features")


def test_a_train_checkpoint_of_an_hf_hub_model_asks_for_its_arch(files, tmp_path):
    """train.py --model hf-hub:timm/NAME writes that as arch; before: "names the architecture 'hf-hub:…', which
    timm does not know; see timm.list_models()", and no word that --arch loads it."""
    obj = torch.load(files["best"], weights_only=False)
    obj["arch"] = obj["args"].model = f"hf-hub:timm/{ARCH}.r160_in1k"
    torch.save(obj, tmp_path / "hub.pth.tar")
    with pytest.raises(UsageError, match=r"trained from hf-hub:timm/test_resnet.r160_in1k.*--arch NAME"):
        load_model(tmp_path / "hub.pth.tar")
    got = load_model(tmp_path / "hub.pth.tar", ARCH)
    assert torch.equal(_probs(got, X), _probs(load_model(files["best"]), X))


@pytest.mark.parametrize(
    "config, said",
    [
        (None, r"no config.json: build its timm model, load_state_dict\(\) \S+model.safetensors and pass the module"),
        ({"architectures": ["ViTForImageClassification"]}, r"not a timm one.*load it yourself \(transformers\)"),
    ],
)
def test_explain_on_a_folder_it_cannot_build_names_no_cli_option(tmp_path, config, said):
    """Before: "e.g. --checkpoint F --arch NAME" and "pass --model FILE.py:FACTORY", options explain() has not."""
    import xaibatch

    with pytest.raises(UsageError, match=said) as e:
        xaibatch.explain(_folder(tmp_path, config), torch.rand(1, 3, 32, 32), device="cpu")
    assert "--" not in str(e.value)


def test_an_arch_with_an_unknown_tag_is_one_line(files):
    """The classifier's size is read from timm's registry before the model is built; timm raised "Invalid
    pretrained tag" there, which the CLI printed as "internal error: RuntimeError"."""
    with pytest.raises(ModelError, match=r"cannot build test_resnet\.nosuchtag .*Invalid pretrained tag"):
        load_model(files["plain"], f"{ARCH}.nosuchtag", 32)


def test_the_ema_notes_recipe_explains_the_ema_weights_as_trained(files, tmp_path):
    """The note said "save state_dict_ema alone and pass that file with --arch test_resnet": that file runs at the
    model's own 160 px and mean 0.5, not the 32 px and mean the training's args give. Its recipe now keeps args."""
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 2, seed=1)
    write_images(inp / "REAL", 2, seed=2)
    res = invoke("run", inp, "--checkpoint", files["best"], "--out", tmp_path / "out", "--workers", "0")
    note = next(line for line in res.output.splitlines() if "EMA weights" in line)
    assert "state_dict_ema as its state_dict" in note and "--arch" not in note, note
    ck = torch.load(files["best"], weights_only=False)
    ck["state_dict"] = ck["state_dict_ema"]
    torch.save(ck, tmp_path / "ema.pth.tar")
    ema, trained = load_model(tmp_path / "ema.pth.tar"), load_model(files["best"])
    assert (ema.input_size, ema.preprocess) == (trained.input_size, trained.preprocess)


def test_label_names_of_another_length_say_where_to_correct_them(tmp_path):
    """--classes cannot replace a checkpoint's names ("differ from the checkpoint's"), so the line alone left the
    user no way on; it now names config.json, and without label_names the folder loads."""
    save_for_hf(_model(), tmp_path / "hub", model_config={"label_names": ["a", "b", "c"]})
    with pytest.raises(ModelError, match=r"name 3 classes, its weights have 2 outputs; correct label_names in \S+"):
        load_model(tmp_path / "hub")
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    del cfg["label_names"]
    (tmp_path / "hub" / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path / "hub").class_names is None


def test_a_hub_vit_built_at_another_size_than_the_one_given_names_its_config(tmp_path):
    # "vit_tiny_patch16_224 was built for 32x32 inputs; --image-size 64 does not fit it": where 32 came from was
    # for the user to find (config.json's model_args, which the folder's model is built with)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32)
    d = tmp_path / "hub"
    save_for_hf(model, d, model_args={"img_size": 32}, safe_serialization=True)
    assert load_model(d).input_size == 32
    with pytest.raises(ModelError) as e:
        load_model(d, image_size=64)
    said = str(e.value)
    assert f"{d / 'config.json'}'s model_args build vit_tiny_patch16_224 for 32x32 inputs" in said, said
    assert "--image-size 64 does not fit it: leave --image-size out" in said and "\n" not in said
    assert load_model(d, image_size=32).input_size == 32


def test_a_hub_folders_model_args_size_goes_before_its_pretrained_cfgs(tmp_path):
    # an older timm's save_for_hf (1.0.16, within pyproject's floor) wrote model_args' img_size 32 but kept
    # pretrained_cfg's input_size at 224: the folder was read as a 224 px model, which its ViT (built at 32) refused
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32)
    d = tmp_path / "hub"
    save_for_hf(model, d, model_args={"img_size": 32}, safe_serialization=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg["pretrained_cfg"]["input_size"] = [3, 224, 224]
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_model(d).input_size == 32


def test_explain_says_to_leave_input_size_out_for_a_hub_vit_built_at_another_size(tmp_path):
    # explain() words the loader's flags as its keywords: "leave --image-size out" became "leave input_size=out"
    import numpy as np

    import xaibatch

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32)
    d = tmp_path / "hub"
    save_for_hf(model, d, model_args={"img_size": 32}, safe_serialization=True)
    with pytest.raises(ModelError) as e:
        xaibatch.explain(str(d), [np.zeros((40, 40, 3), np.uint8)], methods=["gradcam"], input_size=64)
    assert str(e.value).endswith("input_size=64 does not fit it: leave input_size out"), str(e.value)
