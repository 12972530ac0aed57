"""xaibatch.explain: the maps of a run, for images in memory (a notebook)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import xaibatch
from helpers import write_images
from xaibatch.errors import UsageError
from xaibatch.manifest import Manifest
from xaibatch.model.loading import load_model


def test_explain_gives_the_maps_a_run_writes(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 5)
    xaibatch.run(
        xaibatch.RunOptions(
            input_dir=inp,
            out_dir=out,
            methods=["gradcam", "guided-gradcam"],
            checkpoint=tiny_ckpt,
            workers=0,
            handle_signals=False,
        ),
        log=lambda s: None,
    )
    m = Manifest(out / "xaibatch.sqlite")
    try:
        rows, maps = m.images(), m.maps()
    finally:
        m.close()
    got = xaibatch.explain(tiny_ckpt, paths, methods=["gradcam", "guided-gradcam"], device="cpu")
    assert got.maps["gradcam"].shape == (5, 32, 32) and got.layer is not None
    for i, p in enumerate(paths):
        assert int(got.preds[i]) == rows[p.name].pred
        assert np.allclose(got.probs[i].numpy(), rows[p.name].probs, atol=1e-5)
        for method in ("gradcam", "guided-gradcam"):
            saved = np.load(out / maps[(p.name, method)].npy)  # 32 px images: the map at its own size
            assert np.allclose(got.maps[method][i].numpy(), saved, atol=1e-6), method


def test_random_maps_are_the_images_own_whatever_its_name_place_or_caller(tmp_path, tiny_ckpt):
    # LIME and captum's GradientShap draw per image: a run seeded each image by its path and explain() by its
    # position in ``images``, so the same picture got other maps under another name, at another place in the
    # list, or in a notebook instead of a run. Now the seed comes from the pixels the model gets.
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 3)
    (inp / "zz copy.png").write_bytes(paths[0].read_bytes())  # the same bytes under another name, last in order
    methods = ["lime", "captum:GradientShap"]
    opts = {"lime": {"samples": 40, "segments": 8}, "captum:GradientShap": {"n_samples": 3, "stdevs": 0.1}}
    xaibatch.run(
        xaibatch.RunOptions(
            input_dir=inp, out_dir=out, methods=methods, method_options=opts, checkpoint=tiny_ckpt, workers=0,
            batch_size=2, handle_signals=False,
        ),
        log=lambda s: None,
    )  # fmt: skip
    m = Manifest(out / "xaibatch.sqlite")
    try:
        saved = m.maps()
    finally:
        m.close()
    got = xaibatch.explain(tiny_ckpt, [paths[2], paths[0]], methods, method_options=opts, device="cpu")
    for method in methods:
        first = np.load(out / saved[(paths[0].name, method)].npy)
        assert np.array_equal(np.load(out / saved[("zz copy.png", method)].npy), first), method
        assert np.allclose(got.map(1, method, size="given"), first, atol=1e-6), method
        assert np.allclose(
            got.map(0, method, size="given"), np.load(out / saved[(paths[2].name, method)].npy), atol=1e-6
        )


def test_run_takes_one_method_by_name_as_explain_does(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)
    opts = xaibatch.RunOptions(
        input_dir=inp, out_dir=tmp_path / "out", methods="gradcam", checkpoint=tiny_ckpt, handle_signals=False
    )  # was "unknown method 'g'": the string's letters were read as the method names
    result = xaibatch.run(opts, log=lambda s: None)
    m = Manifest(tmp_path / "out" / "xaibatch.sqlite")
    try:
        assert opts.methods == ["gradcam"] and result.computed == 2
        assert {method for _, method in m.maps()} == {"gradcam"}
    finally:
        m.close()


def test_every_image_form_gives_the_same_maps(tmp_path, tiny_ckpt):
    paths = write_images(tmp_path / "in", 3)
    loaded = load_model(tiny_ckpt)
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    forms = {
        "paths": paths,
        "pil": [Image.open(p) for p in paths],
        "numpy": arrays,
        "uint8 tensor": torch.from_numpy(arrays).permute(0, 3, 1, 2),
        "float tensor": torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255,
    }
    ref = None
    for name, images in forms.items():
        r = xaibatch.explain(
            loaded.module,
            images,
            ["gradcam"],
            mean=loaded.preprocess.mean,
            std=loaded.preprocess.std,
            device="cpu",
            batch_size=2,
            input_size=32,  # the images' own: no form is resized (timm's cfg of the bare module says 160)
        )
        if ref is None:
            ref = r.maps["gradcam"]
        assert torch.allclose(r.maps["gradcam"], ref, atol=1e-6), name
    # Resized, every form is resized as a run's loader resizes its files (PIL's bilinear): tensors and arrays went
    # through torch's antialiased bilinear, a grey level off, and their maps moved by up to 0.013.
    resized = [xaibatch.explain(loaded.module, images, ["gradcam"], input_size=24) for images in forms.values()]
    for name, r in zip(forms, resized, strict=True):
        assert torch.equal(r.images, resized[0].images), name
        assert torch.equal(r.maps["gradcam"], resized[0].maps["gradcam"]), name


def test_targets_choose_the_explained_class_and_lime_is_seeded(tmp_path, tiny_ckpt):
    paths = write_images(tmp_path / "in", 4)
    pred = xaibatch.explain(tiny_ckpt, paths, ["gradcam"], device="cpu").preds
    other = (1 - pred).tolist()
    r = xaibatch.explain(tiny_ckpt, paths, ["gradcam"], target=other, device="cpu")
    assert r.targets.tolist() == other
    assert not torch.allclose(r.maps["gradcam"], xaibatch.explain(tiny_ckpt, paths, ["gradcam"]).maps["gradcam"])
    opts = {"lime": {"samples": 40, "segments": 8}}
    a = xaibatch.explain(tiny_ckpt, paths, ["lime"], seed=3, method_options=opts, batch_size=4)
    b = xaibatch.explain(tiny_ckpt, paths, ["lime"], seed=3, method_options=opts, batch_size=1)
    assert torch.equal(a.maps["lime"], b.maps["lime"])  # the same maps whatever the batching
    assert a.info["lime"][0]["segments"] >= 2


def test_bad_input_is_one_clear_error(tiny_ckpt):
    with pytest.raises(UsageError, match="targets for"):
        xaibatch.explain(tiny_ckpt, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), target=[0])
    with pytest.raises(UsageError, match=r"\(N, 3, H, W\)"):
        xaibatch.explain(tiny_ckpt, torch.zeros(2, 32, 32))
    with pytest.raises(UsageError, match="unknown|did you mean|choose"):
        xaibatch.explain(tiny_ckpt, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["gradcamm"])


# --- A notebook user's view: the model handed back as it came, a result to look at and to keep. ----------------


class TinyNet(torch.nn.Module):
    """Conv, BatchNorm, ReLU, Dropout, a linear head: every flag ``train()``/``eval()`` flips matters here."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Sequential(
            torch.nn.Dropout(0.5), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)
        )

    def forward(self, x):
        return self.head(self.features(x))


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _state(net: torch.nn.Module):
    """What explain() must hand back unchanged: training flags, the .grad objects and values, the hooks."""
    flags = [(m.training, "forward" in vars(m)) for m in net.modules()]  # guided backprop's patch is gone too
    grads = [(p.grad, None if p.grad is None else p.grad.clone()) for p in net.parameters()]
    bn = net.features[1]
    hooks = {
        (i, d): set(getattr(m, d))
        for i, m in enumerate(net.modules())
        for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    }
    return flags, grads, hooks, (bn.running_mean.clone(), int(bn.num_batches_tracked))


def _assert_same(net: torch.nn.Module, before) -> None:
    flags, grads, hooks, (mean, tracked) = before
    now_flags, now_grads, now_hooks, (now_mean, now_tracked) = _state(net)
    assert now_flags == flags
    for (g0, v0), (g1, _v1) in zip(grads, now_grads, strict=True):
        assert g1 is g0  # the same tensor object, with the same values
        assert (v0 is None and g1 is None) or torch.equal(g1, v0)
    assert now_hooks == hooks  # the user's own hooks stay, none of explain()'s
    assert torch.equal(now_mean, mean) and now_tracked == tracked  # BatchNorm statistics not updated either


def _training_net() -> torch.nn.Module:
    """In training mode (but its BatchNorm frozen), half its parameters with a gradient, as mid-training."""
    net = TinyNet().train()
    net.features[1].eval()
    for k, p in enumerate(net.parameters()):
        if k % 2 == 0:
            p.grad = torch.full_like(p, 0.25 + k)
    return net


def test_the_users_module_comes_back_as_it_went():
    net = _training_net()
    seen = []
    net.head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))  # the user's own hook
    before = _state(net)
    assert sum(map(len, before[2].values())) == 1
    # cam:gradcam++ runs pytorch-grad-cam's backward() and then the model's zero_grad(): neither may reach the user.
    r = xaibatch.explain(
        net, _images(), ["gradcam", "guided-gradcam", "cam:gradcam++"], mean=(0.5,) * 3, std=(0.5,) * 3
    )
    _assert_same(net, before)
    assert net.training and not net.features[1].training
    # The maps are those of the model in evaluation mode, as a copy in eval mode gives them.
    import copy

    ref = xaibatch.explain(copy.deepcopy(net).eval(), _images(), ["gradcam"], mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.allclose(r.maps["gradcam"], ref.maps["gradcam"], atol=1e-6)


def test_a_method_that_raises_leaves_the_module_as_it_was(monkeypatch):
    from xaibatch.methods.gradcam import GradCAM

    def explode(self, batch):
        self.ctx.model.register_forward_hook(lambda *a: None)  # a hook a failing library would leave behind
        for p in self.ctx.model.parameters():
            p.grad = torch.ones_like(p)
        raise RuntimeError("boom")

    monkeypatch.setattr(GradCAM, "explain", explode)
    net = _training_net()
    before = _state(net)
    with pytest.raises(RuntimeError, match="boom"):
        xaibatch.explain(net, _images(), ["gradcam"])
    _assert_same(net, before)


def test_what_cannot_work_is_refused_in_one_line(monkeypatch):
    net = TinyNet()
    with torch.inference_mode(), pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(), ["gradcam"])
    assert str(e.value) == (
        "explain() cannot run inside torch.inference_mode(): its methods need gradients; call it outside"
    )
    with torch.inference_mode():
        made_there = TinyNet()
    with pytest.raises(UsageError) as e:
        xaibatch.explain(made_there, _images())
    assert str(e.value) == (
        "the model's weights were made inside torch.inference_mode(), which autograd cannot use: "
        "build or load the model outside it"
    )
    with torch.no_grad():  # no_grad is fine: explain() turns gradients on for its own work only
        # ... and a method's name alone is that one method
        assert xaibatch.explain(net, _images(1), "gradcam").maps["gradcam"].shape == (1, 32, 32)
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, torch.zeros(0, 3, 32, 32, dtype=torch.uint8))
    assert str(e.value) == "no images to explain"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(object(), _images())
    assert str(e.value) == "model must be a torch.nn.Module or a checkpoint path, not object"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(), [])
    assert str(e.value) == "choose at least one method"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(2), target="label")
    assert str(e.value) == "target='label' needs labels=[the true class of each image]"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(2), target=[0, 3])
    assert str(e.value) == "class index 3 out of range: the model has 3 classes (0..2)"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(2), target="pred,label", labels=[-1, 0])
    assert str(e.value) == "class index -1 out of range: the model has 3 classes (0..2)"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(2), classes=["a", "b"])
    assert str(e.value) == "2 class names for a model with 3 classes"
    # A module is never moved: another device than its own is refused, naming both (no GPU here: pretend one).
    import xaibatch.model.loading as loading

    monkeypatch.setattr(loading, "resolve_device", lambda spec: torch.device("cuda", 0))
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(), device="cuda")
    assert str(e.value) == (
        "the model is on cpu, not cuda:0: explain() never moves your model; "
        "call model.to('cuda:0') first, or leave device='auto'"
    )


def test_a_half_precision_module_is_refused_in_one_line():
    # float16 models are common on GPUs; the methods feed float32 input, so one failed in its first convolution
    # with torch's "Input type (torch.FloatTensor) and weight type (torch.HalfTensor) should be the same ..."
    net = TinyNet().eval().half()
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(), ["gradcam"])
    assert str(e.value) == (
        "the model's parameters are torch.float16: explain() runs float32 models and never converts yours; "
        "pass model.float()"
    )
    assert all(p.dtype == torch.float16 for p in net.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (and XAIBATCH_TEST_GPU=1)")
def test_a_module_on_the_gpu_is_explained_there_and_stays(monkeypatch):
    # cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later: the 1e-4 below compares float32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    net = _training_net().cuda()
    before = _state(net)
    r = xaibatch.explain(net, _images(), ["gradcam", "lime"], method_options={"lime": {"samples": 40}})
    _assert_same(net, before)
    assert all(p.is_cuda for p in net.parameters()) and r.device == "cuda:0" and not r.maps["gradcam"].is_cuda
    cpu = xaibatch.explain(_training_net(), _images(), ["gradcam"])
    assert torch.allclose(r.maps["gradcam"], cpu.maps["gradcam"], atol=1e-4)
    assert r.preds.tolist() == cpu.preds.tolist()


def test_the_result_is_frozen_and_carries_its_context(tiny_ckpt):
    import dataclasses
    import pickle

    lime = {"lime": {"samples": 24, "segments": 6}}
    r = xaibatch.explain(tiny_ckpt, _images(2, size=40), ["gradcam", "lime"], method_options=lime, seed=5)
    assert type(r) is xaibatch.Explanations
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.maps = {}
    with pytest.raises(TypeError):
        r.maps["gradcam"] = None
    assert r.classes == ("FAKE", "REAL") and r.class_name(1) == "REAL"  # the checkpoint's class names
    assert r.target == "pred" and torch.equal(r.targets, r.preds) and r.labels is None
    assert r.methods["lime"].signed and not r.methods["gradcam"].signed
    assert r.methods["lime"].settings["samples"] == 24 and r.methods["lime"].settings["seed"] == 5
    assert r.methods["gradcam"].title == "Grad-CAM" and r.layer is not None
    assert r.preprocess.record()["input_size"] == 32 and r.given_sizes == ((40, 40), (40, 40))
    assert r.images.shape == (2, 3, 32, 32) and r.images.dtype == torch.uint8
    assert r.versions["torch"] == torch.__version__ and r.versions["xaibatch"] == xaibatch.__version__
    assert r.model == str(tiny_ckpt) and r.device == "cpu" and r.seed == 5
    assert repr(r).startswith("Explanations(2 images, methods=['gradcam', 'lime']")
    again = pickle.loads(pickle.dumps(r))  # kept with pickle / joblib as it is
    assert torch.equal(again.maps["lime"], r.maps["lime"]) and again.methods == r.methods


def test_overlays_and_true_class_maps_are_a_runs(tmp_path, tiny_ckpt):
    """``target="pred,label"`` gives a run's ``--target pred,label`` maps; ``overlay()`` its overlay PNGs."""
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp / "FAKE", 3, seed=1) + write_images(inp / "REAL", 3, seed=2)
    labels = [0, 0, 0, 1, 1, 1]
    opts = xaibatch.RunOptions(
        input_dir=inp,
        out_dir=out,
        methods=["gradcam"],
        checkpoint=tiny_ckpt,
        target="pred,label",
        workers=0,
        handle_signals=False,
    )
    xaibatch.run(opts, log=lambda s: None)
    m = Manifest(out / "xaibatch.sqlite")
    try:
        maps = m.maps()
    finally:
        m.close()
    r = xaibatch.explain(tiny_ckpt, paths, ["gradcam"], target="pred,label", labels=labels, device="cpu")
    rels = [p.relative_to(inp).as_posix() for p in paths]
    wrong = [i for i, rel in enumerate(rels) if (rel, "gradcam@label") in maps]
    assert wrong and r.misclassified == [i in wrong for i in range(6)]
    for i, rel in enumerate(rels):
        for key in ("gradcam", "gradcam@label"):
            if key == "gradcam@label" and i not in wrong:
                assert torch.isnan(r.maps[key][i]).all()
                with pytest.raises(UsageError, match="only misclassified images get one"):
                    r.overlay(i, key)
                continue
            row = maps[(rel, key)]
            assert np.allclose(r.maps[key][i].numpy(), np.load(out / row.npy), atol=1e-6), (rel, key)
            drawn = np.asarray(r.overlay(i, key), dtype=np.int16)
            saved = np.asarray(Image.open(out / row.png).convert("RGB"), dtype=np.int16)
            assert drawn.shape == saved.shape and np.abs(drawn - saved).max() <= 1, (rel, key)
    assert r.heatmap(0, "gradcam").size == (32, 32) and r.heatmap(0).mode == "RGB"
    with pytest.raises(UsageError, match="out of range"):
        r.overlay(6, "gradcam")
    assert r.overlay(torch.tensor(5), "gradcam").size == r.overlay(-1, "gradcam").size == (32, 32)
    with pytest.raises(UsageError, match="an image index is an integer, not str"):
        r.overlay("0", "gradcam")
    with pytest.raises(UsageError, match="no 'lime' maps"):
        r.heatmap(0, "lime")


def test_the_notebook_grid_is_self_contained_and_escaped():
    net = TinyNet()
    names = ["<script>alert(1)</script>", "b & c", 'say "hi"']
    r = xaibatch.explain(net, _images(10, seed=2), ["gradcam", "guided-gradcam"], classes=names)
    html = r._repr_html_()
    assert "<script" not in html and "&lt;script&gt;" in html
    srcs = [s.split('"', 1)[0] for s in html.split('src="')[1:]]
    assert len(srcs) == 8 * 3 and all(s.startswith("data:image/png;base64,") for s in srcs)  # 8 rows shown
    assert "2 more" in html and "Guided Grad-CAM" in html
    import base64
    import io

    first = Image.open(io.BytesIO(base64.b64decode(srcs[1].split(",", 1)[1])))  # row 0's Grad-CAM overlay
    assert np.array_equal(np.asarray(first), np.asarray(r.overlay(0, "gradcam")))  # 32 px: shown as it is
    assert "http" not in html.replace("data:", "")


def _listing(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_save_writes_one_bundle_per_image_and_the_manifest_last(tmp_path, monkeypatch):
    import json

    import xaibatch.bundle as bundle

    net = TinyNet()
    r = xaibatch.explain(net, _images(2), ["gradcam", "cam:gradcam++"], target="pred,label", labels=[0, 2])
    order: list[str] = []
    write = bundle.atomic_write_bytes
    monkeypatch.setattr(bundle, "atomic_write_bytes", lambda p, d: (order.append(p.name), write(p, d)))
    folder = r.save(tmp_path / "keep", context={"notebook": "audit.ipynb"})
    assert order[-1] == "manifest.json"
    assert _listing(tmp_path) - {"keep"} == {"keep/" + p for p in _listing(folder)}  # nothing beside it
    man = json.loads((folder / "manifest.json").read_text())
    assert (man["schema"], man["schema_version"], man["context"]) == (
        "xaibatch.explanations",
        1,
        {"notebook": "audit.ipynb"},
    )
    assert man["versions"]["torch"] == torch.__version__ and man["versions"]["grad-cam"]
    assert man["methods"]["cam:gradcam++"]["settings"]["library"].startswith("pytorch-grad-cam")
    assert man["preprocess"]["input_size"] == 32 and man["target"] == "pred,label"
    for i, im in enumerate(man["images"]):
        assert (im["pred"], im["label"]) == (int(r.preds[i]), [0, 2][i])
        assert np.allclose(im["probs"], r.probs[i].numpy(), atol=1e-6)
        assert ("gradcam@label" in im["maps"]) == r.misclassified[i]
        for key, files in im["maps"].items():
            assert np.array_equal(np.load(folder / files["npy"]), r.maps[key][i].numpy())
            assert np.array_equal(np.asarray(Image.open(folder / files["overlay"])), np.asarray(r.overlay(i, key)))
            assert Image.open(folder / files["heatmap"]).size == (32, 32)
    assert (folder / "images/0000/cam-gradcampp.npy").is_file()  # a portable name: no ':' or '+'
    assert np.array_equal(np.asarray(Image.open(folder / "images/0001/input.png")), r.picture(1))
    # load() gives it all back, bit for bit
    back = xaibatch.Explanations.load(folder)
    assert list(back.maps) == list(r.maps) and back.misclassified == r.misclassified
    for key in r.maps:
        assert torch.equal(back.maps[key].nan_to_num(-7), r.maps[key].nan_to_num(-7)), key
        assert list(back.info[key] or []) == list(r.info[key] or []), key
    for name in ("probs", "preds", "targets", "labels", "images"):
        assert torch.equal(getattr(back, name), getattr(r, name)), name
    same = ("layer", "classes", "target", "preprocess", "given_sizes", "seed", "device", "model", "versions")
    assert all(getattr(back, name) == getattr(r, name) for name in same)
    assert {k: (m.title, m.signed) for k, m in back.methods.items()} == {
        k: (m.title, m.signed) for k, m in r.methods.items()
    }
    assert np.array_equal(np.asarray(back.overlay(1, "cam:gradcam++")), np.asarray(r.overlay(1, "cam:gradcam++")))
    man["images"][0]["maps"]["gradcam"]["npy"] = "../../elsewhere.npy"  # a hostile manifest reads nothing outside
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UsageError, match="outside the folder; refusing to read it"):
        xaibatch.Explanations.load(folder)
    man["schema_version"] = 2
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UsageError, match=r"saved by a newer xaibatch \(schema 2\); this one reads 1"):
        xaibatch.Explanations.load(folder)
    with pytest.raises(UsageError, match="is not a folder explain"):
        xaibatch.Explanations.load(tmp_path)


def test_save_is_atomic_and_never_overwrites_by_surprise(tmp_path, monkeypatch):
    import xaibatch.bundle as bundle

    r = xaibatch.explain(TinyNet(), _images(3), ["gradcam"])
    real, calls = bundle.save_npy, []

    def fail_third(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, array)

    monkeypatch.setattr(bundle, "save_npy", fail_third)
    with pytest.raises(OSError, match="No space"):
        r.save(tmp_path / "keep")
    assert _listing(tmp_path) == set()  # no half-written folder, no temporary one
    monkeypatch.setattr(bundle, "save_npy", real)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError) as e:
        r.save(tmp_path / "mine")
    assert str(e.value) == f"{tmp_path / 'mine'} is not empty; pass overwrite=True to replace an earlier save()"
    with pytest.raises(UsageError) as e:
        r.save(tmp_path / "mine", overwrite=True)
    assert str(e.value) == (
        f"{tmp_path / 'mine'} is not an earlier save() (no xaibatch manifest.json); refusing to replace it"
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    first = r.save(tmp_path / "keep")
    (first / "images" / "0000" / "stale.npy").write_bytes(b"x")
    r2 = xaibatch.explain(TinyNet(), _images(1), ["gradcam"])
    r2.save(first, overwrite=True)  # an earlier save() is replaced as a whole
    assert not (first / "images" / "0001").exists() and not (first / "images" / "0000" / "stale.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "mine"]  # no temporary or old folder left
    (tmp_path / "empty").mkdir()
    assert (r.save(tmp_path / "empty") / "manifest.json").is_file()  # an empty folder is fine
    with pytest.raises(UsageError, match="must be JSON data"):
        r.save(tmp_path / "other", context={"x": object()})
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "empty").stat().st_mode == (tmp_path / "plain").stat().st_mode  # the umask's, not 0700
    monkeypatch.chdir(tmp_path / "plain")
    with pytest.raises(UsageError) as e:
        r.save(".")
    assert str(e.value) == ". is the current folder; save() needs a folder of its own (a new name)"
    assert (r.save("sub") / "manifest.json").is_file() and (tmp_path / "plain" / "sub" / "manifest.json").is_file()


# --- Inputs as a notebook holds them: checked, never silently changed. -----------------------------------------


def test_float_images_outside_0_1_are_refused_not_clamped():
    net, u8 = TinyNet(), _images(2)
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8.float())  # 0-255 floats were clamped to [0, 1]: a white image
    assert str(e.value) == (
        "float images must be in [0, 1], these range from 0 to 255: pass uint8 pixels (0-255) or floats in "
        "[0, 1] (0-255 floats: divide by 255), not normalized ones: explain() applies the model's mean/std itself"
    )
    normalized = (u8.float() / 255 - 0.5) / 0.25
    with pytest.raises(UsageError, match="these range from -2 to 2: pass uint8"):
        xaibatch.explain(net, normalized)
    with pytest.raises(UsageError, match=r"^float images hold NaN or infinite values: pass uint8"):
        xaibatch.explain(net, torch.full((1, 3, 32, 32), float("nan")))
    ref = xaibatch.explain(net, u8).maps["gradcam"]
    off = u8.float() / 255 + torch.where(u8 == 255, 1e-4, 0.0) - torch.where(u8 == 0, 1e-4, 0.0)  # float error
    assert torch.equal(xaibatch.explain(net, off).maps["gradcam"], ref)
    assert torch.equal(xaibatch.explain(net, u8.long()).maps["gradcam"], ref)  # integer pixels: 0-255 as uint8's
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8.long() * 2)
    assert str(e.value).startswith("integer images must be in 0..255, these range from 0 to 510: pass uint8")


def test_a_non_square_batch_is_stretched_to_a_square_as_a_list_of_pictures_is():
    net = TinyNet()
    wide = _images(2)[:, :, :, :24].repeat(1, 1, 1, 2)  # (2, 3, 32, 48)
    methods = ["gradcam", "captum:Saliency", "guided-gradcam"]
    r = xaibatch.explain(net, wide, methods)  # guided-gradcam multiplied a 48x48 map by a 32x48 one
    assert {k: tuple(v.shape) for k, v in r.maps.items()} == dict.fromkeys(methods, (2, 48, 48))
    assert r.preprocess.image_size == 48 and r.given_sizes == ((48, 32), (48, 32))
    pics = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in wide]
    as_pil = xaibatch.explain(net, pics, methods)  # PIL images: stretched to the first one's longer side
    assert as_pil.images.shape == r.images.shape and (as_pil.images.int() - r.images.int()).abs().max() <= 1
    at = xaibatch.explain(net, wide.permute(0, 2, 3, 1).numpy(), methods, input_size=32)
    assert {tuple(v.shape) for v in at.maps.values()} == {(2, 32, 32)} and at.given_sizes == r.given_sizes


def test_one_image_and_lists_of_arrays_are_batches(tmp_path):
    net, u8 = TinyNet(), _images(2)
    hwc = u8.permute(0, 2, 3, 1).numpy()
    ref = xaibatch.explain(net, u8).maps["gradcam"]
    forms = {
        "list of arrays": [hwc[0], hwc[1]],
        "list of tensors": [u8[0], u8[1]],
        "list of float tensors": [u8[0].float() / 255, u8[1].double() / 255],
        "NCHW array": u8.numpy(),
        "NHWC tensor": torch.from_numpy(hwc),
    }
    for name, images in forms.items():
        assert torch.equal(xaibatch.explain(net, images).maps["gradcam"], ref), name
    Image.fromarray(hwc[0]).save(tmp_path / "a.png")
    one = xaibatch.explain(net, u8[:1]).maps["gradcam"]
    ones = {
        "a path string": str(tmp_path / "a.png"),
        "a Path": tmp_path / "a.png",
        "a PIL image": Image.fromarray(hwc[0]),
        "an (H, W, 3) array": hwc[0],
        "a (3, H, W) tensor": u8[0],
    }
    for name, image in ones.items():
        assert torch.equal(xaibatch.explain(net, image).maps["gradcam"], one), name
    odd = xaibatch.explain(net, [hwc[0], hwc[1][:24, :, :]])  # sizes differ: each stretched, as PIL images are
    assert odd.maps["gradcam"].shape == (2, 32, 32) and odd.given_sizes == ((32, 32), (32, 24))


def test_a_pil_image_of_any_mode_is_the_input_its_file_gives(tmp_path):
    # A 16-bit grey PIL image reached the model as solid white (convert("RGB") clips 0..65535 at 255) and an
    # RGBA one with its transparent pixels' hidden colour, while the same file by path (and in a run) was
    # scaled to 8 bits and composited over white.
    net = TinyNet()
    grey = (np.asarray(_images(1)[0, 0], dtype=np.uint16) * 257).astype(np.uint16)
    rgba = np.dstack([_images(1)[0].permute(1, 2, 0).numpy(), np.full((32, 32), 255, np.uint8)])
    rgba[:, :16, 3] = 0
    paths = {"I;16": tmp_path / "grey16.png", "RGBA": tmp_path / "rgba.png"}
    Image.fromarray(grey).save(paths["I;16"])
    Image.fromarray(rgba).save(paths["RGBA"])
    for mode, path in paths.items():
        with Image.open(path) as pil:
            assert pil.mode == mode
            as_pil = xaibatch.explain(net, pil)
        by_path = xaibatch.explain(net, path)
        assert torch.equal(as_pil.images, by_path.images), mode
        assert torch.equal(as_pil.maps["gradcam"], by_path.maps["gradcam"]), mode
    white = xaibatch.explain(net, paths["RGBA"]).images[0, :, :, :16]
    assert bool((white == 255).all())  # the transparent half, as a run shows it


def test_a_16_bit_grey_png_is_the_input_its_pixels_give_as_a_tiff(tmp_path):
    # Pillow < 10.3 opened a 16-bit grey PNG as mode "I" (10.3 and later: "I;16", as a TIFF): its pixels were
    # scaled by their range, not cut to their high byte, so a dark one (all below 256) reached the model bright.
    net = TinyNet()
    dark = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    for grey in (dark, dark * 200):  # 0..255 (black as 8 bits), 0..51000
        for name in ("grey16.png", "grey16.tif"):
            Image.fromarray(grey).save(tmp_path / name)
        png, tif = (xaibatch.explain(net, tmp_path / n).images for n in ("grey16.png", "grey16.tif"))
        assert torch.equal(png, tif)
        assert torch.equal(tif[0, 0], torch.from_numpy((grey >> 8).astype(np.uint8)))


def test_images_that_cannot_be_read_are_named(tmp_path):
    net = TinyNet()
    missing = tmp_path / "missing.png"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, str(missing))
    assert str(e.value) == f"{missing}: cannot read: No such file or directory"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, [_images(1)[0], 7])
    assert str(e.value) == (
        "images[1] is an int: expected a file path, a PIL image, an (H, W, 3) array or a (3, H, W) tensor"
    )
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, 7)
    assert str(e.value) == ("images must be a tensor, an array, a PIL image, a file path or a list of them, not an int")
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, np.zeros((2, 32, 32, 4), dtype=np.uint8))
    assert str(e.value) == (
        "an array of images must be (N, H, W, 3) or (N, 3, H, W) (one image: (H, W, 3) or (3, H, W)), "
        "not (2, 32, 32, 4)"
    )
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, [np.zeros((2, 32, 32, 3), dtype=np.uint8)])
    assert str(e.value) == "images[0] is an array of 2 images: give one image per list item, or the array itself"


def test_a_folder_or_a_dict_of_images_is_refused_saying_what_to_pass(tmp_path):
    net = TinyNet()
    (tmp_path / "REAL").mkdir()
    for folder in (tmp_path / "REAL", str(tmp_path / "REAL")):  # was "...: not a regular file"
        with pytest.raises(UsageError) as e:
            xaibatch.explain(net, folder)
        assert str(e.value) == (
            f"{tmp_path / 'REAL'} is a folder: explain() takes images; pass its files "
            f"(sorted(Path({str(tmp_path / 'REAL')!r}).glob('*.png'))), or explain a whole folder with xaibatch.run()"
        )
    with pytest.raises(UsageError) as e:  # a name too long for the file system: OSError from the folder check
        xaibatch.explain(net, ["x" * 300])
    assert str(e.value) == f"{'x' * 300}: cannot read: File name too long"
    with pytest.raises(UsageError) as e:  # its keys were read as file names ("a: cannot read: ...")
        xaibatch.explain(net, {"a": _images(1)[0]})
    assert str(e.value) == "images must be a tensor, an array, a PIL image, a file path or a list of them, not a dict"


def test_photographs_without_input_size_are_refused_not_run_at_their_own_size():
    """A phone photo set the model's side to 4032 px (16 million pixels a map): refused before any forward."""
    from PIL import Image

    calls = []
    net = TinyNet()
    net.register_forward_hook(lambda *_: calls.append(1))
    photo = Image.new("RGB", (2000, 1500), (90, 120, 30))
    for images, side in ((photo, 2000), ([photo], 2000), (torch.zeros(1, 3, 1100, 40, dtype=torch.uint8), 1100)):
        with pytest.raises(UsageError) as e:
            xaibatch.explain(net, images)
        assert str(e.value) == (
            f"the images are {side} px on their longer side, and without input_size= the model would run at "
            f"{side} x {side} px: pass the size it was trained at (e.g. input_size=224)"
        )
    assert calls == []
    out = xaibatch.explain(net, photo, input_size=32)  # told the size: the photograph is explained
    assert out.maps["gradcam"].shape == (1, 32, 32) and list(out.given_sizes) == [(2000, 1500)]
    assert xaibatch.explain(net, Image.new("RGB", (1024, 700))).maps["gradcam"].shape == (1, 1024, 1024)


def test_a_timm_model_runs_at_its_declared_size_as_a_run_takes_it():
    """Without input_size=, a model declaring its input in timm's pretrained_cfg is explained at that size, as
    `xaibatch run --model timm:NAME` runs it (the images' own side made 2 of 6 ImageNet predictions differ)."""
    from PIL import Image

    net = TinyNet()
    net.pretrained_cfg = {"input_size": (3, 24, 24)}
    photo = Image.new("RGB", (300, 200), (90, 120, 30))
    out = xaibatch.explain(net, photo)
    assert out.maps["gradcam"].shape == (1, 24, 24) and out.preprocess.record()["input_size"] == 24
    given = xaibatch.explain(net, photo, input_size=24)
    assert torch.equal(out.probs, given.probs) and torch.equal(out.maps["gradcam"], given.maps["gradcam"])
    assert xaibatch.explain(net, photo, input_size=40).maps["gradcam"].shape == (1, 40, 40)  # a given size wins


def test_a_timm_model_built_for_another_size_runs_at_the_size_it_was_built_for():
    """timm.create_model("vit_...", img_size=32) keeps the 224 px of its pretrained_cfg: explain() without
    input_size= fed it 224 px and its forward refused ("Input height (224) doesn't match model (32)"), where it
    ran at the images' 32 px before it read the cfg. The size the model was built for comes first."""
    import timm

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=2, depth=1)
    assert net.pretrained_cfg["input_size"][-1] == 224
    out = xaibatch.explain(net, _images(2), methods="gradcam")
    assert out.preprocess.image_size == 32 and out.maps["gradcam"].shape == (2, 32, 32)


def test_labels_and_targets_may_be_class_names():
    net, u8 = TinyNet(), _images(2)
    names = ["cat", "dog", "owl"]
    r = xaibatch.explain(net, u8, target="label", labels=["owl", "cat"], classes=names)
    assert r.labels.tolist() == [2, 0] and r.targets.tolist() == [2, 0]
    assert xaibatch.explain(net, u8, target=["dog", 1], classes=names).targets.tolist() == [1, 1]
    assert xaibatch.explain(net, u8, target="label", labels=np.array([2.0, 0.0])).labels.tolist() == [2, 0]
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8, target="label", labels=["owl", "bat"], classes=names)
    assert str(e.value) == "labels[1] is 'bat', not one of the classes: cat, dog, owl"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8, target="label", labels=["owl", "cat"])
    assert str(e.value) == "labels[0] is a class name ('owl') but the model's classes are not named: pass classes=[...]"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8, target="label", labels=[0.5, 1])  # was truncated to class 0
    assert str(e.value) == "labels[0] is 0.5: a class is an integer index or a class name"
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8, target="label", labels="cat")
    assert str(e.value) == "labels must be a list with one class per image, not a str"


def test_errors_name_explains_keywords_not_the_cli_flags(tmp_path, monkeypatch):
    u8 = _images(2)

    class Flat(torch.nn.Module):  # a linear model fixed to 64 px inputs
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 64 * 64, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(UsageError) as e:
        xaibatch.explain(Flat(), u8)
    assert str(e.value).endswith(": give the input size it was trained at with input_size=")
    coarse = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=32), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    with pytest.raises(UsageError) as e:
        xaibatch.explain(coarse, u8)
    assert "; pass a larger input_size= or name a layer with target_layer=; layers with" in str(e.value)
    with pytest.raises(UsageError) as e:
        xaibatch.explain(tmp_path / "nope.pt", u8)
    assert str(e.value) == f"checkpoint {tmp_path / 'nope.pt'}: no such file"
    torch.save(TinyNet().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(UsageError) as e:
        xaibatch.explain(tmp_path / "weights.pt", u8)
    assert str(e.value) == (
        f"{tmp_path / 'weights.pt'} is a plain state_dict: explain() loads checkpoints that name their model "
        "(xaibatch's, timm train.py's, a timm Hub folder); build the model, load_state_dict() it and pass the module"
    )
    with pytest.raises(UsageError) as e:
        xaibatch.explain(TinyNet(), u8, device="gpu")
    assert str(e.value) == "device='gpu' is not one of auto, cpu, cuda, cuda:N"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError) as e:
        xaibatch.explain(tmp_path / "weights.pt", u8, device="cuda:0")
    assert str(e.value) == "device='cuda:0': no CUDA GPU is available here; use device='cpu' or 'auto'"


def test_help_describes_every_keyword_and_what_comes_back():
    import inspect

    doc = inspect.getdoc(xaibatch.explain)
    params = list(inspect.signature(xaibatch.explain).parameters)
    # batch_size, seed, target_layer and method_options were in the signature only: help() never said how to
    # pass LIME's samples
    assert [p for p in params if f"``{p}``" not in doc] == []
    assert "Returns an :class:`Explanations`" in doc and "UsageError" in doc
    assert '{"lime": {"samples": 200}' in doc


def test_maps_and_overlays_at_the_images_own_size_are_a_runs(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    rng = np.random.default_rng(3)
    paths = [inp / "wide.png", inp / "tall.png"]
    for p, (h, w) in zip(paths, [(32, 48), (40, 20)], strict=True):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
    methods = ["gradcam", "captum:InputXGradient"]  # unsigned (bilinear) and signed (nearest)
    xaibatch.run(
        xaibatch.RunOptions(
            input_dir=inp, out_dir=out, methods=methods, checkpoint=tiny_ckpt, handle_signals=False, batch_size=2
        ),
        log=lambda s: None,
    )
    m = Manifest(out / "xaibatch.sqlite")
    try:
        saved = m.maps()
    finally:
        m.close()
    got = xaibatch.explain(tiny_ckpt, paths, methods, device="cpu")
    assert got.maps["gradcam"].shape == (2, 32, 32) and got.given_sizes == ((48, 32), (20, 40))
    for i, p in enumerate(paths):
        w, h = got.given_sizes[i]
        for method in methods:
            # the maps were only (S, S): laid over the 48x32 picture a notebook has, they were squashed
            own = got.map(i, method, size="given")
            assert own.shape == (h, w) and own.dtype == np.float32
            assert np.allclose(own, np.load(out / saved[(p.name, method)].npy), atol=1e-5), (p.name, method)
            assert got.overlay(i, method, size="given").size == (w, h)
            assert got.heatmap(i, method, size="given").size == (w, h)
        assert got.picture(i, size="given").shape == (h, w, 3)
    assert got.map(0, "gradcam").shape == (32, 32) and got.overlay(0).size == (32, 32)
    with pytest.raises(UsageError) as e:
        got.map(0, "gradcam", size=(48, 32))
    assert str(e.value) == "size must be 'input' (the model's input size) or 'given' (the image's own), not (48, 32)"


def test_class_names_are_read_by_case_as_a_runs_class_folders_are():
    # explain(labels=["real", ...]) was refused ("not one of the classes: FAKE, REAL") while the CLI reads a `Real/`
    # folder as REAL: the same rule now (an exact name first, else the one class that differs only by case).
    net, u8 = TinyNet(), _images(2)
    r = xaibatch.explain(net, u8, target="label", labels=["real", "Fake"], classes=["FAKE", "REAL", "OTHER"])
    assert r.labels.tolist() == [1, 0] and r.targets.tolist() == [1, 0]
    assert xaibatch.explain(net, u8, target=["fake", "REAL"], classes=["FAKE", "REAL", "OTHER"]).targets.tolist() == [
        0,
        1,
    ]
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, u8, target="label", labels=["real", "a"], classes=["REAL", "Real", "x"])
    assert str(e.value) == "labels[0] is 'real', which matches the classes REAL and Real only by case"
    exact = xaibatch.explain(net, u8, target="label", labels=["Real", "REAL"], classes=["REAL", "Real", "x"])
    assert exact.labels.tolist() == [1, 0]  # an exact name wins


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_run_inside_no_grad_or_inference_mode_still_explains(tmp_path, tiny_ckpt, mode):
    # A notebook's `with torch.no_grad():` around xaibatch.run() made Grad-CAM fail: "the model's output does not
    # depend on the target layer ...; pass --target-layer", a wrong hint. The run loads its own model, so it turns
    # gradients on for itself; the caller's mode is back afterwards.
    inp = tmp_path / "in"
    write_images(inp, 2)
    opts = xaibatch.RunOptions(
        input_dir=inp,
        out_dir=tmp_path / "out",
        methods=["gradcam", "captum:Saliency"],
        checkpoint=tiny_ckpt,
        handle_signals=False,
    )
    with getattr(torch, mode)():
        result = xaibatch.run(opts, log=lambda s: None)
        assert not torch.is_grad_enabled()
    assert result.computed == 2 and not result.failed
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_method_options_are_checked_as_the_clis_are():
    net = TinyNet()
    # LIME's own seed (listed by `xaibatch methods`) raised "got multiple values for keyword argument 'seed'"
    own = xaibatch.explain(net, _images(2), "lime", method_options={"lime": {"samples": 20, "seed": 7}})
    given = xaibatch.explain(net, _images(2), "lime", seed=7, method_options={"lime": {"samples": 20}})
    assert torch.equal(own.maps["lime"], given.maps["lime"]) and own.methods["lime"].settings["seed"] == 7
    # silently ignored before (or recorded as a setting that did nothing); the CLI refuses each
    refused = {
        "method_options names 'lime', which is not among the methods (gradcam); add it to methods=": (
            "gradcam",
            {"lime": {"samples": 20}},
        ),
        "gradcam: unknown option x (it takes: no options)": ("gradcam", {"gradcam": {"x": 1}}),
        "method_options['lime'] must be a dict of option -> value, not an int": ("lime", {"lime": 5}),
        "method_options must be a dict of method -> {option: value}, not a list": ("lime", [("lime", {})]),
    }
    for message, (methods, options) in refused.items():
        with pytest.raises(UsageError) as e:
            xaibatch.explain(net, _images(1), methods, method_options=options)
        assert str(e.value) == message


def test_numeric_keywords_out_of_range_are_one_line():
    # before: range()'s ValueError, an IndexError, PIL's "height and width must be > 0", torch's broadcasting
    # error, input_size=0 taken as not given, std=0 explained without a word (infinite input)
    net = TinyNet()
    cases = {
        "batch_size must be a whole number of at least 1, not 0": {"batch_size": 0},
        "batch_size must be a whole number of at least 1, not -1": {"batch_size": -1},
        "input_size must be a whole number from 8 to 4096 (pixels), not 0": {"input_size": 0},
        "input_size must be a whole number from 8 to 4096 (pixels), not -5": {"input_size": -5},
        "input_size must be a whole number from 8 to 4096 (pixels), not 2.5": {"input_size": 2.5},
        "seed must be a whole number, not 'x'": {"seed": "x"},
        "mean must be one number or three (R, G, B), not [0.5, 0.5]": {"mean": [0.5, 0.5]},
        "std must be above 0 and at most 1, in units of pixels scaled to [0, 1], not [0, 0, 0]": {"std": [0, 0, 0]},
    }
    for message, kw in cases.items():
        with pytest.raises(UsageError) as e:
            xaibatch.explain(net, _images(1), "gradcam", **kw)
        assert str(e.value) == message
    assert xaibatch.explain(net, _images(1), "gradcam", input_size=np.int64(16), batch_size=np.int64(2)).maps[
        "gradcam"
    ].shape == (1, 16, 16)


def test_run_options_image_size_out_of_range_is_one_line(tmp_path, tiny_ckpt):
    # the CLI's --image-size is 8..4096; from Python 0 was taken as not given and -3 failed deep in torch
    inp = tmp_path / "in"
    write_images(inp, 1)
    for size in (0, -3):
        opts = xaibatch.RunOptions(
            input_dir=inp, out_dir=tmp_path / "out", methods="gradcam", checkpoint=tiny_ckpt, image_size=size
        )
        with pytest.raises(UsageError) as e:
            xaibatch.run(opts, log=lambda s: None)
        assert str(e.value) == f"--image-size must be a whole number from 8 to 4096, not {size}"
    assert not (tmp_path / "out").exists()


def test_wide_integer_arrays_are_checked_not_a_torch_error():
    # a 16-bit array raised torch's NotImplementedError: "min_all" not implemented for 'UInt16'
    wide = np.full((1, 16, 16, 3), 4000, dtype=np.uint16)
    with pytest.raises(UsageError) as e:
        xaibatch.explain(TinyNet(), wide, "gradcam")
    assert str(e.value).startswith("integer images must be in 0..255, these range from 4000 to 4000")
    small = xaibatch.explain(TinyNet(), wide // 20, "gradcam")  # 200: in range, explained as uint8
    assert small.images.dtype == torch.uint8 and int(small.images.max()) == 200
    for dtype in (np.uint32, np.uint64):  # wider unsigned arrays: the same images, the same range check
        assert torch.equal(xaibatch.explain(TinyNet(), (wide // 20).astype(dtype), "gradcam").images, small.images)
    with pytest.raises(UsageError) as e:
        xaibatch.explain(TinyNet(), np.full((16, 16, 3), 2**64 - 1, dtype=np.uint64), "gradcam")
    assert str(e.value).startswith("integer images must be in 0..255, these range from")


def test_bytes_images_and_a_string_of_classes_are_refused_saying_what_to_pass():
    # a file's bytes were iterated ("images[0] is an int"); classes="abc" was read as the names a, b, c
    png = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    import io

    buf = io.BytesIO()
    png.save(buf, format="PNG")
    with pytest.raises(UsageError) as e:
        xaibatch.explain(TinyNet(), buf.getvalue())
    assert str(e.value) == (
        "images is a bytes: pass a file path or a PIL image (PIL.Image.open(io.BytesIO(data))), not a file's bytes"
    )
    with pytest.raises(UsageError) as e:
        xaibatch.explain(TinyNet(), _images(1), classes="abc")
    assert str(e.value) == "classes must be a list of class names, not a str"


def test_a_model_on_the_meta_device_is_refused_in_one_line():
    # a model made with empty weights (device="meta") failed deep in the explainer: "Cannot copy out of meta tensor"
    with torch.device("meta"):
        net = TinyNet()
    with pytest.raises(UsageError) as e:
        xaibatch.explain(net, _images(1), "gradcam")
    assert str(e.value) == (
        "the model's weights are on the meta device (made without data): load them first "
        "(model.to_empty(device='cpu'), then load_state_dict(...))"
    )


def test_pil_images_are_read_as_a_run_reads_their_files(tmp_path):
    # Image.convert("RGB") clipped 16-bit grey to near white, float grey in [0, 1] to black, and made transparent
    # pixels black where a run (and explain() given the path) composites them over white: other input, other maps
    grey16 = Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16))
    grey_f = Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), "F")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :3], rgba[:16, :, 3] = 200, 255  # the lower half transparent
    pictures = [grey16, grey_f, Image.fromarray(rgba, "RGBA")]
    paths = []
    for k, pic in enumerate(pictures):
        paths.append(tmp_path / f"{k}.{'tif' if pic.mode == 'F' else 'png'}")
        pic.save(paths[-1])
    from_files = xaibatch.explain(TinyNet(), paths, "gradcam")
    from_pil = xaibatch.explain(TinyNet(), pictures, "gradcam")
    assert torch.equal(from_pil.images, from_files.images)
    assert torch.equal(from_pil.maps["gradcam"], from_files.maps["gradcam"])
    assert 120 < float(from_pil.images[0].float().mean()) < 135 and int(from_pil.images[2, :, 31, 0].min()) == 255


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_pil_jpeg_with_an_exif_orientation_is_explained_upright_as_its_file_is(tmp_path, orientation):
    # Image.open() of a camera JPEG whose EXIF turns it a quarter (orientation 6 or 8) was explained as stored,
    # on its side: other probabilities and maps, and given_sizes with width and height swapped, than the same
    # file by path and in a run, which turn it upright.
    upright = np.zeros((24, 40, 3), np.uint8)
    upright[:8, :] = 255  # a white band along the top: where it ends up shows the orientation
    stored = Image.fromarray(upright).transpose(
        Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "camera.jpg"
    stored.save(path, exif=exif, quality=95)
    net = TinyNet()
    by_path = xaibatch.explain(net, path, input_size=32)
    with Image.open(path) as pil:
        as_pil = xaibatch.explain(net, pil, input_size=32)
        assert pil.size == (24, 40)  # the caller's image is left as it was
    assert by_path.given_sizes == as_pil.given_sizes == ((40, 24),)
    assert torch.equal(as_pil.images, by_path.images)
    assert torch.equal(as_pil.maps["gradcam"], by_path.maps["gradcam"])
    assert float(by_path.images[0, :, :8].float().mean()) > 200  # upright: the band on top


# --- A notebook user's audit: a bug in the model, odd models, saving and loading, spellings, large photos. ------


class _Buggy(torch.nn.Module):
    """A bug that no input size fixes: 4 features into a Linear of 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(10, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class _Flat224(torch.nn.Module):
    """A linear model fixed to 224 px inputs: the size is the cause, and 224 px runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 224 * 224, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_forward_that_raises_names_the_users_exception_first():
    """It ended "give the input size it was trained at with input_size=" for any error, and dropped the user's
    exception: a bug in forward sent the user after the input size, with no line of their code."""
    with pytest.raises(UsageError) as e:
        xaibatch.explain(_Buggy(), _images(2))
    text = str(e.value)
    assert text.startswith(
        "the model: its forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x4 and 10x2) ("
    ), text
    assert f"{__file__}, line " in text and text.endswith(", in forward), on a 32x32 input")
    assert isinstance(e.value.__cause__, RuntimeError)  # chained: the notebook's traceback shows the user's frames
    with pytest.raises(UsageError) as e:  # where the size is the cause, the hint stays, with the size that runs
        xaibatch.explain(_Flat224(), _images(2))
    assert str(e.value).endswith(
        "on a 32x32 input; it runs at 224x224: give the input size it was trained at with input_size="
    ), str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_a_forward_out_of_memory_is_not_blamed_on_the_input_size():
    """An out-of-memory error in the first forward read "it runs at 224x224: give the input size it was trained
    at", after a second forward at 224 px (dear on a GPU that has just run out): it is raised as it came, once."""
    calls = []

    class Hungry(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[-1])
            if x.shape[-1] > 230:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x.mean((2, 3))[:, :2]

    with pytest.raises(torch.cuda.OutOfMemoryError):
        xaibatch.explain(Hungry(), _images(1, size=256), ["lime"], method_options={"lime": {"samples": 10}})
    assert calls == [256]


def test_where_a_forward_raised_names_a_model_librarys_file():
    """torchvision's own frames were dropped as torch's (its folder starts with torch's path): "(FILE, line N,
    in NAME)" named nothing for a torchvision model's assertion."""
    import os

    import torchvision

    from xaibatch.model.heads import _where

    lib = os.path.join(os.path.dirname(torchvision.__file__), "models", "made_up.py")
    code = compile("def check(x):\n    raise AssertionError('Wrong image height!')\n", lib, "exec")
    space: dict = {}
    exec(code, space)
    try:
        space["check"](None)
    except AssertionError as e:
        assert _where(e) == f" ({lib}, line 2, in check)"


def test_a_model_without_parameters_is_explained_or_refused_in_one_line():
    """``next(model.parameters())`` raised StopIteration out of the layer search."""
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # three "classes": R, G, B
    x = _images(2)
    r = xaibatch.explain(pool, x, ["lime", "captum:InputXGradient"], method_options={"lime": {"samples": 20}})
    assert r.maps["lime"].shape == (2, 32, 32) and r.maps["captum:InputXGradient"].shape == (2, 32, 32)
    assert r.probs.shape == (2, 3)
    with pytest.raises(UsageError) as e:  # no stage: no size helps, so no "pass a larger input_size="
        xaibatch.explain(pool, x, ["gradcam"])
    assert str(e.value).startswith("this model has no stage xaibatch can see (no conv layer)"), str(e.value)
    assert "input_size" not in str(e.value) and "use methods that need no layer (lime, captum:*)" in str(e.value)
    staged = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    staged.append(torch.nn.Flatten())
    named = xaibatch.explain(staged, x, ["gradcam"], target_layer="1")  # a layer it has: gradcam reads it
    assert named.layer == "1" and named.maps["gradcam"].shape == (2, 32, 32)
    for empty in ("", " "):  # an unset variable's name: refused as --target-layer "" is (it was read as the model)
        with pytest.raises(UsageError, match="^target_layer is empty; give a layer's name, or None"):
            xaibatch.explain(staged, x, ["captum:Saliency"], target_layer=empty)
    with pytest.raises(UsageError) as e:  # pytorch-grad-cam's own next(model.parameters())
        xaibatch.explain(staged, x, ["cam:gradcam"], target_layer="1")
    assert str(e.value).startswith("cam:gradcam cannot run on a model without parameters"), str(e.value)


def test_a_data_parallel_model_is_explained_as_the_module_it_wraps():
    """Through the wrapper the layer search picked ``module.layer3.1.conv2`` instead of ``layer3``: other maps."""
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=2).eval()
    x = _images(2, size=64)
    bare = xaibatch.explain(net, x, input_size=64)
    wrapped = xaibatch.explain(torch.nn.DataParallel(net), x, input_size=64)
    assert (bare.layer, wrapped.layer) == ("layer3", "module.layer3")  # named as the wrapper names it
    assert torch.equal(bare.maps["gradcam"], wrapped.maps["gradcam"]) and torch.equal(bare.probs, wrapped.probs)
    assert wrapped.model == "ResNet (the .module of a DataParallel)"
    for name in ("module.layer2", "layer2"):  # either name of the layer
        chosen = xaibatch.explain(torch.nn.DataParallel(net), x, target_layer=name)
        assert chosen.layer == "module.layer2", name
        assert torch.equal(chosen.maps["gradcam"], xaibatch.explain(net, x, target_layer="layer2").maps["gradcam"])


def test_load_of_a_missing_folder_says_it_does_not_exist(tmp_path):
    with pytest.raises(UsageError) as e:  # was "... is not a folder explain()'s save() wrote"
        xaibatch.Explanations.load(tmp_path / "nope")
    assert str(e.value) == f"{tmp_path / 'nope'}: no such folder"


def test_save_that_the_file_system_refuses_names_the_users_folder(tmp_path, monkeypatch):
    """The OSError named the temporary folder (``/sys/.e.new.4ebf41a3.tmp``, ``.keep.new.<hex>.tmp/...``)."""
    import os

    import xaibatch.bundle as bundle
    from xaibatch.errors import StorageError

    r = xaibatch.explain(TinyNet(), _images(1), ["gradcam"])
    if os.path.isdir("/sys/kernel"):  # sysfs: no new folder in it, even for root
        with pytest.raises(StorageError) as e:
            r.save("/sys/xaibatch-save-test")
        assert str(e.value).startswith("save() cannot write /sys/xaibatch-save-test: "), str(e.value)
        assert ".tmp" not in str(e.value) and isinstance(e.value, OSError)

    def full(path, array):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(bundle, "save_npy", full)
    with pytest.raises(OSError) as e:
        r.save(tmp_path / "keep")
    assert str(e.value) == f"save() cannot write {tmp_path / 'keep'}: No space left on device"
    assert e.value.errno == 28 and _listing(tmp_path) == set()


def test_target_is_read_in_any_case_and_with_spaces_as_the_cli_reads_it(tmp_path, tiny_ckpt):
    from xaibatch.pipeline import RunOptions

    net, x = TinyNet(), _images(2)
    for spelling, mode in (("PRED", "pred"), (" Label ", "label"), ("pred, label", "pred,label")):
        r = xaibatch.explain(net, x, target=spelling, labels=[0, 1])  # was refused: "target must be 'pred', ..."
        assert r.target == mode, spelling
        assert RunOptions(input_dir=tmp_path, out_dir=tmp_path, methods=["gradcam"], target=spelling).target == mode
    with pytest.raises(UsageError, match="target must be 'pred', 'label', 'pred,label'"):
        xaibatch.explain(net, x, target="label,pred", labels=[0, 1])


def test_a_jpeg_decoded_scaled_keeps_its_own_size(tmp_path):
    """A JPEG over 64 megapixels is decoded at 1/2 of its size: its given size was the decoded one (4500x3750)."""
    path = tmp_path / "photo.jpg"
    stored = Image.new("L", (9000, 7500), 90)  # over MAX_PIXELS (64,000,000); grey: a small file, quick to write
    stored.paste(200, (0, 0, 4500, 7500))
    stored.save(path, quality=50)
    del stored
    r = xaibatch.explain(TinyNet(), [path, _images(1)[0]], input_size=32)
    assert r.given_sizes == ((9000, 7500), (32, 32))  # as a run records it (test_input_files: 7500 x 9000 upright)
    with pytest.raises(UsageError) as e:  # without input_size=: its own side is what is refused
        xaibatch.explain(TinyNet(), path)
    assert str(e.value).startswith("the images are 9000 px on their longer side"), str(e.value)


def _skimage_photo(name: str) -> Image.Image:
    from xaibatch.tools.demo import _data_dir

    d = _data_dir("skimage")
    if d is None or not (d / name).is_file():
        pytest.skip(f"scikit-image's {name} is not installed")
    with Image.open(d / name) as im:
        return im.convert("RGB")


def test_overlays_are_the_reports_pixels_over_the_images_display_copy(tmp_path):
    """explain()'s pictures are a run's: each image's display copy (data.display_copy: the image itself, at most
    512 px a side) with the map drawn over it as a run draws it, so ``overlay(i, m, size="given")``, the grid and
    save() show the report's overlay PNG pixel for pixel. They were drawn over the model's input stretched back
    to the image's size: on a 64 px model 17-80 grey levels off the report's, also for the 32 px demo images
    (upscaled to 64 and back), and for photos over 512 px another size (1000 x 872, not 512 x 447) and blurred.
    Batches of one on both sides: a batch's float sums may move a map by 1e-7, and a pixel by one step."""
    import json

    from helpers import make_checkpoint
    from xaibatch import layout
    from xaibatch.tools.demo import write_demo_data

    ckpt = make_checkpoint(tmp_path / "m64.pt", size=64)
    inp = tmp_path / "in"
    write_demo_data(tmp_path / "demo", train_per_class=1, test_per_class=1, seed=0)
    demo = sorted((tmp_path / "demo" / "test").rglob("*.png"))
    demo = [p for p in demo if not p.name.endswith(".mask.png")][:2]
    inp.mkdir()
    paths = []
    for p in demo:  # the 32 px demo images
        paths.append(inp / f"demo_{p.name}")
        paths[-1].write_bytes(p.read_bytes())
    assert Image.open(paths[0]).size == (32, 32)
    photos = {
        "chelsea.png": _skimage_photo("chelsea.png"),  # 451 x 300: under 512, not square
        "coffee.png": _skimage_photo("coffee.png"),  # 600 x 400: over 512, not square
        "hubble.png": _skimage_photo("hubble_deep_field.jpg"),  # 1000 x 872
    }
    for name, im in photos.items():
        paths.append(inp / name)
        im.save(paths[-1])
    rocket = _skimage_photo("rocket.jpg")  # 640 x 427, stored on its side (427 x 640) with an EXIF orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    paths.append(inp / "rocket.jpg")
    rocket.transpose(Image.Transpose.ROTATE_90).save(paths[-1], quality=90, exif=exif)
    methods = ["gradcam", "captum:InputXGradient"]  # unsigned (bilinear) and signed (nearest)
    out = tmp_path / "out"
    opts = xaibatch.RunOptions(
        input_dir=inp, out_dir=out, methods=methods, checkpoint=ckpt, batch_size=1, workers=0, handle_signals=False
    )
    xaibatch.run(opts, log=lambda s: None)
    m = Manifest(out / "xaibatch.sqlite")
    try:
        saved, images = m.maps(), m.images()
    finally:
        m.close()
    ex = xaibatch.explain(ckpt, paths, methods, batch_size=1, device="cpu")
    kept = ex.save(tmp_path / "kept")
    manifest = json.loads((kept / "manifest.json").read_text())
    back = xaibatch.Explanations.load(kept)
    for i, p in enumerate(paths):
        w, h = ex.given_sizes[i]
        report = np.asarray(Image.open(out / layout.image_png(images[p.name].stem)).convert("RGB"))
        assert report.shape[:2] == layout.display_size(w, h)[::-1], p.name
        assert np.array_equal(ex.picture(i, "given"), report), p.name  # the report's picture
        for method in methods:
            run_png = np.asarray(Image.open(out / saved[(p.name, method)].png).convert("RGB"))
            assert np.array_equal(np.asarray(ex.overlay(i, method, size="given")), run_png), (p.name, method)
            files = manifest["images"][i]["maps"][method]
            assert np.array_equal(np.asarray(Image.open(kept / files["overlay"])), run_png), (p.name, method)
            assert np.array_equal(np.asarray(back.overlay(i, method, size="given")), run_png), (p.name, method)
        assert np.array_equal(np.asarray(Image.open(kept / manifest["images"][i]["display"])), report), p.name
    import base64
    import io

    from xaibatch.overlay import thumbnail

    html = ex._repr_html_()  # the notebook grid: the report's pictures, as thumbnails
    srcs = [s.split('"', 1)[0].split(",", 1)[1] for s in html.split('src="')[1:]]
    for i, p in enumerate(paths):
        cells = [np.asarray(Image.open(io.BytesIO(base64.b64decode(c)))) for c in srcs[3 * i : 3 * i + 3]]
        assert np.array_equal(cells[0], np.asarray(thumbnail(Image.fromarray(ex.picture(i, "given"))))), p.name
        run_png = Image.open(out / saved[(p.name, methods[0])].png).convert("RGB")
        assert np.array_equal(cells[1], np.asarray(thumbnail(run_png))), p.name
    assert Image.open(paths[-1]).size == (427, 640) and ex.given_sizes[-1] == (640, 427)  # upright
    assert ex.picture(len(paths) - 1, "given").shape == (342, 512, 3)
    # a tensor's display copy is its own pixels, as a file of them would be
    pixels = torch.from_numpy(np.array(Image.open(paths[0]))).permute(2, 0, 1)
    t = xaibatch.explain(ckpt, pixels, methods, batch_size=1, device="cpu")
    first = np.asarray(Image.open(out / saved[(paths[0].name, "gradcam")].png).convert("RGB"))
    assert np.array_equal(np.asarray(t.overlay(0, "gradcam", size="given")), first)


def test_a_save_of_an_older_xaibatch_loads_and_draws_as_before(tmp_path):
    """A bundle saved before explain() kept display copies (no ``display`` in its manifest, no display.png) still
    loads; its pictures are drawn over the model's input stretched back to the image's size, as that version drew
    them, and saved again as such."""
    import json

    pixels = torch.randint(0, 256, (3, 3, 20, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    r = xaibatch.explain(TinyNet(), pixels, "gradcam", input_size=32)
    assert [d.shape for d in r.displays] == [(20, 28, 3)] * 3  # the tensor's own pixels
    assert np.array_equal(r.displays[1], pixels[1].permute(1, 2, 0))
    folder = r.save(tmp_path / "new")
    back = xaibatch.Explanations.load(folder)
    assert all(np.array_equal(a, b) for a, b in zip(back.displays, r.displays, strict=True))
    man = json.loads((folder / "manifest.json").read_text())
    for im in man["images"]:  # as the previous version wrote it
        del im["display"]
        (folder / im["folder"] / "display.png").unlink()
    (folder / "manifest.json").write_text(json.dumps(man))
    old = xaibatch.Explanations.load(folder)
    assert old.displays is None and torch.equal(old.images, r.images)
    assert torch.equal(old.maps["gradcam"], r.maps["gradcam"])
    stretched = np.asarray(Image.fromarray(old.picture(1)).resize((28, 20), Image.BILINEAR))
    assert np.array_equal(old.picture(1, "given"), stretched)
    assert not np.array_equal(old.picture(1, "given"), r.picture(1, "given"))  # the display copy is sharper
    assert old.overlay(1, size="given").size == (28, 20) and "data:image/png" in old._repr_html_()
    again = json.loads((old.save(tmp_path / "again") / "manifest.json").read_text())
    assert again["images"][0]["display"] is None


def test_files_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    """explain() keeps each file's model input and display copy, not its decoded picture: every file was decoded
    before the first was resized, so 50 phone photos (4032 x 3024) held 1.8 GB at once (peak RSS 2,976 MiB; now
    727 MiB)."""
    import gc
    import weakref

    import xaibatch.api as api

    paths = write_images(tmp_path, 6, size=40)
    live: list[weakref.ref] = []
    most = []
    real = api._picture

    def counted(item, what):
        gc.collect()
        most.append(sum(r() is not None for r in live))
        pic = real(item, what)
        live.append(weakref.ref(pic))
        return pic

    monkeypatch.setattr(api, "_picture", counted)
    r = xaibatch.explain(TinyNet(), paths, "gradcam", input_size=32)
    assert len(r.displays) == 6 and r.displays[0].shape == (40, 40, 3)
    assert max(most) == 0, most  # each decoded picture is gone before the next is decoded


@pytest.mark.parametrize(
    "images",
    [torch.rand(1, 3, 0, 5), np.zeros((2, 4, 0, 3), np.uint8), [Image.new("RGB", (5, 0))]],
    ids=["tensor", "array", "pil"],
)
def test_an_image_of_no_pixels_is_refused_in_one_line(images):
    """Before: explained as a black square at the model's size, and its display copy of no pixels raised
    "IndexError: kthvalue(): Expected reduction dim 1 to have non-zero size" in the notebook grid."""
    with pytest.raises(UsageError, match="of no pixels"):
        xaibatch.explain(TinyNet(), images, input_size=32)


def test_explanations_without_display_copies_draw_the_grid_and_save_at_the_input_size(tmp_path):
    """Explanations of an older xaibatch (a pickle or a save without display copies): the grid and save() drew
    each picture stretched to the image's own size, a 4032 x 3024 overlay per cell (seconds an image), where that
    version drew the model's input."""
    import dataclasses

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    out = dataclasses.replace(xaibatch.explain(TinyNet(), [photo], input_size=32), displays=None)
    out.save(tmp_path / "old")
    with Image.open(next((tmp_path / "old").rglob("*-overlay.png"))) as im:
        assert im.size == (32, 32)
    assert out.overlay(0, size="given").size == (400, 300)  # asked for: still the image's own size
