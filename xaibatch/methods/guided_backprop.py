"""Guided backpropagation (Springenberg et al., 2015, https://arxiv.org/abs/1412.6806), batched.

The input gradient of each image's class score, with every elementwise
activation module's backward replaced by the guided rule::

    grad_in = f'(x) * [x > 0] * max(grad_out, 0)

For ReLU (f'(x) = [x > 0]) that is exactly the classic rule of the paper, of
captum's ``GuidedBackprop`` and of pytorch-grad-cam's ``GuidedBackpropReLU``.
Unlike those, which only touch ``nn.ReLU``, it is applied to every activation
module a timm model uses (GELU, SiLU, Hardswish, Mish, timm's own classes, ...),
so ViTs, ConvNeXts and EfficientNets get a guided signal rather than a plain
gradient. Not touched, on purpose:

* gates (``Sigmoid``, ``Hardsigmoid``, ``Tanh``) such as the squeeze-excite
  scale: they multiply features, they are not the nonlinearity the rule is
  about, and zeroing their negative inputs would silence whole channels;
* activations called as functions (``F.relu``, attention's softmax): there is
  no module to patch; their gradients stay plain.

The patch is per instance and temporary: each matching module gets an instance
attribute ``forward`` (an :class:`torch.autograd.Function` around its own
forward; for plain ``nn.ReLU`` a cheaper one that keeps only the [y > 0] mask,
for the others one that recomputes f on a private copy of x to get f'(x)) that
is deleted again in ``finally``. No hooks are registered, the
forward values are unchanged (in-place activations still write in place), and
the model is left exactly as it was, also when the forward or backward raises.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import ModelError
from ..imports import import_timm

# Elementwise activations the guided rule applies to. Gates (Sigmoid,
# Hardsigmoid, Tanh) are deliberately absent, see the module docstring.
_TORCH_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
)
_TIMM_ACTIVATION_NAMES = (
    "Swish",
    "Mish",
    "HardSwish",
    "HardMish",
    "GELU",
    "GELUTanh",
    "QuickGELU",
    "PReLU",
    "SwishMe",
    "MishMe",
    "HardSwishMe",
    "HardMishMe",
)


def _timm_activations() -> tuple[type[nn.Module], ...]:
    """Collect timm's activation classes that exist in the installed version."""
    found: list[type[nn.Module]] = []
    try:
        import_timm()  # without torch._dynamo
    except ImportError:  # pragma: no cover - timm is a dependency
        return ()
    for modname in ("timm.layers.activations", "timm.layers.activations_me"):
        try:
            mod = __import__(modname, fromlist=["_"])
        except ImportError:  # pragma: no cover - timm is a dependency, but layouts change
            continue
        for name in _TIMM_ACTIVATION_NAMES:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, nn.Module) and cls not in found:
                found.append(cls)
    return tuple(found)


GUIDED_ACTIVATIONS: tuple[type[nn.Module], ...] = _TORCH_ACTIVATIONS + _timm_activations()


def guided_modules(model: nn.Module) -> list[nn.Module]:
    """Return the distinct activation modules of ``model`` the guided rule reaches."""
    seen: set[int] = set()
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, GUIDED_ACTIVATIONS) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


class _GuidedActivation(torch.autograd.Function):
    """Run an activation's own forward; on the way back apply the guided rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], inplace: bool) -> torch.Tensor:
        # Keep a private copy of the input: an in-place activation (or the copy_
        # below) would otherwise overwrite the x that f'(x) and [x > 0] need.
        xd = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = fn(xd.clone())  # clone: in-place forwards must not touch a leaf
        ctx.xd, ctx.y = xd, y
        if inplace:  # behave like the module: write the result into its input
            x.copy_(y.detach())
            ctx.mark_dirty(x)
            return x
        return y.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        xd, y = ctx.xd, ctx.y
        del ctx.xd, ctx.y
        # vjp of an elementwise f with v = max(grad_out, 0) is f'(x) * v.
        (g,) = torch.autograd.grad(y, xd, grad_outputs=grad_out.clamp(min=0))
        return g * (xd > 0).to(g.dtype), None, None


class _GuidedReLU(torch.autograd.Function):
    """The same rule for plain ReLU, cheaply: f'(x) [x > 0] = [y > 0], no recomputation."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], inplace: bool) -> torch.Tensor:
        y = fn(x)
        ctx.save_for_backward(y > 0)
        if inplace:
            ctx.mark_dirty(x)
            return x if y is x else x.copy_(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (positive,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * positive.to(grad_out.dtype), None, None


def _patched_forward(module: nn.Module, original: Callable[..., Any]) -> Callable[..., Any]:
    inplace = bool(getattr(module, "inplace", False))
    rule = _GuidedReLU if type(module) is nn.ReLU else _GuidedActivation

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(x, torch.Tensor) or not torch.is_grad_enabled():
            return original(x, *args, **kwargs)
        return rule.apply(x, original, inplace)

    return forward


_MISSING = object()


@contextlib.contextmanager
def guided_activations(model: nn.Module) -> Iterator[int]:
    """Patch every guided-reachable activation of ``model`` for the block; yield how many were patched."""
    modules = guided_modules(model)
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for m in modules:
            previous = m.__dict__.get("forward", _MISSING)
            saved.append((m, previous))
            m.forward = _patched_forward(m, m.forward)  # instance attribute shadows the class method
        yield len(modules)
    finally:
        for m, previous in reversed(saved):
            if previous is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = previous


def guided_backprop(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return guided-backprop input gradients (B, C, H, W) for ``targets`` and the number of patched modules.

    One forward and one backward for the whole batch: the gradient of the sum
    of each image's target logit. Images do not interact as long as the model
    is in eval mode (batch norm uses running statistics).
    """
    if not guided_modules(model):
        raise ModelError(
            "guided backpropagation found no activation module in this model (it calls its "
            "activations as functions), so it would only give plain gradients; use another method"
        )
    xin = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), guided_activations(model) as count:
        logits = model(xin)
        score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (grads,) = torch.autograd.grad(score, xin)
    return grads, count
