"""Every method through `xaibatch run` on CNNs and token models (tiny timm models, random weights)."""

from __future__ import annotations


import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_checkpoint, manifest_rows, manifest_value, write_images

from xaibatch.cli import cli

ARCHS = [
    ("test_resnet", {}),  # ReLU
    ("test_efficientnet", {}),  # SiLU
    ("test_convnext", {}),  # GELU
    ("mobilenetv3_small_050", {}),  # Hardswish
    ("test_vit", {"img_size": 64}),  # ViT, 1 prefix token
    ("deit_tiny_distilled_patch16_224", {"img_size": 64}),  # DeiT, 2 prefix tokens
]


@pytest.mark.parametrize(
    "arch,kwargs",
    [  # test_resnet in the default tier, every other architecture slow
        pytest.param(a, k, id=a, marks=() if a == "test_resnet" else pytest.mark.slow) for a, k in ARCHS
    ],
)
def test_all_methods_on_each_architecture(tmp_path, arch, kwargs):
    ckpt = make_checkpoint(tmp_path / f"{arch}.pt", arch=arch, size=64, **kwargs)
    root = tmp_path / "in"
    write_images(root / "FAKE", 2, size=48, seed=1)
    write_images(root / "REAL", 2, size=40, seed=2)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(root),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--workers",
            "0",
            "-m",
            "gradcam",
            "-m",
            "guided-gradcam",
            "-m",
            "lime",
            "--lime-samples",
            "40",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    cfg = manifest_value(out, "SELECT config_json FROM runs")
    for method in ("gradcam", "guided-gradcam", "lime"):
        rows = manifest_rows(out, "SELECT rel, npy FROM maps WHERE method = ?", (method,))
        assert len(rows) == 4
        for rel, npy in rows:
            m = np.load(out / npy)
            assert m.shape == ((48, 48) if rel.startswith("FAKE") else (40, 40))
            assert np.isfinite(m).all() and np.abs(m).max() > 0
    if "vit" in arch or "deit" in arch:
        assert "norm1" in cfg  # the token layer, reshaped to its 4x4 grid
