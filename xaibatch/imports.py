"""Import timm and torchvision without torch's compiler, which a batch run never uses.

Two lines import the whole of ``torch._dynamo`` (and through it ``torch.distributed.fsdp``: about 1 s on
a 2-core box, the largest single part of a run's start-up, far more on a fresh GPU host) for code that
runs only under ``torch.compile`` or in models xaibatch rarely builds:

* torchvision 0.2x: ``from torch._dynamo.utils import is_compile_supported`` at the top of
  ``torchvision/ops/roi_align.py`` (called only when ROI Align runs), and timm imports torchvision;
* timm 1.x: ``@torch.compiler.disable`` on a few functions of ``timm/models/naflexvit.py``, applied when
  the module is imported.

While they are imported, ``torch._dynamo.utils`` is a stand-in whose members import the real module on
first use, and ``torch.compiler.disable`` applies the real decorator on a function's first call. Code
that uses the compiler sees no difference; the compiler is only loaded once something uses it.

timm 1.x also imports huggingface_hub's client at import (``HfApi``, ``hf_hub_download``, ``model_info`` and two
error classes: httpx and the API's modules, about 0.14 s of a 1.4 s start-up on a 2-core box) for downloads that
xaibatch never makes (``pretrained=False``). While timm is imported, ``huggingface_hub`` and its ``utils`` are
stand-ins: those names are functions that import the real client on their first call, and the error classes
are placeholders that call swaps for the real ones wherever they were imported; any other name imports the real
package at once. After timm's import, ``import huggingface_hub`` is the real package. Only where :func:`defer_hub`
opted in (``xaibatch run`` from the command line, whose process runs no other code): the stand-ins are no package
(no ``__spec__``, no ``__path__``), so another thread importing from huggingface_hub meanwhile would fail.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
import types
from typing import Any, Callable, Iterator

_DYNAMO_UTILS = "torch._dynamo.utils"


def _real_dynamo_utils() -> types.ModuleType:
    if isinstance(sys.modules.get(_DYNAMO_UTILS), _LazyDynamoUtils):
        del sys.modules[_DYNAMO_UTILS]
    return importlib.import_module(_DYNAMO_UTILS)


class _LazyDynamoUtils(types.ModuleType):
    """``torch._dynamo.utils`` until a member is used; then the real module (imported on that first use)."""

    @staticmethod
    def is_compile_supported(device_type):  # what torchvision takes from it
        return _real_dynamo_utils().is_compile_supported(device_type)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # inspect.getmodule and friends probe every module's __file__
            raise AttributeError(name)
        return getattr(_real_dynamo_utils(), name)


def _lazy_disable(real: Callable) -> Callable:
    """``torch.compiler.disable`` that wraps a function now and imports the compiler on its first call."""

    def disable(fn=None, recursive=True, *, reason=None):
        if fn is None:
            return functools.partial(disable, recursive=recursive, reason=reason)
        # reason= only when given: an older torch's disable(fn=None, recursive=True) (2.6 included) takes none
        wrap = functools.partial(real, reason=reason) if reason is not None else real
        if not isinstance(fn, types.FunctionType):
            return wrap(fn, recursive)
        done: list[Callable] = []

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not done:
                done.append(wrap(fn, recursive))
            return done[0](*args, **kwargs)

        return call

    return disable


@contextlib.contextmanager
def _compiler_deferred() -> Iterator[None]:
    import torch

    compiler = getattr(torch, "compiler", None)
    real_disable = getattr(compiler, "disable", None)
    if "torch._dynamo" in sys.modules or real_disable is None:
        yield
        return
    sys.modules[_DYNAMO_UTILS] = _LazyDynamoUtils(_DYNAMO_UTILS)
    compiler.disable = _lazy_disable(real_disable)
    try:
        yield
    finally:
        compiler.disable = real_disable
        if isinstance(sys.modules.get(_DYNAMO_UTILS), _LazyDynamoUtils):
            del sys.modules[_DYNAMO_UTILS]


_HUB = "huggingface_hub"
_DEFER_HUB = [False]  # defer_hub


def defer_hub(on: bool = True) -> None:
    """Let :func:`import_timm` import timm without huggingface_hub's client (see the module's docstring): for a
    process whose threads xaibatch owns, where nothing else imports from huggingface_hub while timm is imported."""
    _DEFER_HUB[0] = on


_HUB_UTILS = "huggingface_hub.utils"
_HUB_CALLS = {  # what timm calls, not at import (timm < 1.0.22 imported the five names after model_info)
    _HUB: ("HfApi", "hf_hub_download", "model_info")
    + ("create_repo", "get_hf_file_metadata", "hf_hub_url", "repo_type_and_id_from_hf_id", "upload_folder"),
    _HUB_UTILS: (),
}
_HUB_ERRORS = ("EntryNotFoundError", "RepositoryNotFoundError")  # what timm catches around those calls


class _LazyHub(types.ModuleType):
    """``huggingface_hub`` (or its ``utils``) while timm is imported: see the module's docstring."""

    def __init__(self, name: str, placeholders: dict[type, str]) -> None:
        super().__init__(name)
        self._placeholders = placeholders  # placeholder class -> its name in huggingface_hub.utils

    def __getattr__(self, name: str) -> Any:
        if name in _HUB_CALLS[self.__name__]:
            return _deferred_call(self.__name__, name, self._placeholders)
        if self.__name__ == _HUB_UTILS and name in _HUB_ERRORS:
            placeholder = type(name, (Exception,), {"__module__": __name__})
            self._placeholders[placeholder] = name
            return placeholder
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real_hub(self.__name__, self._placeholders), name)  # anything else: the real one, now


def _real_hub(name: str, placeholders: dict[type, str]) -> types.ModuleType:
    """The real ``name`` (huggingface_hub or its utils), imported now; the placeholders handed out meanwhile are
    swapped for the real error classes in every module that imported them."""
    for n in (_HUB_UTILS, _HUB):
        if isinstance(sys.modules.get(n), _LazyHub):
            del sys.modules[n]
    real = importlib.import_module(name)
    if placeholders:
        utils = importlib.import_module(_HUB_UTILS)
        swap = {id(p): getattr(utils, n) for p, n in placeholders.items()}  # the placeholders live until cleared
        for module in list(sys.modules.values()):
            names = getattr(module, "__dict__", None)
            if isinstance(names, dict):
                for key, value in list(names.items()):
                    if id(value) in swap:  # by identity: no attribute of anything else is looked at
                        names[key] = swap[id(value)]
        placeholders.clear()
    return real


def _deferred_call(module: str, name: str, placeholders: dict[type, str]) -> Callable:
    def call(*args, **kwargs):
        return getattr(_real_hub(module, placeholders), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@contextlib.contextmanager
def _hub_deferred() -> Iterator[None]:
    if not _DEFER_HUB[0] or _HUB in sys.modules or importlib.util.find_spec(_HUB) is None:  # (or timm lacks it)
        yield
        return
    placeholders: dict[type, str] = {}
    sys.modules[_HUB] = _LazyHub(_HUB, placeholders)
    sys.modules[_HUB_UTILS] = _LazyHub(_HUB_UTILS, placeholders)
    try:
        yield
    finally:
        for n in (_HUB_UTILS, _HUB):
            if isinstance(sys.modules.get(n), _LazyHub):
                del sys.modules[n]


def import_timm() -> types.ModuleType:
    """``import timm`` (and the torchvision it imports) without importing ``torch._dynamo`` or huggingface_hub's
    client."""
    if "timm" not in sys.modules:
        with _compiler_deferred(), _hub_deferred():
            with contextlib.suppress(ImportError):  # torchvision is optional for torch; timm says so if it needs it
                importlib.import_module("torchvision")
            importlib.import_module("timm")
    return importlib.import_module("timm")


def import_torchvision() -> types.ModuleType:
    """``import torchvision`` without importing ``torch._dynamo``."""
    if "torchvision" not in sys.modules:
        with _compiler_deferred():
            importlib.import_module("torchvision")
    return importlib.import_module("torchvision")
