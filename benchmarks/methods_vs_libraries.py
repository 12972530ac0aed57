"""Time xaibatch's batched Guided Grad-CAM and LIME against the reference libraries, on one random model.

Same random-init timm model, same random images, same target classes (the
prediction), same superpixels for every LIME, same sample count and model
batch size. Reports images per second and the speed-up of xaibatch.

    python benchmarks/methods_vs_libraries.py --arch resnet18 --image-size 32 --images 16 --samples 1000

(Run from the repository root with the package installed, or with PYTHONPATH=. .)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import time
import warnings

import numpy as np
import timm
import torch

from xaibatch.layers import capture, find_target_layer
from xaibatch.methods import Batch, ModelContext, create_method
from xaibatch.segmentation import slic_segments


REPEATS = 3


def timed(fn):
    """Run ``fn`` REPEATS times; return the fastest run's seconds (least disturbed by other load) and its result."""
    best, out = float("inf"), None
    for _ in range(REPEATS):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--samples", type=int, default=1000, help="LIME perturbed images per image")
    p.add_argument("--segments", type=int, default=50, help="LIME SLIC n_segments")
    p.add_argument("--lime-batch-size", type=int, default=256, help="model batch for every LIME implementation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="time each implementation this often, keep the fastest")
    p.add_argument("--skip", nargs="*", default=[], choices=["guided", "lime"], help="families to leave out")
    args = p.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)

    torch.manual_seed(0)
    dev = torch.device(args.device)
    size = args.image_size
    model = timm.create_model(args.arch, pretrained=False).eval().to(dev)
    mean = tuple(model.pretrained_cfg["mean"])
    std = tuple(model.pretrained_cfg["std"])
    layer = find_target_layer(model, size)
    ctx = ModelContext(model, layer, size, mean, std, dev)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    m_t = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s_t = torch.tensor(std, device=dev).view(1, 3, 1, 1)

    def normalize(u8: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(u8)).to(dev).permute(0, 3, 1, 2).float() / 255
        return (x - m_t) / s_t

    x = normalize(images)
    with torch.no_grad():
        targets = model(x).argmax(1)
    n = args.images
    print(f"{args.arch} at {size}px on {dev}, {n} images, CAM layer {layer.name} {layer.grid}, "
          f"torch threads {torch.get_num_threads()}")
    rows: list[tuple[str, str, float]] = []

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if "guided" not in args.skip:
        method = create_method("guided-gradcam", ctx)

        def ours_ggc():
            with torch.enable_grad(), capture(layer) as store:
                logits = model(x.clone().requires_grad_(True))
            maps = method.explain(Batch(x, targets, logits, store["activations"])).maps
            sync()
            return maps

        ours_ggc()  # warm-up
        t, ours_maps = timed(ours_ggc)
        rows.append(("guided-gradcam", "xaibatch, batched", t))

        from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        lib_model = copy.deepcopy(model)  # GuidedBackpropReLUModel swaps the ReLU modules for new ones
        lib_layer = lib_model.get_submodule(layer.name)
        reshape = layer.to_grid if layer.is_tokens else None

        def pgc_ggc():
            out = []
            with GradCAM(model=lib_model, target_layers=[lib_layer], reshape_transform=reshape) as cam:
                gb_model = GuidedBackpropReLUModel(model=lib_model, device=dev)
                for i in range(n):  # the library's usage: one image at a time
                    xi = x[i : i + 1]
                    grayscale = cam(input_tensor=xi, targets=[ClassifierOutputTarget(int(targets[i]))])[0]
                    gb = gb_model(xi.clone(), target_category=int(targets[i]))
                    out.append(grayscale[..., None] * gb)
            return out

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, _ = timed(pgc_ggc)
        rows.append(("guided-gradcam", "pytorch-grad-cam, per image", t))

        from captum.attr import GuidedGradCam

        def captum_ggc():
            a = GuidedGradCam(model, layer.module).attribute(
                x.clone().requires_grad_(True), target=targets, interpolate_mode="bilinear"
            )
            sync()
            return a

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            captum_ggc()
            t, _ = timed(captum_ggc)
        rows.append(("guided-gradcam", "captum, batched", t))

    if "lime" not in args.skip:
        seg_fn = functools.partial(slic_segments, n_segments=args.segments)
        method = create_method("lime", ctx, samples=args.samples, segments=args.segments,
                               batch_size=args.lime_batch_size)

        def ours_lime():
            segs = torch.from_numpy(np.stack([seg_fn(im) for im in images])).to(dev)  # workers' job in a run
            e = method.explain(Batch(x, targets, None, None, segs, list(range(n))))
            sync()
            return e

        t, ours_e = timed(ours_lime)
        rows.append(("lime", "xaibatch, batched", t))

        def classifier_fn(batch_u8: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(model(normalize(batch_u8)), dim=1).cpu().numpy()

        from lime.lime_image import LimeImageExplainer

        def lime_lib():
            explainer = LimeImageExplainer(random_state=0)
            for i in range(n):
                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                    explainer.explain_instance(
                        images[i], classifier_fn, labels=(int(targets[i]),), top_labels=None, hide_color=None,
                        num_samples=args.samples, batch_size=args.lime_batch_size, segmentation_fn=seg_fn,
                    )

        t, _ = timed(lime_lib)
        rows.append(("lime", "lime, per image", t))

        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime
        from captum.attr._core.lime import get_exp_kernel_similarity_function

        def probs(inp):
            return torch.softmax(model(inp), dim=1)

        def captum_lime():
            lime = Lime(probs, interpretable_model=SkLearnRidge(alpha=1.0),
                        similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.25))
            for i in range(n):
                seg = torch.from_numpy(seg_fn(images[i])).to(dev)
                fill = method._fill(x[i : i + 1], seg.view(1, -1), int(seg.max()) + 1)  # same mean colour
                lime.attribute(x[i : i + 1], baselines=fill, target=int(targets[i]), feature_mask=seg[None, None],
                               n_samples=args.samples, perturbations_per_eval=args.lime_batch_size)
            sync()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, _ = timed(captum_lime)
        rows.append(("lime", "captum, per image", t))
        segs = [i["segments"] for i in ours_e.info]
        print(f"LIME: {args.samples} samples, {min(segs)}-{max(segs)} superpixels per image, "
              f"model batch {args.lime_batch_size}")

    print(f"\n{'method':<16}{'implementation':<30}{'seconds':>9}{'images/s':>11}{'xaibatch is':>14}")
    for fam in dict.fromkeys(r[0] for r in rows):
        fam_rows = [r for r in rows if r[0] == fam]
        ours = fam_rows[0][2]
        for _, impl, t in fam_rows:
            ratio = "-" if impl.startswith("xaibatch") else f"{t / ours:.1f}x faster"
            print(f"{fam:<16}{impl:<30}{t:>9.2f}{n / t:>11.1f}{ratio:>14}")


if __name__ == "__main__":
    main()
