"""A tiny run of ``xaibatch bench``: every row and ratio is there (no timing assertions)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from xaibatch.cli import cli

ROWS = [
    ("limits", "forward only, batch 4"),
    ("limits", "forward only, batch 16"),
    ("limits", "forward + backward to the input, batch 4"),
    ("gradcam", "xaibatch end to end (files in, files out)"),
    ("gradcam", "xaibatch methods alone, tensors in memory"),
    ("gradcam", "pytorch-grad-cam GradCAM, per image"),
    ("gradcam", "pytorch-grad-cam GradCAM, batches of 4"),
    ("guided-gradcam", "xaibatch end to end (files in, files out)"),
    ("guided-gradcam", "xaibatch methods alone, tensors in memory"),
    ("guided-gradcam", "pytorch-grad-cam GradCAM + guided backprop, per image"),
    ("guided-gradcam", "captum GuidedGradCam, batches of 4"),
    ("lime", "xaibatch end to end (files in, files out)"),
    ("lime", "xaibatch methods alone, tensors in memory"),
    ("lime", "lime package explain_instance, per image"),
    ("lime", "captum Lime, per image"),
]
RATIOS = [
    "gradcam end to end / forward+backward limit",
    "gradcam end to end / pytorch-grad-cam batched (tensors in memory)",
    "guided-gradcam end to end / (forward+backward limit / 2)",
    "guided-gradcam end to end / pytorch-grad-cam guided per image",
    "lime end to end / (best forward-only rate / 20 samples)",
    "lime end to end / lime package",
    "lime: share of the compute phase outside the model's forward",
]
SMALL = [
    "bench",
    "--arch",
    "test_resnet",
    "--image-size",
    "32",
    "--images",
    "8",
    "--batch-size",
    "4",
    "--lime-images",
    "2",
    "--lime-samples",
    "20",
    "--lime-batch-size",
    "16",
    "--repeats",
    "1",
    "--workers",
    "0",
    "--quiet",
]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.slow
def test_bench_markdown_table_has_every_row_and_ratio(tmp_path):
    r = CliRunner().invoke(cli, [*SMALL, "--markdown", "--keep", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output
    rows = [_cells(line) for line in r.output.splitlines() if line.startswith("| ")]
    table = {(c[0], c[1]): c for c in rows if len(c) == 6}
    for key in ROWS:
        assert key in table, f"missing row {key}:\n{r.output}"
        images, seconds, rate = table[key][2:5]
        assert int(images) > 0 and float(seconds) > 0 and float(rate) > 0
    names = {c[0] for c in rows if len(c) == 4}
    for name in RATIOS:
        assert name in names, f"missing ratio {name!r}:\n{r.output}"
    assert any(n.startswith("gradcam end to end / best peer") for n in names)
    assert "xaibatch bench: test_resnet at 32x32" in r.output
    assert (tmp_path / "work" / "all" / "img_000007.png").is_file()  # --keep keeps the generated inputs


def test_bench_only_one_method_plain_table():
    r = CliRunner().invoke(cli, [*SMALL, "--only", "gradcam", "--no-peers"])
    assert r.exit_code == 0, r.output
    assert re.search(r"^gradcam\s+xaibatch end to end", r.output, re.M)
    assert "lime" not in r.output and "guided" not in r.output
    assert "forward only, batch 16" not in r.output  # LIME's model batch is timed only with LIME
    # the JPEG loader, PIL in the workers against decoding on the device (the CPU here), and their ratio
    assert "loader alone, JPEG, PIL in the workers (0 DataLoader workers)" in r.output
    assert "loader alone, JPEG, decoded on cpu (0 DataLoader workers)" in r.output
    assert re.search(r"JPEG loader alone at 32 px: decoded on cpu / PIL in the workers\s+\d+\.\d\dx", r.output)


def test_no_temporary_folder_asks_for_keep(monkeypatch):
    """docker run --read-only without TMPDIR: the bench ended with Python's "No usable temporary directory found in
    [...]"; now one line names --keep DIR (exit 2), for the timings and the memory table alike."""
    import tempfile

    def none(*args, **kwargs):
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "mkdtemp", none)
    memory = ["bench", "--memory", "--memory-images", "8", "--workers", "0", "--quiet"]
    for argv in ([*SMALL, "--only", "gradcam", "--no-peers"], memory):
        r = CliRunner().invoke(cli, argv)
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines()[-1].endswith("for the bench's files: give one with --keep DIR")


def test_bench_rejects_unknown_method():
    r = CliRunner().invoke(cli, [*SMALL, "--only", "gradcam,nope"])
    assert r.exit_code == 2
    assert "--only" in r.output


@pytest.mark.slow
def test_bench_memory_table(tmp_path):
    r = CliRunner().invoke(cli, ["bench", "--memory", "--memory-images", "6,12", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert re.search(r"^\s*6\s", r.output, re.M) and re.search(r"^\s*12\s", r.output, re.M)
    assert "peak RSS 12 vs 6 images" in r.output


@pytest.mark.parametrize("budget", ["nan", "inf"])
def test_a_budget_that_is_not_a_finite_number_is_refused(budget):
    """`--budget nan` and `--budget inf` were taken: a bench with no limit whose header then said "budget inf s"
    (0 is the way to ask for none)."""
    r = CliRunner().invoke(cli, ["bench", "--budget", budget, "--only", "nosuch"])  # fails fast either way
    assert r.exit_code == 2 and "--budget" in r.output and "not a" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_the_generated_arrays_are_what_the_runs_decode(tmp_path):
    """The bench's tensors come from the arrays it generated, not from reading its files back: the same pixels."""
    import numpy as np

    from xaibatch.dataset import ImageDataset
    from xaibatch.scan import scan
    from xaibatch.tools.bench.inputs import make_inputs

    inputs = make_inputs(tmp_path, 5, 24)
    assert inputs.images.shape == (5, 24, 24, 3) and inputs.images.std() > 20  # not flat
    ds = ImageDataset(scan(inputs.first(5), labeled=False).images, 24)
    decoded = np.stack([ds[i].x.permute(1, 2, 0).numpy() for i in range(len(ds))])
    np.testing.assert_array_equal(decoded, inputs.images)
    jpegs = sorted(p.name for p in inputs.jpegs(2).iterdir())
    assert jpegs == ["img_000000.jpg", "img_000001.jpg"] and (tmp_path / "jpeg-5" / "img_000004.jpg").is_file()


def test_a_kept_folder_of_another_image_size_is_written_again(tmp_path):
    """`xaibatch bench --keep DIR --image-size 64` after a `--keep DIR --image-size 32` bench timed the 32 px
    files (resized by the loader) in rows that said 64 px: existing files were kept whatever their size."""
    import numpy as np
    from PIL import Image

    from xaibatch.dataset import ImageDataset
    from xaibatch.scan import scan
    from xaibatch.tools.bench.inputs import make_inputs

    small = make_inputs(tmp_path, 3, 16, jpeg=True)
    small.first(2), small.jpegs(2)
    inputs = make_inputs(tmp_path, 3, 24, jpeg=True)
    ds = ImageDataset(scan(inputs.first(2), labeled=False).images, 24)
    decoded = np.stack([ds[i].x.permute(1, 2, 0).numpy() for i in range(len(ds))])
    np.testing.assert_array_equal(decoded, inputs.images[:2])
    for path in [*inputs.jpegs(2).iterdir(), *(tmp_path / "jpeg-3").iterdir(), *(tmp_path / "all").iterdir()]:
        with Image.open(path) as im:
            assert im.size == (24, 24), path


def test_keep_refuses_a_folder_of_the_users_and_leaves_it_alone(tmp_path):
    """`xaibatch bench --keep ~/work` overwrote the user's `model.pt` there with the bench's random model (and
    removes `out-*`, `writer-*`, ... scratch folders): --keep now takes a new or empty folder or an earlier
    bench's, else exit 2 before any file is written."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.pt").write_bytes(b"my weights")
    args = [*SMALL, "--only", "gradcam", "--no-peers", "--budget", "0.001", "--keep", str(mine)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert "--keep" in r.output and "model.pt" in r.output and "new or empty folder" in r.output
    assert sorted(p.name for p in mine.iterdir()) == ["model.pt"]
    assert (mine / "model.pt").read_bytes() == b"my weights"


def test_a_folder_the_bench_generated_into_may_be_kept_again(tmp_path):
    from xaibatch.tools.bench.inputs import claim_folder, keep_folder_problem, make_inputs

    assert keep_folder_problem(tmp_path / "new") is None and keep_folder_problem(tmp_path) is None  # new, empty
    make_inputs(claim_folder(tmp_path / "kept"), 2, 16)
    assert keep_folder_problem(tmp_path / "kept") is None  # an earlier bench's
    assert "is not an earlier bench's folder" in keep_folder_problem(tmp_path / "kept" / "all")


def test_the_bench_model_is_synths_checkpoint_at_the_architectures_own_size(tmp_path):
    """``xaibatch bench`` without --image-size builds its model with ``synth.tiny_checkpoint(size=None)``: the
    checkpoint records the architecture's own input size, and the same seed gives the same weights."""
    import torch

    from xaibatch.model.loading import load_model
    from xaibatch.tools import synth

    a = load_model(synth.tiny_checkpoint(tmp_path / "a.pt", "test_resnet", None, ["c0", "c1", "c2"]))
    b = load_model(synth.tiny_checkpoint(tmp_path / "b.pt", "test_resnet", None, ["c0", "c1", "c2"]))
    own = a.module.pretrained_cfg["input_size"][-1]
    assert a.preprocess.image_size == own and a.class_names == ["c0", "c1", "c2"]
    for (name, x), (_n, y) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.slow
def test_a_bench_stopped_by_sigterm_prints_the_rows_it_measured(tmp_path):
    """`timeout 100 xaibatch bench ...` (the GPU check's way) used to leave nothing on stdout: the tables were
    printed at the end. A SIGTERM now ends the timing, prints the rows measured so far, marked, and exits 5."""
    import signal
    import subprocess
    import sys

    from helpers import wait_until

    args = [a for a in SMALL if a != "--quiet"] + ["--only", "gradcam", "--no-peers", "--repeats", "1000"]
    err = tmp_path / "err.txt"
    with open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xaibatch", *args, "--markdown"],
            stdout=subprocess.PIPE,
            stderr=e,
            text=True,
        )
        wait_until(proc, lambda: "bench: gradcam: warm-up" in err.read_text(), "the first round", timeout=180)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 5, err.read_text()
    assert "CUT OFF by a signal" in out
    table = {(c[0], c[1]): c for c in map(_cells, out.splitlines()) if len(c) == 6}
    assert float(table[("limits", "forward only, batch 4")][4]) > 0  # measured in round 1, so shown
    assert ("gradcam", "xaibatch methods alone, tensors in memory") not in table  # never timed: left out
    assert "inf" not in out
    assert err.read_text().rstrip().splitlines()[-1].startswith("Error: interrupted")


# images each row measures in SMALL's bench (8 images, batch 4, LIME 2 images, LIME's model batch 16)
ALL_IMAGES = {key: 2 if key[0] == "lime" else 8 for key in ROWS} | {("limits", "forward only, batch 16"): 32}
LEAST = {key: 1 if key[0] == "lime" or "per image" in key[1] else 4 for key in ROWS} | {
    ("limits", "forward only, batch 16"): 16
}
GRADCAM_PARTS = {  # the gradcam family's other rows: a spent budget leaves them one batch, the faithfulness row one image
    "xaibatch end to end, the writer's file work removed": 4,
    "loader alone (0 DataLoader workers)": 4,
    "loader alone, JPEG, PIL in the workers (0 DataLoader workers)": 4,
    "loader alone, JPEG, decoded on cpu (0 DataLoader workers)": 4,
    "writer alone, maps in memory (the writer thread)": 4,
    "file system floor: 3 atomic files per image, no encoding": 4,
    "xaibatch end to end + --faithfulness (20 steps)": 1,
}


def _images(output: str) -> dict[tuple[str, str], int]:
    return {(c[0], c[1]): int(c[2]) for c in map(_cells, output.splitlines()) if len(c) == 6 and c[2].isdigit()}


def test_a_spent_budget_still_measures_every_row_over_its_least():
    """A budget spent before the first row (the GPU check's `timeout` would otherwise cut the LIME rows): every
    row is still there, each measured once over its least (a batch; one image for LIME and per-image peers)."""
    loud = [a for a in SMALL if a != "--quiet"]
    r = CliRunner().invoke(cli, [*loud, "--budget", "0.001", "--repeats", "3", "--markdown"])
    assert r.exit_code == 0, r.output
    images = _images(r.output)
    assert {k: images.get(k) for k in LEAST} == LEAST, r.output
    assert {impl: images.get(("gradcam", impl)) for impl in GRADCAM_PARTS} == GRADCAM_PARTS, r.output
    assert "budget 0.001 s: each round of a row gets a share" in r.output
    assert re.search(r"The bench ran \d+ s past its 0.001 s budget: every row is measured once", r.output)
    assert re.search(r"the 0.001 s budget was spent before the first row \(at \d+ s\): each of the \d+ rows", r.output)
    assert " of the 0.001 s budget left" not in r.output  # it said "-6 of the 1 s budget left for 22 rows"
    assert re.search(r"^\| total, from the command's start \(budget 0.001 s\) \| \d+\.\d \|", r.output, re.M)
    assert re.search(r"^\| lime: captum Lime, per image \| \d+\.\d \| \d+\.\d \|$", r.output, re.M)  # wall, warm-up


@pytest.mark.slow
def test_without_a_budget_every_row_measures_all_of_its_images():
    r = CliRunner().invoke(cli, [*SMALL, "--budget", "0", "--markdown"])
    assert r.exit_code == 0, r.output
    images = _images(r.output)
    assert {k: images.get(k) for k in ALL_IMAGES} == ALL_IMAGES, r.output
    assert {impl: images.get(("gradcam", impl)) for impl in GRADCAM_PARTS} == dict.fromkeys(GRADCAM_PARTS, 8)
    assert "no budget: every row over all of its images" in r.output


def test_a_slice_stops_a_loop_at_its_deadline_and_plans_runs_from_a_rate():
    import math

    from xaibatch.tools.bench.timing import Budget, Slice

    assert list(Slice(math.inf).chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    spent = Slice(0.0)
    assert list(spent.chunks(10, 4)) == [(0, 4)] and spent.images == 4  # at least one chunk
    assert list(Slice(math.inf, warm=True).chunks(10, 4)) == [(0, 4)]
    # 100 images/s, 2 s fixed, 10.5 s: 850 images fit, 832 in whole batches of 64; never above the most
    assert Slice(10.5, rate=100.0, fixed=2.0).plan(64, 4096, 64) == 832
    assert Slice(10.5, rate=100.0, fixed=2.0).plan(64, 500, 64) == 500
    assert Slice(1.0, rate=100.0, fixed=2.0).plan(64, 4096, 64) == 64  # nothing fits: the least
    assert Slice(10.0).plan(3, 4096) == 3  # no rate known yet: the least
    assert Slice(math.inf).plan(3, 4096) == 4096
    budget = Budget(0.0, 0.0, 10)  # no budget
    assert budget.take() == math.inf
    import time

    budget = Budget(time.perf_counter(), 100.0, 4)
    first = budget.take(2.0)  # half the units: half the time left
    assert 40.0 < first <= 50.0 and budget.units == 2  # 50 s, less the moments since the start
    assert Budget(time.perf_counter() - 200, 100.0, 4).take() == 0.0  # spent: each row does its least


def test_timeouts_second_sigterm_is_the_same_stop():
    """GNU `timeout` signals the bench and then its process group: the second SIGTERM, a moment after the first,
    must not interrupt the printing of the tables the first one asked for."""
    import os
    import signal

    from xaibatch.pipeline.signals import stops_interrupt

    with stops_interrupt():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs between bytecodes
                pass
        os.kill(os.getpid(), signal.SIGTERM)  # the group's copy: ignored
        for _ in range(10**6):
            pass


def test_a_signal_ends_the_timing_after_the_chunk_under_way_and_drops_that_round():
    """A SIGTERM used to raise KeyboardInterrupt wherever the bench stood: inside a row's DataLoader, writer or
    queue code it could leave a lock held, and the bench hung instead of printing its tables (4 of 20 closed
    terminals under load). The signal now only sets the stop: the chunk under way runs to its end, no later chunk
    or row runs, and the round it cut short is not recorded."""
    import os
    import signal

    from xaibatch.pipeline.signals import catch_signals
    from xaibatch.tools.bench.options import Row
    from xaibatch.tools.bench.timing import time_interleaved

    chunks, finished = [], []

    def job(sl):
        for a, z in sl.chunks(10, 2):
            chunks.append((a, z))
            if len(chunks) == 3:  # the warm-up's one chunk, then the first timed round's second
                os.kill(os.getpid(), signal.SIGTERM)
                finished.append(a)  # not reached if the handler raises here
        return None

    later_rounds = []

    def later(sl):
        later_rounds.append("warm-up" if sl.warm else "timed")
        return None

    first, second = Row("f", "first", "part", 0), Row("f", "second", "part", 0)
    with catch_signals(True) as stop:
        with pytest.raises(KeyboardInterrupt):
            time_interleaved([(first, job), (second, later)], 3, lambda s: None, stop=stop)
    assert chunks == [(0, 2), (0, 2), (2, 4)] and finished == [2]
    assert later_rounds == ["warm-up"]  # every row warms up first; none is timed after the signal
    assert stop.name == "SIGTERM" and not first.measured and not second.measured


def test_a_run_inside_a_command_that_catches_signals_shares_its_stop():
    """`xaibatch bench` times runs: a signal must stop the run (after its batch) and the bench with it, so the
    run's catch_signals hands out the bench's Stop instead of installing handlers of its own."""
    import signal

    from xaibatch.pipeline.signals import catch_signals

    before = signal.getsignal(signal.SIGTERM)
    with catch_signals(True) as outer:
        handler = signal.getsignal(signal.SIGTERM)
        with catch_signals(False) as inner, catch_signals(True) as inner2:
            assert inner is outer and inner2 is outer
            assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGTERM) is before
    with catch_signals(False) as alone:
        assert alone is not outer and not alone.requested


def test_a_repeated_sigterm_within_the_window_is_the_same_stop_and_a_second_ctrl_c_is_not():
    import os
    import signal

    from xaibatch.pipeline.signals import catch_signals

    with catch_signals(True, repeat_s=30.0) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # GNU timeout's copy to the process group: the same stop
        for _ in range(10**5):
            pass
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
            for _ in range(10**6):
                pass


def test_later_rounds_never_push_another_familys_first_round_past_the_budget():
    """`xaibatch bench --budget 60` took 75 s: gradcam's and guided-gradcam's rounds 2 and 3 ran while time was
    left, and LIME's warm-up and first round, which every row owes, came after them, past the budget. Every
    family's first round now comes first; a later round runs only when the time left covers its least."""
    import time

    from xaibatch.tools.bench.options import Row
    from xaibatch.tools.bench.timing import Budget, time_interleaved

    calls = []

    def job(name):
        def fn(sl):
            calls.append(f"{name} {'warm-up' if sl.warm else 'round'}")
            time.sleep(0.3)  # each round's least: more than its slice
            sl.images = 1
            return None

        return fn

    first, second = Row("first", "a", "part", 1), Row("second", "b", "part", 1)
    start = time.perf_counter()
    time_interleaved([(first, job("first")), (second, job("second"))], 3, lambda s: None, Budget(start, 1.0, 6.5))
    assert calls == ["first warm-up", "first round", "second warm-up", "second round"]
    assert time.perf_counter() - start < 1.35 and first.measured and second.measured


def test_a_later_round_starts_only_when_the_rows_quickest_round_fits():
    """LIME's warm-up explains with one model batch of samples, its rounds with all of them: a later round
    judged by the warm-up's wall started with 8 s left and took 12 s (`--budget 60` ran 64 s). A round's cost is
    now judged by the rows' quickest timed round."""
    import time

    from xaibatch.tools.bench.options import Row
    from xaibatch.tools.bench.timing import Budget, time_interleaved

    calls = []

    def lime_like(sl):
        calls.append("warm-up" if sl.warm else "round")
        time.sleep(0.05 if sl.warm else 0.4)  # fewer samples in the warm-up
        sl.images = 1
        return None

    row = Row("lime", "a", "part", 1)
    start = time.perf_counter()
    time_interleaved([(row, lime_like)], 3, lambda s: None, Budget(start, 0.75, 3.25))
    assert calls == ["warm-up", "round"]  # 0.3 s left after the first round: a second (0.4 s) does not fit
    assert time.perf_counter() - start < 0.75


def test_the_tables_say_past_the_budget_only_when_it_was_overrun_by_a_second_or_more():
    """A 75 s bench that ended at 75.2 s said "The bench ran 0 s past its 75 s budget"."""
    from xaibatch.tools.bench import BenchResult, format_result

    def note(wall):
        return "past its 75 s budget" in format_result(BenchResult(["h"], [], [], wall=wall, budget=75.0))

    assert not note(75.2) and not note(70.0) and note(80.0)


def test_a_slow_rows_rate_is_not_printed_as_zero():
    """LIME at 224 px on a CPU: 0.02 images/s was printed as "0.0" images/s."""
    from xaibatch.tools.bench import BenchResult, Row, format_result

    rows = [
        Row("lime", "xaibatch end to end (files in, files out)", "xaibatch", 1, 48.0),
        Row("limits", "f", "limit", 64, 2.0),
    ]
    lines = format_result(BenchResult(["h"], rows, [])).splitlines()
    assert any(line.split()[-1] == "0.0208" for line in lines if line.startswith("lime ")), lines
    assert any(line.split()[-1] == "32.0" for line in lines if line.startswith("limits ")), lines


def test_unset_workers_and_batch_are_a_runs_on_the_benchs_device(monkeypatch, tmp_path):
    """Unset, --workers and --batch-size are a run's defaults on the bench's device: on a GPU half the CPUs and
    512 at 64 px (a 16-core H100 host's bench ran its end-to-end rows with the CPU rule's 4 workers and batches
    of 64, where a run there decodes with 8 workers and batches of 512)."""
    import torch

    import xaibatch.defaults as defaults
    import xaibatch.model.loading as loading
    import xaibatch.tools.bench as bench_pkg
    import xaibatch.tools.bench.runner as runner

    class Done:
        cut_off = False

    given = []
    monkeypatch.setattr(bench_pkg, "run_bench", lambda opts, **kw: given.append(opts) or Done())
    for args, want in (([], (None, None)), (["--workers", "3", "--batch-size", "7"], (3, 7))):
        r = CliRunner().invoke(cli, ["bench", "--quiet", *args])
        assert r.exit_code == 0, r.output
        opts = given.pop()
        assert (opts.workers, opts.batch_size) == want

    class Chosen(Exception):
        pass

    def stop(opts, inputs, dev, workers):
        raise Chosen(opts.batch_size, workers)

    monkeypatch.setattr(loading, "resolve_device", lambda spec: torch.device("cuda"))
    monkeypatch.setattr(defaults, "cpu_count", lambda: 16)
    monkeypatch.setattr(runner, "work_folder", lambda *a: tmp_path)
    monkeypatch.setattr(runner, "make_inputs", lambda *a, **kw: None)
    monkeypatch.setattr(runner, "make_bench", stop)
    for size, batch in ((64, 512), (224, 128)):
        opts = bench_pkg.BenchOptions(only=("gradcam",), image_size=size, work_dir=tmp_path)
        with pytest.raises(Chosen) as e:
            runner.run_bench(opts, log=lambda s: None, show=lambda res: None)
        assert e.value.args == (batch, 8)


def test_the_bench_makes_its_cuda_n_the_current_device(monkeypatch, tmp_path):
    # A run makes --device cuda:N current (prepare -> use_device); the bench did not: its "loader alone, decoded
    # on" rows pin their batches in the DataLoader's thread, which pins on the current device, so a bench on
    # cuda:1 opened a CUDA context (hundreds of MB) on GPU 0 and pinned for it. No GPU here: stand-ins.
    import torch

    import xaibatch.model.loading as loading
    import xaibatch.tools.bench as bench_pkg
    import xaibatch.tools.bench.runner as runner

    class Built(Exception):
        pass

    current = []
    monkeypatch.setattr(loading, "resolve_device", lambda spec: torch.device(spec))
    monkeypatch.setattr(loading, "use_device", current.append)
    monkeypatch.setattr(runner, "work_folder", lambda *a: tmp_path)
    monkeypatch.setattr(runner, "make_inputs", lambda *a, **kw: None)

    def built(opts, inputs, dev, workers):
        raise Built(list(current))

    monkeypatch.setattr(runner, "make_bench", built)
    opts = bench_pkg.BenchOptions(only=("gradcam",), device="cuda:1", work_dir=tmp_path)
    with pytest.raises(Built) as e:
        runner.run_bench(opts, log=lambda s: None, show=lambda res: None)
    assert e.value.args == ([torch.device("cuda", 1)],)  # before the model, the inputs or any DataLoader
