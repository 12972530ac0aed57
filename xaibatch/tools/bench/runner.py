"""run_bench: the inputs and the model once, then every row's job, timed in interleaved rounds."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ...errors import Interrupted
from .context import Bench, make_bench
from .inputs import work_folder, make_inputs
from .options import FAMILIES, BenchOptions, BenchResult
from .ratios import ratios
from .timing import WARM_WEIGHT, Budget, Job, load_average, machine_description, stamped, time_interleaved

if TYPE_CHECKING:
    from ...pipeline.signals import Stop


def run_bench(
    opts: BenchOptions,
    log: Callable[[str], None] = lambda s: None,
    show: Callable[[BenchResult], None] = lambda res: None,
    stop: "Stop | None" = None,
) -> BenchResult:
    """Time every row; ``show`` gets the result before the generated files are removed (thousands of files take
    seconds to remove: a `timeout` then still finds the tables printed). ``stop`` (see
    :func:`~xaibatch.pipeline.signals.catch_signals`) cuts the timing off between chunks."""
    started = time.perf_counter() if opts.started is None else opts.started
    spent: list[tuple[str, float]] = []
    mark = Marks(started, spent)
    import torch

    from ...defaults import default_batch_size, default_workers
    from ...methods import method_class
    from ...model.loading import resolve_device, use_device

    for name in opts.only:  # any method: an unknown name raises UsageError with the close matches
        method_class(name)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    log = stamped(log, started)
    dev = resolve_device(opts.device)
    use_device(dev)  # as a run's: the loader rows' pinning thread (and torch's "cuda") on --device cuda:N, not GPU 0
    workers = default_workers(dev.type) if opts.workers is None else opts.workers  # as a run on `dev` decodes
    if opts.batch_size is None:  # as a run on `dev` batches (a GPU's 512 at 64 px, where a batch's fixed costs fade)
        opts = dataclasses.replace(opts, batch_size=default_batch_size(dev.type, opts.image_size))
    root = work_folder(opts.work_dir, "xaibatch-bench-")
    load_start = load_average()
    mark("start-up: Python, torch, xaibatch")
    try:
        jpeg = "gradcam" in opts.only  # the JPEG loader rows
        inputs = make_inputs(root, opts.images, opts.image_size, log, jpeg=jpeg)
        mark(f"inputs: {opts.images} images made, PNG{' and JPEG' if jpeg else ''} files written")
        b = make_bench(opts, inputs, dev, workers)
        mark("model: built, saved, loaded; the images on the device")
        jobs = bench_jobs(b)
        mark("jobs: methods made, the peers' libraries imported, the per-image peers' predicted classes")
        predicted = b.predict_seconds
        cut_off = _time_jobs(jobs, opts, started, log, stop)
        rows = [r for r, _ in jobs if r.measured]
        n_pred = 0 if b.predicted is None else len(b.predicted)
        spent.append((f"predicted classes of {n_pred} images, as rows needed them", b.predict_seconds - predicted))
        res = BenchResult(header(b, load_start), rows, ratios(rows, opts), cut_off, spent)
        res.wall, res.budget = time.perf_counter() - started, opts.budget
        show(res)
        return res
    finally:
        if opts.work_dir is None:
            t = time.perf_counter()
            try:
                remove_tree(root)
                log(f"bench: removed the generated files in {time.perf_counter() - t:.1f} s")
            except KeyboardInterrupt:  # the tables are out: a signal here leaves the files, not the result
                log(f"bench: interrupted while removing {root}: left in place")


def _time_jobs(
    jobs: list[Job], opts: BenchOptions, started: float, log: Callable[[str], None], stop: "Stop | None" = None
) -> bool:
    """Time ``jobs`` in interleaved rounds within the budget left since ``started``; whether a signal cut it off."""
    repeats = max(1, opts.repeats)
    units = sum((WARM_WEIGHT + repeats) * r.share for r, _ in jobs)
    budget = Budget(started, opts.budget, units)
    if opts.budget > 0 and budget.left() > 0:
        log(f"bench: {budget.left():.0f} of the {opts.budget:g} s budget left for {len(jobs)} rows")
    elif opts.budget > 0:
        log(
            f"bench: the {opts.budget:g} s budget was spent before the first row (at {opts.budget - budget.left():.0f}"
            f" s): each of the {len(jobs)} rows is measured once, over its least, past the budget"
        )
    try:
        time_interleaved(jobs, repeats, log, budget, stop)
        return False
    except (KeyboardInterrupt, Interrupted):  # a signal (a row's run stops as Interrupted): the rows measured so far
        return True


def remove_tree(root: Path) -> None:
    """``shutil.rmtree(root)``, its folders in parallel (a folder's entries are removed one at a time), in
    daemon threads: a signal ends the wait and the process exits without them."""
    folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()] if root.is_dir() else []
    threads = [threading.Thread(target=shutil.rmtree, args=(p, True), daemon=True) for p in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(root, ignore_errors=True)


class Marks:
    """Appends (what, wall seconds since the previous mark) to ``spent``."""

    def __init__(self, start: float, spent: list[tuple[str, float]]) -> None:
        self.last, self.spent = start, spent

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        self.spent.append((what, now - self.last))
        self.last = now


def bench_jobs(b: Bench) -> list[Job]:
    """Every row's job, in table order."""
    from .ours import end_to_end, forward_backward, forward_only, on_tensors
    from .parts import file_floor, loader_alone, writer_alone
    from .peers import peer_jobs

    only, n = b.opts.only, b.n
    jobs = [forward_only(b, b.bs, n)]
    if "lime" in only and b.lime_chunk != b.bs:
        jobs.append(forward_only(b, b.lime_chunk, max(n, 2 * b.lime_chunk)))
    jobs.append(forward_backward(b))
    if "gradcam" in only:
        jobs += [
            end_to_end(b, "gradcam", n),
            end_to_end(b, "gradcam", n, no_files=True),  # what the files cost
            loader_alone(b),
            loader_alone(b, "JPEG, PIL in the workers", jpeg=True),
            loader_alone(b, on=b.dev),
            writer_alone(b),
            file_floor(b),  # the writer, and its ceiling on this file system
            end_to_end(b, "gradcam", n, faith=True),  # the scores' cost (not fewer: the chance sample,
            # faithfulness.CHANCE_SAMPLE images scored twice more, would weigh on the rate)
            on_tensors(b, "gradcam", n),
        ]
    if "guided-gradcam" in only:
        jobs += [end_to_end(b, "guided-gradcam", n), on_tensors(b, "guided-gradcam", n)]
    if "lime" in only:
        jobs += [end_to_end(b, "lime", b.n_lime, model_timer=True), on_tensors(b, "lime", b.n_lime)]
    for other in (m for m in only if m not in FAMILIES):  # any other method: no peers, no targets
        jobs += [end_to_end(b, other, n), on_tensors(b, other, n)]
    if b.opts.peers:
        jobs += peer_jobs(b)
    order = ["limits", *FAMILIES, *only]
    jobs.sort(key=lambda j: order.index(j[0].family))
    return jobs


def header(b: Bench, load_start: str) -> list[str]:
    import torch

    o = b.opts
    return [
        f"xaibatch bench: {o.arch} at {o.image_size}x{o.image_size}, {o.classes} classes, device {b.dev}, "
        f"batch {b.bs}, torch threads {torch.get_num_threads()}, DataLoader workers {b.workers}",
        f"machine: {machine_description()}, torch {torch.__version__}, "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}; load average at start {load_start}",
        f"images: {b.n} generated PNGs (per-image peers: "
        f"{min(b.n, o.per_image_images)}; LIME: {b.n_lime}, its peers {min(b.n_lime, o.lime_peer_images)}, "
        f"{o.lime_samples} samples, model batch {b.lime_chunk}{'' if o.lime_batch_size else ' (auto)'}, "
        f"{o.lime_segments} SLIC segments); best of {o.repeats} interleaved rounds; "
        f"load average at end {load_average()}",
        (
            f"budget {o.budget:g} s: each round of a row gets a share of the time left and measures as many of "
            "those images as fit in it, at least one batch (one image per image for LIME and the per-image peers); "
            "the images column says how many"
            if o.budget > 0
            else "no budget: every row over all of its images"
        ),
        f"CAM layer {b.layer.name} {b.layer.grid}",
    ]
