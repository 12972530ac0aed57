"""Shared fixtures: tiny models and generated folders, no network, no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from xaibatch.model.loading import save_checkpoint
from xaibatch.preprocess import Preprocess

CLASSES = ["FAKE", "REAL"]


def make_checkpoint(
    path: Path, arch: str = "test_resnet", size: int = 32, classes=CLASSES, seed: int = 0, **kwargs
) -> Path:
    """A randomly initialised timm model saved in xaibatch's checkpoint format."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=len(classes), **kwargs)
    pre = Preprocess.for_model(model, size)  # the architecture's own mean and std, as xaibatch train writes them
    save_checkpoint(path, model, arch, list(classes), size, pre.mean, pre.std)
    return path


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0, ext: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        p = folder / f"img_{i:03d}.{ext}"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def labeled_dir(tmp_path) -> Path:
    root = tmp_path / "test"
    write_images(root / "FAKE", 5, seed=1)
    write_images(root / "REAL", 5, seed=2)
    return root


@pytest.fixture
def flat_dir(tmp_path) -> Path:
    root = tmp_path / "incoming"
    write_images(root, 6, seed=3)
    return root


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo set (train 200/class, test 60/class) with ground-truth masks."""
    from xaibatch.tools.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root, train_per_class=200, test_per_class=60, seed=0)
    return root
