"""What a bench is asked to do and what it returns: options, rows, ratios."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAMILIES = ("gradcam", "guided-gradcam", "lime")


@dataclass
class BenchOptions:
    arch: str = "resnet18"
    image_size: int = 64
    batch_size: int | None = None  # images per batch; None: a run's default on the device at image_size
    images: int = 1024
    per_image_images: int = 128  # per-image peers explain only this many of them (their rate is per image anyway)
    lime_images: int = 4
    lime_peer_images: int = 16  # LIME's peers (per image, seconds each) explain at most this many of lime_images
    lime_samples: int = 1000
    lime_batch_size: int = 0  # perturbed images per model call; 0: LIME's own choice (batch_size=auto), for all
    lime_segments: int = 50
    classes: int = 2
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0: torch's default
    workers: int | None = None  # DataLoader processes of the end-to-end runs; None: a run's default on the device
    repeats: int = 3
    only: tuple[str, ...] = FAMILIES
    peers: bool = True
    work_dir: Path | None = None  # keep the generated files here (default: a temporary folder, deleted)
    budget: float = 0.0  # seconds for the whole bench, from ``started``; 0: none (every row over all its images)
    started: float | None = None  # time.perf_counter() the budget counts from; None: when run_bench starts


@dataclass
class Row:
    family: str  # "limits" or a method family
    impl: str
    kind: str  # limit | xaibatch | xaibatch-tensors | xaibatch-faith | part | peer
    images: int  # the images its rate was measured over (its best round's)
    seconds: float = float("inf")
    extra: dict[str, Any] = field(default_factory=dict)
    share: float = 1.0  # its part of the budget against the other rows' (a run's start-up needs more)
    warm_wall: float = 0.0  # wall seconds of its warm-up
    rounds_wall: float = 0.0  # wall seconds of its timed rounds, all of them

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    @property
    def measured(self) -> bool:
        return self.images > 0 and self.seconds < float("inf")

    def record(self, images: int, seconds: float) -> None:
        """Keep this round if its rate is the best so far."""
        if images > 0 and (not self.measured or images / max(seconds, 1e-9) > self.rate):
            self.images, self.seconds = images, seconds


@dataclass
class Ratio:
    name: str
    value: float
    target: float | None = None  # met when value >= target (or <= for "at most" ratios)
    at_most: bool = False
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.target is None or not np.isfinite(self.value):
            return None
        return self.value <= self.target if self.at_most else self.value >= self.target


@dataclass
class BenchResult:
    header: list[str]
    rows: list[Row]
    ratios: list[Ratio]
    cut_off: bool = False  # a signal stopped the timing: ``rows`` are the ones measured before it
    spent: list[tuple[str, float]] = field(default_factory=list)  # wall seconds before the rows: start-up, inputs, ...
    wall: float = 0.0  # seconds from ``BenchOptions.started`` to the end of the last row
    budget: float = 0.0
