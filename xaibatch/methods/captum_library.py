"""captum's attributions as xaibatch methods: ``captum:IntegratedGradients``, ``captum:Occlusion``, ...

Each method runs captum's own class on the pipeline's batch (``attribute(x,
target=batch.targets)``, the whole batch at once) and reduces its (B, 3, H, W)
attributions to one map per image at the model's input size:

* ``reduce=sum`` (signed methods' default): the sum over the colour channels,
  in the model's logit units, kept signed (red for, blue against the class);
* ``reduce=mean``: the mean over the channels (Occlusion and FeatureAblation,
  whose three channels are hidden together and so carry the same value: the
  drop of the class logit when that patch is hidden);
* ``reduce=abs-max``: the absolute value, maximum over channels, per image
  min-max scaled to [0, 1] (as the native guided-gradcam does).

Baselines (``baseline=zero|black``): ``zero`` is zero in the normalized input
space, i.e. the dataset's mean colour; ``black`` is black pixels.

``captum:NoiseTunnel.<method>`` wraps another method of this module in captum's
``NoiseTunnel`` (SmoothGrad and its variants). GradientShap and NoiseTunnel
draw random noise; they run one image at a time with a generator seeded from
the method's ``seed`` and the image's path, so a map does not depend on which
other images share its batch.

Papers: Integrated Gradients (Sundararajan et al., 2017,
https://arxiv.org/abs/1703.01365), Saliency (Simonyan et al., 2013,
https://arxiv.org/abs/1312.6034), DeepLift (Shrikumar et al., 2017,
https://arxiv.org/abs/1704.02685), GradientShap (Lundberg & Lee, 2017),
Occlusion (Zeiler & Fergus, 2014, https://arxiv.org/abs/1311.2901), guided
backprop (Springenberg et al., 2015), SmoothGrad (Smilkov et al., 2017,
https://arxiv.org/abs/1706.03825). captum is imported only when a method is
constructed.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from ..errors import ModelError, UsageError
from ..model.heads import ONE_LOGIT_SCORES, library_scores, one_logit
from ..model.layers import weights_place
from .base import Batch, Explanation, Family, Method, ModelContext, normalize_per_image
from .base import register_family, register_method
from ..method_specs import CAPTUM_PREFIX, CAPTUM_SPECS as SPECS, NT_DEFAULTS, NT_PREFIX, TUNNELABLE
from ..method_specs import NT_PATTERN, check_library_options
from .lime import mask_seed
from ..threadsafe import catch_warnings, generator

PREFIX = CAPTUM_PREFIX
# Options whose value goes straight to captum's attribute(); the others are read by the adapter.
PASSED = {
    "n_steps",
    "method",
    "abs",
    "n_samples",
    "stdevs",
    "perturbations_per_eval",
    "interpolate_mode",
    "nt_type",
    "nt_samples",
}

SIGNED_DEFAULT = {name: spec[0]["reduce"] != "abs-max" for name, spec in SPECS.items()}


class CaptumMethod(Method):
    """One captum attribution class over the pipeline's batches."""

    library = "captum"
    base: ClassVar[str]  # the captum class
    tunnel: ClassVar[bool] = False  # wrapped in NoiseTunnel

    def __init__(self, ctx: ModelContext, **options: Any) -> None:
        opts = check_library_options(self.name, options)
        super().__init__(ctx, **opts)
        self.signed = opts["reduce"] != "abs-max"  # type: ignore[misc]  # per instance: the reduction decides
        if self.needs_layer and (ctx.layer is None or ctx.layer.reshaped):
            raise ModelError(
                f"{self.name} needs a convolutional (B, C, H, W) target layer; this model's is "
                f"{ctx.layer.form if ctx.layer is not None else 'missing'}"
            )
        try:
            self._captum = importlib.import_module("captum.attr")
        except ImportError as e:
            raise UsageError(f"{self.name} needs captum (pip install captum): {e}") from None
        self._probe()

    def config(self) -> dict[str, Any]:
        extra = {"one_logit_scores": ONE_LOGIT_SCORES} if one_logit(self.ctx.model) else {}
        return {"library": f"captum {_version('captum')}", **self.options, **extra}

    # -- captum

    def _probe(self) -> None:
        """Run once on a blank image now, so a method that cannot run on this model stops the run before it starts."""
        dtype = weights_place(self.ctx.model)[1]
        x = torch.zeros(1, 3, self.ctx.input_size, self.ctx.input_size, device=self.ctx.device, dtype=dtype)
        try:
            self._attribute(x, torch.zeros(1, dtype=torch.long, device=self.ctx.device), [0])
        except Exception as e:  # captum's own message, as one line
            if "used more than once" in str(e):  # DeepLift's hooks on a module the forward calls twice
                raise ModelError(
                    f"{self.name} cannot run on this model: it calls the same activation module more than once per "
                    "forward (as torchvision's ResNets reuse self.relu), which DeepLift's rules cannot follow; "
                    "use captum:IntegratedGradients"
                ) from None
            raise ModelError(f"{self.name} cannot run on this model: {type(e).__name__}: {e}") from None

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.get("baseline", "zero") == "zero":
            return torch.zeros_like(x[:1])
        return self.ctx.preprocess.black(x).expand_as(x[:1]).contiguous()

    def _kwargs(self, x: torch.Tensor) -> dict[str, Any]:
        """captum's attribute() arguments for the base method."""
        o = self.options
        kw = {
            k: v
            for k, v in o.items()
            if k in PASSED and not k.startswith("nt_") and not (self.tunnel and k == "stdevs")
        }
        size = self.ctx.input_size
        if "baseline" in o:
            kw["baselines"] = self._baseline(x)
        if o.get("internal_batch_size"):
            kw["internal_batch_size"] = o["internal_batch_size"]
        elif "internal_batch_size" in o:  # 0: captum would send every step of the whole batch through at once
            kw["internal_batch_size"] = internal_batch(x.shape[0], x.shape[-2] * x.shape[-1])
        if self.base == "Occlusion":
            window = o["window"] or max(2, size // 8)
            stride = o["stride"] or max(1, window // 2)
            kw.update(sliding_window_shapes=(3, window, window), strides=(3, stride, stride))
        if self.base == "FeatureAblation":
            cell = o["cell"] or max(2, size // 8)
            idx = torch.arange(size, device=x.device) // cell
            grid = idx[:, None] * ((size + cell - 1) // cell) + idx[None, :]
            kw["feature_mask"] = grid.expand(1, 3, size, size)
        return kw

    def _make(self) -> Any:
        cls = getattr(self._captum, self.base)
        model = library_scores(self.ctx.model)  # one logit: the attributions of z (of -z for the negative class)
        if self.base != "GuidedGradCam":
            obj = cls(model)
        else:
            assert self.ctx.layer is not None  # needs_layer: __init__ refused it without one
            obj = cls(model, self.ctx.layer.module)
        return self._captum.NoiseTunnel(obj) if self.tunnel else obj

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Return captum's (B, 3, H, W) attributions; random methods one image at a time, seeded per image."""
        obj = self._make()
        kw = self._kwargs(x)
        if self.tunnel:
            o = self.options
            kw.update(nt_type=o["nt_type"], nt_samples=o["nt_samples"], stdevs=float(o["stdevs"]))
            if o["nt_samples_batch_size"]:
                kw["nt_samples_batch_size"] = o["nt_samples_batch_size"]
        model = self.ctx.model
        try:
            with torch.enable_grad(), catch_warnings():
                warnings.simplefilter("ignore")  # captum warns about in-place ReLUs and requires_grad on every call
                if not self.takes_seed:
                    return obj.attribute(x.detach().clone(), target=targets, **kw).detach()
                out = []
                for i in range(x.shape[0]):
                    devices = [x.device] if x.device.type == "cuda" else []
                    seed = mask_seed(self.options["seed"], seeds[i])
                    with generator(), torch.random.fork_rng(devices=devices), _numpy_seeded(seed):
                        torch.manual_seed(seed)
                        out.append(
                            obj.attribute(x[i : i + 1].detach().clone(), target=targets[i : i + 1], **kw).detach()
                        )
                return torch.cat(out)
        finally:
            model.zero_grad(set_to_none=True)

    def _reduce(self, attr: torch.Tensor) -> torch.Tensor:
        how = self.options["reduce"]
        if how == "sum":
            return attr.float().sum(dim=1)
        if how == "mean":
            return attr.float().mean(dim=1)
        maps = attr.abs().amax(dim=1).float()
        top = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        return normalize_per_image(maps / top[:, None, None])

    def explain(self, batch: Batch) -> Explanation:
        seeds = batch.seeds if batch.seeds is not None else [0] * batch.x.shape[0]
        attr = self._attribute(batch.x, batch.targets, seeds)
        maps = self._reduce(attr)
        # one copy of the batch's totals (float() of each was a device synchronisation per image on a GPU)
        info = [{"total": round(t, 6)} for t in attr.float().flatten(1).sum(1).tolist()] if self.signed else None
        return Explanation(maps, info)


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block, then as it was: captum's GradientShap draws its points
    between baseline and input with ``np.random.uniform``, which ``torch.manual_seed`` does not reach."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _make_class(base: str, tunnel: bool = False) -> type[Method]:
    defaults, batching, summary = SPECS[base]
    if tunnel:
        defaults = {**defaults, **NT_DEFAULTS}
        batching = "per image (seeded noise; nt_samples noisy copies per model batch)"
        summary = "SmoothGrad (or VarGrad) around the method: averages away gradient noise at nt_samples times the cost"
    name = (NT_PREFIX if tunnel else PREFIX) + base
    attrs = {
        "name": name,
        "title": f"{'NoiseTunnel ' if tunnel else ''}{base} (captum)",
        "base": base,
        "tunnel": tunnel,
        "defaults": defaults,
        "batching": batching,
        "summary": summary,
        "signed": SIGNED_DEFAULT[base],
        "takes_seed": "seed" in defaults,
        "needs_layer": base == "GuidedGradCam",
        "__doc__": f"captum's {'NoiseTunnel(' if tunnel else ''}{base}{')' if tunnel else ''} on the pipeline's batches.",
    }
    return type(f"Captum_{'NT_' if tunnel else ''}{base}", (CaptumMethod,), attrs)


for _base in SPECS:
    register_method(_make_class(_base))

_TUNNELS: dict[str, type[Method]] = {}


def _resolve_tunnel(name: str) -> type[Method] | None:
    base = name[len(NT_PREFIX) :]
    if base not in TUNNELABLE:
        return None
    if base not in _TUNNELS:
        _TUNNELS[base] = _make_class(base, tunnel=True)
    return _TUNNELS[base]


register_family(
    Family(
        NT_PREFIX,
        _resolve_tunnel,
        NT_PATTERN,
        _resolve_tunnel(NT_PREFIX + "Saliency"),  # type: ignore[arg-type]
        title="NoiseTunnel around a gradient method (captum)",
        options={**NT_DEFAULTS, "...": "the wrapped method's"},
    )
)


# IntegratedGradients' steps go through the model this many input pixels at a time when internal_batch_size is 0 (its
# default): 32 images at 224 px, the memory of a Grad-CAM batch of 32. captum's own default sends every step of the
# whole batch at once, n_steps (50) x the batch: at 224 px on a CPU batch of 32, 1,600 images of resnet50 activations
# and gradients, about 135 GB (an audit's run was killed by the kernel at 22 GB). Measured, resnet50 at 224 px, 4
# images a batch: 4.0 GB peak RSS (6.8 GB with 64 images a chunk; 18 GB before). At 32 px a chunk is 1,568 images.
IG_CHUNK_PIXELS = 32 * 224 * 224


def internal_batch(images: int, pixels: int) -> int:
    """captum's internal_batch_size for a batch of ``images`` of ``pixels`` pixels each: at least the batch (captum's
    minimum), else as many steps' images as IG_CHUNK_PIXELS holds."""
    return max(images, IG_CHUNK_PIXELS // max(1, pixels))
