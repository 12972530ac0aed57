"""Import torch and the libraries a computing run needs in a thread, while the main thread scans the folder.

Only for a run that will surely compute (a new output folder): an unchanged re-run imports no torch at all.
The main thread imports nothing heavy until :meth:`Warmup.wait` returns, so the two never import the same
module at once. An import error is not raised here: the main thread's own import raises it again, as usual.

A run on a GPU also starts the device there, as soon as torch is imported: a third thread creates the CUDA
context and creates cuDNN's and cuBLAS's handles with one tiny convolution and one tiny matrix product (a model's
convolutions and its head; torch releases the interpreter's lock inside its operators, so this overlaps the rest
of the imports; torch pools the handles, so the run's thread takes them over). The model's first forward would pay
all three otherwise.
"""

from __future__ import annotations

import importlib
import threading
import time

# What load_setup and compute import: torch, timm (without torch._dynamo: imports.py), the methods, the
# model code, the DataLoader's decoding and the writer's encoders.
HEAVY_MODULES = ("torch", "xaibatch.imports", "xaibatch.pipeline.prepare", "xaibatch.pipeline.compute")


def import_heavy(modules: tuple[str, ...] = HEAVY_MODULES, device: str | None = None) -> threading.Thread | None:
    """Import ``modules``; with ``device`` (a --device spec) a GPU starts in a thread once torch is in (returned)."""
    from ..imports import import_timm

    importlib.import_module(modules[0])
    started = start_device(device)
    import_timm()
    for name in modules[1:]:
        importlib.import_module(name)
    return started


def may_use_cuda(spec: str | None) -> bool:
    """Whether a --device spec can mean a GPU (``auto``, ``cuda``, ``cuda:N``): from the words alone."""
    spec = (spec or "").strip().lower()
    return spec in ("auto", "cuda") or spec.startswith("cuda:")


def warm_device(spec: str | None) -> str | None:
    """The CUDA device a --device spec will run on ("cuda:N"), or None: the CPU, no GPU, or a spec that the run
    refuses later with its own message. Called in the device's thread: asking torch whether CUDA is there
    initialises the driver."""
    import torch

    if not may_use_cuda(spec) or not torch.cuda.is_available():
        return None
    index = (spec or "").strip().lower().partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        return None
    # "cuda" is the current device of the run's main thread: 0 unless something set it (torch not yet initialised)
    return f"cuda:{index or (torch.cuda.current_device() if torch.cuda.is_initialized() else 0)}"


def start_device(spec: str | None) -> threading.Thread | None:
    """Start the GPU a run will use (see the module's docstring) in a thread; None when the spec is the CPU's."""
    if not may_use_cuda(spec):
        return None
    thread = threading.Thread(target=_start_device, args=(spec,), name="xaibatch-device", daemon=True)
    thread.start()
    return thread


def touch_libraries(device: str) -> None:
    """One tiny convolution (cuDNN on a GPU) and one tiny matrix product (cuBLAS) on ``device``."""
    import torch

    x = torch.zeros(1, 1, 4, 4, device=device)
    torch.nn.functional.conv2d(x, torch.zeros(1, 1, 3, 3, device=device))
    torch.nn.functional.linear(x.flatten(1), torch.zeros(2, 16, device=device))


def _start_device(spec: str) -> None:
    import torch

    try:
        name = warm_device(spec)
        if name is None:
            return
        touch_libraries(name)
        torch.cuda.synchronize(name)
    except Exception:  # noqa: BLE001  (a device that fails fails again, with its message, when the model moves)
        pass


class Warmup:
    """The heavy imports, started now in a thread (``background``) or done in :meth:`wait`; ``device``: the run's
    --device spec, for a GPU to start beside the imports (None: no device is started)."""

    def __init__(self, background: bool = True, device: str | None = None) -> None:
        self.seconds: float | None = None
        self.device = device
        self._device_thread: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, name="xaibatch-import", daemon=True) if background else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        t = time.perf_counter()
        try:
            self._device_thread = import_heavy(device=self.device)
        except BaseException:  # noqa: BLE001  (raised again, as one line, where the main thread imports it)
            pass
        self.seconds = time.perf_counter() - t

    def wait(self) -> float:
        """Seconds the imports took (in the thread, partly while the main thread worked; or now)."""
        if self._thread is None:
            self._run()
        else:
            self._thread.join()
        if self._device_thread is not None:  # joined: later forks (writers, the report) want no other thread
            self._device_thread.join()
        return self.seconds or 0.0
