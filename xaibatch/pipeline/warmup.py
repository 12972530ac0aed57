"""Import torch and the libraries a computing run needs in a thread, while the main thread scans the folder.

Only for a run that will surely compute (a new output folder): an unchanged re-run imports no torch at all.
The main thread imports nothing heavy until :meth:`Warmup.wait` returns, so the two never import the same
module at once. An import error is not raised here: the main thread's own import raises it again, as usual.
"""

from __future__ import annotations

import importlib
import threading
import time

# What load_setup and compute import: torch, timm (without torch._dynamo: imports.py), the methods, the
# model code, the DataLoader's decoding and the writer's encoders.
HEAVY_MODULES = ("torch", "xaibatch.imports", "xaibatch.pipeline.prepare", "xaibatch.pipeline.compute")


def import_heavy(modules: tuple[str, ...] = HEAVY_MODULES) -> None:
    from ..imports import import_timm

    importlib.import_module(modules[0])
    import_timm()
    for name in modules[1:]:
        importlib.import_module(name)


class Warmup:
    """The heavy imports, started now in a thread (``background``) or done in :meth:`wait`."""

    def __init__(self, background: bool = True) -> None:
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="xaibatch-import", daemon=True) if background else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        t = time.perf_counter()
        try:
            import_heavy()
        except BaseException:  # noqa: BLE001  (raised again, as one line, where the main thread imports it)
            pass
        self.seconds = time.perf_counter() - t

    def wait(self) -> float:
        """Seconds the imports took (in the thread, partly while the main thread worked; or now)."""
        if self._thread is None:
            self._run()
        else:
            self._thread.join()
        return self.seconds or 0.0
