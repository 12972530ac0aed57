"""Choose and capture the layer that CAM methods read, for CNNs and ViTs alike.

The rule for CNNs: the deepest stage whose feature map is still at least 4x4 at the model's input size
(ResNet's ``layer4`` on a 32x32 input is 1x1 and useless); for torchvision models the stages are ResNets'
``layerN``, the children of ``features`` (EfficientNet, ConvNeXt, Swin, ...) or of the container other
families keep their stages in. For token models (timm's ViT, DeiT; torchvision's ViT) the input of the last
block's attention (``blocks.N.norm1``): the class token's output there still depends on every patch token,
while the last block's own output no longer does. timm models whose stages are channels-last
(``output_fmt == "NHWC"``: Swin, SwinV2, MambaOut, Sequencer), torchvision's Swin and Swin V2, and models whose
stage shapes show it (VOLO: the last dim is the stage's channel count) give (B, H, W, C) maps, read as such and
permuted to (B, C, H, W). Stages that are token sequences (LeViT's, EfficientFormer's last; Twins and MViTv2,
whose ``feature_info`` names stages they do not have, through their final ``norm``) are read as their patch grid
when the tokens are exactly a stage's grid; models with no one grid (CrossViT's two branches, PiT's and TNT's
tuple stages) are refused.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..errors import ModelError

MIN_GRID = 4


@dataclass
class TargetLayer:
    name: str
    module: nn.Module
    grid: tuple[int, int]  # spatial size of the map it gives at the input size
    prefix_tokens: int | None = None  # set for token models: tokens before the patch grid
    channels_last: bool = False  # the output is (B, H, W, C) (timm's NHWC models: Swin, MambaOut, ...)

    @property
    def is_tokens(self) -> bool:
        return self.prefix_tokens is not None

    @property
    def reshaped(self) -> bool:
        """Whether the output needs :meth:`to_grid` to become (B, C, H, W) (a library's ``reshape_transform``)."""
        return self.is_tokens or self.channels_last

    @property
    def form(self) -> str:
        """The output's form, in words (for messages)."""
        if self.is_tokens:
            return "a token sequence"
        return "channels-last (B, H, W, C)" if self.channels_last else "(B, C, H, W)"

    def to_grid(self, out: torch.Tensor) -> torch.Tensor:
        """Return the layer output as (B, C, h, w), reshaping tokens or channels-last maps when needed."""
        if not self.is_tokens:
            if out.ndim != 4:
                raise ModelError(f"layer {self.name!r} gives a {out.ndim}-d output, not a (B, C, H, W) feature map")
            return out.permute(0, 3, 1, 2) if self.channels_last else out
        tokens = out[:, self.prefix_tokens :, :]
        h, w = self.grid
        if tokens.shape[1] != h * w:
            raise ModelError(f"layer {self.name!r}: {tokens.shape[1]} patch tokens do not form a {h}x{w} grid")
        return tokens.reshape(out.shape[0], h, w, out.shape[2]).permute(0, 3, 1, 2)


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        import difflib

        close = difflib.get_close_matches(name, [n for n, _ in model.named_modules() if n], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        children = [n for n, _ in model.named_children()]
        convs = _conv_names(model)
        tail = f"; the last {min(12, len(convs))} of its {len(convs)} conv layers: {', '.join(convs[-12:])}"
        raise ModelError(
            f"model has no layer {name!r}; {hint}its top-level layers: {', '.join(children)}{tail if convs else ''}"
        ) from None


def _conv_names(model: nn.Module) -> list[str]:
    """Every conv-ish submodule's name, in definition order: the candidates for a user's model."""
    return [n for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.Sequential))]


def _is_token_model(model: nn.Module) -> bool:
    return (hasattr(model, "patch_embed") and hasattr(model, "blocks")) or _is_torchvision_vit(model)


def _is_torchvision_vit(model: nn.Module) -> bool:
    return (
        hasattr(model, "conv_proj")
        and hasattr(model, "class_token")
        and hasattr(model, "patch_size")
        and hasattr(getattr(model, "encoder", None), "layers")
    )


def _output_shapes(model: nn.Module, names: list[str], input_size: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for n in names:

        def hook(_m, _i, out, n=n):
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)

        handles.append(_module(model, n).register_forward_hook(hook))
    try:
        with _probing(model), torch.no_grad():
            model(_probe_input(model, input_size))
    finally:
        for h in handles:
            h.remove()
    return shapes


@contextlib.contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for a probe forward (its shapes, its gradient paths), its own mode back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def weights_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model's weights are and their float dtype: its first parameter's (else a float buffer's); a model
    with neither (a pooling toy, ``nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())``): the CPU, float32.
    ``next(model.parameters())`` raised StopIteration out of the layer search for such a model."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    p = next((t for t in tensors if t.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _probe_input(model: nn.Module, input_size: int, noise: bool = False) -> torch.Tensor:
    """One image of ``input_size`` (zeros, or seeded noise) where the model's weights are, of their dtype."""
    shape = (1, 3, input_size, input_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) if noise else torch.zeros(shape)
    return x.to(*weights_place(model))


def _token_layer(model: nn.Module, name: str | None, input_size: int) -> TargetLayer:
    named = name is not None
    if _is_torchvision_vit(model):  # the input of the last block's attention, as timm's norm1
        last_block = list(model.encoder.layers.named_children())[-1][0]  # encoder_layer_N
        name = name or f"encoder.layers.{last_block}.ln_1"
        grid = (input_size // int(model.patch_size),) * 2
    else:
        last = len(model.blocks) - 1
        name = name or f"blocks.{last}.norm1"
        grid = _patch_grid(model.patch_embed, input_size)
        if not named and not _has_module(model, name):  # CrossViT: two branches of blocks, each its own grid
            raise ModelError(
                f"this model has no {name!r}, the input of a ViT's last attention, so xaibatch cannot find a grid of "
                "patch tokens in it; CAM methods cannot read it: use methods that need no layer (lime, captum:*)"
            )
    shapes = _output_shapes(model, [name], input_size)
    if name not in shapes or len(shapes[name]) != 3:
        raise ModelError(f"layer {name!r} does not give a token sequence; pick a block of the ViT")
    # The tokens before the patch grid (class, distillation, register tokens) are counted at the layer itself:
    # a model's num_prefix_tokens is wrong for blocks that run before its class token joins (CaiT, XCiT).
    tokens = shapes[name][1]
    if grid is None or tokens < grid[0] * grid[1]:
        raise ModelError(
            f"layer {name!r} gives {tokens} tokens, not a patch grid of the {input_size}x{input_size} input"
            f"{f' ({grid[0]}x{grid[1]})' if grid else ''} that a map can be drawn from (a model that pools or "
            "reorders its tokens); CAM methods cannot read it: use methods that need no layer (lime, captum:*)"
        )
    layer = TargetLayer(name, _module(model, name), grid, tokens - grid[0] * grid[1])
    if named and layer.prefix_tokens and not _patches_reach_output(model, layer, input_size):
        raise ModelError(
            f"layer {name!r}: the model's output no longer reads the patch tokens there (only its class token goes "
            "on to the head), so every map would be empty; name an earlier layer, or leave --target-layer out for "
            "the last block's attention input"
        )
    return layer


def _patches_reach_output(model: nn.Module, layer: TargetLayer, input_size: int) -> bool:
    """Whether the logits depend on ``layer``'s patch tokens: False when a gradient reaches its prefix tokens but
    none its patches (a class-token ViT's last block output, or its final norm). A head that gives no gradient at
    all (torchvision starts its ViT's at zero) cannot tell: True."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["tokens"] = out.detach().requires_grad_(True)
        return store["tokens"].clone()  # the rest of the forward may change it in place

    handle = layer.module.register_forward_hook(hook)
    try:
        with _probing(model), torch.enable_grad(), frozen(model):
            logits = model(_probe_input(model, input_size, noise=True))
    finally:
        handle.remove()
    if not isinstance(logits, torch.Tensor) or not logits.requires_grad:
        return True
    (grad,) = torch.autograd.grad(logits.sum(), store["tokens"], allow_unused=True)
    if grad is None:
        return True
    return bool(grad[:, layer.prefix_tokens :].abs().amax() > 0) or not bool(grad[:, : layer.prefix_tokens].any())


def _patch_grid(patch_embed: nn.Module, input_size: int) -> tuple[int, int] | None:
    """The patch grid ``patch_embed`` cuts an input of ``input_size`` into, or None when it does not say."""
    if hasattr(patch_embed, "dynamic_feat_size"):
        gh, gw = patch_embed.dynamic_feat_size((input_size, input_size))
        return int(gh), int(gw)
    patch = getattr(patch_embed, "patch_size", None)
    if isinstance(patch, int):
        patch = (patch, patch)
    if not isinstance(patch, (tuple, list)) or len(patch) != 2:
        return None
    return input_size // int(patch[0]), input_size // int(patch[1])


def _channels_last(
    model: nn.Module, name: str, shape: tuple[int, ...], stages: dict[str, tuple[int, ...]]
) -> bool | None:
    """Whether layer ``name`` of ``model``, whose output has 4-d ``shape``, outputs (B, H, W, C); None when that
    cannot be told. ``stages`` holds the output shapes of the model's stages (:func:`_stage_channels`).

    Declared: timm's NHWC models and torchvision's Swin (whose ``features`` run channels-last from the patch
    embedding on), but not their convolutions. Undeclared (VOLO: its ``network`` stages are (B, H, W, C) with no
    ``output_fmt``): a stage whose last dim is its channel count (from ``feature_info``) and whose dim 1 is not is
    channels-last; in such a model another layer is told by which of dim 1 and dim 3 is one of the stages'
    channel counts, and None when both or neither are (a guess could draw every map from the wrong axes)."""
    module = _module(model, name)
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
        return False
    if getattr(model, "output_fmt", None) == "NHWC":
        return True
    if _is_torchvision_swin(model):  # channels-last through ``features`` and ``norm``; ``permute`` on is (B, C, H, W)
        return name == "norm" or name.split(".")[0] == "features"
    channels = _stage_channels(model)
    by_shape = _last_is_channels(shape, {channels[name]} if name in channels else set())
    if by_shape is not None:
        return by_shape
    if not any(_last_is_channels(s, {channels[n]}) for n, s in stages.items() if n in channels and len(s) == 4):
        return False  # a channels-first model, as its stages show
    return _last_is_channels(shape, set(channels.values()))


def _last_is_channels(shape: tuple[int, ...], channels: set[int]) -> bool | None:
    """True when dim 3 of ``shape`` is one of ``channels`` and dim 1 is not, False for the reverse, else None."""
    first, last = shape[1] in channels, shape[3] in channels
    return last if first != last else None


def _stage_channels(model: nn.Module) -> dict[str, int]:
    """The channel count ``feature_info`` gives each stage of a timm model that exists under that name."""
    return {
        e["module"]: int(e["num_chs"])
        for e in _feature_info(model)
        if e.get("num_chs") and _has_module(model, e["module"])
    }


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _is_torchvision_swin(model: nn.Module) -> bool:
    swin = sys.modules.get("torchvision.models.swin_transformer")  # loaded whenever such a model exists
    return swin is not None and isinstance(model, swin.SwinTransformer)


def _grid(shape: tuple[int, ...], channels_last: bool) -> tuple[int, int]:
    return (shape[1], shape[2]) if channels_last else (shape[2], shape[3])


def find_target_layer(model: nn.Module, input_size: int, name: str | None = None) -> TargetLayer:
    """Pick the CAM layer of any timm model (or check the one the user named)."""
    if _is_token_model(model):
        return _token_layer(model, name, input_size)
    stages = list(_stage_channels(model))
    if name is not None:
        return _read_layer(model, name, _output_shapes(model, [name, *stages], input_size), input_size)
    candidates = _stage_names(model)
    shapes = _output_shapes(model, list(dict.fromkeys([*candidates, *stages])), input_size)
    readable: dict[str, TargetLayer] = {}
    for n in candidates:  # shallow to deep
        with contextlib.suppress(ModelError):
            readable[n] = _read_layer(model, n, shapes, input_size)
    best = [layer for layer in readable.values() if min(layer.grid) >= MIN_GRID]
    if best:
        return best[-1]
    if candidates and not readable:
        outputs = ", ".join(f"{n} ({_shape_text(shapes.get(n))})" for n in candidates[-3:])
        raise ModelError(
            f"no stage of this model gives a feature map or a grid of patch tokens that a map can be drawn from "
            f"({'..., ' if len(candidates) > 3 else ''}{outputs}); use methods that need no layer (lime, captum:*), "
            "or name a layer that gives a (B, C, H, W) map with --target-layer"
        )
    if not candidates:  # no size helps: "raise --image-size" sent the user after the wrong cause
        raise ModelError(
            "this model has no stage xaibatch can see (no conv layer): CAM methods cannot find a layer to read; "
            "use methods that need no layer (lime, captum:*), or name a layer that gives a (B, C, H, W) map "
            "with --target-layer"
        )
    listed = ["{} ({}x{})".format(n, *layer.grid) for n, layer in readable.items()][-12:]
    raise ModelError(
        f"no stage of this model keeps a {MIN_GRID}x{MIN_GRID} feature map at input size {input_size}; "
        f"raise --image-size or name a layer with --target-layer; layers with a feature map: {', '.join(listed)}"
    )


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape[1:])) if shape else "no single tensor"


def _read_layer(model: nn.Module, name: str, shapes: dict[str, tuple[int, ...]], input_size: int) -> TargetLayer:
    """How layer ``name`` of a model that is no ViT gives its map (``shapes``: its and the stages' output shapes),
    or a ModelError that says why it gives none."""
    shape = shapes.get(name)
    if shape is not None and len(shape) == 4:
        last = _channels_last(model, name, shape, shapes)
        if last is None:
            stages = ", ".join(_stage_channels(model))
            raise ModelError(
                f"layer {name!r} gives a {_shape_text(shape)} output whose channels xaibatch cannot tell from its "
                f"height (the model's stages are channels-last); name one of its stages: {stages}"
            )
        return TargetLayer(name, _module(model, name), _grid(shape, last), channels_last=last)
    grid = _token_grid(model, shape, input_size) if shape is not None and len(shape) == 3 else None
    if grid is None:
        raise ModelError(
            f"layer {name!r} does not output a (B, C, H, W) feature map or a stage's grid of patch tokens "
            f"(got {_shape_text(shape)})"
        )
    return TargetLayer(name, _module(model, name), grid, prefix_tokens=0)


def _token_grid(model: nn.Module, shape: tuple[int, ...], input_size: int) -> tuple[int, int] | None:
    """The patch grid a (B, N, C) output holds in a model whose stages are token sequences (LeViT, Twins,
    MViTv2), or None: N must be r*r tokens and nothing else, for an r that is a stage's side at ``input_size``
    (its ``feature_info`` reduction, rounded either way) and C that stage's channel count. The tokens are read
    row by row, as such models flatten and reshape them (``x.flatten(2).transpose(1, 2)``)."""
    side = math.isqrt(shape[1])
    if side * side != shape[1]:
        return None
    for e in _feature_info(model):
        if e.get("num_chs") == shape[2] and e.get("reduction") and abs(side - input_size / e["reduction"]) < 1:
            return side, side
    return None


def _feature_info(model: nn.Module) -> list[dict]:
    """A timm model's ``feature_info`` entries (its stages: module name, channels, reduction); [] for others."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    entries = info if isinstance(info, list) else getattr(info, "info", [])
    return [e for e in entries if isinstance(e, dict)]


def _stage_names(model: nn.Module) -> list[str]:
    named = [e["module"] for e in _feature_info(model) if e.get("module")]
    if named:  # Twins and MViTv2 name stages they do not have ("block.0"): their final norm holds the last one's tokens
        return [n for n in named if _has_module(model, n)] or [n for n in ["norm"] if _has_module(model, n)]
    names = _torchvision_stages(model) or []
    if not names:  # neither timm nor torchvision: every conv-ish child, in order
        names = _conv_names(model)
    return names


def _torchvision_stages(model: nn.Module) -> list[str] | None:
    """A torchvision model's stage outputs: ResNets' ``layer1..4`` (after the skip connections, as timm's),
    else the children of ``features`` (EfficientNet, MobileNet, ConvNeXt, Swin, DenseNet, VGG, ...), RegNet's
    ``trunk_output``, MaxViT's ``blocks`` or MNASNet's ``layers``, else the model's own children (GoogLeNet's
    and Inception's whole inception blocks, ShuffleNet's stages): never a conv inside a block, which sees only
    a branch of it or its input before the skip connection."""
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    kids = dict(model.named_children())
    if all(f"layer{i}" in kids for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    for name in ("features", "trunk_output", "blocks", "layers"):
        if isinstance(kids.get(name), (nn.Sequential, nn.ModuleList)):
            return [f"{name}.{n}" for n, _ in kids[name].named_children()]
    return list(kids)


@contextlib.contextmanager
def capture(layer: TargetLayer) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``layer``'s output (as a grid) during forwards inside the block; the hook is always removed.

    With grad enabled, an output that is in no graph (nothing before the layer needs a gradient: see
    :func:`forward_from_layer`) is made the start of one, so the logits' graph reaches the grid all the same."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        started = False
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and not out.requires_grad:
            # A leaf that needs its gradient, and a copy of it for the rest of the forward: the rest may
            # change its input in place (``x += shortcut`` after a targeted ``bn3``, an in-place ReLU),
            # which autograd refuses on a leaf but follows on a copy, as on any other layer's output.
            out = out.detach().requires_grad_(True).clone()
            started = True
        grid = layer.to_grid(out)
        store["activations"] = grid
        if layer.is_tokens:
            # The grid is a reshaped copy the rest of the forward never sees, so the class
            # score would have no gradient with respect to it. Continue the forward from
            # the grid instead (same values), which puts it in the graph of the logits.
            b, c, h, w = grid.shape
            patches = grid.permute(0, 2, 3, 1).reshape(b, h * w, c)
            return torch.cat([out[:, : layer.prefix_tokens], patches], dim=1)
        if layer.channels_last:  # the permuted view is off the graph too: continue from it
            return grid.permute(0, 2, 3, 1)
        return out if started else None

    handle = layer.module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn ``requires_grad`` off for the block on every parameter of ``model`` that has it on; those (and only
    those) get it back on the way out, also when the block raises. Parameters already frozen stay frozen."""
    thawed = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in thawed:
            p.requires_grad_(False)
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


def forward_from_layer(model: nn.Module, x: torch.Tensor, layer: TargetLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``x`` whose autograd graph starts at ``layer``'s output: the logits and that output as a
    (B, C, h, w) grid, in the logits' graph, so the gradient of a class score with respect to the grid (all
    Grad-CAM needs) is one backward away.

    Nothing before the layer is recorded: ``x`` needs no gradient and the parameters' ``requires_grad`` is off
    during the forward (:func:`frozen`), so autograd saves only what the layers after the target layer need
    for their backward, not every activation of the network (resnet50 at 224 px, 32 images: a Grad-CAM batch
    peaks at 1.3 GB RSS instead of 3.6 GB on the CPU; benchmarks/cam_memory.py). The logits have no gradient
    with respect to ``x`` or to any parameter; the layer's gradient is unaffected (no path from the layer to
    the output runs through anything before it).
    """
    with torch.enable_grad(), frozen(model), capture(layer) as store:
        logits = model(x.detach())
    return logits, store["activations"]
