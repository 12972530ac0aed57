"""The timm ecosystem's checkpoints, read into what :func:`loading.load_model` builds from.

* timm's ``train.py`` checkpoints (``model_best.pth.tar``, ``checkpoint-N.pth.tar``; timm's ``CheckpointSaver``):
  a torch.save dict with ``arch`` (its ``--model``), ``state_dict``, maybe ``state_dict_ema``, and ``args``, the
  training's ``argparse.Namespace`` (read as timm reads it: ``weights_only=True`` with that one class allowed).
  The architecture comes from ``arch``, the input size and mean/std from ``args`` where training set them (None
  there: the model's own ``pretrained_cfg``, as timm's ``resolve_data_config`` does); the file names no classes.
  Its ``state_dict`` is explained, as timm's ``validate.py`` does without ``--use-ema``.
* ``.safetensors`` files: tensors only, read with the ``safetensors`` package (never pickle); a plain state_dict,
  so ``--arch`` names the model.
* timm's Hugging Face Hub folders (``timm.models.save_for_hf``, ``push_to_hf_hub``, ``huggingface-cli download``):
  ``config.json`` (``architecture``, ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg``) beside
  ``model.safetensors`` and/or ``pytorch_model.bin`` (safetensors preferred). A folder's digest (the run's
  checkpoint sha256) is :func:`checkpoint_digest`'s.

Imports no torch at import time: the request checks and an unchanged re-run read a folder's ``config.json`` and
digest without it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import math
import os
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError
from ..files import file_sha256

CONFIG = "config.json"
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the order a folder's weights are preferred in
SAFETENSORS = ".safetensors"


@dataclass(frozen=True)
class Described:
    """What a checkpoint says of its model besides the weights; None (or empty): it does not say."""

    arch: str | None = None
    class_names: list[str] | None = None
    input_hw: tuple[int, int] | None = None  # height, width
    mean: list[float] | None = None
    std: list[float] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)  # timm.create_model's keywords (a Hub folder's)


@dataclass(frozen=True)
class HubFolder:
    """A timm Hub folder: its weights file and what its config.json describes."""

    path: Path
    weights: Path
    described: Described


def is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or safetensors' header (a little-endian u64 length, then ``{``) in a file of
    another name."""
    if path.suffix.lower() == SAFETENSORS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 100 * 2**20


def factory_code_sha256(spec: str | None) -> str | None:
    """The sha256 of the file that defines ``--model``'s factory (``FILE.py``, or ``module.path``'s own file: the
    module imported, else the file an import would run, found without running it), part of the predictions' hash
    and of an unchanged re-run's request: a forward edited in it is a new model, whose weights may be the same
    bytes. The modules that file imports in turn are not followed. None for ``timm:``/``torchvision:`` and where
    there is no such file."""
    where = (spec or "").rpartition(":")[0]
    if not where or (spec or "").partition(":")[0] in ("timm", "torchvision"):
        return None
    path = Path(where) if where.endswith(".py") else _module_file(where)
    return file_sha256(path) if path is not None and path.is_file() else None


def _module_file(dotted: str) -> Path | None:
    """The file of module ``dotted``: the one imported, else where importing it (sys.path, then the current folder,
    as ``model.user`` imports it) would find it, without running any of its packages' code."""
    mod = sys.modules.get(dotted)
    if mod is not None:
        where = getattr(mod, "__file__", None)
        return Path(where) if where else None
    parts = dotted.split(".")
    try:
        spec = importlib.util.find_spec(parts[0]) or importlib.machinery.PathFinder.find_spec(parts[0], [os.getcwd()])
        for i in range(1, len(parts)):
            if spec is None or not spec.submodule_search_locations:
                return None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), spec.submodule_search_locations)
    except (ImportError, ValueError, OSError):
        return None
    return Path(spec.origin) if spec is not None and spec.has_location and spec.origin else None


def checkpoint_digest(path: Path) -> str:
    """The sha256 a run records for ``--checkpoint`` (maps are stale when it changes; ``sanity`` checks it; an
    unchanged re-run compares it before any model loads): a file's own; a Hub folder's: its weights file's sha256
    combined with all that its config.json says of the model (:class:`Described`: architecture, classes, input
    size, mean, std, ``model_args``), each of which changes the maps or the predictions. The rest of config.json
    (licence, descriptions) changes neither."""
    path = Path(path)
    return folder_digest(hub_folder(path)) if path.is_dir() else file_sha256(path)


def folder_digest(folder: HubFolder) -> str:
    """:func:`checkpoint_digest` of a Hub folder already read (loading builds its model from the same reading)."""
    h = hashlib.sha256(b"xaibatch hub folder\n")
    h.update(file_sha256(folder.weights).encode() + b"\n")
    h.update(json.dumps(asdict(folder.described), sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def folder_for_factory(path: Path, spec: str) -> UsageError:
    """A folder given to a ``--model`` factory or torchvision model, which loads one weights file."""
    return UsageError(
        f"--checkpoint {path}: a folder; --model {spec} loads a weights file (e.g. --checkpoint FOLDER/model.safetensors)"
    )


def hub_folder(path: Path) -> HubFolder:
    """Read a timm Hub folder's config.json and find its weights; anything else is one line saying what it is."""
    path = Path(path)
    config = path / CONFIG
    weights = [path / name for name in HUB_WEIGHTS if (path / name).is_file()]
    if not config.is_file():
        if weights:
            raise ModelError(
                f"{path}: a folder with {weights[0].name} but no {CONFIG}: give the weights file and its timm "
                f"model, e.g. --checkpoint {weights[0]} --arch NAME"
            )
        raise ModelError(
            f"{path}: a folder, not a checkpoint: give a weights file (.pt, .pth, .safetensors) or a timm Hub "
            f"folder ({CONFIG} with model.safetensors or pytorch_model.bin)"
        )
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelError(f"{config}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{config}: damaged, not JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{config}: damaged: not a JSON object")
    if "architecture" not in cfg:
        kind = cfg.get("architectures") or cfg.get("model_type")
        if kind:
            names = ", ".join(map(str, kind)) if isinstance(kind, list) else str(kind)
            raise ModelError(
                f"{path}: a Hugging Face transformers model ({names}), not a timm one; xaibatch builds timm "
                "models from a folder: load it in your own factory and pass --model FILE.py:FACTORY "
                "(README: Your own model)"
            )
        raise ModelError(f"{config}: names no 'architecture': not a timm Hub folder's config")
    if not weights:
        raise ModelError(
            f"{path}: a timm Hub folder without its weights (model.safetensors or pytorch_model.bin); "
            "download them too (e.g. huggingface-cli download REPO --local-dir FOLDER)"
        )
    return HubFolder(path, weights[0], _described(cfg, config))


def _described(cfg: dict[str, Any], config: Path) -> Described:
    """config.json's fields, as timm's ``_parse_model_cfg`` reads them (a legacy file: one flat dict)."""

    def bad(what: str) -> ModelError:
        return ModelError(f"{config}: damaged: {what}")

    arch = cfg.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise bad("'architecture' is not a model name")
    pre = cfg.get("pretrained_cfg", cfg)
    if not isinstance(pre, dict):
        raise bad("'pretrained_cfg' is not an object")
    args = cfg.get("model_args") or {}
    if not isinstance(args, dict):
        raise bad("'model_args' is not an object")
    if args.get("in_chans") not in (None, 3):
        raise ModelError(f"{config}: a model of {args['in_chans']} input channels; xaibatch explains RGB images")
    if "num_classes" not in args and cfg.get("num_classes") == 0:  # timm <= 1.0.28 wrote model_args only when
        args = {**args, "num_classes": 0}  # given; its top-level num_classes says a model without a classifier
    names = cfg.get("label_names", pre.get("label_names", pre.get("labels")))
    size = pre.get("input_size")
    if size is not None:
        if not isinstance(size, list) or len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise bad("'input_size' is not [channels, height, width]")
        if size[0] != 3:
            raise ModelError(f"{config}: a model of {size[0]} input channels; xaibatch explains RGB images")
    return Described(
        arch=arch,
        class_names=label_names(names, config),
        input_hw=(size[1], size[2]) if size else None,
        mean=rgb(pre.get("mean"), f"{config}'s mean"),
        std=rgb(pre.get("std"), f"{config}'s std", positive=True),
        model_args=dict(args),
    )


def label_names(names: Any, where: Path) -> list[str] | None:
    """``label_names`` as a list in output order (a list, or ``{id: name}`` with every id from 0); None when there
    are none, or they cannot name the outputs one to one (gaps, repeats, empty names): the run's own rule for a
    model that names no classes applies then."""
    if isinstance(names, dict):
        try:
            by_id = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        if sorted(by_id) != list(range(len(by_id))):
            return None
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
        return None
    return list(names)


def rgb(v: Any, what: str, positive: bool = False) -> list[float] | None:
    """A mean or std as three numbers (one number: the same for R, G and B, as timm reads it); None: not given."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        v = [v]
    if (
        not isinstance(v, (list, tuple))
        or len(v) not in (1, 3)
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        or (positive and any(x <= 0 for x in v))
    ):
        raise ModelError(f"{what} must be three {'positive ' if positive else ''}numbers (R, G, B), not {v!r}")
    return [float(x) for x in v] * (3 if len(v) == 1 else 1)


def is_timm_training(obj: dict[str, Any]) -> bool:
    """A checkpoint timm's CheckpointSaver wrote: ``arch`` and ``state_dict`` (with ``args``, ``saver`` or
    ``version``), not xaibatch's format."""
    return (
        "format" not in obj
        and isinstance(obj.get("arch"), str)
        and isinstance(obj.get("state_dict"), dict)
        and any(k in obj for k in ("args", "saver", "version"))
    )


def timm_training(obj: dict[str, Any], path: Path) -> Described:
    """What a train.py checkpoint says: ``arch`` (its ``--model``; without ``args`` it is the model's class name,
    which names no timm model), and from ``args`` the input size (``input_size``, else ``img_size``), ``mean``,
    ``std`` and ``model_kwargs``; None there means the model's defaults, as in timm's resolve_data_config."""
    args = obj.get("args")
    args = vars(args) if hasattr(args, "__dict__") else args if isinstance(args, dict) else {}
    hw = None
    size, side = args.get("input_size"), args.get("img_size")
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 3 or not all(isinstance(v, int) for v in size):
            raise ModelError(f"{path}: its args.input_size {size!r} is not (channels, height, width)")
        if size[0] != 3:
            raise ModelError(f"{path}: trained on {size[0]}-channel inputs; xaibatch explains RGB images")
        hw = (size[1], size[2])
    elif isinstance(side, int):
        hw = (side, side)
    elif isinstance(side, (list, tuple)) and len(side) == 2 and all(isinstance(v, int) for v in side):
        hw = (side[0], side[1])
    if args.get("in_chans") not in (None, 3):
        raise ModelError(f"{path}: trained on {args['in_chans']}-channel inputs; xaibatch explains RGB images")
    kwargs = args.get("model_kwargs")
    return Described(
        arch=obj["arch"] if args else None,
        input_hw=hw,
        mean=rgb(args.get("mean"), f"{path}: its args.mean"),
        std=rgb(args.get("std"), f"{path}: its args.std", positive=True),
        model_args=dict(kwargs) if isinstance(kwargs, dict) else {},
    )


def read_safetensors(path: Path) -> dict[str, Any]:
    """A .safetensors file's tensors (on the CPU); every failure is one :class:`ModelError` line."""
    try:
        from safetensors.torch import load_file
    except ImportError:  # a timm dependency, and xaibatch's; only a broken environment lacks it
        raise ModelError(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)")
    try:
        return load_file(str(path), device="cpu")
    except MemoryError:
        raise ModelError(f"{path}: too large to load into memory") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # SafetensorError (a bad header, a truncated file), ValueError, ...
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a safetensors file xaibatch can read: damaged or truncated ({detail})") from None
