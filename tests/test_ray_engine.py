"""``--engine ray``: the same outputs as the local engine, incremental, and whole after a worker is killed.

Only a Ray started here, on this machine (``ray.init(num_cpus=2, include_dashboard=False)``, no
address), with two CPU workers. Skipped when Ray Data is not installed (``pip install "xaibatch[ray]"``);
the checks of the missing-Ray message and of the workers' start-up checks need no Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from xaibatch.layout import REPORT_STATE
from xaibatch.cli import cli
from xaibatch.errors import UsageError
from xaibatch.pipeline import RayOptions, RunOptions, run
from xaibatch.pipeline.compute import batches
from xaibatch.pipeline.plan import Plan, Work
from xaibatch.scan import Failure, ImageEntry, Scan

from helpers import manifest_rows, manifest_value, run_opts, write_images
from outcheck import check_output_folder

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray Data is not installed (pip install "xaibatch[ray]")')
METHODS = ["gradcam", "guided-gradcam", "lime"]


def _opts(inp: Path, out: Path, ckpt: Path, engine: str = "local", **kw) -> RunOptions:
    lime = {"lime": {"samples": 40, "segments": 12}}
    return run_opts(
        inp, out, ckpt, METHODS, method_options=lime, engine=engine, ray=RayOptions(workers=2, cpus_per_worker=1), **kw
    )


@pytest.fixture
def one_thread():
    """The local engine at one torch thread, as each 1-CPU Ray worker runs: CPU floats depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")  # this machine only, loopback
    yield ray
    ray.shutdown()


# -- no Ray needed -------------------------------------------------------------------------------------------------


def test_actors_use_their_own_gpu_when_the_run_names_one_of_the_drivers(tmp_path):
    # --device cuda:1 names a GPU of the driver's host; an actor sees only the GPU Ray gave it (cuda:0 of one), so
    # "cuda:1" failed every actor's model load ("there are 1 GPU(s)") on a multi-GPU host. Only a GPU shows it.
    import types

    from xaibatch.pipeline.ray_engine import worker_config

    found = Scan(tmp_path, None, [], [], [])
    for given, actors in (("cuda:1", "cuda"), ("cuda", "cuda"), ("cpu", "cpu"), ("auto", "auto")):
        opts = run_opts(tmp_path, tmp_path / "out", None, device=given)
        job = types.SimpleNamespace(opts=opts, out=tmp_path / "out", prepared=types.SimpleNamespace(found=found))
        job.hashes, job.run_id = None, 1
        assert worker_config(job, 8, "probe", "token", "stop", 1).opts.device == actors


def test_missing_ray_names_the_install_command(labeled_dir, tmp_path, tiny_ckpt, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    res = CliRunner().invoke(
        cli,
        [
            "run",
            str(labeled_dir),
            "--out",
            str(tmp_path / "o"),
            "--checkpoint",
            str(tiny_ckpt),
            "--engine",
            "ray",
            "-q",
        ],
    )
    assert res.exit_code == 2, res.output
    assert 'pip install "xaibatch[ray]"' in res.output
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_engines_are_one_registry_the_cli_and_run_read():
    """--engine's choices are the registry's keys; an unknown name is a UsageError; run() looks the engine up."""
    from xaibatch.engines import ENGINES, engine_for

    option = {p.name: p for p in cli.commands["run"].params}["engine"]
    assert list(option.type.choices) == list(ENGINES) and option.default == next(iter(ENGINES)) == "local"
    assert engine_for(RunOptions(input_dir=None, out_dir=None, methods=[])) is ENGINES["local"]
    with pytest.raises(UsageError, match="--engine spark: choose local or ray"):
        engine_for(RunOptions(input_dir=None, out_dir=None, methods=[], engine="spark"))


def test_run_computes_through_the_registered_engine(labeled_dir, tmp_path, tiny_ckpt, monkeypatch):
    """A registered engine gets one ComputeJob holding the plan; what it does not compute stays to do."""
    from xaibatch import engines

    got = []
    monkeypatch.setitem(engines.ENGINES, "local", engines.Engine(got.append))
    res = run(_opts(labeled_dir, tmp_path / "o", tiny_ckpt))
    assert len(got) == 1 and isinstance(got[0], engines.ComputeJob)
    assert sorted(got[0].plan.work) == sorted(e.rel for e in got[0].prepared.found.images)
    assert res.computed == 0


def test_the_run_record_says_where_the_engine_computed(labeled_dir, tmp_path, tiny_ckpt, monkeypatch):
    """With --engine ray the record shows the Ray workers and their options, and the driver's model is on the CPU
    (its workers load their own); the engine's compute is stubbed: no Ray needed."""
    from xaibatch import engines
    from xaibatch.manifest import Manifest
    from xaibatch.runconfig import read_run

    jobs = []
    monkeypatch.setitem(
        engines.ENGINES, "ray", dataclasses.replace(engines.ENGINES["ray"], compute=jobs.append, check=lambda o: None)
    )
    out = tmp_path / "o"
    run(_opts(labeled_dir, out, tiny_ckpt, "ray"))
    assert jobs[0].prepared.device.type == "cpu"
    m = Manifest(out / "xaibatch.sqlite")
    try:
        record = read_run(m.runs()[-1])
    finally:
        m.close()
    assert record.device == "Ray workers"
    assert record.engine == {"ray": dataclasses.asdict(RayOptions(workers=2, cpus_per_worker=1))}


@pytest.mark.slow
def test_ray_engine_scores_faithfulness_as_the_local_engine(
    local_ray, labeled_dir, tmp_path, tiny_ckpt, one_thread, monkeypatch
):
    """--faithfulness with --engine ray: actors score the maps, the driver scores the chance sample once, on the
    same images as a local run (a sample of 4 of the 10 here, drawn by content)."""
    import json

    from xaibatch.evaluation import chance
    from xaibatch.evaluation.faithfulness import FaithConfig

    monkeypatch.setattr(chance, "CHANCE_SAMPLE", 4)
    a, b = tmp_path / "local", tmp_path / "ray"
    faith = FaithConfig(4, "blur", 64)
    run(dataclasses.replace(_opts(labeled_dir, a, tiny_ckpt, faithfulness=faith), methods=["gradcam"]))
    run(dataclasses.replace(_opts(labeled_dir, b, tiny_ckpt, "ray", faithfulness=faith), methods=["gradcam"]))
    check_output_folder(b, labeled_dir)

    def scores(out):
        rows = manifest_rows(out, "SELECT rel, method, deletion, insertion FROM maps")
        return {(r, m): (d, i) for r, m, d, i in rows}

    sa, sb = scores(a), scores(b)
    assert sa.keys() == sb.keys() and all(v[0] is not None for v in sb.values())
    assert max(abs(x - y) for k in sa for x, y in zip(sa[k], sb[k])) < 1e-5
    ca, cb = (json.loads((o / "faithfulness-chance.json").read_text()) for o in (a, b))
    assert ca["key"] == cb["key"] and list(ca["images"]) == list(cb["images"]) and len(cb["images"]) == 4
    for rel, sa in ca["images"].items():
        sb = cb["images"][rel]
        assert (sa["sha256"], sa["target"]) == (sb["sha256"], sb["target"])
        assert max(abs(x - y) for name in ("random", "blob") for x, y in zip(sa[name], sb[name])) < 1e-5


def test_both_engines_cut_the_same_batches(tmp_path):
    entries = [ImageEntry(f"{i}.png", tmp_path / f"{i}.png", None, 1, 1) for i in range(7)]
    work = {e.rel: Work(e, ["gradcam"] if i % 3 else ["gradcam", "lime"], True) for i, e in enumerate(entries)}
    plan = Plan([], [], [], work, [], {})
    got = [(todo, [e.rel for e in es]) for todo, es in batches(plan, 2)]
    assert got == [
        (("gradcam", "lime"), ["0.png", "3.png"]),
        (("gradcam", "lime"), ["6.png"]),
        (("gradcam",), ["1.png", "2.png"]),
        (("gradcam",), ["4.png", "5.png"]),
    ]


def test_worker_refuses_an_output_folder_it_cannot_see(labeled_dir, tmp_path, tiny_ckpt, one_thread):
    from xaibatch.pipeline.plan import Hashes
    from xaibatch.pipeline.ray_worker import WorkerConfig, worker_class

    opts = _opts(labeled_dir, tmp_path / "o", tiny_ckpt, "ray")
    found = Scan(labeled_dir, ["FAKE", "REAL"], [], [])
    config = WorkerConfig(opts, found, Hashes("p", {}, {}), 1, str(tmp_path), ".probe.1.tmp", "token", "stop", 1)
    worker = worker_class(config)()  # the probe file the driver wrote is not there: another machine's folder
    assert isinstance(worker.error, UsageError) and "not visible from the Ray worker" in str(worker.error)
    (tmp_path / ".probe.1.tmp").write_text("token")
    worker = worker_class(config)()  # visible now; the driver's hashes ("p") are not this model's
    assert isinstance(worker.error, UsageError) and "different model" in str(worker.error)


@needs_ray
def test_an_unchanged_rerun_with_engine_ray_starts_no_ray(labeled_dir, tmp_path, tiny_ckpt):
    """Cron with --engine ray over a folder with nothing new: no Ray, no torch (the cached setup, as locally)."""
    from test_startup import _modules_after

    out = tmp_path / "o"
    args = ["run", str(labeled_dir), "--checkpoint", str(tiny_ckpt), "--out", str(out), "-q"]
    assert CliRunner().invoke(cli, [*args, "--workers", "0"]).exit_code == 0  # the local engine computed it
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        r = CliRunner().invoke(cli, {args + ["--engine", "ray"]!r})
        assert r.exit_code == 0, r.output
    """)
    assert "torch" not in loaded and "ray" not in loaded


# -- a local Ray, two CPU workers (slow: starting Ray takes seconds) ----------------------------------------------


def _rows(out: Path) -> dict[str, list[tuple]]:
    tables = {}
    for t in ("images", "maps", "failures"):
        cols = [r[1] for r in manifest_rows(out, f"PRAGMA table_info({t})")]
        keep = [i for i, c in enumerate(cols) if c != "run_id"]
        tables[t] = sorted(tuple(r[i] for i in keep) for r in manifest_rows(out, f"SELECT * FROM {t}"))
    return tables


def _files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.rglob("*")
        if p.is_file() and p.name != "xaibatch.sqlite"
    }


RUN_METADATA = [
    re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}"),
    re.compile(r"took [^(<]*"),
    re.compile(r"<td>(\d+\s+min )?[\d.]+\s+s</td>"),
    re.compile(r"Device</th><td>[^<]*"),
]


def _scrubbed(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    for rx in RUN_METADATA:
        text = rx.sub("~", text)
    return text


@pytest.mark.slow
def test_ray_engine_matches_the_local_engine(local_ray, labeled_dir, tmp_path, tiny_ckpt, one_thread):
    a, b = tmp_path / "local", tmp_path / "ray"
    (labeled_dir / "FAKE" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # fails in a worker
    events: dict[str, list] = {"local": [], "ray": []}
    lines: dict[str, list] = {"local": [], "ray": []}  # with --log-json: stderr (the ray run said its batches there)
    ra = run(_opts(labeled_dir, a, tiny_ckpt, on_event=events["local"].append), log=lines["local"].append)
    rb = run(_opts(labeled_dir, b, tiny_ckpt, "ray", on_event=events["ray"].append), log=lines["ray"].append)
    assert lines["ray"] == lines["local"]
    assert (ra.computed, rb.computed, rb.status, len(rb.failed)) == (10, 10, "some-failed", 1)
    assert sorted(ra.failed) == sorted(rb.failed)
    same = lambda evs: sorted(  # noqa: E731  (progress events are timing: when a beat falls differs)
        repr({k: v for k, v in e.items() if k != "run_id"}) for e in evs if e.get("event") != "progress"
    )
    assert same(events["local"]) == same(events["ray"])  # plan, estimate, failure: the same --log-json events
    assert _rows(a) == _rows(b)
    assert len(_rows(b)["failures"]) == 1
    assert len(_rows(b)["maps"]) == 10 * len(METHODS)
    fa, fb = _files(a), _files(b)
    assert set(fa) == set(fb)
    npys = [k for k in fa if k.endswith(".npy")]
    assert {k.split("/")[1] for k in npys} == set(METHODS)
    assert [k for k in npys if fa[k] != fb[k]] == []  # Grad-CAM, Guided Grad-CAM and LIME (same seed): same bytes
    # The report's cache keys on its own manifest file (inode), so it differs between two folders by design.
    differ = sorted(k for k in fa if fa[k] != fb[k] and k != REPORT_STATE)
    assert set(differ) <= {"index.html", "history.html"}, differ  # run metadata only ...
    for page in differ:
        assert _scrubbed(a / page) == _scrubbed(b / page)  # ... dates, durations, the device
    check_output_folder(b, labeled_dir)


@pytest.mark.slow
def test_ray_engine_is_incremental(local_ray, labeled_dir, tmp_path, tiny_ckpt):
    out = tmp_path / "o"
    assert run(_opts(labeled_dir, out, tiny_ckpt, "ray")).computed == 10
    again = run(_opts(labeled_dir, out, tiny_ckpt, "ray"))
    assert (again.computed, again.unchanged) == (0, 10)
    write_images(labeled_dir / "REAL" / "new", 1, seed=9)
    third = run(_opts(labeled_dir, out, tiny_ckpt, "ray"))
    assert (third.computed, third.added, third.unchanged) == (1, 1, 10)
    fresh = manifest_rows(out, "SELECT rel FROM images WHERE run_id = ?", (third.run_id,))
    fresh_maps = manifest_value(out, "SELECT count(*) FROM maps WHERE run_id = ?", (third.run_id,))
    assert fresh == [("REAL/new/img_000.png",)] and fresh_maps == len(METHODS)
    check_output_folder(out, labeled_dir)


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return seen


def _our_workers() -> list[int]:
    """Pids of this test's Ray actors (descendants of this process: never another session's Ray)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"XaibatchWorker" in cmd and os.getpid() in _ancestors(int(d.name)):
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(local_ray, tmp_path, tiny_ckpt, one_thread):
    inp = tmp_path / "in"
    write_images(inp / "FAKE", 12, seed=1)
    write_images(inp / "REAL", 12, seed=2)
    out, ref = tmp_path / "o", tmp_path / "ref"
    opts = dataclasses.replace(
        _opts(inp, out, tiny_ckpt, "ray"), batch_size=2, method_options={"lime": {"samples": 300, "segments": 12}}
    )
    box: dict = {}

    def go():
        try:
            box["result"] = run(opts)
        except BaseException as e:  # noqa: BLE001  (checked below: the next run must complete it)
            box["error"] = e

    t = threading.Thread(target=go)
    t.start()
    killed = None
    deadline = time.time() + 240
    while t.is_alive() and time.time() < deadline and killed is None:
        time.sleep(0.2)
        maps = 0
        if (out / "xaibatch.sqlite").is_file():
            try:
                maps = manifest_value(out, "SELECT count(*) FROM maps")
            except sqlite3.Error:
                pass
        workers = _our_workers()
        if maps and workers:  # a batch is committed and the workers are busy with the next ones
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
    t.join(600)
    assert killed is not None, "no worker to kill (the run ended first?)"
    assert not t.is_alive()
    first = box.get("result")
    print(f"killed worker {killed}; the run itself: {first.status if first else box['error']!r}")
    if first is None or first.status != "ok":  # or the next run completes it
        again = run(opts)
        assert again.status == "ok"
    check_output_folder(out, inp)  # each image once in the manifest, predictions.csv and the report
    assert manifest_value(out, "SELECT count(*) FROM images") == 24
    assert manifest_value(out, "SELECT count(*) FROM maps") == 24 * len(METHODS)
    run(dataclasses.replace(opts, out_dir=ref, engine="local"))  # and what it holds is what an unbroken run makes
    assert _rows(out) == _rows(ref)
    fo, fr = _files(out), _files(ref)
    assert [k for k in fr if k.endswith(".npy") and fo.get(k) != fr[k]] == []


def _committed_maps(out: Path) -> int:
    if not (out / "xaibatch.sqlite").is_file():
        return 0
    try:
        return manifest_value(out, "SELECT count(*) FROM maps")
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigint_on_the_driver_keeps_finished_batches(local_ray, tmp_path, tiny_ckpt, one_thread):
    from xaibatch.errors import Interrupted

    inp = tmp_path / "in"
    write_images(inp / "FAKE", 12, seed=1)
    write_images(inp / "REAL", 12, seed=2)
    out = tmp_path / "o"
    opts = dataclasses.replace(
        _opts(inp, out, tiny_ckpt, "ray"),
        batch_size=2,
        handle_signals=True,
        method_options={"lime": {"samples": 300, "segments": 12}},
    )
    stop = threading.Event()

    def interrupt_after_first_batch():
        while not stop.wait(0.2):
            if _committed_maps(out):
                os.kill(os.getpid(), signal.SIGINT)  # to the driver only, as a Ctrl-C to it
                return

    t = threading.Thread(target=interrupt_after_first_batch, daemon=True)
    t.start()
    try:
        with pytest.raises(Interrupted) as info:
            run(opts)
    finally:
        stop.set()
    result = info.value.result
    assert result.status == "interrupted" and 0 < result.computed < 24
    stems = check_output_folder(out, inp)  # consistent, with the report of what is done
    assert len(stems) == result.computed
    rest = run(dataclasses.replace(opts, handle_signals=False))
    assert (rest.computed, rest.unchanged) == (24 - result.computed, result.computed)
    check_output_folder(out, inp)


@pytest.mark.slow
def test_a_cluster_without_the_gpus_asked_for_is_refused(local_ray, labeled_dir, tmp_path, tiny_ckpt):
    opts = dataclasses.replace(
        _opts(labeled_dir, tmp_path / "o", tiny_ckpt, "ray"), ray=RayOptions(gpus_per_worker=1)
    )  # the local Ray has two CPUs and no GPU
    with pytest.raises(UsageError, match="not enough for one worker of 1 GPU"):
        run(opts)  # at once, not waiting forever for a GPU


@pytest.mark.slow
def test_device_cuda_on_workers_without_a_gpu_is_refused_before_they_load(local_ray, labeled_dir, tmp_path, tiny_ckpt):
    """--device cuda on a cluster with no GPU (or --gpus-per-worker 0): each actor loaded the model, then said
    "--device cuda: no CUDA GPU is available here", "here" being a worker (18 s on a 2-core box)."""
    for gpus, why in ((None, "the cluster has 0 GPU"), (0.0, "--gpus-per-worker 0")):
        opts = dataclasses.replace(
            _opts(labeled_dir, tmp_path / f"o{gpus}", tiny_ckpt, "ray"),
            device="cuda",
            ray=RayOptions(workers=2, gpus_per_worker=gpus, cpus_per_worker=1),
        )
        with pytest.raises(UsageError, match=f"--device cuda: the Ray workers get no GPU \\({why}"):
            run(opts)


@pytest.mark.slow
@needs_ray
def test_sigterm_to_a_cli_run_that_started_its_own_ray(tmp_path, tiny_ckpt):
    """The CLI starts a Ray on this machine (no address: $RAY_ADDRESS removed) and keeps its SIGTERM handling."""
    import json
    import subprocess
    import sys

    inp, out = tmp_path / "in", tmp_path / "o"
    write_images(inp / "FAKE", 12, seed=1)
    write_images(inp / "REAL", 12, seed=2)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xaibatch",
            "run",
            str(inp),
            "--out",
            str(out),
            "--checkpoint",
            str(tiny_ckpt),
            "-m",
            "gradcam",
            "-m",
            "lime",
            "--lime-samples",
            "300",
            "--batch-size",
            "2",
            "--engine",
            "ray",
            "--ray-workers",
            "2",
            "--log-json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline and not _committed_maps(out):
            time.sleep(0.2)
        assert p.poll() is None, "the run ended before a batch was committed"
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert all(line.startswith("{") for line in stdout.splitlines()), stdout  # JSON only (#22 item 9)
    # Off a terminal nothing of Ray's own reaches stderr, which schedulers mail (#21 item 6); xaibatch's lines do.
    assert [line for line in stderr.splitlines() if not line.startswith(("xaibatch:", "Error:"))] == [], stderr
    end = json.loads(stdout.strip().splitlines()[-1])
    assert (p.returncode, end["event"], end["status"], end["exit_code"]) == (5, "end", "interrupted", 5)
    assert 0 < end["computed"] < 24
    stems = check_output_folder(out, inp)
    assert len(stems) == end["computed"]


KILLER = """
import os, signal
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    net.pretrained_cfg = {{"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}}
    real = net.forward

    def forward(x):  # a magenta input kills the Ray worker, as an OOM kill or a decoder segfault would
        magenta = (x[:, 0] == 1).flatten(1).all(1) & (x[:, 1] == 0).flatten(1).all(1) & (x[:, 2] == 1).flatten(1).all(1)
        if os.getpid() != {driver} and bool(magenta.any()):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(x)

    net.forward = forward
    return net
"""


@pytest.mark.slow
def test_an_image_that_kills_its_worker_fails_after_bounded_retries(local_ray, tmp_path):
    """Ray used to retry such a batch forever; now it gives up, splits the batch, and fails only that image."""
    from PIL import Image

    inp, out = tmp_path / "in", tmp_path / "o"
    write_images(inp, 5, seed=3)
    Image.new("RGB", (32, 32), (255, 0, 255)).save(inp / "img_001.png")  # in the first batch of two
    (tmp_path / "killer.py").write_text(KILLER.format(driver=os.getpid()))
    opts = RunOptions(
        input_dir=inp,
        out_dir=out,
        methods=["gradcam"],
        model=f"{tmp_path / 'killer.py'}:build",
        classes=["a", "b"],
        labeled=False,
        batch_size=2,
        workers=0,
        handle_signals=False,
        engine="ray",
        ray=RayOptions(workers=1, cpus_per_worker=1),
    )
    said: list[str] = []
    t0 = time.monotonic()
    r = run(opts, log=said.append)
    print(f"took {time.monotonic() - t0:.0f} s")
    assert r.status == "some-failed" and r.computed == 4
    assert r.failed == [
        Failure(
            "img_001.png",
            "the Ray worker died on this image 3 times (out of memory, or a crash decoding or explaining it)",
            "image",
        )
    ]
    assert any("computing their images one at a time" in line for line in said), said
    stems = check_output_folder(out, inp)
    assert sorted(stems) == ["img_000.png", "img_002.png", "img_003.png", "img_004.png"]


DIES_LOADING = """
import os
import torch
from torch import nn

def build():
    if os.getpid() != {driver}:  # in a Ray actor: as a segfault, or an OOM kill, while the model loads
        os._exit(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    net.pretrained_cfg = {{"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}}
    return net
"""


@pytest.mark.slow
def test_workers_that_die_loading_the_model_stop_the_run(local_ray, tmp_path):
    """Ray restarted them forever (and then blamed every image); now the third death stops the run: one line, exit 3,
    the run row says error and why, no image is marked failed."""
    from xaibatch.pipeline.ray_engine import TASK_RETRIES

    inp, out = tmp_path / "in", tmp_path / "o"
    write_images(inp, 4, seed=3)
    (tmp_path / "dies.py").write_text(DIES_LOADING.format(driver=os.getpid()))
    args = ["run", inp, "--out", out, "--model", f"{tmp_path / 'dies.py'}:build", "--classes", "a,b", "-q"]
    args += ["--batch-size", "2", "--engine", "ray", "--ray-workers", "2", "--cpus-per-worker", "1"]
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, [str(a) for a in args])
    print(f"took {time.monotonic() - t0:.0f} s")
    assert res.exit_code == 3, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    # the third death stops the run; the other of the two actors may die once more before the stop reaches it
    died = re.match(r"Error: Ray workers died while loading the model \((\d+) times\): ", line)
    assert died and TASK_RETRIES + 1 <= int(died.group(1)) <= TASK_RETRIES + 2, line
    assert "Traceback" not in res.output
    assert manifest_rows(out, "SELECT status, reason FROM runs") == [("error", line.removeprefix("Error: "))]
    assert manifest_value(out, "SELECT count(*) FROM failures") == 0
    assert manifest_value(out, "SELECT count(*) FROM images") == 0


@pytest.mark.slow
def test_a_batch_too_large_for_a_workers_memory_is_split_there(local_ray, tmp_path, one_thread):
    """The local engine's splitting (test_out_of_memory.py) in an actor: the run finishes, the maps are a local
    run's at the size that fits, and the driver says the warning and the batch_split event once."""
    from test_out_of_memory import greedy, maps, refused

    inp = tmp_path / "in"
    write_images(inp, 12)
    model, log = greedy(tmp_path, "greedy", 2)
    events: list = []
    said: list[str] = []

    def opts(out: Path, engine: str, batch: int, **kw) -> RunOptions:
        return run_opts(
            inp, out, None, ["gradcam"], model=model, classes=["a", "b"], batch_size=batch, engine=engine,
            ray=RayOptions(workers=1, cpus_per_worker=1), **kw,
        )  # fmt: skip

    r = run(opts(tmp_path / "ray", "ray", 8, on_event=events.append), log=said.append)
    assert r.status == "ok" and r.computed == 12
    # one actor: whichever batch (8 or 4 images) comes first is halved to 2, the other cut in twos up front
    first = refused(log)[0]
    assert refused(log) in ([8, 4], [4]), refused(log)
    assert not [line for line in said if "did not fit" in line]  # --log-json: the event alone
    assert [(e["batch_size"], e["size"]) for e in events if e["event"] == "batch_split"] == [(first, 2)]
    (event,) = [e for e in events if e["event"] == "batch_split"]
    assert event["text"].endswith("explaining 2 at a time from now on (next time give --batch-size 2)")
    run(opts(tmp_path / "local", "local", 2), log=lambda s: None)
    got, want = maps(tmp_path / "ray"), maps(tmp_path / "local")
    assert got.keys() == want.keys() and len(got) == 12
    for key in got:
        assert np.array_equal(got[key], want[key]), key  # one thread each: the same floats
    check_output_folder(tmp_path / "ray", inp)
