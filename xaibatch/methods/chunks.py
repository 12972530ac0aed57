"""How many images one gradient-free forward takes: LIME's perturbed images and faithfulness's masked ones.

The size changes memory and speed, never a number. On the CPU it is ``CPU_CHUNK`` (measured); on CUDA as many
images as half the free memory holds, from one probe forward's peak per image, at most ``MAX_CHUNK``
(:func:`cuda_chunk`). :func:`auto_chunk` picks between the two.
"""

from __future__ import annotations

import torch

CPU_CHUNK = 256  # model sub-batch on the CPU (measured: docs/benchmarks.md, seventeenth round; 64-512 alike)
MAX_CHUNK = 4096  # never more images per model call, whatever the free memory
CUDA_MEMORY_SHARE = 0.5  # of the free device memory, what one chunk's forward may take


def auto_chunk(model: torch.nn.Module, x: torch.Tensor, copies: int = 1) -> int:
    """Images of ``x``'s shape per no-grad forward of ``model`` on ``x``'s device (``copies``: see cuda_chunk)."""
    return cuda_chunk(model, x, copies=copies) if x.device.type == "cuda" else CPU_CHUNK


def cuda_chunk(model: torch.nn.Module, x: torch.Tensor, probe: int = 16, copies: int = 1) -> int:
    """The largest model sub-batch that fits in half the free CUDA memory, from one probe forward's peak per image.

    ``copies``: the image-sized tensors the caller builds per image of a chunk besides the model's (LIME fills one
    buffer; faithfulness gathers the image and its fill and blends them), each with a one-channel mask.
    Resets the device's peak-memory statistics (nothing in xaibatch reads them across this call).
    """
    dev = x.device
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.no_grad():
        model(x[:1].expand(probe, -1, -1, -1).contiguous(memory_format=layout(x)))
    torch.cuda.synchronize(dev)
    per_image = max(1, torch.cuda.max_memory_allocated(dev) - base) / probe
    per_image += copies * (x[0].numel() * x.element_size() + x[0, 0].numel())  # the caller's tensors per image
    free, _total = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)  # the allocator's idle blocks
    n = int(CUDA_MEMORY_SHARE * free // per_image)
    return max(1, min(MAX_CHUNK, n - n % 64 if n >= 128 else n))


def layout(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format, for tensors built to go through the model as ``x`` would (channels-last or not)."""
    return (
        torch.channels_last
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
