"""xaibatch.explain: the maps of a run, for images in memory (a notebook)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import xaibatch
from helpers import write_images
from xaibatch.errors import UsageError
from xaibatch.manifest import Manifest
from xaibatch.model.loading import load_model


def test_explain_gives_the_maps_a_run_writes(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inp, 5)
    xaibatch.run(
        xaibatch.RunOptions(
            input_dir=inp,
            out_dir=out,
            methods=["gradcam", "guided-gradcam"],
            checkpoint=tiny_ckpt,
            workers=0,
            handle_signals=False,
        ),
        log=lambda s: None,
    )
    m = Manifest(out / "xaibatch.sqlite")
    try:
        rows, maps = m.images(), m.maps()
    finally:
        m.close()
    got = xaibatch.explain(tiny_ckpt, paths, methods=["gradcam", "guided-gradcam"], device="cpu")
    assert got.maps["gradcam"].shape == (5, 32, 32) and got.layer is not None
    for i, p in enumerate(paths):
        assert int(got.preds[i]) == rows[p.name].pred
        assert np.allclose(got.probs[i].numpy(), rows[p.name].probs, atol=1e-5)
        for method in ("gradcam", "guided-gradcam"):
            saved = np.load(out / maps[(p.name, method)].npy)  # 32 px images: the map at its own size
            assert np.allclose(got.maps[method][i].numpy(), saved, atol=1e-6), method


def test_every_image_form_gives_the_same_maps(tmp_path, tiny_ckpt):
    paths = write_images(tmp_path / "in", 3)
    loaded = load_model(tiny_ckpt)
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    forms = {
        "paths": paths,
        "pil": [Image.open(p) for p in paths],
        "numpy": arrays,
        "uint8 tensor": torch.from_numpy(arrays).permute(0, 3, 1, 2),
        "float tensor": torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255,
    }
    ref = None
    for name, images in forms.items():
        r = xaibatch.explain(
            loaded.module,
            images,
            ["gradcam"],
            mean=loaded.preprocess.mean,
            std=loaded.preprocess.std,
            device="cpu",
            batch_size=2,
        )
        if ref is None:
            ref = r.maps["gradcam"]
        assert torch.allclose(r.maps["gradcam"], ref, atol=1e-6), name


def test_targets_choose_the_explained_class_and_lime_is_seeded(tmp_path, tiny_ckpt):
    paths = write_images(tmp_path / "in", 4)
    pred = xaibatch.explain(tiny_ckpt, paths, ["gradcam"], device="cpu").preds
    other = (1 - pred).tolist()
    r = xaibatch.explain(tiny_ckpt, paths, ["gradcam"], target=other, device="cpu")
    assert r.targets.tolist() == other
    assert not torch.allclose(r.maps["gradcam"], xaibatch.explain(tiny_ckpt, paths, ["gradcam"]).maps["gradcam"])
    opts = {"lime": {"samples": 40, "segments": 8}}
    a = xaibatch.explain(tiny_ckpt, paths, ["lime"], seed=3, method_options=opts, batch_size=4)
    b = xaibatch.explain(tiny_ckpt, paths, ["lime"], seed=3, method_options=opts, batch_size=1)
    assert torch.equal(a.maps["lime"], b.maps["lime"])  # the same maps whatever the batching
    assert a.info["lime"][0]["segments"] >= 2


def test_bad_input_is_one_clear_error(tiny_ckpt):
    with pytest.raises(UsageError, match="targets for"):
        xaibatch.explain(tiny_ckpt, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), target=[0])
    with pytest.raises(UsageError, match=r"\(N, 3, H, W\)"):
        xaibatch.explain(tiny_ckpt, torch.zeros(2, 32, 32))
    with pytest.raises(UsageError, match="unknown|did you mean|choose"):
        xaibatch.explain(tiny_ckpt, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["gradcamm"])
