"""The library methods' names and settings, without torch: the CLI checks ``-m cam:...`` and ``-m captum:...``
here (an unchanged re-run imports no torch); ``cam_library`` and ``captum_library`` build their classes from them.
"""

from __future__ import annotations

from typing import Any

CAM_PREFIX = "cam:"
CAPTUM_PREFIX = "captum:"
NT_PREFIX = CAPTUM_PREFIX + "NoiseTunnel."

# name: (pytorch_grad_cam class, title, batching, extra options and defaults, when to use it)
CAM_SPECS: dict[str, tuple[str, str, str, dict[str, Any], str]] = {
    "gradcam": (
        "GradCAM",
        "Grad-CAM",
        "batch",
        {},
        "the library's Grad-CAM: a cross-check of the native gradcam (use that one, it is faster)",
    ),
    "gradcam++": (
        "GradCAMPlusPlus",
        "Grad-CAM++",
        "batch",
        {},
        "several instances of the class in one image (Grad-CAM tends to mark only the strongest)",
    ),
    "hirescam": (
        "HiResCAM",
        "HiResCAM",
        "batch",
        {},
        "a map that provably shows where the layer's evidence is (no gradient averaging)",
    ),
    "xgradcam": (
        "XGradCAM",
        "XGrad-CAM",
        "batch",
        {},
        "Grad-CAM with axiom-based channel weights; similar maps, a little more faithful",
    ),
    "layercam": (
        "LayerCAM",
        "Layer-CAM",
        "batch",
        {},
        "finer detail from a shallower --target-layer (positive gradients weight each location)",
    ),
    "eigencam": (
        "EigenCAM",
        "Eigen-CAM",
        "batch",
        {},
        "a class-agnostic look at what the layer attends to (first principal component; ignores --target)",
    ),
    "scorecam": (
        "ScoreCAM",
        "Score-CAM",
        "per image (channel-masked copies in model batches of batch_size)",
        {"batch_size": 16},
        "gradient-free, less noisy than gradients; one forward per layer channel per image (slow)",
    ),
    "ablationcam": (
        "AblationCAM",
        "Ablation-CAM",
        "per image (channel ablations in model batches of batch_size)",
        {"batch_size": 32, "ratio_channels_to_ablate": 1.0},
        "gradient-free: the score drop when each channel is removed; slow, robust to saturation",
    ),
    "fullgrad": (
        "FullGrad",
        "FullGrad",
        "batch",
        {},
        "input gradients plus every bias's gradient map: a fine, complete saliency (ignores the layer)",
    ),
}

# name: (defaults, batching, when to use it)
CAPTUM_SPECS: dict[str, tuple[dict[str, Any], str, str]] = {
    "IntegratedGradients": (
        {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": 0, "baseline": "zero", "reduce": "sum"},
        "batch",
        "signed pixel attributions that add up to the logit change from the baseline; the principled default",
    ),
    "Saliency": (
        {"abs": True, "reduce": "abs-max"},
        "batch",
        "the plain input gradient: fastest pixel-level sensitivity, noisy",
    ),
    "InputXGradient": ({"reduce": "sum"}, "batch", "gradient times input: a cheap signed first-order attribution"),
    "DeepLift": (
        {"baseline": "zero", "reduce": "sum"},
        "batch",
        "signed attributions like Integrated Gradients at one backward's cost (ReLU nets)",
    ),
    "GradientShap": (
        {"n_samples": 5, "stdevs": 0.0, "baseline": "zero", "reduce": "sum", "seed": 0},
        "per image (seeded noise; n_samples copies per model batch)",
        "expected gradients between baseline and image: Integrated Gradients, sampled",
    ),
    "Occlusion": (
        {"window": 0, "stride": 0, "baseline": "zero", "perturbations_per_eval": 16, "reduce": "mean"},
        "batch",
        "model-agnostic: the logit drop when each square patch is hidden (window 0: input/8)",
    ),
    "FeatureAblation": (
        {"cell": 0, "baseline": "zero", "perturbations_per_eval": 16, "reduce": "mean"},
        "batch",
        "model-agnostic, coarse and cheap: the logit drop when each grid cell is hidden (0: input/8)",
    ),
    "GuidedBackprop": ({"reduce": "abs-max"}, "batch", "crisp edges and textures the class is sensitive to"),
    "GuidedGradCam": (
        {"interpolate_mode": "nearest", "reduce": "abs-max"},
        "batch",
        "captum's Guided Grad-CAM: a cross-check of the native guided-gradcam",
    ),
}
# Methods NoiseTunnel may wrap (the perturbation ones would multiply their cost by nt_samples for little gain).
TUNNELABLE = ("IntegratedGradients", "Saliency", "InputXGradient", "DeepLift", "GuidedBackprop", "GuidedGradCam")
NT_DEFAULTS = {"nt_type": "smoothgrad", "nt_samples": 5, "nt_samples_batch_size": 0, "stdevs": 1.0, "seed": 0}


def is_library_method(name: str) -> bool:
    """``name`` is one of pytorch-grad-cam's or captum's methods (as the registry would resolve it)."""
    if name.startswith(NT_PREFIX):
        return name[len(NT_PREFIX) :] in TUNNELABLE
    if name.startswith(CAPTUM_PREFIX):
        return name[len(CAPTUM_PREFIX) :] in CAPTUM_SPECS
    return name.startswith(CAM_PREFIX) and name[len(CAM_PREFIX) :] in CAM_SPECS
