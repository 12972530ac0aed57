"""A batch too large for the memory (the GPU's, or the host's) is split and the run goes on.

A user model stands in for the GPU: it raises torch's OutOfMemoryError (or the CPU allocator's RuntimeError) on
any forward that sees more than LIMIT images, and logs the size of each forward it refused. The runs go through
``pipeline.run`` (``run_opts``) and the CLI in-process; the WriteJobs the local engine hands the writer are recorded
by wrapping ``Writer.put``. The other two paths that explain batches, ``xaibatch.explain()`` and ``xaibatch sanity``
(both through ``Explainer.explain_tensors``), split theirs the same way (``methods/explainer.Fitting``): the same
model built in-process, and ``sanity`` over a run folder made with it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import invoke, manifest_rows, quiet, run_opts, write_images
from outcheck import check_output_folder
import xaibatch
from xaibatch.dataset import JpegBytes, LoadedBatch, Undecoded
from xaibatch.errors import BatchSplitWarning, Interrupted, OneImageTooLarge
from xaibatch.pipeline import run
from xaibatch.pipeline import writer as writer_module

GREEDY = """
import os
import signal

import torch
from torch import nn

LOG = {log!r}
LIMIT = {limit}
WHERE = {where!r}  # "forward": any forward; "guided": guided backprop's only (its input needs a gradient)
KIND = {kind!r}  # "device": torch's OutOfMemoryError (CUDA); "host": the CPU allocator's RuntimeError;
# "cublas": a CUDA library's failed allocation, a plain RuntimeError (what cuBLAS says making its handle)
STOP_AT = {stop_at}  # send this process SIGINT at the n-th forward of exactly LIMIT images (0: never)
FULL_FROM = {full_from}  # from the n-th forward of more than one image on, refuse every forward (0: never)


class Greedy(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.full = 0
        self.multi = 0

    def forward(self, x):
        n = x.shape[0]
        self.multi += n > 1
        if (n > LIMIT or 0 < FULL_FROM <= self.multi) and (WHERE == "forward" or x.requires_grad):
            with open(LOG, "a") as f:
                f.write(f"{{n}}\\n")
            if KIND == "device":
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of "
                    "which 1.06 GiB is free. If reserved but unallocated memory is large try setting "
                    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
                )
            if KIND == "cublas":
                raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 642252800 bytes. Error code 12 (Cannot allocate memory)"
            )
        if n == LIMIT:
            self.full += 1
            if self.full == STOP_AT:
                os.kill(os.getpid(), signal.SIGINT)
        return self.head(self.features(x))


def build():
    torch.manual_seed(0)  # every run (and every build in one) the same weights
    return Greedy()
"""


def greedy(tmp_path: Path, name: str, limit: int, where="forward", kind="device", stop_at=0, full_from=0):
    """A model file that refuses forwards of more than ``limit`` images; returns (its --model, its log)."""
    log = tmp_path / f"{name}.log"
    path = tmp_path / f"{name}.py"
    path.write_text(
        GREEDY.format(log=str(log), limit=limit, where=where, kind=kind, stop_at=stop_at, full_from=full_from)
    )
    return f"{path}:build", log


def refused(log: Path) -> list[int]:
    """The sizes of the forwards the model refused, in order."""
    return [int(n) for n in log.read_text().split()] if log.exists() else []


def write_input(inp: Path, jpeg: bool) -> None:
    """20 images (with ``jpeg``: JPEGs, and two PNGs that begin the second batch) and, in the second batch, one
    file that is no image."""
    write_images(inp, 20, ext="jpg" if jpeg else "png")
    if jpeg:  # PNGs among JPEGs: an undecoded batch's model inputs hold them; a part of two holds no JPEG
        for name in ("img_007b.png", "img_007c.png"):
            Image.open(inp / "img_007.jpg").convert("RGB").save(inp / name)
    (inp / "img_010x.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def recorded(monkeypatch) -> list:
    """Every WriteJob the local engine queues, as it was queued (the writer empties nothing it is given)."""
    jobs: list = []
    put = writer_module.Writer.put

    def spy(self, job):
        jobs.append(summary(job))
        return put(self, job)

    monkeypatch.setattr(writer_module.Writer, "put", spy)
    return jobs


def summary(job) -> dict:
    """A WriteJob's content: items, rows, drops and failures in order (probabilities apart: numbers)."""
    return {
        "items": [(it.rel, it.stem, it.width, it.height, [m.method for m in it.maps]) for it in job.items],
        "rows": [(r.rel, r.stem, r.sha256, r.width, r.height, r.label, r.pred, r.target) for r in job.image_rows],
        "probs": [r.probs for r in job.image_rows],
        "drop_maps": list(job.drop_maps),
        "failed": list(job.failed),
    }


def maps(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.load(p) for p in sorted((out / "maps").rglob("*.npy"))}


def probabilities(out: Path) -> dict[str, list[float]]:
    return {rel: json.loads(p) for rel, p in manifest_rows(out, "SELECT rel, probs_json FROM images")}


CASES = {  # (kind, where, --decode device with JPEGs)
    "gpu": ("device", "forward", False),
    "host": ("host", "forward", False),
    "gpu-in-guided-backprop": ("device", "guided", False),
    "gpu-library-allocation": ("cublas", "forward", False),
    "gpu-jpegs-decoded-on-the-device": ("device", "forward", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_too_large_for_memory_is_split_and_the_run_finishes(tmp_path, monkeypatch, case):
    # A batch of 8 that runs out of memory used to end the run ("the GPU ran out of memory: try a smaller
    # --batch-size", exit 3), whatever batches had gone before: a cron run of 50,000 images on a smaller GPU than
    # the default batch size was sized for. Now the batch is explained in halves (8 -> 4 -> 2 here), and the rest
    # of the run in parts of 2 without running out of memory again.
    kind, where, jpeg = CASES[case]
    inp = tmp_path / "in"
    write_input(inp, jpeg)
    methods = ["gradcam", "guided-gradcam"]
    extra = {"classes": ["a", "b"], "decode": "device" if jpeg else "cpu"}

    def one(name: str, limit: int, batch: int, events: list | None = None, lines: list | None = None):
        model, log = greedy(tmp_path, name, limit, where, kind)
        out = tmp_path / name
        jobs = recorded(monkeypatch)
        result = run(
            run_opts(inp, out, None, methods, model=model, batch_size=batch, on_event=events, **extra),
            log=quiet if lines is None else lines.append,
        )
        monkeypatch.undo()
        return out, result, jobs, refused(log)

    events: list = []
    lines: list = []
    out, result, jobs, tried = one("split", 2, 8, events.append, lines)
    whole_out, whole, whole_jobs, _ = one("whole", 1000, 8)  # the same batches, none split
    small_out, small, _, small_tried = one("small", 2, 2)  # --batch-size 2: the size the split run ends up with

    assert tried == [8, 4], tried  # later batches (and the first batch's second half) are cut in twos up front
    assert small_tried == []
    n_images = len(list(inp.iterdir())) - 1
    assert result.computed == whole.computed == small.computed == n_images
    assert result.failed == whole.failed == small.failed and [rel for rel, _ in result.failed] == ["img_010x.png"]
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(n_images,)]
    check_output_folder(out, inp)

    # Each batch's WriteJob is the unsplit batch's: the same items, rows, drops and failures, in the same order.
    assert len(jobs) == len(whole_jobs) == 3
    for got, want in zip(jobs, whole_jobs):
        assert {k: v for k, v in got.items() if k != "probs"} == {k: v for k, v in want.items() if k != "probs"}
        np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-5, atol=1e-6)

    # The maps and probabilities are those of a run with --batch-size 2 (and of the unsplit batches).
    for other in (small_out, whole_out):
        got, want = maps(out), maps(other)
        assert got.keys() == want.keys() and len(got) == 2 * n_images
        for key in got:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
        p, q = probabilities(out), probabilities(other)
        assert p.keys() == q.keys()
        np.testing.assert_allclose([p[k] for k in p], [q[k] for k in p], rtol=1e-5, atol=1e-7)

    # One event (--log-json: no line beside it): what happened, the size the run now uses, what to give next time.
    assert not [line for line in lines if "did not fit" in line], lines
    memory = "host" if kind == "host" else "device"
    where_said = "the host's memory" if kind == "host" else "the device's memory"
    text = (
        f"a batch of 8 images did not fit in {where_said}: explaining 2 at a time from now on "
        "(next time give --batch-size 2)"
    )
    split = [e for e in events if e["event"] == "batch_split"]
    assert split == [{"event": "batch_split", "batch_size": 8, "size": 2, "memory": memory, "text": text}]


def test_without_log_json_the_split_is_one_warning_line(tmp_path):
    # The same split as a person (or a scheduler's log without --log-json) sees it: one line on stderr, once.
    model, log = greedy(tmp_path, "split", 2)
    write_images(tmp_path / "in", 12)
    r = invoke(
        "run", tmp_path / "in", "--model", model, "--classes", "a,b", "--out", tmp_path / "out", "--workers", 0,
        "--batch-size", 8,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [line for line in r.stderr.splitlines() if "did not fit" in line] == [
        "xaibatch: warning: a batch of 8 images did not fit in the device's memory: explaining 2 at a time from now "
        "on (next time give --batch-size 2)"
    ]
    assert refused(log) == [8, 4]


def test_an_image_alone_that_does_not_fit_is_one_line_that_does_not_ask_for_a_smaller_batch(tmp_path):
    # Split down to one image and still out of memory: nothing more to split, the run ends (exit 3, one line), with
    # the batches before it kept and no "did not fit" warning. The line does not advise a smaller --batch-size.
    model, log = greedy(tmp_path, "single", 1000, full_from=2)  # the second batch, at any size
    write_images(tmp_path / "in", 6)
    out = tmp_path / "out"
    r = invoke(
        "run", tmp_path / "in", "--model", model, "--classes", "a,b", "--out", out, "--workers", 0,
        "--batch-size", 3, "--log-json",
    )  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    assert (
        "Error: the GPU ran out of memory (2.00 GiB asked for, 1.06 GiB free of 7.79 GiB) with one image at a "
        "time: try a smaller --image-size, smaller inner batches (LIME's model batches: --method-option "
        "lime.batch_size=N); or --device cpu; what a run finished is kept"
    ) in " ".join(r.output.split())
    assert "--batch-size" not in r.output
    assert refused(log) == [3, 2, 1]  # it tried the halves before giving up (it used to stop at the first 3)
    assert "did not fit" not in r.output and "batch_split" not in r.output
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(3,)]  # the first batch is kept
    events = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    said = [e["event"] for e in events if e["event"] != "notice"]  # (the model declares no input size: a notice)
    assert said == ["start", "plan", "end"] and events[-1]["exit_code"] == 3


def test_a_stop_in_a_split_batch_commits_nothing_of_it(tmp_path):
    # A batch split in parts is still one batch: a signal while LIME explains its second part abandons all of it,
    # the first part's maps too (computed, never committed), as a stop abandons an unsplit batch.
    inp = tmp_path / "in"
    write_images(inp, 8)
    out = tmp_path / "out"
    # Forwards of 2 images: the explainer's, one per part (LIME's own, of 1 sample each, are not). The 4th is the
    # second batch's second part.
    model, log = greedy(tmp_path, "stop", 2, stop_at=4)
    opts = run_opts(
        inp, out, None, ["lime"], model=model, classes=["a", "b"], batch_size=4, handle_signals=True,
        method_options={"lime": {"samples": 40, "batch_size": 1}},
    )  # fmt: skip
    with pytest.raises(Interrupted):
        run(opts, log=quiet)
    assert refused(log) == [4]  # the first batch; the second was cut in twos up front
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(4,)]  # the first batch only
    assert manifest_rows(out, "SELECT status FROM runs") == [("interrupted",)]
    check_output_folder(out, inp)


def test_a_part_of_a_batch_keeps_every_field():
    # LoadedBatch.part cuts every per-image field alike; a field added to LoadedBatch must be cut too.
    jpeg = torch.arange(5, dtype=torch.uint8)
    info = object()
    b = LoadedBatch(
        failed=[(9, "broken")],
        index=[0, 1, 2, 3],
        orig_size=[(10, 10), (11, 11), (12, 12), (13, 13)],
        display=[np.zeros((1, 1, 3), np.uint8), None, np.ones((1, 1, 3), np.uint8), None],
        sha256=["a", "b", "c", "d"],
        x=torch.arange(4).view(4, 1, 1, 1),
        segments=torch.arange(4).view(4, 1, 1),
        undecoded=Undecoded(
            [JpegBytes(1, jpeg, info), JpegBytes(3, jpeg, info)],  # type: ignore[arg-type]
            [torch.zeros(1), None, torch.ones(1), None],
        ),
        display_on_device=[None, torch.zeros(1), None, torch.ones(1)],
    )
    p = b.part(1, 3)
    assert {f.name for f in dataclasses.fields(LoadedBatch)} == {
        "failed", "index", "orig_size", "display", "sha256", "x", "segments", "undecoded", "display_on_device",
    }  # fmt: skip
    assert p.failed == []  # the whole batch's failures stay with it
    assert p.index == [1, 2] and p.orig_size == [(11, 11), (12, 12)] and p.sha256 == ["b", "c"]
    assert p.display[0] is None and p.display[1] is b.display[2]
    assert p.x is not None and p.x.flatten().tolist() == [1, 2] and p.x.data_ptr() == b.x[1:].data_ptr()  # a view
    assert p.segments is not None and p.segments.flatten().tolist() == [1, 2]
    assert p.undecoded is not None and [(jp.position, jp.data is jpeg) for jp in p.undecoded.jpegs] == [(0, True)]
    assert p.undecoded.inputs[0] is None and p.undecoded.inputs[1] is b.undecoded.inputs[2]
    assert p.display_on_device is not None and p.display_on_device[0] is b.display_on_device[1]
    assert b.part(0, 1).undecoded.jpegs == []  # no JPEG in it: decode.finish_batch decodes none


@pytest.mark.parametrize("memory", ["device", "host"])
def test_out_of_memory_outside_a_run_still_asks_for_a_smaller_batch(memory):
    # bench does not split its batches (it times the size asked for): there a smaller --batch-size is the advice
    from xaibatch.errors import memory_message

    line = memory_message("CUDA out of memory. Tried to allocate 1.50 GiB.", memory)
    assert "try a smaller --batch-size" in line and "one image" not in line and "\n" not in line


@pytest.mark.parametrize(
    "caller, says, never",
    [
        ("bench", "try a smaller --batch-size (LIME's model batches: --lime-batch-size N)", "--method-option"),
        ("train", "try a smaller --batch-size, or --device cpu", "--method-option"),
        ("other", "try --device cpu", "--batch-size"),
    ],
)
def test_each_command_is_advised_with_its_own_options(caller, says, never):
    # bench has --lime-batch-size, not --method-option; serve, report and demo-data have no batch size; none of
    # them has a run's finished batches to keep: the advice named a run's options for all of them.
    from xaibatch.errors import memory_message

    line = memory_message("CUDA out of memory. Tried to allocate 1.50 GiB.", "device", caller=caller)
    assert line == f"the GPU ran out of memory (1.50 GiB asked for): {says}"
    assert never not in line and "what a run finished is kept" not in line


def test_bench_out_of_memory_names_bench_options(monkeypatch):
    # through the command: bench's boundary says bench's words
    import torch

    import xaibatch.tools.bench as tools_bench

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB.")

    monkeypatch.setattr(tools_bench, "run_bench", oom)
    r = invoke("bench", "--budget", "5")
    assert r.exit_code == 3, r.output
    assert "--lime-batch-size N" in r.output and "--method-option" not in r.output


def built(model: str):
    """The module a greedy --model FILE.py:build builds, for explain()."""
    path, factory = model.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, factory)()


def test_explain_splits_a_batch_too_large_for_memory_and_gives_a_smaller_batchs_maps(tmp_path):
    # explain(model, images, batch_size=8) on a GPU that holds 2 images failed with torch's OutOfMemoryError (the
    # default batch_size=32 on a notebook's small GPU). Now it splits as a run does (8 -> 4 -> 2, the rest in twos),
    # says so once, and gives the maps of batch_size=2: each image keeps its LIME seed and superpixels, the true
    # class's pass (pred,label) uses the size that fitted.
    # 10 images: a second batch (images 8 and 9) whose part must carry its own images' seeds, labels, superpixels
    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    kw = {
        "methods": ["gradcam", "lime"],
        "target": "pred,label",
        "labels": labels,
        "method_options": {"lime": {"samples": 24, "batch_size": 1}},  # LIME's forwards: one sample each
    }
    model, log = greedy(tmp_path, "split", 2)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = xaibatch.explain(built(model), x, batch_size=8, **kw)
    assert refused(log) == [8, 4]  # later batches (and the label pass) cut in twos up front
    small_model, small_log = greedy(tmp_path, "small", 2)
    want = xaibatch.explain(built(small_model), x, batch_size=2, **kw)
    assert refused(small_log) == []

    assert got.maps.keys() == want.maps.keys() == {"gradcam", "lime", "gradcam@label", "lime@label"}
    assert not torch.isnan(got.maps["gradcam@label"]).all()  # some were misclassified: the label pass ran
    for key in got.maps:
        torch.testing.assert_close(got.maps[key], want.maps[key], rtol=1e-5, atol=1e-6, equal_nan=True, msg=key)
    torch.testing.assert_close(got.probs, want.probs, rtol=1e-6, atol=1e-7)
    assert got.info["lime"] == want.info["lime"]  # the superpixels and fits of each image

    splits = [w for w in said if issubclass(w.category, BatchSplitWarning)]
    assert [str(w.message) for w in splits] == [
        "explain(): a batch of 8 images did not fit in the device's memory: explained 2 at a time "
        "(next time pass batch_size=2)"
    ], [str(w.message) for w in said]
    assert splits[0].filename == __file__  # it points at the caller's line


def test_explain_with_one_image_too_large_raises_saying_what_to_pass(tmp_path):
    # Split down to one image and still out of memory: OneImageTooLarge, in explain()'s keywords, no warning.
    model, log = greedy(tmp_path, "single", 1000, full_from=1)  # the first forward of several images, then all
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as said, pytest.raises(OneImageTooLarge) as e:
        warnings.simplefilter("always")
        xaibatch.explain(built(model), x, ["gradcam"], batch_size=4)
    assert refused(log) == [4, 2, 1]
    assert str(e.value) == (
        "the GPU ran out of memory (2.00 GiB asked for, 1.06 GiB free of 7.79 GiB) with one image at a time: try a "
        "smaller input_size, smaller inner batches (method_options={'lime': {'batch_size': N}}); or the model on "
        "the CPU (model.cpu())"
    )
    assert not [w for w in said if issubclass(w.category, BatchSplitWarning)]


SANITY_METHODS = ["gradcam", "guided-gradcam", "lime"]  # LIME: each image's seed and superpixels in a part


@pytest.fixture
def greedy_run(tmp_path):
    """A run folder made with the greedy model (2 images at a time in guided backprop, any number elsewhere: LIME's
    model batches, which sanity does not choose, fit; the run's batches of 2 fit): (folder, model file's --model,
    its log)."""
    model, log = greedy(tmp_path, "model", 2, where="guided")
    inp = tmp_path / "in"
    write_images(inp, 10)  # sanity's batches of 8: a second batch, of 2
    out = tmp_path / "out"
    run(run_opts(inp, out, None, SANITY_METHODS, model=model, classes=["a", "b"], batch_size=2, image_size=32,
                 method_options={"lime": {"samples": 24}}), log=quiet)  # fmt: skip
    assert refused(log) == []
    return out, model, log


def test_sanity_splits_a_batch_too_large_for_memory_and_scores_as_a_smaller_batch(greedy_run):
    # `xaibatch sanity OUT --batch-size 8` on a GPU that holds 2 images ended "Error: the GPU ran out of memory: try
    # a smaller --batch-size", exit 3. Now it splits (8 -> 4 -> 2) for the original maps and keeps the size for
    # every randomization step: one warning line, exit 0, the scores of --batch-size 2.
    out, model, log = greedy_run

    def check(*extra):
        r = invoke("sanity", out, "--device", "cpu", "--images", 10, *extra)
        assert r.exit_code == 0, r.output
        return r.output, json.loads((out / "sanity.json").read_text())["curves"]

    said, curves = check("--batch-size", 8)
    assert refused(log) == [8, 4]
    lines = [line for line in said.splitlines() if "did not fit" in line]
    assert lines == [
        "sanity: warning: a batch of 8 images did not fit in the device's memory: explaining 2 at a time from now "
        "on (next time give --batch-size 2)"
    ], said
    log.unlink()
    _, small = check("--batch-size", 2)
    assert refused(log) == []
    assert [c["method"] for c in curves] == [c["method"] for c in small] == SANITY_METHODS
    for c, s in zip(curves, small):
        assert c["steps"] == s["steps"] and c["scored"] == s["scored"] and c["passed"] == s["passed"]
        np.testing.assert_allclose(c["rank"], s["rank"], rtol=1e-6, atol=1e-7, err_msg=c["method"])
        np.testing.assert_allclose(c["ssim"], s["ssim"], rtol=1e-6, atol=1e-7, err_msg=c["method"])

    quiet_output, _ = check("--batch-size", 8, "-q")  # -q: no line, as sanity's other lines
    assert quiet_output == ""


def test_sanity_with_one_image_too_large_is_one_line_naming_its_own_options(greedy_run, tmp_path):
    # One image alone does not fit: one line, exit 3, advising what sanity can change (not the run's --image-size
    # or --method-option, which it takes from the run), nothing written.
    out, _, _ = greedy_run
    model, log = greedy(tmp_path, "model", 1000, where="guided", full_from=1)  # the same weights; guided's fail
    r = invoke("sanity", out, "--device", "cpu", "--images", 8, "--batch-size", 8, "--model", model)
    assert r.exit_code == 3, r.output
    assert r.output.splitlines()[-1] == (
        "Error: the GPU ran out of memory (2.00 GiB asked for, 1.06 GiB free of 7.79 GiB) with one image at a time, "
        "at the run's image size and with its methods' options: try --device cpu"
    )
    assert "did not fit" not in r.output
    assert refused(log) == [8, 4, 2, 1]
    assert not (out / "sanity.json").exists()


@pytest.mark.parametrize("memory", ["device", "host"])
def test_sanity_out_of_memory_outside_its_batches_does_not_ask_for_a_smaller_batch(greedy_run, monkeypatch, memory):
    # Its batches split themselves: out of memory elsewhere (the randomized copy of the model, its load) used to
    # say "try a smaller --batch-size", which cannot help there.
    import xaibatch.evaluation.sanity as sanity_module

    def no_room(model, fresh):
        if memory == "device":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        raise MemoryError()

    monkeypatch.setattr(sanity_module, "copy_model", no_room)
    out, _, _ = greedy_run
    r = invoke("sanity", out, "--device", "cpu", "--images", 8, "-q")
    assert r.exit_code == 3
    head = "the GPU ran out of memory (2.00 GiB asked for)" if memory == "device" else "out of memory"
    advice = "try --device cpu" if memory == "device" else "free memory and try again"
    assert r.output == f"Error: {head} outside the batches (they are split to fit): {advice}\n"


def test_serve_answers_running_out_of_memory_with_what_to_do():
    # serve wrote "internal error: OutOfMemoryError: CUDA out of memory. Tried to allocate ... (a paragraph)" into
    # the page, where every command's boundary says what to do (errors.outcome: one rule for both)
    from xaibatch.serve.core import Request, explain_requests

    class Full:
        def explain(self, *a):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total ...")

    out = explain_requests(Full(), [Request(object(), ("gradcam",))])  # type: ignore[arg-type]
    assert out == ["the GPU ran out of memory (1.50 GiB asked for): try --device cpu"]


def test_the_json_end_event_says_what_the_error_line_says(tmp_path, monkeypatch):
    # --log-json's end event held str(e): "" for a MemoryError (then its type's name), torch's paragraph for a GPU's,
    # where the Error: line says what to do; a scheduler reading the JSON got less than a person reading stderr
    import xaibatch.pipeline as pipeline

    def full(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(pipeline, "run", full)
    write_images(tmp_path / "in", 2)
    r = invoke("run", tmp_path / "in", "--out", tmp_path / "out", "--log-json", "--device", "cpu")
    assert r.exit_code == 3, r.output
    end = json.loads([line for line in r.output.splitlines() if line.startswith('{"event": "end"')][-1])
    error_line = next(line for line in r.output.splitlines() if line.startswith("Error: "))
    assert end["error"] == error_line.removeprefix("Error: ") and end["error"].startswith("out of memory: try a")


def test_the_run_row_says_what_the_error_line_says(tmp_path, monkeypatch):
    # the run's row (the history's hover text) held "MemoryError: " where the Error: line said what to do
    def full(self, job):
        raise MemoryError()

    monkeypatch.setattr(writer_module.Writer, "put", full)
    write_images(tmp_path / "in", 4)
    r = invoke("run", tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu", "--workers", "0", "-q")
    assert r.exit_code == 3, r.output
    line = next(line for line in r.output.splitlines() if line.startswith("Error: "))
    assert manifest_rows(tmp_path / "out", "SELECT status, reason FROM runs") == [("error", line[len("Error: ") :])]
    assert "out of memory: try a smaller --batch-size" in line


def test_jpegs_that_run_out_of_memory_decoding_split_the_batch(tmp_path, tiny_ckpt, monkeypatch):
    # nvJPEG's outputs come from torch's CUDA allocator: a batch of large photos can run out of the GPU's memory in
    # the decode itself. decode._decode_each took that for a JPEG the device refuses: it halved the batch on every
    # batch of the run, without a word, and where even one image did not fit sent the batch to PIL in the main
    # process. Now it is a batch that does not fit, split once as any other (Fitting); the CPU's decoder stands in.
    from xaibatch import decode

    inp = tmp_path / "in"
    write_input(inp, jpeg=True)
    real = decode.decode_jpegs
    refused_sizes: list[int] = []

    def tight(data, device):
        if len(data) > 2:
            refused_sizes.append(len(data))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return real(data, device)

    monkeypatch.setattr(decode, "decode_jpegs", tight)
    events: list = []
    result = run(
        run_opts(inp, tmp_path / "out", tiny_ckpt, ["gradcam"], batch_size=8, decode="device", on_event=events.append),
        log=quiet,
    )
    assert result.computed == len(list(inp.iterdir())) - 1
    assert [rel for rel, _ in result.failed] == ["img_010x.png"]
    assert refused_sizes == [8, 4], refused_sizes  # later batches are decoded in parts of 2 up front
    split = [e for e in events if e["event"] == "batch_split"]
    assert [(e["batch_size"], e["size"], e["memory"]) for e in split] == [(8, 2, "device")]


class _Tight(torch.nn.Module):
    """A small CNN whose forwards of more than ``limit`` images run out of (the GPU's) memory."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 2),
        )
        self.limit, self.refused = limit, []

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.refused.append(x.shape[0])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return self.net(x)


def test_limes_own_chunk_that_runs_out_of_memory_is_halved(tmp_path):
    # LIME's automatic chunk (perturbed images per forward) is half the GPU memory free when first measured. Once
    # less is free, every chunk ran out of memory; splitting the batch of images could not help (one image's
    # samples still filled a chunk), so the run ended saying one image did not fit. Now the chunk is halved, as
    # faithfulness's chunks are; a lime.batch_size the user gave is kept (and the batch is split as before).
    from xaibatch.methods import ModelContext, create_method
    from xaibatch.methods.explainer import Explainer
    from xaibatch.preprocess import Preprocess

    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = {}
    for given in ("auto", 16):
        net = _Tight(limit=16)
        ctx = ModelContext(net, None, Preprocess(16), torch.device("cpu"))
        lime = create_method("lime", ctx, samples=64, segments=8, batch_size=given)
        got[given] = Explainer([lime], ctx)(x, None, None).methods["lime"].maps
        assert net.refused == ([128, 64, 32] if given == "auto" else []), net.refused
        assert lime.chunk_size(ctx.preprocess.normalize(x)) == 16
    torch.testing.assert_close(got["auto"], got[16])

    net = _Tight(limit=16)
    ctx = ModelContext(net, None, Preprocess(16), torch.device("cpu"))
    lime = create_method("lime", ctx, samples=64, segments=8, batch_size=32)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        Explainer([lime], ctx)(x, None, None)
    assert net.refused == [32]  # not halved: the user's size


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call",
    ],
)
def test_a_cuda_librarys_failed_allocation_is_the_devices_memory(message):
    # plain RuntimeErrors (torch's AcceleratorError from 2.8, its subclass), not torch's OutOfMemoryError: the run
    # ended with an internal error where splitting the batch (after empty_cache) goes on
    from xaibatch.errors import out_of_memory

    assert out_of_memory(RuntimeError(message)) == "device"
    assert out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered")) is None
    assert out_of_memory(ValueError(message)) is None
