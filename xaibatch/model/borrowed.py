"""A user's model lent to :func:`xaibatch.explain` for one call and handed back as it came.

Inside, every submodule is in evaluation mode and every parameter's ``.grad`` is None (so a method's
``backward()`` or ``zero_grad()`` never touches the user's gradients); afterwards, also when a method
raised, each submodule's ``training`` flag and each parameter's ``.grad`` (the same tensor object) are
put back, and any hook a method left on a submodule is removed. The model is never moved here.

One call at a time per module: a service's threads that explain with its one model (or a training loop's
thread beside the notebook) lent it twice at once, and each call's end put the other's hooks away and its own
saved flags back: the other call's Grad-CAM found no gradient at its layer, its maps and predictions were of a
model in the middle of being handed back, and the model stayed in evaluation mode after both.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
from torch import nn

# The per-module hook dictionaries of torch 2.x (a missing one is skipped): hooks are compared by their ids.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def hook_ids(module: nn.Module) -> dict[tuple[int, str], frozenset[int]]:
    """Per submodule (by position) and hook dictionary, the ids of the hooks registered on it."""
    return {
        (i, d): frozenset(getattr(m, d).keys())
        for i, m in enumerate(module.modules())
        for d in HOOK_DICTS
        if isinstance(getattr(m, d, None), dict)
    }


_lent: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()  # per module lent
_lent_guard = threading.Lock()


def _lock_of(module: nn.Module) -> threading.RLock:
    with _lent_guard:
        lock = _lent.get(module)
        if lock is None:
            lock = _lent[module] = threading.RLock()
        return lock


@contextlib.contextmanager
def borrowed(module: nn.Module) -> Iterator[nn.Module]:
    """Lend ``module`` in evaluation mode with no parameter gradients; restore both and drop new hooks after. A
    call of another thread that borrows the same module waits until this one has handed it back."""
    with _lock_of(module), _lent_once(module) as lent:
        yield lent


@contextlib.contextmanager
def _lent_once(module: nn.Module) -> Iterator[nn.Module]:
    modules = list(module.modules())
    training = [m.training for m in modules]
    params = list(module.parameters())
    grads = [p.grad for p in params]
    hooks = hook_ids(module)
    try:
        for p in params:
            p.grad = None
        module.eval()
        yield module
    finally:
        for m, flag in zip(modules, training, strict=True):
            m.training = flag
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        for i, m in enumerate(modules):
            for d in HOOK_DICTS:
                table = getattr(m, d, None)
                if isinstance(table, dict):
                    for k in set(table) - hooks.get((i, d), frozenset()):
                        del table[k]
