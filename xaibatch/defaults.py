"""Defaults chosen from the host and the device (DataLoader workers, batch size, where JPEGs are decoded), and the
defaults and choices that the CLI shows before anything heavy loads (imports nothing heavy)."""

from __future__ import annotations

import os

# --decode: auto decodes JPEGs with PIL in the DataLoader workers except on device types measured faster
# (decode.AUTO_ON_DEVICE: none yet; an H200 measured nvJPEG slower)
DECODE_CHOICES = ("auto", "cpu", "device")
# model input sides (--image-size, explain()'s input_size, a checkpoint's input_size): whole numbers in this range
IMAGE_SIDES = (8, 4096)
DEFAULT_MAX_MAP_SIDE = 1024  # --max-map-side: an 8000x8000 image would otherwise make a 256 MB .npy per method

# LIME's options (methods/lime.py, which imports torch) and their defaults, here so that --help shows them cheaply
LIME_HIDE_MODES = ("mean", "zero", "blur")
LIME_DEFAULTS = {
    "samples": 1000,
    "segments": 50,
    "hide": "mean",
    "seed": 0,
    "samples_min": 200,
    "samples_max": 2000,
    "samples_round": 100,
    "tolerance": 0.1,
}
# --faithfulness (evaluation/faithfulness.py, which imports torch): what removed pixels become (the first is the
# default) and the steps of each curve, here so that --help shows them cheaply
FAITH_BASELINES = ("blur", "zero", "mean")
FAITH_STEPS = 20


MODEL_FORMS = "FILE.py:FACTORY, module.path:FACTORY, torchvision:NAME or timm:NAME"  # what --model takes


def model_spec_problem(spec: str) -> str | None:
    """Why ``--model`` is not of a form MODEL_FORMS names, or None (whether that file, module or model exists is
    for loading it to say)."""
    where, _, name = spec.rpartition(":")
    if (where in ("timm", "torchvision") and name) or (where and name.isidentifier()):
        return None
    return f"--model {spec!r}: expected {MODEL_FORMS}"


def device_spec_problem(spec: str) -> str | None:
    """Why ``--device`` is not of a form auto, cpu, cuda, cuda:N, or None (whether that device exists is torch's
    to say)."""
    spec = spec.strip().lower()
    if spec in ("auto", "cpu", "cuda") or spec.startswith("cuda:"):
        return None
    return f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device_type: str = "cpu") -> int:
    """DataLoader processes that decode images.

    On the CPU the model needs the cores too: one fewer than the CPUs, at most 4. On a GPU decoding is the
    host's main job: half the CPUs (at most 16), the rest left to the writer's threads.
    """
    n = cpu_count()
    if device_type == "cpu":
        return max(0, min(4, n - 1))
    return max(1, min(16, n // 2))


WORKERS_PER_CPU = 4  # --workers above this many per CPU is refused (workers_problem)


def workers_problem(workers: int) -> str | None:
    """Why ``--workers`` is too many for this host, or None. Decoding is CPU work: past a few processes per CPU
    more only compete and start slowly (--workers 1000 made no progress in a minute), so such a number is a slip."""
    cpus = cpu_count()
    if workers <= WORKERS_PER_CPU * cpus:
        return None
    return (
        f"--workers {workers} is more than {WORKERS_PER_CPU} per CPU ({cpus} CPU(s) here: at most "
        f"{WORKERS_PER_CPU * cpus}); decoding is CPU work, more processes only compete"
    )


def default_writers(device_type: str = "cpu", workers: int = 0) -> int:
    """Writer processes that encode PNGs and write the files (pipeline/writer_pool.py); 0: the writer thread.

    On the CPU none: the model's threads already take every core, and a process only adds the hand-over
    (measured on a 2-core box: a run's compute phase no faster with one). On a GPU the CPUs that the
    DataLoader ``workers`` and the main process leave, 1 to 8 (an H200 host's one writer thread reached 1/8
    of its file system's rate).
    """
    if device_type == "cpu":
        return 0
    return max(1, min(8, cpu_count() - max(1, workers) - 1))


def default_batch_size(device_type: str, input_size: int) -> int:
    """Images per batch: 32 on the CPU; on a GPU as many as keep it busy without running out of memory for
    the activations and gradients that Grad-CAM keeps (measured on an H100 with resnet50: 128 at 224 px). A batch
    that does not fit a smaller GPU (or a heavier method) is split by the run (pipeline/compute.BatchWorker)."""
    if device_type == "cpu":
        return 32
    if input_size <= 64:
        return 512
    if input_size <= 128:
        return 256
    return 128 if input_size <= 256 else 32


def image_side_ok(v: object) -> bool:
    """Whether ``v`` is a model input side xaibatch takes (:data:`IMAGE_SIDES`; a bool is no number here)."""
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and IMAGE_SIDES[0] <= v <= IMAGE_SIDES[1]
