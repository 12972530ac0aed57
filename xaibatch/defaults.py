"""Defaults chosen from the host and the device: DataLoader workers, batch size, where JPEGs are decoded
(imports nothing heavy)."""

from __future__ import annotations

import os

# --decode: auto decodes JPEGs on the device when it is CUDA, else with PIL in the DataLoader workers (decode.py)
DECODE_CHOICES = ("auto", "cpu", "device")


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


def default_batch_size(device_type: str, input_size: int) -> int:
    """Images per batch: 32 on the CPU; on a GPU as many as keep it busy without running out of memory for
    the activations and gradients that Grad-CAM keeps (measured on an H100 with resnet50: 128 at 224 px)."""
    if device_type == "cpu":
        return 32
    if input_size <= 64:
        return 512
    if input_size <= 128:
        return 256
    return 128 if input_size <= 256 else 32
