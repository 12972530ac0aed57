"""Decode a batch's JPEGs on the model's device and resize them there: the loader's path for a GPU.

At 224 px, PIL's decode in the DataLoader workers is the wall (measured in issue #11 on an H100 box:
1,817 img/s for the loader alone against 3,719 img/s for Grad-CAM on tensors). With device decoding the
workers only read each file (the same safe open, the same hash) and check its header
(:func:`xaibatch.data.read_for_device`, :class:`xaibatch.dataset.ImageDataset`); the main process decodes the batch's JPEGs in one
``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA, libjpeg-turbo on the CPU: the code is the same, only
the device differs, so the tests run it on the CPU) and resizes them on the device with antialiased
bilinear interpolation, which matches PIL's ``BILINEAR`` resize to within a grey level.

Everything else stays on the PIL path: other formats, JPEGs the header check leaves to PIL (progressive,
CMYK, truncated, ...) are decoded in the workers as before, and a JPEG the device refuses is decoded by PIL
from the bytes already read, so a corrupt file fails with exactly PIL's reason. Batches that need LIME's
superpixels (computed in the workers on the model input) keep the PIL path too: LIME's thousands of forward
passes per image leave the loader idle anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from collections import defaultdict
from typing import Any

import torch

from .defaults import DECODE_CHOICES
from .data import MAX_PIXELS, JpegInfo, decode_pil, display_copy, full_size, model_input
from .dataset import LoadedBatch
from .errors import DecodeError, UsageError, out_of_memory
from .layout import DISPLAY_MAX_SIDE, display_size
from .threadsafe import catch_warnings


def device_decode(choice: str, device: torch.device, segments: bool = False) -> bool:
    """Whether a group of images is decoded on ``device``: ``device`` yes, ``cpu`` and ``auto`` no; never when
    the methods need superpixels (``segments``), which the workers compute on the PIL path.

    ``auto`` picks the device only where it is measured faster (:data:`AUTO_ON_DEVICE`): nowhere yet. On an
    H200 host the loader with nvJPEG reached 0.30x (64 px) and 0.73x (224 px) of PIL in the DataLoader
    workers (issue #20), so ``auto`` means PIL until ``xaibatch bench`` (its ``loader alone, JPEG, decoded on``
    row against ``PIL in the workers``) shows a device type faster. ``device`` raises :class:`UsageError`
    where the device cannot decode JPEGs (a torchvision without nvJPEG).
    """
    if choice not in DECODE_CHOICES:
        raise UsageError(f"--decode {choice}: expected one of {', '.join(DECODE_CHOICES)}")
    if segments or choice == "cpu" or (choice == "auto" and device.type not in AUTO_ON_DEVICE):
        return False
    problem = _cannot_decode_on(str(device))
    if problem is None:
        return True
    if choice == "device":
        raise UsageError(f"--decode device: torchvision cannot decode JPEGs on {device}: {problem}")
    return False


# Device types where ``--decode auto`` decodes JPEGs on the device: those measured faster than PIL in the
# DataLoader workers. Empty: the H200 measured the device slower at 64 and 224 px (see device_decode).
AUTO_ON_DEVICE: frozenset[str] = frozenset()


@functools.cache
def _cannot_decode_on(device: str) -> str | None:
    """Why a tiny JPEG does not decode on ``device``, or None when it does."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 60)).save(buf, "JPEG")
    try:
        decode_jpegs([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], torch.device(device))
    except Exception as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return None


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG bytes (CPU uint8 tensors) to (3, H, W) uint8 RGB tensors on ``device``, in one call."""
    from .imports import import_torchvision

    import_torchvision()  # without torch._dynamo
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        # torchvision's nvJPEG decoder allocates its outputs on our stream but writes them from its own stream
        # without waiting for ours (pytorch/vision PR #9606): a block freed while our kernels still use it could
        # be written under them. A run's batches end in host copies, so this waits for nothing there; it covers
        # whatever else was queued (the methods' probes at start-up, a caller of this function).
        torch.cuda.current_stream(device).synchronize()
    with catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(out)


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to a (C, H, W) image as PIL's ``ImageOps.exif_transpose`` does."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return img.flip(-1)
    if orientation == 3:  # ROTATE_180
        return img.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return img.flip(-2)
    if orientation == 5:  # TRANSPOSE
        return img.transpose(-2, -1)
    if orientation == 6:  # ROTATE_270 (clockwise a quarter turn)
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:  # TRANSVERSE
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return torch.rot90(img, 1, (-2, -1))
    return img


def resize(imgs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to ``size`` (h, w) as PIL's ``BILINEAR`` does: antialiased when
    shrinking (the triangle filter widened by the scale), rounded back to uint8."""
    if tuple(imgs.shape[-2:]) == tuple(size):
        return imgs
    out = torch.nn.functional.interpolate(imgs.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def finish_batch(b: LoadedBatch, device: torch.device, input_size: int, max_pixels: int = MAX_PIXELS) -> LoadedBatch:
    """Decode a loaded batch's JPEG bytes on ``device``: afterwards it is a batch like the PIL path's.

    ``x`` becomes one (B, 3, S, S) uint8 tensor on ``device``, ``display`` (h, w, 3) uint8 arrays (the writer's),
    ``display_on_device`` the same pictures still on ``device`` (None for those PIL decoded). A JPEG
    that the device does not decode (as a whole batch, then alone) is decoded by PIL from its bytes; one
    PIL refuses too joins ``failed`` with PIL's reason and leaves the batch's lists.
    """
    if b.undecoded is None:
        return b
    jpegs, xs = b.undecoded.jpegs, list(b.undecoded.inputs)
    display: list[Any] = list(b.display)
    orig_size = list(b.orig_size)
    reasons: dict[int, str] = {}
    decoded = _decode_each([jp.data for jp in jpegs], device)
    on_device: list[tuple[int, torch.Tensor]] = []
    for jp, img in zip(jpegs, decoded):
        j, info = jp.position, jp.info
        if img is not None and tuple(img.shape) == (3, info.height, info.width):
            on_device.append((j, orient(img, info.orientation)))
            continue
        try:  # the device refused it (or read another size than the header's): PIL has the last word
            im = decode_pil(io.BytesIO(jp.data.numpy().tobytes()), max_pixels)
        except DecodeError as e:
            reasons[j] = str(e)
            continue
        xs[j] = torch.from_numpy(model_input(im, input_size).copy()).permute(2, 0, 1)
        display[j] = display_copy(im)
        orig_size[j] = full_size(im)[::-1]
    _resize_on_device(on_device, xs, display, input_size)
    shown = [d.permute(1, 2, 0) if isinstance(d, torch.Tensor) else None for d in display]  # (h, w, 3) views
    _displays_to_host(display)
    keep = [j for j in range(len(xs)) if j not in reasons]
    return dataclasses.replace(
        b,
        failed=list(b.failed) + [(b.index[j], reasons[j]) for j in sorted(reasons)],
        index=[b.index[j] for j in keep],
        orig_size=[orig_size[j] for j in keep],
        sha256=[b.sha256[j] for j in keep],
        display=[display[j] for j in keep],
        x=torch.stack([xs[j].to(device, non_blocking=True) for j in keep]) if keep else None,  # type: ignore[union-attr]
        undecoded=None,
        display_on_device=[shown[j] for j in keep],  # batch_pictures overlays these: no copy back up
    )


def _decode_each(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode all in one call; when that fails, each half in one call, and so on down to single files (None for
    each that fails): one bad JPEG in a batch of 512 costs about 2 x 9 calls, not 512. Running out of memory is
    no bad JPEG: it is raised, and the batch is split as any batch that does not fit (methods/explainer.Fitting);
    taken for a refusal, it was halved here on every batch, and where even one image did not fit the whole batch
    went to PIL in this process, without a word."""
    if not data:  # a part of a batch (LoadedBatch.part) may hold no JPEG
        return []
    try:
        return list(decode_jpegs(data, device))
    except Exception as e:
        if out_of_memory(e) is not None:
            raise
        if len(data) == 1:
            return [None]
    half = len(data) // 2
    return _decode_each(data[:half], device) + _decode_each(data[half:], device)


def _resize_on_device(
    on_device: list[tuple[int, torch.Tensor]], xs: list[Any], display: list[Any], input_size: int
) -> None:
    """Model inputs and display copies of the decoded images, batched by size (a folder of one size: one call)."""
    groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for j, img in on_device:
        groups[tuple(img.shape[1:])].append((j, img))
    for (h, w), members in groups.items():
        imgs = torch.stack([img for _, img in members])
        small = resize(imgs, (input_size, input_size))
        shown = imgs if max(h, w) <= DISPLAY_MAX_SIDE else resize(imgs, display_size(w, h)[::-1])
        for k, (j, _) in enumerate(members):
            xs[j], display[j] = small[k], shown[k]


def _displays_to_host(display: list[Any]) -> None:
    """Device display copies (3, h, w) to (h, w, 3) uint8 arrays, in one transfer."""
    todo = [j for j, d in enumerate(display) if isinstance(d, torch.Tensor)]
    if not todo:
        return
    flat = torch.cat([display[j].permute(1, 2, 0).reshape(-1) for j in todo]).cpu().numpy()
    at = 0
    for j in todo:
        _, h, w = display[j].shape
        display[j] = flat[at : at + h * w * 3].reshape(h, w, 3)
        at += h * w * 3


__all__ = ["DECODE_CHOICES", "JpegInfo", "device_decode", "decode_jpegs", "finish_batch", "orient", "resize"]
