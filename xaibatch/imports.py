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
"""

from __future__ import annotations

import contextlib
import functools
import importlib
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
        if not isinstance(fn, types.FunctionType):
            return real(fn, recursive, reason=reason)
        done: list[Callable] = []

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not done:
                done.append(real(fn, recursive, reason=reason))
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


def import_timm() -> types.ModuleType:
    """``import timm`` (and the torchvision it imports) without importing ``torch._dynamo``."""
    if "timm" not in sys.modules:
        with _compiler_deferred():
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
