"""The Explainer's typed result and its one loop over images in memory (explain(), sanity, bench use it)."""

from __future__ import annotations

import pytest
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


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _timed_methods(ctx, clock, costs, ran):
    """Methods that take ``costs[name]`` seconds per image on ``clock``; those named "lime*" report their share
    in four steps, as LIME does per model sub-batch."""
    from xaibatch.methods.base import Explanation, Method

    made = []
    for name, cost in costs.items():

        class Timed(Method):
            def explain(self, batch, name=name, cost=cost):
                ran.append(name)
                n = batch.x.shape[0]
                for k in range(1, 5 if name.startswith("lime") else 1):
                    clock.t += cost * n / 4
                    batch.progress(k, 4)
                else:
                    clock.t += 0 if name.startswith("lime") else cost * n
                return Explanation(torch.zeros(n, 4, 4))

        Timed.name = name
        made.append(Timed(ctx))
    return made


def _tiny_ctx():
    from xaibatch.preprocess import Preprocess

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    return ModelContext(net, None, Preprocess(4), torch.device("cpu"))


def test_the_batch_share_is_of_its_time_over_every_method():
    """Nine methods at once, on the 2-core box: LIME's share was taken for the whole batch's, so the line said
    "current batch 100%" for minutes while Score-CAM, Integrated Gradients and Occlusion still ran, and the first
    estimate (from LIME's 8 % after 12 s) was 10m48s for a run that took over 25 minutes. Now the share is of the
    batch's time: none in the first batch while a method still to come has never run, then each method weighted
    by its time per image in the last batch."""
    ctx, clock, ran, shares = _tiny_ctx(), _Clock(), [], []
    costs = {"cheap": 0.01, "lime": 1.0, "slow": 3.0}  # seconds per image
    ex = Explainer(
        _timed_methods(ctx, clock, costs, ran), ctx, on_progress=lambda d, t: shares.append(d / t), clock=clock
    )
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    ex(x, None, None)
    assert shares == [1.0]  # the first batch: "slow" never ran before it ended, so no share until then
    shares.clear()
    ex(x, None, None)
    # 8.02 s per batch: cheap's 0.02 s, LIME's 2 s in quarters, then slow's 6 s
    want = [0.02 / 8.02] + [(0.02 + 0.5 * k) / 8.02 for k in range(1, 5)] + [2.02 / 8.02, 1.0]
    assert shares == pytest.approx(want, abs=1e-3)
    assert ran == ["cheap", "lime", "slow"] * 2


def test_one_method_reports_its_own_share():
    ctx, clock, ran, shares = _tiny_ctx(), _Clock(), [], []
    ex = Explainer(
        _timed_methods(ctx, clock, {"lime": 1.0}, ran), ctx, on_progress=lambda d, t: shares.append((d, t)), clock=clock
    )
    ex(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, None)
    assert shares == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_batch_of_several_methods_says_which_one_runs():
    """A first batch of several methods has no share to show until each ran once (nine on a CPU: minutes of
    "0/96" with nothing else said): the step running is named instead, the faithfulness scores too; one method
    alone names nothing (its own share says enough)."""
    from xaibatch.pipeline.progress import Progress

    ctx, clock, ran, steps, lines = _tiny_ctx(), _Clock(), [], [], []
    progress = Progress(8, bar=False, heartbeat=0, log=lines.append, emit=lambda e: None, json_events=False)

    def say(step):
        steps.append(step)
        progress.running(step)
        progress.beat()

    ex = Explainer(_timed_methods(ctx, clock, {"cheap": 0.01, "slow": 3.0}, ran), ctx, clock=clock, on_step=say)
    ex(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, None)
    assert steps == ["cheap", "slow", None]
    assert len(lines) == 3 and lines[0].endswith(", running cheap") and lines[1].endswith(", running slow")
    assert "running" not in lines[2]  # the batch done: nothing is said to run

    alone = Explainer(_timed_methods(ctx, clock, {"lime": 1.0}, ran), ctx, clock=clock, on_step=steps.append)
    alone(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, None)
    assert steps == ["cheap", "slow", None]


def test_on_a_gpu_a_steps_time_waits_for_the_kernels_it_queued(monkeypatch):
    """CUDA kernels run after the call that queued them returns: a method's time was read before its kernels ran,
    and landed on the next method (the first to wait for the device), so the shares weighed the wrong steps.
    Where shares of several steps are said, the step's end waits for the device first; elsewhere nothing waits."""
    from xaibatch.methods import explainer

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    gpu, say = torch.device("cuda", 1), lambda d, t: None
    assert explainer.settle(torch.device("cpu"), ["gradcam", "lime"], say) is None
    assert explainer.settle(gpu, ["gradcam"], say) is None  # one method: its own share, the queue kept full
    assert explainer.settle(gpu, ["gradcam", "lime"], None) is None  # nobody listening
    wait = explainer.settle(gpu, ["gradcam", "lime"], say)

    def clock():
        events.append("clock")
        return 0.0

    share = explainer.BatchShare(["gradcam", "lime"], {}, 2, say, clock, wait)
    events.clear()
    share.step_done()
    assert events[:2] == [("sync", "cuda:1"), "clock"]


def test_a_stop_is_seen_between_methods():
    """A Ctrl-C during Grad-CAM waited for every later method of the batch (Score-CAM, Occlusion: minutes on a
    CPU) before the run stopped; now the next method does not start."""
    from xaibatch.methods import StopRequested

    ctx, clock, ran = _tiny_ctx(), _Clock(), []
    ex = Explainer(_timed_methods(ctx, clock, {"first": 0.1, "second": 60.0}, ran), ctx, should_stop=lambda: bool(ran))
    with pytest.raises(StopRequested):
        ex(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None, None)
    assert ran == ["first"]
