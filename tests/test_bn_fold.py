"""BatchNorm folded into the convolution before it (model/fold.py): the same logits to float32 rounding, only where
that is exact, and the original model untouched."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from xaibatch.methods.base import ModelContext
from xaibatch.model.fold import fold_batchnorm, folded_count
from xaibatch.model.loading import load_model
from xaibatch.preprocess import Preprocess
from xaibatch.resources import default_checkpoint

# Measured on these models with randomized statistics: at most 1.5e-6 of the largest logit (float32 rounding
# through 20-50 folded layers); ten times that.
REL_TOL = 1e-5


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters away from a fresh BatchNorm's identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.running_mean.shape[0]
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def norms(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_same_logits(model: nn.Module, folded: nn.Module, size: int) -> None:
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    a, b = logits(model, x), logits(folded, x)
    assert a.shape == b.shape
    err = float((a - b).abs().max() / a.abs().max())
    assert err <= REL_TOL, err


def probe(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


class UserCNN(nn.Module):
    """A plain user CNN: conv -> BatchNorm2d -> ReLU twice, a conv without bias, a BatchNorm without affine."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16, affine=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.head(x.mean(dim=(2, 3)))


class Residual(nn.Module):
    """The conv's output feeds its BatchNorm and a residual add: that pair must stay; the second one folds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn(y) + y
        return self.head(self.bn2(self.conv2(z)).mean(dim=(2, 3)))


class InPlace(UserCNN):
    """The conv's output changed in place before its BatchNorm reads it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y.mul_(2)
        return self.head(torch.relu(self.b1(y)).mean(dim=(2, 3)) @ torch.ones(8, 16) / 8)


class Detached(UserCNN):
    """The conv's output also read, detached and without gradient, outside its BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        with torch.no_grad():
            side = y.detach().amax(dim=(1, 2, 3))
        out = self.head(torch.relu(self.b1(y)).mean(dim=(2, 3)) @ torch.ones(8, 16) / 8)
        return out + side[:, None]


class WeightElsewhere(UserCNN):
    """The conv's weight also used by a functional convolution outside the module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        w = torch.nn.functional.conv2d(x, self.c1.weight, padding=1).mean(dim=(1, 2, 3))
        return self.head(y.mean(dim=(2, 3)) @ torch.ones(8, 16) / 8) + w[:, None]


class DataDependent(UserCNN):
    """A forward whose path depends on the input's values: one probe cannot prove anything about it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        z = self.b1(y) if float(x.mean()) < 100 else self.b1(y) + y
        return self.head(torch.relu(z).mean(dim=(2, 3)) @ torch.ones(8, 16) / 8)


class Reused(nn.Module):
    """One conv and one BatchNorm module called twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(self.bn(self.conv(x)))).mean(dim=(2, 3)))


TIMM = ["regnetx_002", "resnet18", "resnet50", "efficientnet_b0"]


@pytest.mark.parametrize("arch", TIMM)
def test_timm_models_fold_every_norm_to_float_rounding(arch):
    model = randomize_norms(timm.create_model(arch, pretrained=False, num_classes=10))
    folded = fold_batchnorm(model, probe(64))
    assert folded is not model
    assert folded_count(model, folded) == norms(model) > 0
    assert_same_logits(model, folded, 64)


def test_timm_batchnorm_act_keeps_its_activation():
    model = randomize_norms(timm.create_model("efficientnet_b0", pretrained=False, num_classes=10))
    folded = fold_batchnorm(model, probe(64))
    assert type(model.bn1).__name__ == "BatchNormAct2d"
    assert isinstance(folded.bn1, nn.Sequential) and isinstance(folded.bn1[0], type(model.bn1.act))


def test_convnext_has_nothing_to_fold_and_is_returned_itself():
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    assert fold_batchnorm(model, probe(64)) is model


@pytest.mark.parametrize("frozen", [False, True])
def test_torchvision_resnet18(frozen):
    kw = {"norm_layer": FrozenBatchNorm2d} if frozen else {}
    model = randomize_norms(torchvision.models.resnet18(weights=None, num_classes=10, **kw))
    folded = fold_batchnorm(model, probe(64))
    assert folded_count(model, folded) == norms(model) == 20
    assert_same_logits(model, folded, 64)


def test_bundled_model():
    loaded = load_model(default_checkpoint())
    model = loaded.module.eval()
    folded = fold_batchnorm(model, probe(loaded.input_size))
    assert folded_count(model, folded) == norms(model) > 0
    assert_same_logits(model, folded, loaded.input_size)


def test_user_cnn_without_bias_or_affine():
    model = randomize_norms(UserCNN())
    folded = fold_batchnorm(model, probe(32))
    assert folded_count(model, folded) == 2
    assert_same_logits(model, folded, 32)


def test_a_conv_output_read_by_a_residual_add_keeps_its_norm():
    model = randomize_norms(Residual())
    folded = fold_batchnorm(model, probe(16))
    assert isinstance(folded.bn, nn.BatchNorm2d) and folded.conv.weight is model.conv.weight
    assert isinstance(folded.bn2, nn.Identity)  # the exclusive pair still folds
    assert_same_logits(model, folded, 16)


@pytest.mark.parametrize("cls", [InPlace, Detached, WeightElsewhere, DataDependent, Reused])
def test_unclear_pairs_are_not_folded(cls):
    model = randomize_norms(cls())
    folded = fold_batchnorm(model, probe(16))
    assert folded_count(model, folded) == 0
    assert_same_logits(model, folded, 16)


def test_a_norm_in_training_mode_is_left_alone():
    model = randomize_norms(UserCNN())
    model.b1.train()
    folded = fold_batchnorm(model, probe(16))
    assert isinstance(folded.b1, nn.BatchNorm2d) and isinstance(folded.b2, nn.Identity)


def test_the_original_is_untouched_and_shares_what_did_not_change():
    model = randomize_norms(timm.create_model("resnet18", pretrained=False, num_classes=10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_modules()]
    folded = fold_batchnorm(model, probe(32))
    assert [n for n, _ in model.named_modules()] == names
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert folded.fc.weight is model.fc.weight  # not folded: shared, not copied
    assert folded.conv1.weight is not model.conv1.weight


def test_the_context_builds_it_once():
    model = randomize_norms(UserCNN())
    pre = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ctx = ModelContext(model=model, layer=None, preprocess=pre, device=torch.device("cpu"))
    assert ctx.forward_model() is ctx.forward_model()
    assert folded_count(model, ctx.forward_model()) == 2
    assert ctx.model is model


def test_a_torch_without_dispatch_modes_runs_the_model_as_it_is(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fold(name, *args, **kwargs):
        if name.endswith("model.fold"):  # methods/base.py's "from ..model.fold import ..."
            raise ImportError("no torch.utils._python_dispatch")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "xaibatch.model.fold")
    monkeypatch.setattr(builtins, "__import__", no_fold)
    model = randomize_norms(UserCNN())
    pre = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ctx = ModelContext(model=model, layer=None, preprocess=pre, device=torch.device("cpu"))
    assert ctx.forward_model() is model


def count_norm_calls(monkeypatch) -> list[int]:
    """Calls of F.batch_norm from now on (module hooks would be copied into the folded copy, and keep it unfolded)."""
    calls = [0]
    real = torch.nn.functional.batch_norm

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", counted)
    return calls


def test_lime_and_the_scorer_forward_the_folded_copy_with_the_same_maps(monkeypatch):
    """LIME's forwards and faithfulness's go through the folded copy: no BatchNorm of the model runs, and the maps
    and scores are the unfolded model's to float32 rounding (the LIME maps' ridge fit amplifies nothing: same tol)."""
    from _methods_helpers import make_batch, random_images
    from xaibatch.evaluation.faithfulness import FaithConfig, scorer_for
    from xaibatch.methods import create_method

    def run(fold: bool):
        torch.manual_seed(0)
        model = randomize_norms(timm.create_model("resnet18", pretrained=False, num_classes=10))
        calls = count_norm_calls(monkeypatch)
        ctx = ModelContext(model, None, Preprocess(32), torch.device("cpu"))
        if not fold:
            monkeypatch.setattr(ctx, "forward_model", lambda: ctx.model)
        lime = create_method("lime", ctx, samples=64, segments=8)
        batch = make_batch(ctx, random_images(2, 32), activations=False, segmenter=lime.segmenter(), seeds=[1, 2])
        ctx.forward_model()  # built (its probe forward runs the norms once) before counting
        shared = calls[0]
        maps = lime.explain(batch).maps
        scorer = scorer_for(FaithConfig(steps=4), ctx, {"lime": "h"})
        p = torch.softmax(batch.logits, 1).gather(1, batch.targets[:, None])[:, 0]
        scores = scorer.score(batch.x, batch.targets, p, {"lime": maps})["lime"]
        return maps, scores, calls[0] - shared

    maps, scores, norm_calls = run(fold=True)
    ref, ref_scores, ref_calls = run(fold=False)
    assert norm_calls == 0 and ref_calls > 0
    assert float((maps - ref).abs().max()) <= REL_TOL * float(ref.abs().max())
    assert torch.allclose(scores.deletion, ref_scores.deletion, rtol=0, atol=1e-6)
    assert torch.allclose(scores.insertion, ref_scores.insertion, rtol=0, atol=1e-6)


def test_global_hooks_that_change_a_conv_output_keep_its_norm_and_observers_do_not():
    from torch.nn.modules.module import register_module_forward_hook

    model = randomize_norms(UserCNN())
    first = lambda m: isinstance(m, nn.Conv2d) and m.in_channels == 3  # noqa: E731 (c1, in the copy too)
    changing = register_module_forward_hook(lambda m, _i, out: out * 2 if first(m) else None)
    try:
        folded = fold_batchnorm(model, probe(16))
        assert isinstance(folded.b1, nn.BatchNorm2d) and isinstance(folded.b2, nn.Identity)
        assert_same_logits(model, folded, 16)
    finally:
        changing.remove()
    seen = []
    observing = register_module_forward_hook(lambda m, _i, out: seen.append(type(m)) and None)
    try:
        assert folded_count(model, fold_batchnorm(model, probe(16))) == 2 and seen
    finally:
        observing.remove()
