"""pytorch-grad-cam's CAM family as xaibatch methods: ``cam:gradcam++``, ``cam:scorecam``, ...

Each method runs the library's own class (``pytorch_grad_cam.GradCAMPlusPlus``
and so on) on the pipeline's batch, on the run's target layer, for the run's
targets (``ClassifierOutputTarget`` per image), and returns its maps as they
come: per image min-max scaled to [0, 1] at the model's input size (the
library's ``scale_cam_image``). Papers: Grad-CAM++ (Chattopadhay et al., 2018,
https://arxiv.org/abs/1710.11063), HiResCAM (Draelos & Carin, 2020,
https://arxiv.org/abs/2011.08891), XGrad-CAM (Fu et al., 2020,
https://arxiv.org/abs/2008.02312), Layer-CAM (Jiang et al., 2021), Eigen-CAM
(Muhammad & Yeasin, 2020, https://arxiv.org/abs/2008.00299), Score-CAM (Wang
et al., 2020, https://arxiv.org/abs/1910.01279), Ablation-CAM (Desai &
Ramaswamy, 2020), FullGrad (Srinivas & Fleuret, 2019,
https://arxiv.org/abs/1905.00780).

The library is imported only when a method is constructed, so listing the
methods (``xaibatch methods``, ``--help``) never loads it. Its hooks are
released in ``finally`` (the library's own ``__exit__`` swallows IndexError,
so its context manager is not used), and the parameter gradients its
``loss.backward()`` leaves on the model are dropped after each batch.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from ..errors import ModelError, UsageError
from ..model.heads import ONE_LOGIT_SCORES, library_scores, one_logit
from ..model.layers import weights_place
from .base import Batch, Explanation, Method, ModelContext, register_method
from ..method_specs import CAM_PREFIX, CAM_SPECS, check_library_options, library_defaults

PREFIX = CAM_PREFIX
# Explained image by image, as the library's loop over a batch's images does anyway (one forward per channel each):
# Score-CAM's library masks the whole batch at once first, B x C copies of the input (32 images, resnet18's 512
# channels at 224 px: 9.9 GB; a run of 10 photos peaked at 7.7 GB), and a batch of minutes said nothing of its
# progress and waited for its end to see a Ctrl-C
ONE_AT_A_TIME = frozenset({"scorecam", "ablationcam"})

SPECS = CAM_SPECS  # (method_specs.py) name: (pytorch_grad_cam class, title, batching, extra options and defaults, when to use it)
PROBE_SKIPPED = {"scorecam", "ablationcam"}  # a probe would cost a forward per channel


@contextlib.contextmanager
def _quiet_progress(*modules: types.ModuleType) -> Iterator[None]:
    """Silence the progress bars Score-CAM and Ablation-CAM print for every image (their module's ``tqdm`` only)."""
    quiet = types.SimpleNamespace(tqdm=lambda it, *a, **k: it)
    saved = [(m, m.__dict__.get("tqdm")) for m in modules if "tqdm" in m.__dict__]
    try:
        for m, _ in saved:
            m.tqdm = quiet
        yield
    finally:
        for m, previous in saved:
            m.tqdm = previous


class LibraryCAM(Method):
    """One pytorch-grad-cam class over the pipeline's batches."""

    library = "pytorch-grad-cam"
    needs_layer = True
    lib_class: ClassVar[str]
    short: ClassVar[str]

    def __init__(self, ctx: ModelContext, **options: Any) -> None:
        super().__init__(ctx, **check_library_options(self.name, options))
        if self.needs_layer and ctx.layer is None:
            raise ModelError(f"{self.name} needs a target layer")
        if next(ctx.model.parameters(), None) is None:  # the library's next(model.parameters()): StopIteration
            raise ModelError(
                f"{self.name} cannot run on a model without parameters (pytorch-grad-cam finds the device from "
                "them); use gradcam or a captum:* method"
            )
        if self.short == "ablationcam" and ctx.layer is not None and ctx.layer.is_tokens:
            raise ModelError(f"{self.name} cannot run on a token model (ViT) layer here; use cam:scorecam or gradcam")
        if self.short == "ablationcam" and ctx.layer is not None and ctx.layer.channels_last:
            raise ModelError(
                f"{self.name} cannot run on a channels-last (B, H, W, C) layer (Swin, MambaOut); "
                "use cam:scorecam or gradcam"
            )
        try:
            self._lib = importlib.import_module("pytorch_grad_cam")
        except ImportError as e:
            raise UsageError(f"{self.name} needs pytorch-grad-cam (pip install grad-cam): {e}") from None
        if self.short not in PROBE_SKIPPED:
            self._probe()

    def config(self) -> dict[str, Any]:
        extra = {"one_logit_scores": ONE_LOGIT_SCORES} if one_logit(self.ctx.model) else {}
        return {"library": f"pytorch-grad-cam {_version('grad-cam')}", **self.options, **extra}

    def _probe(self) -> None:
        """Run once on a blank image now, so a method that cannot run on this model stops the run before it starts."""
        dtype = weights_place(self.ctx.model)[1]
        x = torch.zeros(1, 3, self.ctx.input_size, self.ctx.input_size, device=self.ctx.device, dtype=dtype)
        try:
            self._maps(x, torch.zeros(1, dtype=torch.long, device=self.ctx.device))
        except Exception as e:  # the library's own message, as one line
            raise ModelError(f"{self.name} cannot run on this model: {type(e).__name__}: {e}") from None

    def _make(self) -> Any:
        cls = getattr(self._lib, self.lib_class)
        layer = self.ctx.layer
        assert layer is not None or not self.needs_layer  # __init__ refused a method that needs one without it
        layers = [] if self.short == "fullgrad" or layer is None else [layer.module]
        # FullGrad reads every conv and batch-norm bias, never the run's layer: that layer's reshape (a ViT's tokens,
        # a Swin's channels-last grid) would be applied to those (B, C, H, W) outputs and fail
        reshaped = layer is not None and layer.reshaped and self.short != "fullgrad"
        reshape = layer.to_grid if reshaped and layer is not None else None
        kwargs: dict[str, Any] = {"reshape_transform": reshape}
        if self.short == "ablationcam":
            kwargs.update(
                batch_size=self.options["batch_size"],
                ratio_channels_to_ablate=float(self.options["ratio_channels_to_ablate"]),
            )
        cam = cls(library_scores(self.ctx.model), layers, **kwargs)  # one logit: BinaryClassifierOutputTarget's ±z
        if self.short == "scorecam":
            cam.batch_size = self.options["batch_size"]
        return cam

    def _maps(self, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = self.ctx.model
        mods = [importlib.import_module(f"pytorch_grad_cam.{m}") for m in ("score_cam", "ablation_cam")]
        cam = self._make()
        try:
            with torch.enable_grad(), _quiet_progress(*mods):
                out = cam(
                    # a leaf that needs its gradient: a model whose parameters are all frozen for inference
                    # still builds a graph through the target layer's activations (as the native methods do)
                    input_tensor=x.detach().clone().requires_grad_(True),
                    targets=[ClassifierOutputTarget(t) for t in targets.tolist()],  # one copy, not one per image
                    aug_smooth=self.options["aug_smooth"],
                    eigen_smooth=self.options["eigen_smooth"],
                )
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
        return np.asarray(out, dtype=np.float32)

    def explain(self, batch: Batch) -> Explanation:
        if self.short not in ONE_AT_A_TIME:
            return Explanation(torch.from_numpy(self._maps(batch.x, batch.targets)))
        n = batch.x.shape[0]
        maps = []
        for i in range(n):
            maps.append(self._maps(batch.x[i : i + 1], batch.targets[i : i + 1]))
            batch.progress(i + 1, n)  # the line's share of the batch; a stop is seen after this image
        return Explanation(torch.from_numpy(np.concatenate(maps)))


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _make_class(short: str) -> type[Method]:
    lib_class, title, batching, _, summary = SPECS[short]
    attrs = {
        "name": PREFIX + short,
        "title": f"{title} (pytorch-grad-cam)",
        "lib_class": lib_class,
        "short": short,
        "batching": batching,
        "defaults": library_defaults(PREFIX + short),
        "summary": summary,
        "needs_layer": short != "fullgrad",
        "__doc__": f"pytorch-grad-cam's {lib_class} on the pipeline's batches.",
    }
    return type(f"Cam_{lib_class}", (LibraryCAM,), attrs)


for _short in SPECS:
    register_method(_make_class(_short))
