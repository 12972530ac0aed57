"""xaibatch's rows: the model's limits, end-to-end runs, and the methods alone on tensors in memory."""

from __future__ import annotations

import contextlib
import shutil
from types import SimpleNamespace
from typing import Callable, Iterator

import torch

from .context import Bench
from .options import Row
from .timing import Job, ModelTimer, scratch


def forward_only(b: Bench, batch: int, k: int) -> Job:
    """The model's forward alone over ``k`` images (repeated when that is more than there are)."""
    xs = b.x if k <= b.n else b.x.repeat((k + b.n - 1) // b.n, 1, 1, 1)[:k]

    def fn(warm: bool) -> None:
        with torch.no_grad():
            for a, z in b.chunks(min(k, batch) if warm else k, batch):
                b.model(xs[a:z])
        b.sync()

    return Row("limits", f"forward only, batch {batch}", "limit", k), fn


def forward_backward(b: Bench) -> Job:
    """Forward plus backward to the input (no weight gradients): what any gradient method needs at least."""

    def fn(warm: bool) -> None:
        for a, z in b.chunks(b.n_warm if warm else b.n):
            xi = b.x[a:z].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = b.model(xi)
                torch.autograd.grad(logits.gather(1, b.targets[a:z, None]).sum(), xi)
        b.sync()

    return Row("limits", f"forward + backward to the input, batch {b.bs}", "limit", b.n), fn


def end_to_end(
    b: Bench, family: str, k: int, model_timer: bool = False, faith: bool = False, no_files: bool = False
) -> Job:
    """Real pipeline runs over the first ``k`` files, timed over their compute phase.

    Only the main row's timed rounds render the report (its cost goes to the table's note); warm-ups and the
    other rows skip it, which takes seconds per run at thousands of images and measures nothing new.
    """
    from ... import pipeline
    from ...evaluation.faithfulness import DEFAULT_STEPS, FaithConfig

    row = (
        Row(family, f"xaibatch end to end + --faithfulness ({DEFAULT_STEPS} steps)", "xaibatch-faith", k)
        if faith
        else Row(family, "xaibatch end to end, the writer's file work removed", "part", k)
        if no_files
        else Row(family, "xaibatch end to end (files in, files out)", "xaibatch", k)
    )
    outs = scratch(b.inputs.root, f"out-{family}{'-faith' if faith else '-nofiles' if no_files else ''}")
    # a warm-up explains one batch; LIME one image; with scores (2 x steps forwards an image) an eighth of a batch
    warm_images = 1 if family == "lime" else max(1, b.n_warm // 8) if faith else b.n_warm

    def fn(warm: bool) -> float:
        out = next(outs)
        todo = warm_images if warm else k
        ro = pipeline.RunOptions(
            input_dir=b.inputs.first(todo),
            out_dir=out,
            methods=[family],
            checkpoint=b.ckpt,
            batch_size=b.bs,
            device=b.opts.device,
            workers=b.workers,
            labeled=False,
            method_options={"lime": b.lime_options()},
            handle_signals=False,
            faithfulness=FaithConfig(chunk=max(64, 4 * b.bs)) if faith else None,
        )
        timer = ModelTimer(type(b.model), b.sync) if model_timer else None
        report = row.kind == "xaibatch" and not warm
        try:
            with (
                timer or contextlib.nullcontext(),
                without_file_work() if no_files else contextlib.nullcontext(),
                contextlib.nullcontext() if report else without_report(),
            ):
                res = pipeline.run(ro, log=lambda s: None)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if res.computed != todo:
            raise RuntimeError(f"bench: the {family} run computed {res.computed} of {todo} images")
        t = res.timings["compute"]
        if not warm:
            if timer is not None and t < row.seconds:
                row.extra["model_seconds"] = timer.seconds
            fixed = row.extra.setdefault("fixed", {"start-up": float("inf"), "report": float("inf")})
            fixed["start-up"] = min(fixed["start-up"], res.timings["prepare"] + res.timings["plan"])
            fixed["report"] = min(fixed["report"], res.timings["report"])
        return t

    return row, fn


def on_tensors(b: Bench, family: str, k: int) -> Job:
    """The method alone on the images already on the device, through the runs' own Explainer (one shared
    forward, the CAM layer captured when the method needs it); LIME's superpixels are made here, as a
    DataLoader worker makes them in a run."""
    from ...methods import create_method
    from ...methods.explainer import Explainer

    row = Row(family, "xaibatch methods alone, tensors in memory", "xaibatch-tensors", k)
    method = create_method(family, b.ctx, **(b.lime_options() if family == "lime" else {}))
    explainer = Explainer([method], b.ctx)
    segment = method.segmenter()

    def fn(warm: bool) -> None:
        n = (1 if family == "lime" else b.n_warm) if warm else k
        for _ in explainer.explain_tensors(b.x_u8[:n], b.bs, list(range(n)), segmenter=segment):
            pass  # each batch's maps come back to the CPU
        b.sync()

    return row, fn


@contextlib.contextmanager
def without_file_work() -> Iterator[None]:
    """Runs in this block encode and write no file: the writer only commits its rows (a bench row's baseline)."""
    from ...pipeline import writer

    real = writer.write_item

    def rows_only(files, item, run_id):
        return [] if run_id is None else writer.map_rows(item, run_id)  # write_item's rows, no file written

    writer.write_item = rows_only
    try:
        yield
    finally:
        writer.write_item = real


@contextlib.contextmanager
def without_report() -> Iterator[None]:
    """Runs in this block write no report (its time is the end-to-end rows' note, measured by their main row)."""
    from ... import report

    real: Callable = report.write_report
    report.write_report = lambda out, **kw: SimpleNamespace(index=None, accuracy=None)
    try:
        yield
    finally:
        report.write_report = real
