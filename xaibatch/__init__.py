"""xaibatch: audit what an image classifier looks at, over whole folders.

Grad-CAM, Guided Grad-CAM and LIME, batched on the device, saved to disk and
rendered into a static HTML report.
"""

__version__ = "0.1.0"

# Bumped whenever the numbers written into a map change meaning (normalization,
# resizing, method definition). Part of every configuration hash, so a re-run
# after such a change recomputes instead of trusting old maps. Not bumped when a
# map shrunk to an image smaller than the model's input became the mean of the
# pixels it covers instead of a sample (overlay.resize_maps): the same attribution,
# better resampled, and only those images' maps differ, where a bump recomputes
# every map of every folder (hours of LIME on a large one); maps stored before
# keep their sampling until recomputed.
MAP_FORMAT_VERSION = 1

__all__ = [
    "METHODS",
    "Explanations",
    "RayOptions",
    "Results",
    "RunOptions",
    "RunResult",
    "explain",
    "open_results",
    "run",
    "__version__",
]

_LAZY = {
    "run": "pipeline",
    "RayOptions": "pipeline",
    "RunOptions": "pipeline",
    "RunResult": "pipeline",
    "explain": "api",
    "Explanations": "bundle",
    "METHODS": "methods",
    "open_results": "results",
    "Results": "results",
}


def __getattr__(name: str):
    """The public API, imported on first use: ``import xaibatch`` stays light (no torch) for the CLI."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'xaibatch' has no attribute {name!r}")
