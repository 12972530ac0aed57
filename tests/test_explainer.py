"""The Explainer's typed result and its one loop over images in memory (explain(), sanity, bench use it)."""

from __future__ import annotations

import torch

from xaibatch.methods import ModelContext, create_method
from xaibatch.methods.explainer import Explained, Explainer, MethodMaps
from xaibatch.model.layers import find_target_layer
from xaibatch.model.loading import load_model


def test_explain_tensors_batches_join_to_the_one_batch_result(tiny_ckpt):
    loaded = load_model(tiny_ckpt)
    size = loaded.input_size
    layer = find_target_layer(loaded.module, size, None)
    ctx = ModelContext(loaded.module, layer, loaded.preprocess, torch.device("cpu"))
    ex = Explainer([create_method("gradcam", ctx)], ctx, "label")
    x = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 1])
    whole = ex(x, labels, None)
    parts = list(ex.explain_tensors(x, 2, labels))
    assert [p.probs.shape[0] for p in parts] == [2, 2, 1]
    assert all(p.probs.device.type == "cpu" and p.methods["gradcam"].maps.device.type == "cpu" for p in parts)
    joined = Explained.cat(parts)
    assert torch.allclose(joined.probs, whole.probs, atol=1e-6)
    assert torch.allclose(joined.methods["gradcam"].maps, whole.methods["gradcam"].maps, atol=1e-6)
    assert joined.methods["gradcam"].info == [None] * 5 and joined.methods["gradcam"].faith is None


def test_cat_fills_per_image_lists_where_a_batch_had_none():
    a = Explained(torch.zeros(2, 3), {"m": MethodMaps(torch.zeros(2, 4, 4), [{"k": 1}, {"k": 2}], None)})
    b = Explained(torch.ones(1, 3), {"m": MethodMaps(torch.ones(1, 4, 4), None, [{"deletion": 0.5}])})
    both = Explained.cat([a, b])
    assert both.probs.shape == (3, 3) and both.methods["m"].maps.shape == (3, 4, 4)
    assert both.methods["m"].info == [{"k": 1}, {"k": 2}, None]
    assert both.methods["m"].faith == [None, None, {"deletion": 0.5}]


def test_maps_come_back_on_the_input_device_whatever_the_method_returns():
    # pytorch-grad-cam's methods return numpy, so cam:* maps were CPU tensors beside the GPU maps of the other
    # methods: overlay_batch and the faithfulness scorer then mixed devices (only on a GPU). The meta device
    # stands in for the GPU here: the model runs on it, the method returns CPU maps as cam_library's did.
    from xaibatch.methods.base import Explanation, Method
    from xaibatch.preprocess import Preprocess

    class HostMaps(Method):
        name = "host-maps"

        def explain(self, batch):
            return Explanation(torch.zeros(batch.x.shape[0], 4, 4))

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)).to("meta")
    ctx = ModelContext(net, None, Preprocess(4), torch.device("meta"))
    got = Explainer([HostMaps(ctx)], ctx)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, None)
    assert got.probs.device.type == "meta"
    assert got.methods["host-maps"].maps.device.type == "meta"
