"""The methods' names and settings, without torch: the CLI checks ``-m cam:...``, ``-m captum:...`` and every
``--method-option`` here (an unchanged re-run imports no torch); ``cam_library`` and ``captum_library`` build their
classes from these tables and check their options with the same functions.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable

from .defaults import LIME_DEFAULTS, LIME_HIDE_MODES
from .errors import UsageError

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

CAM_COMMON = {"aug_smooth": False, "eigen_smooth": False}  # arguments of every CAM's __call__

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
NT_PATTERN = f"{NT_PREFIX}<{'|'.join(TUNNELABLE)}>"  # the NoiseTunnel family's names, as listings show them
REDUCTIONS = ("sum", "mean", "abs-max")  # captum: how (B, 3, H, W) attributions become one map per image
BASELINES = ("zero", "black")  # captum: the normalized input's zero (the mean colour), or black pixels
# The word options captum takes from a fixed list (checked here: captum asserts only once the model has loaded, and
# GuidedGradCam's interpolation, failing inside attribute(), leaves no map at all and stopped a run with an internal
# error). interpolate_mode: torch's modes for a (B, C, h, w) map (linear and trilinear want other shapes).
WORD_CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"),
    "nt_type": ("smoothgrad", "smoothgrad_sq", "vargrad"),
    "interpolate_mode": ("nearest", "nearest-exact", "bilinear", "bicubic", "area"),
}

# The built-in methods' option names (their classes import torch; tests/test_startup.py holds these to them).
BUILTIN_OPTIONS: dict[str, tuple[str, ...]] = {
    "gradcam": (),
    "guided-gradcam": (),
    "lime": (*LIME_DEFAULTS, "batch_size"),
}


def is_library_method(name: str) -> bool:
    """``name`` is one of pytorch-grad-cam's or captum's methods (as the registry would resolve it)."""
    if name.startswith(NT_PREFIX):
        return name[len(NT_PREFIX) :] in TUNNELABLE
    if name.startswith(CAPTUM_PREFIX):
        return name[len(CAPTUM_PREFIX) :] in CAPTUM_SPECS
    return name.startswith(CAM_PREFIX) and name[len(CAM_PREFIX) :] in CAM_SPECS


def all_method_names() -> list[str]:
    """Every method's name (the NoiseTunnel family as its pattern): the built-ins, then the libraries'."""
    return [
        *BUILTIN_OPTIONS,
        *(CAM_PREFIX + n for n in CAM_SPECS),
        *(CAPTUM_PREFIX + n for n in CAPTUM_SPECS),
        NT_PATTERN,
    ]


def unknown_method(name: str, known: Iterable[str]) -> UsageError:
    """The one-line error for a method name that is none of ``known``, with the close matches."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    close += [k for k in known if k.lower() == name.lower() and k not in close]
    hint = f"did you mean {', '.join(close)}?" if close else "see `xaibatch methods`"
    return UsageError(f"unknown method {name!r}; {hint}")


def check_method_names(names: Iterable[str]) -> list[str]:
    """``names`` as a list when each is a method's; else the one-line error for the first that is not."""
    names = list(names)
    for name in names:
        if name not in BUILTIN_OPTIONS and not is_library_method(name):
            raise unknown_method(name, all_method_names())
    return names


def library_defaults(name: str) -> dict[str, Any]:
    """Every option the library method ``name`` takes, with its default (``is_library_method(name)`` must hold)."""
    if name.startswith(NT_PREFIX):
        return {**CAPTUM_SPECS[name[len(NT_PREFIX) :]][0], **NT_DEFAULTS}
    if name.startswith(CAPTUM_PREFIX):
        return dict(CAPTUM_SPECS[name[len(CAPTUM_PREFIX) :]][0])
    return {**CAM_SPECS[name[len(CAM_PREFIX) :]][3], **CAM_COMMON}


def check_option_names(name: str, allowed: Iterable[str], options: dict[str, Any]) -> None:
    """Raise a one-line UsageError for an option the method ``name`` does not take."""
    allowed = set(allowed)
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no options"
        raise UsageError(f"{name}: unknown option {', '.join(unknown)} (it takes: {takes})")


def check_library_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The library method's options with its defaults filled in; a one-line UsageError for an option it does not
    take, a value of the wrong type, or one out of range."""
    defaults = library_defaults(name)
    check_option_names(name, defaults, options)
    opts = {**defaults, **options}
    for key, default in defaults.items():
        v = opts[key]
        if type(v) is not type(default) and not (isinstance(default, float) and type(v) is int):
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a word"}[type(default)]
            raise UsageError(f"{name}: option {key} must be {kind}, not {v!r}")
    if opts.get("batch_size", 1) < 1:
        raise UsageError(f"{name}: batch_size must be at least 1")
    if not 0 < opts.get("ratio_channels_to_ablate", 1.0) <= 1:
        raise UsageError(f"{name}: ratio_channels_to_ablate must be in (0, 1]")
    if opts.get("reduce", REDUCTIONS[0]) not in REDUCTIONS:
        raise UsageError(f"{name}: reduce must be one of {', '.join(REDUCTIONS)}, not {opts['reduce']!r}")
    if opts.get("baseline", BASELINES[0]) not in BASELINES:
        raise UsageError(f"{name}: baseline must be one of {', '.join(BASELINES)}, not {opts['baseline']!r}")
    for key, choices in WORD_CHOICES.items():
        if key in opts and opts[key] not in choices:
            raise UsageError(f"{name}: {key} must be one of {', '.join(choices)}, not {opts[key]!r}")
    for key in ("n_steps", "n_samples", "perturbations_per_eval", "nt_samples"):
        if key in opts and opts[key] < 1:
            raise UsageError(f"{name}: {key} must be at least 1")
    for key in ("window", "stride", "cell", "internal_batch_size", "nt_samples_batch_size"):
        if key in opts and opts[key] < 0:
            raise UsageError(f"{name}: {key} must be 0 (automatic) or more")
    return opts


def lime_option(key: str, value: Any) -> str:
    """A LIME option as a library caller gives it (``lime.samples_max=10``): check_lime_options' default words."""
    return f"lime.{key}={value}"


def check_lime_options(
    options: dict[str, Any], spelled: Callable[[str, Any], str] = lime_option
) -> tuple[dict[str, Any], int | None]:
    """LIME's options with its defaults filled in, and its batch size (None: auto); a one-line UsageError for an
    unknown option, a value of the wrong type or out of range (``methods/lime.py`` and the CLI check with it).

    ``options``: those given (the rest are defaults); ``spelled(key, value)``: an option as its caller would type
    it, for the message about two of them (the CLI's --lime-samples-max 10, a library's lime.samples_max=10)."""
    options = dict(options)
    batch_size = options.pop("batch_size", "auto")
    unknown = set(options) - set(LIME_DEFAULTS)
    if unknown:
        raise UsageError(
            f"lime: unknown option(s) {', '.join(sorted(unknown))}; known: batch_size, {', '.join(LIME_DEFAULTS)}"
        )
    opts = {**LIME_DEFAULTS, **options}
    try:
        opts["samples"] = "auto" if str(opts["samples"]).strip().lower() == "auto" else int(opts["samples"])
        for k in ("segments", "seed", "samples_min", "samples_max", "samples_round"):
            opts[k] = int(opts[k])
        opts["tolerance"] = float(opts["tolerance"])
        batch_size = None if batch_size in (None, "auto") else int(batch_size)
    except (TypeError, ValueError) as e:
        raise UsageError(
            f"lime: options samples (or auto), segments, seed, samples_min, samples_max, "
            f"samples_round and batch_size (or auto) must be integers, tolerance a number ({e})"
        ) from None
    opts["hide"] = str(opts["hide"])
    if opts["samples"] != "auto" and opts["samples"] < 2:
        raise UsageError("lime: samples must be at least 2 (or auto)")
    if opts["segments"] < 2:
        raise UsageError("lime: segments must be at least 2")
    if opts["hide"] not in LIME_HIDE_MODES:
        raise UsageError(f"lime: hide must be one of {', '.join(LIME_HIDE_MODES)}, not {opts['hide']!r}")
    if batch_size is not None and batch_size < 1:
        raise UsageError("lime: batch_size must be at least 1")
    # auto's own options: each value checked whatever --lime-samples, so that a bad one never waits for auto
    for key in ("samples_min", "samples_max"):
        if opts[key] < 2:
            raise UsageError(f"lime: {key} must be at least 2")
    if opts["samples_round"] < 1:
        raise UsageError("lime: samples_round must be at least 1")
    if not opts["tolerance"] > 0 or not math.isfinite(opts["tolerance"]):
        raise UsageError(f"lime: tolerance must be a positive number, not {opts['tolerance']}")
    if opts["samples"] == "auto" and opts["samples_min"] > opts["samples_max"]:
        raise UsageError(auto_bounds_problem(opts, set(options), spelled))
    return opts, batch_size


def auto_bounds_problem(opts: dict[str, Any], given: set[str], spelled: Callable[[str, Any], str]) -> str:
    """Why auto's first round (samples_min) above its ceiling (samples_max) cannot run, in the words of the options
    the caller gave, and the two ways out."""
    low, high = opts["samples_min"], opts["samples_max"]
    ceiling = spelled("samples_max", high) + ("" if "samples_max" in given else " (the default)")
    return (
        f"{ceiling} is below the first round of {spelled('samples', 'auto')} ({low} samples); give "
        f"{spelled('samples_max', low)} or more (or {spelled('samples_min', high)} or less)"
    )


def parse_value(text: str) -> Any:
    """Read an option value as bool (true/false), int, float, or else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method_option(text: str) -> tuple[str, str, Any]:
    """Split ``cam:scorecam.batch_size=32`` into (method, key, value); the key is after the last dot."""
    left, eq, value = text.partition("=")
    method, dot, key = left.rpartition(".")
    if not eq or not dot or not method or not key.isidentifier():
        raise UsageError(f"--method-option {text!r}: expected METHOD.OPTION=VALUE, e.g. cam:scorecam.batch_size=32")
    return method, key, parse_value(value)


def collect_method_options(
    pairs: Iterable[str], methods: Iterable[str], check: Callable[[str, dict[str, Any]], Any]
) -> dict[str, dict[str, Any]]:
    """Parse every ``--method-option``, ``check(method, {key: value})`` each, and refuse one for a method the run
    does not have."""
    wanted = list(methods)
    out: dict[str, dict[str, Any]] = {}
    for text in pairs:
        name, key, value = parse_method_option(text)
        check(name, {key: value})
        if name not in wanted:
            raise UsageError(
                f"--method-option {text!r}: {name} is not among this run's methods ({', '.join(wanted)}); add -m {name}"
            )
        out.setdefault(name, {})[key] = value
    return out


def check_options_lightly(name: str, options: dict[str, Any]) -> None:
    """The torch-free check of a method's options (names, types, ranges); an unknown method's name is the error."""
    check_method_names([name])
    if name in BUILTIN_OPTIONS:
        check_option_names(name, BUILTIN_OPTIONS[name], options)
        if name == "lime":
            check_lime_options(options)
    else:
        check_library_options(name, options)
