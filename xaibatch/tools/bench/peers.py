"""The reference libraries on the same model and tensors: pytorch-grad-cam, captum and the lime package."""

from __future__ import annotations

import contextlib
import copy
import functools

import numpy as np
import torch

from .context import Bench
from .options import Row
from .timing import Job, Slice


def peer_jobs(b: Bench) -> list[Job]:
    jobs: list[Job] = []
    if "gradcam" in b.opts.only:
        jobs += _gradcam(b)
    if "guided-gradcam" in b.opts.only:
        jobs += _guided(b)
    if "lime" in b.opts.only:
        jobs += _lime(b)
    return jobs


def _reshape(b: Bench):
    return b.layer.to_grid if b.layer.reshaped else None


def _gradcam(b: Bench) -> list[Job]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    n_each = min(b.n, b.opts.per_image_images)
    tlist = b.target_list(n_each)  # the per-image row's; the batched row's as it goes

    def each(sl: Slice) -> None:
        with GradCAM(model=b.model, target_layers=[b.layer.module], reshape_transform=_reshape(b)) as cam:
            for i, _ in sl.chunks(n_each, 1):
                cam(input_tensor=b.x[i : i + 1], targets=[ClassifierOutputTarget(tlist[i])])

    def batched(sl: Slice) -> None:
        with GradCAM(model=b.model, target_layers=[b.layer.module], reshape_transform=_reshape(b)) as cam:
            for a, z in sl.chunks(b.n, b.bs):
                targets = b.targets(z, sl)[a:z].tolist()
                cam(input_tensor=b.x[a:z], targets=[ClassifierOutputTarget(t) for t in targets])

    return [
        (Row("gradcam", "pytorch-grad-cam GradCAM, per image", "peer", n_each), each),
        (Row("gradcam", f"pytorch-grad-cam GradCAM, batches of {b.bs}", "peer", b.n), batched),
    ]


def _guided(b: Bench) -> list[Job]:
    from captum.attr import GuidedGradCam
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    n_each = min(b.n, b.opts.per_image_images)
    tlist = b.target_list(n_each)
    lib_model = copy.deepcopy(b.model)  # GuidedBackpropReLUModel swaps the ReLU modules for its own
    lib_layer = lib_model.get_submodule(b.layer.name)

    def pgc_guided(sl: Slice) -> None:
        with GradCAM(model=lib_model, target_layers=[lib_layer], reshape_transform=_reshape(b)) as cam:
            gb_model = GuidedBackpropReLUModel(model=lib_model, device=b.dev)
            for i, _ in sl.chunks(n_each, 1):  # the library's usage: one image at a time
                xi = b.x[i : i + 1]
                grayscale = cam(input_tensor=xi, targets=[ClassifierOutputTarget(tlist[i])])[0]
                gb = gb_model(xi.clone(), target_category=tlist[i])
                _ = grayscale[..., None] * gb

    def captum_guided(sl: Slice) -> None:
        ggc = GuidedGradCam(b.model, b.layer.module)
        for a, z in sl.chunks(b.n, b.bs):
            ggc.attribute(
                b.x[a:z].clone().requires_grad_(True), target=b.targets(z, sl)[a:z], interpolate_mode="bilinear"
            ).detach().cpu()
        b.sync()

    return [
        (Row("guided-gradcam", "pytorch-grad-cam GradCAM + guided backprop, per image", "peer", n_each), pgc_guided),
        (Row("guided-gradcam", f"captum GuidedGradCam, batches of {b.bs}", "peer", b.n), captum_guided),
    ]


def _lime(b: Bench) -> list[Job]:
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function
    from lime import lime_image
    from lime.lime_image import LimeImageExplainer

    from ...methods import create_method
    from ...methods.segmentation import slic_segments

    n_each = min(b.n_lime, b.opts.lime_peer_images)
    tlist = b.target_list(n_each)
    seg_fn = functools.partial(slic_segments, n_segments=b.opts.lime_segments)
    fill_method = create_method("lime", b.ctx, segments=b.opts.lime_segments)

    def classifier_fn(batch_u8: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(b.model(b.normalize(batch_u8)), dim=1).cpu().numpy()

    def lime_pkg(sl: Slice) -> None:
        explainer = LimeImageExplainer(random_state=0)
        for i, _ in sl.chunks(n_each, 1):
            with _without_bar(lime_image):  # its tqdm bar: printed per image, and its thread outlives it
                explainer.explain_instance(
                    b.images[i],
                    classifier_fn,
                    labels=(tlist[i],),
                    top_labels=None,
                    hide_color=None,
                    num_samples=b.lime_samples(sl.warm),
                    batch_size=b.lime_chunk,
                    segmentation_fn=seg_fn,
                )

    def probs(inp):
        return torch.softmax(b.model(inp), dim=1)

    def captum_lime(sl: Slice) -> None:
        lime = Lime(
            probs,
            interpretable_model=SkLearnRidge(alpha=1.0),
            similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.25),
        )
        for i, _ in sl.chunks(n_each, 1):
            seg = torch.from_numpy(seg_fn(b.images[i])).to(b.dev)
            fill = fill_method.fill(b.x[i : i + 1], seg.view(1, -1), int(seg.max()) + 1)  # the same mean colour
            lime.attribute(
                b.x[i : i + 1],
                baselines=fill,
                target=tlist[i],
                feature_mask=seg[None, None],
                n_samples=b.lime_samples(sl.warm),
                perturbations_per_eval=b.lime_chunk,
            )
        b.sync()

    return [
        (Row("lime", "lime package explain_instance, per image", "peer", n_each), lime_pkg),
        (Row("lime", "captum Lime, per image", "peer", n_each), captum_lime),
    ]


@contextlib.contextmanager
def _without_bar(module):
    """``module``'s ``tqdm`` (the class it imported) passes its iterable through while the block runs: no bar
    printed and no tqdm monitor thread, which would stay and keep a later end-to-end row's report from forking
    (report/forked.py forks only beside no other thread)."""
    saved = module.tqdm
    module.tqdm = lambda iterable, *a, **k: iterable
    try:
        yield
    finally:
        module.tqdm = saved
