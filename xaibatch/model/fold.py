"""A forward-only copy of a model with each eval-mode BatchNorm folded into the convolution that feeds it.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * w + b``; when its input
is a convolution's output and nothing else reads that output, the map can go into the convolution's weight and
bias, and the BatchNorm out of the forward: one elementwise pass over the activations fewer (LIME's and
faithfulness's forwards, thousands per image, are memory-bound on a GPU). The numbers change by float rounding
only, as a different batch size already changes them.

What is folded is proven on the copy, from one probe forward of random input under a dispatch mode that sees
every tensor operation (also those under ``no_grad``, on detached tensors, in place, or in a global hook): a pair is
folded only when both are of a type whose forward is known (``nn.Conv2d``; ``nn.BatchNorm2d``, timm's
``BatchNormAct2d``, torchvision's ``FrozenBatchNorm2d``), each is called once and has no hooks of its own, the norm is
in eval mode with running statistics, its input *is* the tensor the convolution's operation made, and no operation
but the norm's reads that tensor (a residual add, an in-place change, a view, a hook) nor the convolution's weight
or bias. A forward that reads a tensor's value into Python (``.item()``, ``bool(t)``: its path may depend on the
input) or any failure of the probe leave the model as it is; so does a folded copy whose output differs from the
model's on the probe by more than rounding (the square root of the dtype's epsilon, relative). The original is never
touched: the copy shares every parameter and buffer it does not change (so it costs the folded convolutions'
weights: about 100 MB for a resnet50 on a GPU), and a model with nothing to fold is returned itself. Left unseen: a
forward with Python side effects (a counter on the module: the copy's counts) or one that reads values without a
torch operation (``.numpy()``).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# timm's norm + activation and torchvision's frozen norm, named rather than imported (neither library is needed)
_TIMM_BN_ACT = ("timm.layers.norm_act", "BatchNormAct2d")
_FROZEN_BN = ("torchvision.ops.misc", "FrozenBatchNorm2d")
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _kind(m: nn.Module) -> str | None:
    t = type(m)
    if t is nn.BatchNorm2d:
        return "bn"
    if (t.__module__, t.__name__) == _TIMM_BN_ACT:
        return "bn_act"
    if (t.__module__, t.__name__) == _FROZEN_BN:
        return "frozen"
    return None


def _norm_ok(m: nn.Module) -> bool:
    """A norm whose forward is the affine map of its running statistics."""
    if "forward" in vars(m) or any(getattr(m, h, None) for h in _HOOKS):
        return False
    if _kind(m) == "frozen":
        return all(
            isinstance(getattr(m, n, None), torch.Tensor) for n in ("weight", "bias", "running_mean", "running_var")
        )
    return not m.training and m.running_mean is not None and m.running_var is not None


def _conv_ok(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and "forward" not in vars(m)
        and not any(getattr(m, h, None) for h in _HOOKS)
        and m.weight.is_floating_point()
    )


def _key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class _Reads(TorchDispatchMode):
    """Numbers every tensor operation; records which storages each one reads and which ones convolutions made."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.reads: dict[tuple[str, int], list[int]] = {}
        self.convolved: dict[tuple[str, int], int] = {}  # a convolution's output storage -> its step
        self.scalar = False  # the forward read a tensor's value into Python

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.step += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalar = True
        for a in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(a, torch.Tensor):
                self.reads.setdefault(_key(a), []).append(self.step)
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            self.convolved[_key(out)] = self.step
        return out


@dataclass
class _Call:
    calls: int = 0
    start: int = 0
    end: int = 0
    input: Any = None
    output: Any = None


def _pairs(net: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], Any] | None:
    """The (conv, norm) names of ``net`` that fold exactly, and the probe's output; None when it cannot tell."""
    names: dict[int, list[str]] = {}
    for name, m in net.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    convs = {n: m for n, m in net.named_modules() if _conv_ok(m) and len(names[id(m)]) == 1}
    norms = {n: m for n, m in net.named_modules() if _kind(m) and _norm_ok(m) and len(names[id(m)]) == 1}
    if not convs or not norms:
        return None
    mode = _Reads()
    calls: dict[str, _Call] = {n: _Call() for n in itertools.chain(convs, norms)}

    def pre(name: str):
        def hook(_m, args):
            c = calls[name]
            c.calls += 1
            c.start = mode.step
            c.input = args[0] if args else None

        return hook

    def post(name: str):
        def hook(_m, _args, out):
            c = calls[name]
            c.end = mode.step
            c.output = out  # kept: no later tensor can take its storage's address

        return hook

    handles = []
    try:
        for n, m in itertools.chain(convs.items(), norms.items()):
            handles.append(m.register_forward_pre_hook(pre(n)))
            handles.append(m.register_forward_hook(post(n)))
        with torch.no_grad(), mode:
            out = net(example.clone())
    finally:
        for h in handles:
            h.remove()
    if mode.scalar:
        return None
    producer = {
        id(c.output): n
        for n, c in calls.items()
        if n in convs and c.calls == 1 and isinstance(c.output, torch.Tensor) and c.output.layout == torch.strided
    }
    pairs = []
    for n in norms:
        c = calls[n]
        conv = producer.get(id(c.input)) if c.calls == 1 else None
        if conv is None or convs[conv].out_channels != norms[n].running_mean.numel():
            continue
        cc, m = calls[conv], convs[conv]
        made = mode.convolved.get(_key(cc.output))
        # the conv's output is its convolution's, unchanged on the way out (a global hook), read by the norm alone;
        # its weight and bias are read by that convolution alone
        if made is None or not cc.start < made <= cc.end:
            continue
        if not all(c.start < r <= c.end for r in mode.reads.get(_key(cc.output), []) if r > made):
            continue
        if all(r == made for p in (m.weight, m.bias) if p is not None for r in mode.reads.get(_key(p), [])):
            pairs.append((conv, n))
    return pairs, out


def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Put ``norm``'s affine map into ``conv``, as new parameters (the old ones may be shared with the original)."""
    mean, var = norm.running_mean.double(), norm.running_var.double()
    w = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    b = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = w / torch.sqrt(var + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(((bias - mean) * scale + b).to(conv.weight.dtype), requires_grad=False)


def _after(norm: nn.Module) -> nn.Module:
    """What stays of ``norm`` once folded: timm's activation (and its drop), else nothing."""
    if _kind(norm) != "bn_act":
        return nn.Identity()
    rest = [m for m in (norm.drop, norm.act) if type(m) is not nn.Identity]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def _close(a: Any, b: Any, tol: float) -> bool:
    la, sa = tree_flatten(a)
    lb, sb = tree_flatten(b)
    if sa != sb:
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if x.is_floating_point():
                x, y = x.double(), y.double()
                if not torch.equal(x.isfinite(), y.isfinite()):
                    return False
                x, y = x[x.isfinite()], y[y.isfinite()]
                scale = max(1.0, float(x.abs().max())) if x.numel() else 1.0
                if x.numel() and float((x - y).abs().max()) > tol * scale:
                    return False
            elif not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` for forwards without gradient: a copy with each eval-mode BatchNorm folded into the convolution that
    feeds it where that is exact (see the module's text), or ``model`` itself when nothing folds or anything is
    unclear. ``example``: one input as the model takes it (a probe batch; its values do not matter)."""
    if not any(_kind(m) for m in model.modules()):
        return model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    try:
        net = copy.deepcopy(model, shared)
        found = _pairs(net, example)
        if found is None or not found[0]:
            return model
        pairs, before = found
        for conv, norm in pairs:
            _fold(net.get_submodule(conv), net.get_submodule(norm))
            _set(net, norm, _after(net.get_submodule(norm)))
        with torch.no_grad():
            after = net(example.clone())
    except Exception:  # a model the copy or the probe cannot handle: it runs as it is
        return model
    dtype = example.dtype if example.is_floating_point() else torch.float32
    return net if _close(before, after, torch.finfo(dtype).eps ** 0.5) else model


def folded_count(model: nn.Module, folded: nn.Module) -> int:
    """How many norms ``folded`` (from :func:`fold_batchnorm`) has fewer than ``model``."""
    return sum(1 for m in model.modules() if _kind(m)) - sum(1 for m in folded.modules() if _kind(m))


__all__ = ["fold_batchnorm", "folded_count"]
