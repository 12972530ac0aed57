"""What every job of a bench shares: the options, the device, the model and its checkpoint, the inputs on the
device, the predicted targets (as rows need them), and the batch sizes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inputs import Inputs
from .options import BenchOptions
from .timing import Slice


@dataclass
class Bench:
    opts: BenchOptions
    dev: torch.device
    workers: int  # DataLoader processes of the end-to-end runs
    ckpt: Path  # the model's checkpoint, for the end-to-end runs
    model: torch.nn.Module
    layer: Any  # layers.TargetLayer
    ctx: Any  # methods.ModelContext
    inputs: Inputs
    x: torch.Tensor  # (N, 3, S, S) normalized inputs on the device
    x_u8: torch.Tensor  # (N, 3, S, S) uint8 on the device: what the runs' batches hold before normalizing
    lime_chunk: int  # LIME's model batch (perturbed images per call), the peers' too
    report_seconds: float = 0.0  # the last main end-to-end row's report
    predicted: torch.Tensor | None = None  # the predicted class of the first images (see targets)
    predict_seconds: float = 0.0  # spent predicting them, outside the rows' time

    @property
    def images(self) -> np.ndarray:
        return self.inputs.images

    @property
    def n(self) -> int:
        return len(self.inputs.images)

    @property
    def bs(self) -> int:
        return self.opts.batch_size

    @property
    def n_warm(self) -> int:  # warm-ups explain one batch
        return min(self.n, self.bs)

    @property
    def n_lime(self) -> int:
        return min(self.opts.lime_images, self.n)

    @property
    def lime_option(self) -> int | str:
        return self.opts.lime_batch_size or "auto"

    def lime_samples(self, warm: bool = False) -> int:
        """LIME's samples per image; a warm-up's: one model batch of them (the first calls' costs are paid)."""
        return min(self.opts.lime_samples, self.lime_chunk) if warm else self.opts.lime_samples

    def lime_options(self, warm: bool = False) -> dict[str, Any]:
        return {"samples": self.lime_samples(warm), "segments": self.opts.lime_segments, "batch_size": self.lime_option}

    def lime_hint(self, sl: Slice, own: float) -> None:
        """After a LIME warm-up with fewer samples: the rate a full round would have, for planning it."""
        if sl.warm and own > 0:
            fixed = max(0.0, time.perf_counter() - sl.start - own)  # a run's start-up
            sl.hint = (sl.images / own * self.lime_samples(True) / self.lime_samples(), fixed)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def targets(self, z: int, sl: Slice | None = None) -> torch.Tensor:
        """The predicted class of the first ``z`` images (what the peers explain, as the runs explain the
        prediction), computed batch by batch the first time a row asks; that time is taken out of ``sl``'s."""
        have = 0 if self.predicted is None else len(self.predicted)
        if z > have:
            self.sync()  # the row's own queued work stays in its time
            t = time.perf_counter()
            with torch.no_grad():
                new = [self.model(self.x[a : a + self.bs]).argmax(1) for a in range(have, z, self.bs)]
            self.predicted = torch.cat(new if self.predicted is None else [self.predicted, *new])
            self.sync()
            dt = time.perf_counter() - t
            self.predict_seconds += dt
            if sl is not None:
                sl.pause(dt)
        return self.predicted[:z]

    def target_list(self, z: int) -> list[int]:
        return self.targets(z).tolist()

    def normalize(self, u8: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 images to the model's (B, 3, H, W) normalized input on the device, as a run's."""
        t = torch.from_numpy(np.ascontiguousarray(u8)).to(self.dev).permute(0, 3, 1, 2).contiguous()
        return self.ctx.preprocess.normalize(t)


def make_bench(opts: BenchOptions, inputs: Inputs, dev: torch.device, workers: int) -> Bench:
    """A randomly initialised ``opts.arch`` saved as an xaibatch checkpoint and loaded as runs load it."""
    from ...model.layers import find_target_layer
    from ...methods import ModelContext, create_method
    from ...model.loading import load_model
    from .. import synth

    classes = [f"c{i}" for i in range(opts.classes)]
    ckpt = synth.tiny_checkpoint(inputs.root / "model.pt", opts.arch, opts.image_size, classes)
    loaded = load_model(ckpt)
    model = loaded.module.to(dev).eval()
    layer = find_target_layer(model, opts.image_size)
    ctx = ModelContext(model, layer, loaded.preprocess, dev)
    x_u8 = torch.from_numpy(inputs.images).to(dev).permute(0, 3, 1, 2).contiguous()
    x = torch.cat([loaded.preprocess.normalize(x_u8[a : a + 1024]) for a in range(0, len(x_u8), 1024)])
    # LIME's model batch: the given one, else the one LIME picks (free memory on CUDA); the peers get it too
    lime_chunk = opts.lime_batch_size or create_method("lime", ctx).chunk_size(x[:1])
    return Bench(opts, dev, workers, ckpt, model, layer, ctx, inputs, x, x_u8, lime_chunk)
