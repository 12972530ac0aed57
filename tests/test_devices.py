"""Device handling that only a GPU would show, checked with stand-ins: which CUDA device is current."""

from __future__ import annotations

import torch

from helpers import run_opts
from xaibatch.model import loading


def test_cuda_n_becomes_the_current_device(monkeypatch):
    # Without it a --device cuda:1 run pinned its batches (the DataLoader's thread uses the current device) and
    # put anything a library makes on torch.device("cuda") on GPU 0, which got a CUDA context of its own.
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    loading.use_device(torch.device("cuda", 1))
    loading.use_device(torch.device("cuda"))  # no index: the current device already is the one
    loading.use_device(torch.device("cpu"))
    assert chosen == [torch.device("cuda", 1)]


def test_prepare_makes_the_run_device_current(tiny_ckpt, flat_dir, tmp_path, monkeypatch):
    from xaibatch.pipeline import prepare as prep

    seen = []
    monkeypatch.setattr(prep, "use_device", lambda d: seen.append(d))
    prepared = prep.prepare(run_opts(flat_dir, tmp_path / "out", tiny_ckpt, device="cpu"))
    assert seen == [torch.device("cpu")] and prepared.device == torch.device("cpu")
