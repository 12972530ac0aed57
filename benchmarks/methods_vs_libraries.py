"""Time xaibatch's batched Guided Grad-CAM and LIME against the reference libraries, on one random model.

Same random-init timm model, same random images, same target classes (the
prediction), same superpixels for every LIME, same sample count and model
batch size. Reports images per second and the speed-up of xaibatch.

    python benchmarks/methods_vs_libraries.py --arch resnet18 --image-size 32 --images 16 --samples 1000

(Run from the repository root with the package installed, or with PYTHONPATH=. .)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin between jobs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from xaibatch.layers import capture, find_target_layer  # noqa: E402
from xaibatch.methods import Batch, ModelContext, create_method  # noqa: E402
from xaibatch.segmentation import slic_segments  # noqa: E402


def time_interleaved(jobs: list[tuple[str, str, object]], repeats: int) -> list[tuple[str, str, float]]:
    """Run every job once per round, ``repeats`` rounds, after one warm-up; keep each job's fastest round.

    Interleaving and the minimum keep a burst of load from other processes from
    landing on one implementation only.
    """
    best = {(fam, impl): float("inf") for fam, impl, _ in jobs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's "Setting backward hooks on ReLU activations"
        for family in dict.fromkeys(fam for fam, _, _ in jobs):  # one family at a time: LIME's sklearn
            group = [j for j in jobs if j[0] == family]  # threads must not slow down the gradient methods
            for fam, impl, fn in group:
                fn()  # warm-up
            for _ in range(repeats):
                for fam, impl, fn in group:
                    t = time.perf_counter()
                    fn()
                    best[(fam, impl)] = min(best[(fam, impl)], time.perf_counter() - t)
    return [(fam, impl, best[(fam, impl)]) for fam, impl, _ in jobs]


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
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

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
    jobs: list[tuple[str, str, object]] = []

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if "guided" not in args.skip:
        ggc_method = create_method("guided-gradcam", ctx)

        def ours_ggc():
            with torch.enable_grad(), capture(layer) as store:
                logits = model(x.clone().requires_grad_(True))
            maps = ggc_method.explain(Batch(x, targets, logits, store["activations"])).maps
            sync()
            return maps

        jobs.append(("guided-gradcam", "xaibatch, batched", ours_ggc))

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

        jobs.append(("guided-gradcam", "pytorch-grad-cam, per image", pgc_ggc))

        from captum.attr import GuidedGradCam

        def captum_ggc():
            a = GuidedGradCam(model, layer.module).attribute(
                x.clone().requires_grad_(True), target=targets, interpolate_mode="bilinear"
            )
            sync()
            return a

        jobs.append(("guided-gradcam", "captum, batched", captum_ggc))

    if "lime" not in args.skip:
        seg_fn = functools.partial(slic_segments, n_segments=args.segments)
        lime_method = create_method("lime", ctx, samples=args.samples, segments=args.segments,
                               batch_size=args.lime_batch_size)

        def ours_lime():
            segs = torch.from_numpy(np.stack([seg_fn(im) for im in images])).to(dev)  # workers' job in a run
            e = lime_method.explain(Batch(x, targets, None, None, segs, list(range(n))))
            sync()
            return e

        jobs.append(("lime", "xaibatch, batched", ours_lime))

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

        jobs.append(("lime", "lime, per image", lime_lib))

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
                fill = lime_method._fill(x[i : i + 1], seg.view(1, -1), int(seg.max()) + 1)  # same mean colour
                lime.attribute(x[i : i + 1], baselines=fill, target=int(targets[i]), feature_mask=seg[None, None],
                               n_samples=args.samples, perturbations_per_eval=args.lime_batch_size)
            sync()

        jobs.append(("lime", "captum, per image", captum_lime))
        segs = [i["segments"] for i in ours_lime().info]
        print(f"LIME: {args.samples} samples, {min(segs)}-{max(segs)} superpixels per image, "
              f"model batch {args.lime_batch_size}")

    rows = time_interleaved(jobs, max(1, args.repeats))
    print(f"\n{'method':<16}{'implementation':<30}{'seconds':>9}{'images/s':>11}{'xaibatch is':>14}")
    for fam in dict.fromkeys(r[0] for r in rows):
        fam_rows = [r for r in rows if r[0] == fam]
        ours = fam_rows[0][2]
        for _, impl, t in fam_rows:
            ratio = "-" if impl.startswith("xaibatch") else f"{t / ours:.1f}x faster"
            print(f"{fam:<16}{impl:<30}{t:>9.2f}{n / t:>11.1f}{ratio:>14}")


if __name__ == "__main__":
    main()
