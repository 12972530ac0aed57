"""LIME's masks: which superpixels each perturbed sample keeps, drawn by a counter-based hash.

The bits of image i, sample s, feature f depend only on the image's key (the method's ``seed`` mixed with the
pipeline's per-image seed, :func:`mask_seed`), s and f: the same on every device, whatever the other images of
the batch, their feature counts or the chunking. Integer torch ops only (lowbias32 in int64).
"""

from __future__ import annotations

import numpy as np
import torch

MASK_DRAW = "lowbias32-counter-v1"  # in config(): a different draw gives different maps, so they are recomputed
_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # spreads consecutive feature indices over all 32 bits before the mix
_DRAW_BLOCK = 1 << 22  # mask bits hashed at once (int64 temporaries of 32 MiB each)


def mask_seed(method_seed: int, image_seed: int) -> int:
    """Combine the method's seed and one image's seed into one 63-bit key for the mask draw."""
    ss = np.random.SeedSequence([int(method_seed) % 2**64, int(image_seed) % 2**64])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), in 16-bit halves of c so that no int64 product overflows."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' ``lowbias32`` integer hash on int64 tensors holding 32-bit values (shifts stay logical)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def draw_masks(keys: torch.Tensor, counts: torch.Tensor, samples: int, n_max: int | None = None) -> torch.Tensor:
    """Draw (B, samples, n_max) bool masks on ``keys``' device: row 0 all ones, columns past ``counts[i]`` off.

    Bit (i, s, f) is the top bit of ``mix(mix(key_i' ^ s) ^ f * golden)`` with ``key_i' = mix(lo ^ mix(hi))``
    over the 32-bit halves of the image's 63-bit key: a counter-based draw, so the same bits on every
    device, whatever the other images of the batch, their feature counts or the chunking. Integer ops only.
    """
    dev = keys.device
    n_max = int(counts.max()) if n_max is None else n_max
    keys = keys.to(torch.int64)
    k = _mix32((keys & _M32) ^ _mix32(keys >> 32))  # (B,)
    rows = _mix32(k[:, None] ^ torch.arange(samples, dtype=torch.int64, device=dev)[None, :])  # (B, S)
    cols = (torch.arange(n_max, dtype=torch.int64, device=dev) * _GOLDEN) & _M32  # (F,)
    z = torch.empty(keys.shape[0], samples, n_max, dtype=torch.bool, device=dev)
    step = max(1, _DRAW_BLOCK // max(1, keys.shape[0] * n_max))  # bounds the int64 temporaries
    for a in range(0, samples, step):
        z[:, a : a + step] = (_mix32(rows[:, a : a + step, None] ^ cols[None, None, :]) >> 31).bool()
    z[:, 0, :] = True
    z &= torch.arange(n_max, device=dev)[None, None, :] < counts.to(dev)[:, None, None]
    return z


def reference_masks(n_features: int, samples: int, key: int) -> np.ndarray:
    """The same draw as :func:`draw_masks` for one image, one bit at a time in plain Python integers (tests)."""

    def mix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & _M32
        x ^= x >> 15
        x = (x * 0x846CA68B) & _M32
        return x ^ (x >> 16)

    k = mix((key & _M32) ^ mix(key >> 32))
    z = np.zeros((samples, n_features), dtype=bool)
    for s in range(samples):
        r = mix(k ^ s)
        for f in range(n_features):
            z[s, f] = s == 0 or mix(r ^ ((f * _GOLDEN) & _M32)) >> 31 == 1
    return z
