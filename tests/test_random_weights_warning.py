"""`--model timm:NAME` or `torchvision:NAME` without --checkpoint runs random weights: the run says so."""

from __future__ import annotations

from helpers import make_checkpoint, run_opts, write_images
from xaibatch.pipeline import run


def test_a_run_of_random_weights_warns_once(tmp_path):
    write_images(tmp_path / "in" / "FAKE", 1, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 1, size=32, seed=2)
    lines: list[str] = []
    opts = run_opts(tmp_path / "in", tmp_path / "out", None, model="timm:test_resnet", image_size=32, device="cpu")
    run(opts, log=lines.append)
    warned = [s for s in lines if "random weights" in s]
    assert warned == [
        "xaibatch: warning: --model timm:test_resnet has random weights (no --checkpoint): its maps explain "
        "an untrained model; give the trained weights with --checkpoint"
    ]
    ckpt = make_checkpoint(tmp_path / "m.pt", size=32)
    lines.clear()
    run(run_opts(tmp_path / "in", tmp_path / "out2", ckpt, device="cpu"), log=lines.append)
    assert not [s for s in lines if "random weights" in s]
