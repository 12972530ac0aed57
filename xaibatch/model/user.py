"""``--model``: a model built by your own code, by torchvision, or by timm, with weights from ``--checkpoint``.

``FILE.py:FACTORY`` and ``module.path:FACTORY`` import your code and call ``FACTORY()`` with no arguments;
it must return an ``nn.Module`` (with its weights already loaded, or give them with ``--checkpoint``).
That runs your code with your rights: trusted code only, as with ``--template-dir``. A module may carry
timm's ``pretrained_cfg`` dict (``input_size``, ``mean``, ``std``) to say how its inputs are scaled. A factory
that returns a ``DataParallel`` or ``DistributedDataParallel`` is read as the module it wraps (:func:`unwrap_parallel`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from ..defaults import MODEL_FORMS
from ..errors import ModelError, UsageError
from ..files import file_sha256
from ..imports import import_torchvision
from ..runconfig import RANDOM_INIT
from .formats import factory_code_sha256, folder_for_factory
from ..threadsafe import generator
from .loading import LoadedModel, finish, load_weights, load_model, read_state_dict

FORMS = MODEL_FORMS


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _importable(folder: Path) -> None:
    """Let the user's code import its neighbours, as ``python FILE.py`` (its folder) or uvicorn's ``module:app`` (the
    current folder) do: the folder goes last on sys.path, so it never shadows an installed package."""
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.append(entry)


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise UsageError(f"--model {spec}: no such file {path}")
    _importable(path.parent)
    name = f"xaibatch_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}_{path.stem}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise UsageError(f"--model {spec}: cannot import {path}")
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = mod  # so classes defined there (dataclasses, pickling) can find their module
    try:
        mod_spec.loader.exec_module(mod)
    except (Exception, SystemExit) as e:
        sys.modules.pop(name, None)
        raise ModelError(f"--model {spec}: importing {path} failed: {_first_line(e)}") from None
    return mod


def _import_module(dotted: str, spec: str):
    _importable(Path.cwd())
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as e:
        if e.name and dotted.startswith(e.name):
            raise UsageError(
                f"--model {spec}: no module named {dotted!r} (neither on sys.path nor in the current folder; "
                "give a FILE.py instead)"
            ) from None
        raise ModelError(f"--model {spec}: importing {dotted} failed: {_first_line(e)}") from None
    except (Exception, SystemExit) as e:
        raise ModelError(f"--model {spec}: importing {dotted} failed: {_first_line(e)}") from None


def build_factory(spec: str) -> tuple[nn.Module, str]:
    """Import ``FILE.py:FACTORY`` / ``module.path:FACTORY`` and call the factory; errors are one line."""
    where, _, fname = spec.rpartition(":")
    if not where or not fname.isidentifier():
        raise UsageError(f"--model {spec!r}: expected {FORMS}")
    mod = _import_file(Path(where), spec) if where.endswith(".py") else _import_module(where, spec)
    factory = getattr(mod, fname, None)
    if not callable(factory):
        found = sorted(
            n
            for n, v in vars(mod).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__
        )
        hint = f"; it defines {', '.join(found[:10])}" if found else ""
        raise ModelError(f"--model {spec}: {where} has no function {fname!r}{hint}")
    try:
        with generator():  # its random weights: no DataLoader of another thread forks meanwhile
            module = factory()
    except (Exception, SystemExit) as e:
        raise ModelError(f"--model {spec}: {fname}() raised {_first_line(e)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"--model {spec}: {fname}() returned a {type(module).__name__}, not a torch.nn.Module")
    return unwrap_parallel(module)


def unwrap_parallel(module: nn.Module) -> tuple[nn.Module, str]:
    """(the module a ``DataParallel`` or ``DistributedDataParallel`` wraps, the prefix of its names in the wrapper:
    ``"module."``), or (``module``, ""). xaibatch explains on one device, so it runs the wrapped module: through
    the wrapper the layer search saw its names under ``module.`` and picked another layer (a BatchNorm inside
    ``module.layer2`` instead of ``layer2``), and its maps were not the model's."""
    prefix = ""
    while isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        module, prefix = module.module, prefix + "module."
    return module, prefix


def inner_name(name: str | None, prefix: str) -> str | None:
    """A layer ``name`` given in a wrapper's names (``module.layer2``, :func:`unwrap_parallel`'s ``prefix``) as the
    wrapped module names it (``layer2``); any other name as it is."""
    if name and prefix and name.startswith(prefix):
        return name[len(prefix) :]
    return name


def _last_linear(module: nn.Module) -> str | None:
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def build_torchvision(
    name: str, num_classes: int, sd: dict[str, torch.Tensor] | None, image_size: int | None = None
) -> nn.Module:
    """A torchvision classification model, random init, with as many outputs as the weights (or classes) say; a
    ViT is built at ``image_size`` (its position embeddings are sized by it), like timm's token models."""
    torchvision = import_torchvision()
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"--model torchvision:{name}: not a torchvision classification model{hint}")

    sized = {"image_size": image_size} if image_size and name.startswith("vit_") else {}

    def make(n: int) -> nn.Module:
        from .loading import random_init

        try:
            return random_init(lambda: torchvision.models.get_model(name, weights=None, num_classes=n, **sized))
        except Exception as e:
            raise ModelError(f"--model torchvision:{name}: cannot build it: {_first_line(e)}") from None

    module = make(num_classes)
    head = _last_linear(module)
    if sd is not None and head and f"{head}.weight" in sd and sd[f"{head}.weight"].shape[0] != num_classes:
        module = make(int(sd[f"{head}.weight"].shape[0]))
    return module


def weights_sha256(module: nn.Module) -> str:
    """A digest of the weights themselves: what a factory loaded changes the hash even without --checkpoint."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        t = v.detach().cpu().reshape(-1).contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_user_model(spec: str, checkpoint: Path | None, image_size: int | None, num_classes: int | None) -> LoadedModel:
    """Build what ``--model`` names and load ``--checkpoint`` into it (strictly, tensors only)."""
    kind, _, rest = spec.partition(":")
    if kind == "timm":
        from .loading import check_arch, create

        check_arch(rest, what="timm model")  # --model timm:NAME: the message names no --arch the user never gave
        if checkpoint is None:
            module = create(rest, num_classes or 2, img_size=image_size)
            return finish(module, rest, None, image_size, None, None, RANDOM_INIT, weights_sha256(module))
        return load_model(checkpoint, rest, image_size, num_classes, flag="--model timm:")
    sd, source, digest, prefix = None, RANDOM_INIT, "", ""
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            raise folder_for_factory(path, spec)
        if not path.is_file():
            raise UsageError(f"--checkpoint {path}: no such file")
        sd = read_state_dict(path)
        source, digest = str(path), file_sha256(path)
    if kind == "torchvision":
        module = build_torchvision(rest, num_classes or 2, sd, image_size)
    else:
        module, prefix = build_factory(spec)  # a DataParallel's module, its names' prefix in the wrapper
        if checkpoint is None:
            source = f"(weights from {spec})"
    if sd is not None:
        load_weights(module, sd, f"--model {spec}", Path(checkpoint))
    if not digest:
        digest = weights_sha256(module)
    module.to(torch.float32)
    loaded = finish(module, spec, None, image_size, None, None, source, digest)
    loaded.layer_prefix = prefix
    loaded.code_sha256 = factory_code_sha256(spec)
    from .heads import count_outputs

    outputs = count_outputs(module, loaded.input_size, f"--model {spec}")
    loaded.outputs, loaded.probability, loaded.softmax = outputs.count, outputs.probability, outputs.softmax
    return loaded
