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


class ScalarReads:
    """Counts the reads of one tensor element into Python (``float(t)``, ``int(t)``, ``.item()``, ``bool(t)``): on
    a GPU each waits for the device and copies back alone. ``tolist()`` of a whole tensor is not one of them (one
    copy). Over a CPU batch this tells a read per batch from a read per image."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ == "_local_scalar_dense":
                    counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode = 0, Mode()

    def __enter__(self) -> ScalarReads:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def _explain_counting(tiny_ckpt, names, images: int, scorer: bool = False) -> int:
    """Scalar reads while one batch of ``images`` is explained with ``names`` (and faithfulness scores)."""
    from xaibatch.evaluation.faithfulness import FaithConfig, Scorer
    from xaibatch.methods.base import build_methods
    from xaibatch.methods.explainer import Explainer

    loaded = loading.load_model(tiny_ckpt)
    size = loaded.input_size
    ctx, made = build_methods(names, loaded.module, loaded.preprocess, torch.device("cpu"))
    score = Scorer(ctx.model, FaithConfig(steps=4), ctx.preprocess) if scorer else None
    ex = Explainer(made, ctx, "pred", score)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with ScalarReads() as reads:
        ex(x, None, None)
    return reads.n


def test_faithfulness_scores_leave_the_device_once_a_batch(tiny_ckpt):
    # Scores.row read each AUC and each curve point with float(): 2 + 2 (steps + 1) device syncs and copies per
    # image and method on a GPU (44 at the default 20 steps), more than the scoring itself at 64 px.
    assert _explain_counting(tiny_ckpt, ["gradcam"], 2, True) == _explain_counting(tiny_ckpt, ["gradcam"], 6, True)


def test_library_methods_read_targets_and_totals_once_a_batch(tiny_ckpt):
    # cam:* made each image's target with int(t), captum's signed methods each image's total with float(t).
    import pytest

    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("captum")
    names = ["cam:gradcam", "captum:Saliency", "captum:IntegratedGradients"]
    assert _explain_counting(tiny_ckpt, names, 2) == _explain_counting(tiny_ckpt, names, 6)


def test_a_cuda_index_torch_cannot_read_is_a_usage_error(monkeypatch):
    """``--device cuda:`` (a typo), ``cuda:01`` or ``cuda:²`` passed the form check; on a GPU host torch.device()
    then raised ("internal error: RuntimeError: Invalid device string", exit 3) or int() did (ValueError). They are
    refused by form now, before torch loads, as any other spec that is not auto, cpu, cuda or cuda:N."""
    import pytest

    from xaibatch.defaults import device_spec_problem
    from xaibatch.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for spec in ("cuda:", "cuda:01", "cuda:²", "cuda: 1", "cuda:-1", "cuda:x"):
        assert device_spec_problem(spec) == f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N", spec
        with pytest.raises(UsageError, match="is not one of auto, cpu, cuda, cuda:N"):
            loading.resolve_device(spec)
    for spec, device in (("cuda:1", "cuda:1"), ("CUDA:0", "cuda:0"), (" cuda ", "cuda"), ("cpu", "cpu")):
        assert device_spec_problem(spec) is None
        assert loading.resolve_device(spec) == torch.device(device)
    with pytest.raises(UsageError, match=r"there are 2 GPU\(s\)"):
        loading.resolve_device("cuda:2")
