"""Build a timm model from a checkpoint: xaibatch's own format, a plain state_dict (torch.save or .safetensors), or
the timm ecosystem's own files (train.py's checkpoints, Hub folders: ``formats.py``).

xaibatch's checkpoint is a dict of plain types (loadable with
``weights_only=True``)::

    {"format": "xaibatch-checkpoint", "version": 1, "arch": "resnet18",
     "class_names": ["FAKE", "REAL"], "input_size": 64,
     "mean": [r, g, b], "std": [r, g, b], "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import argparse
import difflib
import math
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..defaults import IMAGE_SIDES, device_spec_problem, image_side_ok
from ..files import file_sha256, open_temporary
from ..errors import ModelError, UsageError
from ..imports import import_timm
from ..preprocess import Preprocess, declared_size, declares_normalization
from ..runconfig import RANDOM_INIT
from ..threadsafe import catch_warnings, generator
from . import formats

FORMAT = "xaibatch-checkpoint"
HF_HUB = "hf-hub:"  # timm's prefix of a model name that is a Hugging Face Hub repo


@dataclass
class LoadedModel:
    module: nn.Module
    arch: str
    class_names: list[str] | None  # None: a plain state_dict that does not name its classes
    preprocess: Preprocess  # input size, mean and std: how its images become input
    checkpoint: str  # path, or RANDOM_INIT
    checkpoint_sha256: str
    outputs: int | None = None  # set when counted by a forward pass (models not built by timm)
    decision: Any = None  # heads.Decision for two classes (set by the pipeline), else None: argmax
    probability: bool = False  # one output that the model's own sigmoid made (heads.count_outputs)
    softmax: bool = False  # outputs that the model's own softmax made: class probabilities
    # the input size came from --image-size, the checkpoint or the model itself (preprocess.declared_size); False: from
    # nowhere (a factory's or torchvision's model without one: preprocess.DEFAULT_SIZE), which a run says (notices.py)
    size_declared: bool = True
    # a --model factory that returned a DataParallel: the prefix of its layers' names in the wrapper ("module."),
    # which a --target-layer given in the wrapper's names drops (the wrapped module is what runs)
    layer_prefix: str = ""
    # the mean and std came from --mean/--std, the checkpoint or the model itself (preprocess.declares_normalization);
    # False: ImageNet's assumed (a factory's or torchvision's model that names none), which a run says (notices.py)
    norm_declared: bool = True
    # a timm train.py checkpoint that also holds EMA weights (state_dict_ema), not explained: a run says so (notices.py)
    unused_ema: bool = False
    # a --model factory's source file (formats.factory_code_sha256): its code is part of the model, as its weights are
    code_sha256: str | None = None

    @property
    def input_size(self) -> int:
        return self.preprocess.image_size

    @property
    def num_classes(self) -> int:
        if self.outputs is not None:
            return self.outputs
        n = getattr(self.module, "num_classes", None)  # every timm model has it (DeiT's classifier is a pair)
        return int(n) if n is not None else int(self.module.get_classifier().out_features)


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, or say why it cannot be used."""
    spec = spec.strip().lower()
    if problem := device_spec_problem(spec):
        raise UsageError(problem)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA GPU is available here; use --device cpu or auto")
        idx = spec.partition(":")[2]
        if idx and (not idx.isdigit() or int(idx) >= torch.cuda.device_count()):
            raise UsageError(f"--device {spec}: there are {torch.cuda.device_count()} GPU(s) (cuda:0..)")
        return torch.device(spec)


def use_device(device: torch.device) -> None:
    """Make ``cuda:N`` the process's current CUDA device (a run's, serve's, sanity's): what torch puts on "the"
    GPU (the DataLoader's pinning thread, a library's ``torch.device("cuda")``) then goes to N, and GPU 0 gets no
    CUDA context (hundreds of MB) of its own that nobody asked for."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def check_arch(arch: str, source: Path | None = None, what: str = "--arch") -> None:
    """Refuse a name timm does not know, suggesting close ones (``source``: the checkpoint naming it; ``what``:
    how the message names what the user gave)."""
    timm = import_timm()

    if not isinstance(arch, str) or not arch.strip() or not timm.is_model(arch):
        close = difflib.get_close_matches(str(arch), timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        if source is None:
            raise ModelError(f"unknown {what} {arch!r}{hint}")
        raise ModelError(f"{source} names the architecture {arch!r}, which timm {timm.__version__} does not know{hint}")


RANDOM_SEED = 0  # random weights xaibatch builds are drawn from this seed: same command, same model, same maps


def random_init(build, seed: int = RANDOM_SEED):
    """``build()`` under ``seed``, the caller's random state left as it was: a model run with random weights is the
    same model on every run (its weights' digest says so), so a re-run computes only what is new."""
    with generator(), torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU's alone: the GPUs' stay the caller's
        return build()


def create(
    arch: str,
    num_classes: int,
    source: Path | None = None,
    img_size: int | None = None,
    seed: int | None = RANDOM_SEED,
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``arch`` untrained, its weights drawn from ``seed`` (:func:`random_init`; None: from the caller's random
    state, as training does after seeding it with its --seed); models with a fixed input grid (ViT, DeiT, ...) are
    built at ``img_size``; ``model_args``: a checkpoint's own keywords for timm.create_model (a Hub folder's)."""
    if seed is None:
        return _create(arch, num_classes, source, img_size, model_args)
    return random_init(lambda: _create(arch, num_classes, source, img_size, model_args), seed)


def _create(
    arch: str, num_classes: int, source: Path | None, img_size: int | None, model_args: dict[str, Any] | None = None
) -> nn.Module:
    timm = import_timm()

    check_arch(arch, source)
    kwargs = {**(model_args or {}), "num_classes": num_classes}
    try:
        if img_size is not None and "img_size" not in kwargs:
            try:  # only token models take img_size; their position embeddings depend on it
                return timm.create_model(arch, pretrained=False, img_size=img_size, **kwargs)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
        return timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as e:  # a timm entry that cannot be built offline or with these settings
        raise ModelError(f"cannot build {arch} with {num_classes} classes: {type(e).__name__}: {e}") from None


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an error's text, cut at a word (with an ellipsis) when longer than ``limit``."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " …"


def _refusal(e: BaseException) -> str | None:
    """What a weights_only refusal was about, when the file asked to import or call something."""
    import re

    m = re.search(r"GLOBAL\s+([\w.]+)", str(e)) or re.search(r"[Gg]lobal:?\s+([\w.]+)", str(e))
    return m.group(1) if m else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file safely: tensors and plain containers only, never code.

    ``torch.load(weights_only=True)`` refuses any pickle that imports or calls something, so a
    file built to run code on load is rejected before any of it runs. Every failure, whatever
    torch raises, becomes one :class:`ModelError` line.
    """
    try:
        # timm's train.py checkpoints hold their argparse.Namespace: allowed, as timm's own loader does, and
        # nothing else (a Namespace is built from plain values; it runs no code of the file's)
        with catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a user
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from None
    except EOFError:
        raise ModelError(f"{path}: not a PyTorch checkpoint: empty or truncated file") from None
    except MemoryError:
        raise ModelError(f"{path}: too large to load into memory") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or _first_line(e)}") from None
    except RuntimeError as e:
        raise _runtime_error(path, e) from None
    except Exception as e:  # torch's legacy reader raises KeyError, ValueError, ... on arbitrary bytes
        raise ModelError(
            f"{path}: not a PyTorch checkpoint (corrupted, truncated, or another kind of file; {type(e).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state_dict or xaibatch checkpoint")
    return obj


def _unpickling_error(path: Path, e: pickle.UnpicklingError) -> ModelError:
    """What torch.load's UnpicklingError means for ``path``: a pickle that imports, a raw pickle, or not a checkpoint."""
    what = _refusal(e)
    if what:
        return ModelError(
            f"{path}: refused to load: it asks to import {what} while loading, and so could run code; "
            "xaibatch loads only plain weights (torch.load weights_only=True). If you trust the file, "
            "re-save its state_dict with torch.save(model.state_dict(), ...)"
        )
    if _is_raw_pickle(path):
        return ModelError(
            f"{path}: refused to load: a plain Python pickle, not a torch.save file; pickles can run code "
            "when loaded, so xaibatch only reads torch.save files of plain weights (weights_only=True)"
        )
    return ModelError(f"{path}: not a PyTorch checkpoint (corrupted, truncated, or another kind of file)")


def _runtime_error(path: Path, e: RuntimeError) -> ModelError:
    """What torch.load's RuntimeError means for ``path``: a broken zip, the legacy format, not plain weights."""
    msg = str(e)
    if "zip archive" in msg or "central directory" in msg or "inline_container" in msg:
        return ModelError(f"{path}: not a PyTorch checkpoint: corrupted or truncated zip archive")
    if "legacy .tar format" in msg:  # also what torch makes of an all-zero file
        return ModelError(
            f"{path}: not a PyTorch checkpoint xaibatch can read (torch's legacy .tar format, or "
            "another kind of file such as an all-zero one); re-save the weights with "
            "torch.save(model.state_dict(), ...)"
        )
    if "TorchScript" in msg:  # torch.jit.save's archive: its loader builds the file's own code
        return ModelError(
            f"{path}: a TorchScript archive (torch.jit.save), not plain weights; xaibatch loads no TorchScript. "
            "Save the model's state_dict (torch.jit.load(...).state_dict() keeps its keys, if you trust the file) "
            "and give its nn.Module with --model FILE.py:FACTORY"
        )
    if "weights_only" in msg:  # torch's own advice (weights_only=False) would run the file's code
        return ModelError(
            f"{path}: not a checkpoint of plain weights (refused by torch.load weights_only=True); "
            "re-save the weights with torch.save(model.state_dict(), ...)"
        )
    return ModelError(f"{path}: not a readable PyTorch checkpoint: {_first_line(e)}")


def _is_raw_pickle(path: Path) -> bool:
    """A pickle stream of protocol 2+ (what pickle.dump writes), rather than torch's zip container."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(t, torch.Tensor) for t in v.values())


def unwrap_state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint: a state_dict, or one under ``state_dict``, ``model`` or ``model_state_dict``,
    or under the one entry of a training checkpoint that holds a dict of tensors (``{"net": ..., "epoch": 3}``)."""
    for key in ("state_dict", "model", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    else:
        nested = [k for k, v in obj.items() if _tensor_dict(v)]
        if len(nested) == 1 and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[nested[0]]
        elif len(nested) > 1 and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            keys = " and ".join(repr(str(k)) for k in nested[:4])
            raise ModelError(
                f"{path}: no tensors at its top level, and weights under {keys}: re-save the ones to explain "
                f"alone, e.g. torch.save(ckpt[{str(nested[0])!r}], ...)"
            )
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelError(f"{path}: no tensors found: not a state_dict")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file, whatever its format (a .safetensors file's tensors, else
    :func:`read_checkpoint` and :func:`unwrap_state_dict`): what a ``--model`` factory's module loads."""
    if formats.is_safetensors(path):
        return unwrap_state_dict(formats.read_safetensors(path), path)
    return unwrap_state_dict(read_checkpoint(path), path)


def _classifier_out(arch: str, sd: dict[str, torch.Tensor]) -> int | None:
    """The number of classes ``sd``'s classifier has, its name from timm's registry (no model built)."""
    try:
        cfg = import_timm().models.get_pretrained_cfg(arch)
    except Exception:  # timm raises on an unknown tag ("Invalid pretrained tag"): create() says it in one line
        cfg = None
    name = getattr(cfg, "classifier", None) if cfg is not None else None
    if isinstance(name, (tuple, list)):  # DeiT's distilled pair: both heads have the classes
        name = name[0] if name else None
    if name and f"{name}.weight" in sd:
        return int(sd[f"{name}.weight"].shape[0])
    return None


def _fit_prefix(sd: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``sd`` without the one leading prefix that every key carries when the weights were saved through a wrapper
    (``torch.compile``'s ``_orig_mod.``, a LightningModule's ``model.``, DataParallel around either), where the keys
    left are exactly the module's; else ``sd`` as it is."""
    if not sd or set(sd) == set(own):
        return sd
    parts = next(iter(sd)).split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i]) + "."
        if not all(k.startswith(prefix) for k in sd):
            break
        cut = {k[len(prefix) :]: v for k, v in sd.items()}
        if set(cut) == set(own):
            return cut
    return sd


def load_weights(module: nn.Module, sd: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    """Load ``sd`` strictly (a wrapper's key prefix taken off: :func:`_fit_prefix`); a mismatch is one line naming
    ``arch`` as the user gave it (``--arch resnet18``, ``--model torchvision:vit_b_32``, or a checkpoint's own
    architecture)."""
    own = module.state_dict()
    sd = _fit_prefix(sd, own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} is {tuple(sd[k].shape)} in the file but {tuple(own[k].shape)} in the model"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {'; '.join(shapes[:2])}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        hint = _size_hint(module, sd)
        raise ModelError(f"{path} does not fit {arch}: {'; '.join(parts)}{hint}")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # e.g. a tensor torch cannot copy into the parameter
        raise ModelError(f"{path} does not fit {arch}: {str(e).strip().splitlines()[0][:200]}") from None
    bad = [k for k, v in sd.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:  # every prediction would be NaN: refuse before anything is written
        raise ModelError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); "
            "the checkpoint is damaged or its training diverged"
        )


def _size_hint(module: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    """A token model's weights fit one input size: say which, when the file's position embeddings differ."""
    own, theirs = module.state_dict().get("pos_embed"), sd.get("pos_embed")
    patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    if own is None or theirs is None or own.shape == theirs.shape or theirs.ndim != 3 or patch is None:
        return ""
    prefix = 0 if getattr(module, "no_embed_class", False) else int(getattr(module, "num_prefix_tokens", 1))
    side = math.isqrt(max(int(theirs.shape[1]) - prefix, 0))
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    if side < 1 or side * side != theirs.shape[1] - prefix or ph != pw:
        return ""
    return f"; its position embeddings fit --image-size {side * ph}"


def load_model(
    checkpoint: Path | None,
    arch: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    flag: str = "--arch ",
) -> LoadedModel:
    """Build the model a checkpoint describes (``checkpoint=None``: random weights for ``arch``); messages name
    ``arch`` after ``flag``, the option it came with (``--model timm:``)."""
    if checkpoint is None:
        if arch is None:
            raise UsageError("give --checkpoint, or --arch for a randomly initialised model")
        from .user import weights_sha256

        module = create(arch, num_classes or 2, img_size=image_size)
        return finish(module, arch, None, image_size, None, None, RANDOM_INIT, weights_sha256(module))

    if arch is not None:
        check_arch(arch)
    path = Path(checkpoint)
    if not path.exists():
        raise UsageError(f"--checkpoint {path}: no such file")
    if path.is_dir():
        folder = formats.hub_folder(path)
        sd = read_state_dict(folder.weights)
        return _load_described(path, folder.described, sd, arch, image_size, flag, formats.folder_digest(folder))
    if not path.is_file():
        raise UsageError(f"--checkpoint {path}: not a regular file")
    tensors_only = formats.is_safetensors(path)
    obj = formats.read_safetensors(path) if tensors_only else read_checkpoint(path)
    digest = file_sha256(path)
    if obj.get("format") == FORMAT:
        ck_arch, names, size, mean, std = _check_fields(obj, path)
        if arch and arch != ck_arch:
            raise ModelError(
                f"{path} was trained as {ck_arch}, not {flag}{arch}; drop {flag.split()[0]} (the checkpoint "
                "names its architecture)"
            )
        module = create(ck_arch, len(names), source=path, img_size=size)
        load_weights(module, unwrap_state_dict(obj, path), f"its architecture {ck_arch}", path)
        return finish(module, ck_arch, names, image_size or size, mean, std, str(path), digest)
    if not tensors_only and formats.is_timm_training(obj):
        sd = unwrap_state_dict({"state_dict": obj["state_dict"]}, path)
        loaded = _load_described(path, formats.timm_training(obj, path), sd, arch, image_size, flag, digest)
        loaded.unused_ema = _tensor_dict(obj.get("state_dict_ema"))
        return loaded
    if arch is None:
        what = "a .safetensors file of plain weights" if tensors_only else "a plain state_dict"
        raise UsageError(f"{path} is {what}: say which timm model it is with --arch NAME")
    sd = unwrap_state_dict(obj, path)
    n = _classifier_out(arch, sd) or num_classes or 2  # from timm's registry: the model is built once
    module = create(arch, n, img_size=image_size)
    load_weights(module, sd, f"{flag}{arch}", path)
    return finish(module, arch, None, image_size, None, None, str(path), digest)


def _load_described(
    path: Path,
    described: formats.Described,
    sd: dict[str, torch.Tensor],
    arch: str | None,
    image_size: int | None,
    flag: str,
    digest: str,
) -> LoadedModel:
    """Build the model a timm train.py checkpoint or Hub folder describes (``formats.Described``) and load ``sd``:
    its architecture (``arch``, the user's, must agree), its classes from the weights, its input size, mean, std
    and class names where it names them (``image_size``, the user's, first)."""
    timm = import_timm()
    named = described.arch
    if arch and named and arch.split(".")[0] != named.split(".")[0] and timm.is_model(named):  # tags aside
        raise ModelError(
            f"{path} was trained as {named}, not {flag}{arch}; drop {flag.split()[0]} (the checkpoint "
            "names its architecture)"
        )
    name = arch or named
    if name is None:
        raise UsageError(
            f"{path} is a timm training checkpoint saved without its args, which name the model: "
            "say which timm model it is with --arch NAME"
        )
    if arch is None and name.startswith(HF_HUB):  # train.py --model hf-hub:ORG/REPO: the model is the repo's config
        raise UsageError(
            f"{path} was trained from {name}, whose architecture is in that Hub repo's config, not in the "
            "checkpoint: say which timm model it is with --arch NAME"
        )
    if arch is None:
        check_arch(name, path)
    side = image_size
    built = described.model_args.get("img_size")  # the size it is built at (a ViT's position embeddings)
    if built is not None and not described.model_args.get("dynamic_img_size"):
        hw = tuple(built) if isinstance(built, (list, tuple)) else (built, built)
        # the size built at before pretrained_cfg's input_size (an older timm's save_for_hf kept 224 there)
        if side is None and hw[0] == hw[1]:
            side = int(hw[0])
        elif side is not None and hw != (side, side):
            where = f"{path / formats.CONFIG}'s model_args" if path.is_dir() else "its model_kwargs"
            raise ModelError(
                f"{path}: {where} build {name} for {hw[0]}x{hw[1]} inputs (img_size); --image-size {side} "
                "does not fit it: leave --image-size out"
            )
    if side is None and described.input_hw is not None:
        h, w = described.input_hw
        if h != w:
            raise ModelError(
                f"{path}: its model takes {h}x{w} (height x width) inputs; xaibatch explains square inputs: "
                "give --image-size N if the model also takes NxN inputs"
            )
        if not image_side_ok(h):
            raise ModelError(
                f"{path}: its input size {h} is out of xaibatch's range {IMAGE_SIDES[0]}..{IMAGE_SIDES[1]}"
            )
        side = h
    args = described.model_args
    n = _classifier_out(name, sd)
    if n is None and args.get("num_classes") == 0:  # save_for_hf of a model built with num_classes=0
        raise ModelError(
            f"{path}: a {name} without a classifier (num_classes 0: features, no class scores); xaibatch "
            "explains a classifier's classes"
        )
    n = n or args.get("num_classes") or 2
    names = described.class_names
    if n == 1 and names is not None and len(names) != 2:
        names = None  # one logit is read as two classes (heads.adapt): one name cannot say which is which
    elif names is not None and n != 1 and len(names) != n:
        raise ModelError(  # --classes cannot replace them (they differ from the checkpoint's): say where they are
            f"{path}: its label_names name {len(names)} classes, its weights have {n} outputs; correct label_names "
            f"in {path / formats.CONFIG}, or remove them (then named as for a model that names no classes)"
        )
    module = create(name, n, source=None if arch else path, img_size=side, model_args=args)
    load_weights(module, sd, f"{flag}{arch}" if arch else f"its architecture {name}", path)
    return finish(module, name, names, side, described.mean, described.std, str(path), digest)


def _check_fields(obj: dict[str, Any], path: Path):
    """The header fields of xaibatch's format, each checked, so a damaged file is named, not a KeyError."""

    def bad(field: str, why: str):
        return ModelError(f"{path}: damaged xaibatch checkpoint: {field!r} {why}")

    arch = obj.get("arch")
    if not isinstance(arch, str) or not arch:
        raise bad("arch", "is missing or not a name")
    names = obj.get("class_names")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise bad("class_names", "must be a non-empty list of names")
    if len(set(names)) != len(names):
        raise bad("class_names", "repeats a name")
    size = obj.get("input_size")
    if not isinstance(size, int) or not image_side_ok(size):
        raise bad("input_size", "must be a whole number of pixels from {} to {}".format(*IMAGE_SIDES))
    mean, std = obj.get("mean"), obj.get("std")
    for field, v in (("mean", mean), ("std", std)):
        if v is not None and (
            not isinstance(v, (list, tuple))
            or len(v) != 3
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        ):
            raise bad(field, "must be three numbers (R, G, B)")
    if std is not None and any(x <= 0 for x in std):
        raise bad("std", "must be positive")
    if not isinstance(obj.get("state_dict"), dict):
        raise bad("state_dict", "is missing")
    return arch, [str(n) for n in names], size, mean, std


def check_patches(module: nn.Module, what: str, size: int, option: str = "--image-size ") -> None:
    """Refuse an input size that a patch model's patch convolution would cut (its remainder is dropped)."""
    pe = getattr(module, "patch_embed", None)
    patch = getattr(pe, "patch_size", None)
    if isinstance(patch, int):
        patch = (patch, patch)
    if not isinstance(patch, (tuple, list)) or getattr(pe, "dynamic_img_pad", False) or not size % patch[0]:
        return
    p, cut = int(patch[0]), size % int(patch[0])
    fits = " or ".join(f"{option}{v}" for v in (size - cut, size - cut + p) if v >= 8)
    raise ModelError(
        f"{what} cuts its inputs into {p}x{patch[1]} patches: at {option}{size} the last {cut} pixel rows "
        f"and columns would never be seen and the maps would be stretched over them; use {fits}"
    )


def finish(module, arch, names, image_size, mean, std, source, digest) -> LoadedModel:
    pre = Preprocess.for_model(module, image_size, mean, std)
    declared = image_size is not None or declared_size(module) is not None
    size = pre.image_size
    pe = getattr(module, "patch_embed", None)
    fixed = getattr(pe, "img_size", None)
    if fixed is not None and not getattr(module, "dynamic_img_size", False) and tuple(fixed) != (size, size):
        if fixed[0] != fixed[1]:  # declares no side (preprocess.declared_size): size is no --image-size given
            raise ModelError(
                f"{arch} was built for {fixed[0]}x{fixed[1]} (height x width) inputs; xaibatch explains square "
                "inputs: build it at N x N"
            )
        raise ModelError(f"{arch} was built for {fixed[0]}x{fixed[1]} inputs; --image-size {size} does not fit it")
    check_patches(module, arch, size)
    module.eval()
    named = (mean is not None and std is not None) or declares_normalization(module)
    return LoadedModel(module, arch, names, pre, source, digest, size_declared=declared, norm_declared=named)


def save_checkpoint(
    path: Path,
    module: nn.Module,
    arch: str,
    class_names: list[str],
    input_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write xaibatch's checkpoint format (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": 1,
        "arch": arch,
        "class_names": list(class_names),
        "input_size": int(input_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        "meta": meta or {},
    }
    save_atomically(payload, path)


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, renamed over it: a stop or a full disk mid-write
    leaves ``path`` as it was and no half-written file (the temporary one is removed)."""
    tmp, f = open_temporary(path)  # never a fixed name: a user's m.pt.tmp, or a second training's, is not it
    try:
        with f:
            torch.save(obj, f)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
