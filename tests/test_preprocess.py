"""Preprocess: the one definition of how pixels become the model's input, and its record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import hypothesis
from hypothesis import strategies as st
from PIL import Image

from xaibatch.model.loading import load_model, save_checkpoint
from xaibatch.pipeline.plan import config_hash
from xaibatch.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from xaibatch.runconfig import ModelRecord, RunConfig

PRE = Preprocess(4, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))


def test_normalize_is_x_over_255_less_mean_over_std():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    got = PRE.normalize(x)
    want = torch.tensor([(0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, (1.0 - 0.0) / 2.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 4, 4)
    assert torch.allclose(got, want, atol=1e-6)


def test_black_is_what_normalize_makes_of_zero_in_the_dtype_asked():
    black = PRE.black(torch.zeros(1, dtype=torch.float64))
    assert black.dtype == torch.float64 and black.shape == (1, 3, 1, 1)
    assert black.flatten().tolist() == pytest.approx([-1.0, -1.0, 0.0])
    zeros = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert torch.equal(PRE.normalize(zeros), PRE.black(zeros.float()).expand(1, 3, 4, 4))


def test_to_uint8_recovers_the_pixels_exactly():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8))
    for pre in (PRE, Preprocess(8)):
        assert torch.equal(pre.to_uint8(pre.normalize(x)), x)


def test_stats_are_made_once_per_device():
    assert PRE.stats("cpu")[0] is PRE.stats(torch.device("cpu"))[0]
    assert PRE.stats()[1].flatten().tolist() == [0.5, 0.25, 2.0]


def test_values_given_win_then_the_models_own_then_imagenet():
    net = torch.nn.Linear(1, 1)
    assert Preprocess.for_model(net) == Preprocess(224, IMAGENET_MEAN, IMAGENET_STD)
    net.pretrained_cfg = {"input_size": (3, 40, 40), "mean": (0.0, 0.0, 0.0), "std": (1, 1, 1)}
    assert Preprocess.for_model(net) == Preprocess(40, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert Preprocess.for_model(net, 16, mean=[0.1, 0.2, 0.3]) == Preprocess(16, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert Preprocess(16, [1, 2, 3]).mean == (1.0, 2.0, 3.0)  # lists and ints read as a tuple of floats


def test_a_models_declared_size_is_one_rule_for_runs_and_explain():
    """The model's declared input side, defined once (preprocess.declared_size): the side a ViT was built for
    beats its pretrained_cfg's 224 px, a timm CNN's pretrained_cfg, a plain module none. A run read only the
    pretrained_cfg: a --model factory's ViT built at 64 px was refused ("was built for 64x64 inputs;
    --image-size 224 does not fit it", an option never given) where explain() ran it at 64 px."""
    from xaibatch.model.loading import finish
    from xaibatch.preprocess import declared_size

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=2, depth=1)
    assert vit.pretrained_cfg["input_size"][-1] == 224 and declared_size(vit) == 64
    assert Preprocess.for_model(vit).image_size == 64 and Preprocess.for_model(vit, 32).image_size == 32
    loaded = finish(vit, "factory.py:build", None, None, None, None, "random", "0" * 64)
    assert loaded.input_size == 64 and loaded.size_declared
    dynamic = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=2, depth=1, dynamic_img_size=True
    )
    assert declared_size(dynamic) == 224  # any size fits it: the cfg's
    cnn = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    assert declared_size(cnn) == cnn.pretrained_cfg["input_size"][-1] == 160
    assert Preprocess.for_model(cnn).image_size == 160
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    assert declared_size(plain) is None and Preprocess.for_model(plain).image_size == 224
    assert not finish(plain, "f.py:build", None, None, None, None, "random", "0" * 64).size_declared
    plain.pretrained_cfg = {"input_size": "big"}  # not a size: none declared
    assert declared_size(plain) is None


def test_a_checkpoint_carries_its_own_normalization(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    save_checkpoint(tmp_path / "m.pt", net, "test_resnet", ["A", "B"], 24, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    lm = load_model(tmp_path / "m.pt")
    assert lm.preprocess == Preprocess(24, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)) and lm.input_size == 24
    assert load_model(tmp_path / "m.pt", image_size=32).preprocess.image_size == 32  # --image-size wins


def test_resizing_in_memory_matches_the_loaders(tmp_path):
    from xaibatch.dataset import ImageDataset
    from xaibatch.scan import scan

    a = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(a).save(tmp_path / "in" / "x.png")
    pre = Preprocess(16)
    loader = ImageDataset(scan(tmp_path / "in").images, 16)[0].x
    assert torch.equal(torch.from_numpy(pre.resize_image(Image.fromarray(a)).copy()).permute(2, 0, 1), loader)
    # explain()'s tensors and arrays too: they went through torch's antialiased bilinear (--decode device's), a grey
    # level off PIL's, which moved Grad-CAM maps by up to 0.013
    from xaibatch.api import _as_uint8_batch

    t = torch.from_numpy(a).permute(2, 0, 1)[None]
    for given in (t, a[None], t.float() / 255):
        x, sizes, _ = _as_uint8_batch(given, pre)
        assert torch.equal(x[0], loader) and sizes == [(50, 30)]


def test_the_record_reads_back_and_keeps_its_bytes():
    pre = Preprocess(32, IMAGENET_MEAN, IMAGENET_STD)
    assert pre.record() == {"input_size": 32, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    cfg = RunConfig.from_dict({"model": {"arch": "test_resnet", **pre.record()}})
    back = RunConfig.from_json(cfg.to_json())
    assert back.model.preprocess == pre
    assert RunConfig.empty().model.preprocess is None  # an older record without the model's input
    # The run record's model part and the prediction hash as xaibatch wrote them before Preprocess existed.
    model = json.loads(cfg.to_json())["model"]
    assert json.dumps({k: model[k] for k in ("input_size", "mean", "std")}, sort_keys=True) == (
        '{"input_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'
    )
    # computed by the code before Preprocess, from the same fields: existing folders keep their predictions
    assert config_hash({"arch": "a", "checkpoint_sha256": "s", **pre.record()}) == "6fad1e53354d817f"
    assert ModelRecord(**{"arch": "a", **pre.record()}).hashed()["mean"] == list(IMAGENET_MEAN)


def test_a_non_square_vit_is_refused_without_naming_an_option_not_given():
    """A factory's ViT built at 64x96 declares no side; the run fell back to 224 and said "--image-size 224 does
    not fit it", an option never given."""
    from xaibatch.errors import ModelError
    from xaibatch.model.loading import finish

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 96), num_classes=2, depth=1)
    with pytest.raises(ModelError, match=r"built for 64x96 \(height x width\) inputs; xaibatch explains square") as e:
        finish(vit, "factory.py:build", None, None, None, None, "random", "0" * 64)
    assert "--image-size" not in str(e.value)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    st.tuples(*[st.floats(-1, 2)] * 3),
    st.tuples(*[st.floats(1e-3, 10)] * 3),
)
def test_to_uint8_recovers_every_pixel_value_under_any_mean_and_std(mean, std):
    """Any model's normalization (a checkpoint's own mean and std, --mean/--std): every uint8 value comes back
    from its input (LIME's fill and the pixels recovered for the pictures rely on it)."""
    x = torch.arange(256, dtype=torch.uint8).repeat(3).reshape(1, 3, 16, 16)
    pre = Preprocess(16, mean, std)
    assert torch.equal(pre.to_uint8(pre.normalize(x)), x)
