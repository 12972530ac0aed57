"""Build a timm model from a checkpoint: xaibatch's own format or a plain state_dict.

xaibatch's checkpoint is a dict of plain types (loadable with
``weights_only=True``)::

    {"format": "xaibatch-checkpoint", "version": 1, "arch": "resnet18",
     "class_names": ["FAKE", "REAL"], "input_size": 64,
     "mean": [r, g, b], "std": [r, g, b], "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import difflib
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError, UsageError

FORMAT = "xaibatch-checkpoint"


@dataclass
class LoadedModel:
    module: nn.Module
    arch: str
    class_names: list[str] | None  # None: a plain state_dict that does not name its classes
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoint: str  # path, or "(random init)"
    checkpoint_sha256: str

    @property
    def num_classes(self) -> int:
        return int(self.module.get_classifier().out_features) if hasattr(self.module, "get_classifier") else -1


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, or say why it cannot be used."""
    spec = spec.strip().lower()
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
    raise UsageError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N")


def _create(arch: str, num_classes: int) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelError(f"unknown --arch {arch!r}{hint}")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file safely: tensors and plain containers only, never code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{path}: refused to load: it is not a plain weights file (weights_only=True): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state_dict or xaibatch checkpoint")
    return obj


def _unwrap_state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelError(f"{path}: no tensors found: not a state_dict")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _classifier_out(arch_model: nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    name = (getattr(arch_model, "pretrained_cfg", None) or {}).get("classifier")
    if name and f"{name}.weight" in sd:
        return int(sd[f"{name}.weight"].shape[0])
    return None


def _load_weights(module: nn.Module, sd: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {'; '.join(shapes[:2])}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise ModelError(f"{path} does not fit --arch {arch}: {'; '.join(parts)}")
    module.load_state_dict(sd, strict=True)


def load_model(
    checkpoint: Path | None,
    arch: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """Build the model a checkpoint describes (``checkpoint=None``: random weights for ``arch``)."""
    if checkpoint is None:
        if arch is None:
            raise UsageError("give --checkpoint, or --arch for a randomly initialised model")
        module = _create(arch, num_classes or 2)
        return _finish(module, arch, None, image_size, None, None, "(random init)", "")

    path = Path(checkpoint)
    if not path.is_file():
        raise UsageError(f"--checkpoint {path}: no such file")
    obj = read_checkpoint(path)
    digest = file_sha256(path)
    if obj.get("format") == FORMAT:
        ck_arch = str(obj["arch"])
        if arch and arch != ck_arch:
            raise ModelError(f"{path} was trained as {ck_arch}, not --arch {arch}; drop --arch")
        names = [str(n) for n in obj["class_names"]]
        module = _create(ck_arch, len(names))
        _load_weights(module, _unwrap_state_dict(obj, path), ck_arch, path)
        return _finish(
            module, ck_arch, names, image_size or int(obj["input_size"]), obj.get("mean"), obj.get("std"),
            str(path), digest,
        )
    if arch is None:
        raise UsageError(f"{path} is a plain state_dict: say which timm model it is with --arch NAME")
    sd = _unwrap_state_dict(obj, path)
    probe = _create(arch, num_classes or 2)
    n = _classifier_out(probe, sd) or num_classes or 2
    module = probe if n == (num_classes or 2) else _create(arch, n)
    _load_weights(module, sd, arch, path)
    return _finish(module, arch, None, image_size, None, None, str(path), digest)


def _finish(module, arch, names, image_size, mean, std, source, digest) -> LoadedModel:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    size = int(image_size or cfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(float(v) for v in (mean or cfg.get("mean", (0.485, 0.456, 0.406))))
    std = tuple(float(v) for v in (std or cfg.get("std", (0.229, 0.224, 0.225))))
    module.eval()
    return LoadedModel(module, arch, names, size, mean, std, source, digest)


def save_checkpoint(
    path: Path, module: nn.Module, arch: str, class_names: list[str], input_size: int,
    mean: tuple[float, ...], std: tuple[float, ...], meta: dict[str, Any] | None = None,
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
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
