"""xaibatch's rows: the model's limits, end-to-end runs, and the methods alone on tensors in memory."""

from __future__ import annotations

import contextlib
import shutil
import time
from types import SimpleNamespace
from typing import Callable, Iterator

import torch

from .context import Bench
from .options import Row
from .timing import Job, ModelTimer, Slice, scratch


def forward_only(b: Bench, batch: int, k: int) -> Job:
    """The model's forward alone over up to ``k`` images (repeated when that is more than there are)."""
    xs = b.x if k <= b.n else b.x.repeat((k + b.n - 1) // b.n, 1, 1, 1)[:k]

    def fn(sl: Slice) -> None:
        with torch.no_grad():
            for a, z in sl.chunks(k, batch):
                b.model(xs[a:z])
        b.sync()

    return Row("limits", f"forward only, batch {batch}", "limit", k), fn


def forward_backward(b: Bench) -> Job:
    """Forward plus backward to the input (no weight gradients): what any gradient method needs at least."""

    def fn(sl: Slice) -> None:
        for a, z in sl.chunks(b.n, b.bs):
            xi = b.x[a:z].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = b.model(xi)
                torch.autograd.grad(logits.gather(1, b.targets(z, sl)[a:z, None]).sum(), xi)
        b.sync()

    return Row("limits", f"forward + backward to the input, batch {b.bs}", "limit", b.n), fn


def end_to_end(
    b: Bench, family: str, k: int, model_timer: bool = False, faith: bool = False, no_files: bool = False
) -> Job:
    """Real pipeline runs over the first files, as many as fit in the round's slice (up to ``k``), timed over
    their compute phase. A run cannot stop half-way, so the images are planned from the previous round's rate
    and start-up (the warm-up's, for the first round); in whole batches.

    Only the main row's timed rounds render the report (its cost goes to the table's note, and into the plan as
    the last main row's report seconds); warm-ups and the other rows skip it, which takes seconds per run at
    thousands of images and measures nothing new.
    """
    from ... import pipeline
    from ...evaluation.faithfulness import FaithConfig

    row = _end_to_end_row(family, k, faith, no_files)
    outs = scratch(b.inputs.root, f"out-{family}{'-faith' if faith else '-nofiles' if no_files else ''}")
    # a warm-up explains two batches (the second one's time is the run's rate: see _steady); LIME one image, and
    # with scores (2 x steps forwards an image, and the CHANCE_SAMPLE sampled images twice more) one image too
    least = 1 if family == "lime" or faith else b.n_warm  # a timed round's least
    warm = min(k, 2 * b.bs) if least == b.n_warm else least
    step = 1 if family == "lime" or faith else b.bs
    row.share = 3.0 if row.kind == "xaibatch" else 2.0  # a run's start-up (the main row's: and its report)

    def fn(sl: Slice) -> float:
        out = next(outs)
        report = row.kind == "xaibatch" and not sl.warm
        if report:  # the last main row's report, as a fixed cost (a first one overruns its slice by its report)
            sl.fixed += b.report_seconds
        todo = sl.plan(warm if sl.warm else least, k, step)
        ro = pipeline.RunOptions(
            input_dir=b.inputs.first(todo),
            out_dir=out,
            methods=[family],
            checkpoint=b.ckpt,
            batch_size=b.bs,
            device=b.opts.device,
            workers=b.workers,
            labeled=False,
            method_options={"lime": b.lime_options(sl.warm)},
            handle_signals=False,
            faithfulness=FaithConfig() if faith else None,
        )
        timer = ModelTimer(type(b.model), b.sync) if model_timer else None
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
        if not sl.warm:
            _keep_timed_round(b, row, res.timings, todo, timer, report)
        sl.hint = _steady(res.timings, todo, b.bs, time.perf_counter() - sl.start)
        if family == "lime":
            b.lime_hint(sl, t)
        return t

    return row, fn


def _end_to_end_row(family: str, k: int, faith: bool, no_files: bool) -> Row:
    """The row an end-to-end job fills: the main one, with --faithfulness, or without the writer's file work."""
    from ...evaluation.faithfulness import DEFAULT_STEPS

    if faith:
        return Row(family, f"xaibatch end to end + --faithfulness ({DEFAULT_STEPS} steps)", "xaibatch-faith", k)
    if no_files:
        return Row(family, "xaibatch end to end, the writer's file work removed", "part", k)
    return Row(family, "xaibatch end to end (files in, files out)", "xaibatch", k)


def _keep_timed_round(
    b: Bench, row: Row, timings: dict[str, float], todo: int, timer: ModelTimer | None, report: bool
) -> None:
    """What a timed round leaves on its row: the model's seconds of its fastest round, and the least start-up
    and report seconds (the report's also on ``b``, as the next rounds' fixed cost)."""
    t = timings["compute"]
    if timer is not None and (not row.measured or todo / t > row.rate):
        row.extra["model_seconds"] = timer.seconds
    fixed = row.extra.setdefault("fixed", {"start-up": float("inf"), "report": float("inf")})
    fixed["start-up"] = min(fixed["start-up"], timings["prepare"] + timings["plan"])
    if report:
        fixed["report"] = min(fixed["report"], timings["report"])
        b.report_seconds = timings["report"]


def _steady(timings: dict[str, float], images: int, batch: int, wall: float) -> tuple[float, float] | None:
    """(rate, fixed) of a run of more than one batch, from its batches after the first: the first one carries the
    DataLoader's start-up and the first calls' costs, which a run of more images does not pay again."""
    first = timings.get("first_batch", 0.0) - timings["prepare"] - timings["plan"] - timings.get("wait", 0.0)
    after = timings["compute"] - first
    if images <= batch or first <= 0 or after <= 0:
        return None
    rate = (images - batch) / after
    return rate, max(0.0, wall - timings["compute"] + first - batch / rate)


def on_tensors(b: Bench, family: str, k: int) -> Job:
    """The method alone on the images already on the device, through the runs' own Explainer (one shared
    forward, the CAM layer captured when the method needs it); LIME's superpixels are made here, as a
    DataLoader worker makes them in a run."""
    from ...methods import create_method
    from ...methods.explainer import Explainer

    row = Row(family, "xaibatch methods alone, tensors in memory", "xaibatch-tensors", k)
    explainers = {}
    for warm in (False, True) if family == "lime" else (False,):  # LIME's warm-up: one model batch of samples
        method = create_method(family, b.ctx, **(b.lime_options(warm) if family == "lime" else {}))
        explainers[warm] = (Explainer([method], b.ctx), method.segmenter())

    def fn(sl: Slice) -> None:
        # LIME explains a batch's images together: planned from the previous round; the others batch by batch
        explainer, segment = explainers[sl.warm and family == "lime"]
        ranges = [(0, sl.plan(1, k))] if family == "lime" else sl.chunks(k, b.bs)
        t = time.perf_counter()
        for a, z in ranges:
            for _ in explainer.explain_tensors(b.x_u8[a:z], b.bs, segmenter=segment):
                pass  # each batch's maps come back to the CPU
        b.sync()
        if family == "lime":
            b.lime_hint(sl, time.perf_counter() - t)

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
