"""A DataLoader's batches in a container: a 64 MB /dev/shm (Docker's default), no writable temporary folder."""

from __future__ import annotations

import json
import os

import pytest


# A run in a subprocess whose DataLoader workers cannot share a batch the usual way: the temporary folder is
# unusable ("no-tmp": a read-only root, TMPDIR unset), or torch cannot put a batch in /dev/shm ("shm-fails"; with
# "small-shm" /dev/shm also measures 64 KB free, as a container's full one would). Forked workers inherit it.
BROKEN_RUN = """
import os, sys, tempfile
mode = sys.argv.pop(1)
if mode == "no-tmp":
    tempfile.tempdir = sys.argv.pop(1)
else:
    import torch

    def full(self, *args, **kwargs):
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2>: No space left on device (28)")

    torch.UntypedStorage._share_fd_cpu_ = full
    if mode == "small-shm":
        real = os.statvfs
        small = os.statvfs_result((4096, 4096, 16384, 16, 16, 1000, 1000, 1000, 0, 255))
        os.statvfs = lambda p: small if str(p) == "/dev/shm" else real(p)
from xaibatch.cli import main
main()
"""


def broken_run(mode: str, *args, timeout: float = 120):
    import subprocess
    import sys

    from helpers import ENV, REPO

    return subprocess.run(
        [sys.executable, "-c", BROKEN_RUN, mode, *map(str, args)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("mode", ["no-tmp", "small-shm"])
def test_batches_cross_through_pipes_where_shared_memory_cannot_carry_them(tmp_path, tiny_ckpt, mode):
    """docker run --read-only without a /tmp (no socket for the workers' descriptors), or a 64 MB /dev/shm under
    224 px batches: each batch was dropped with a traceback and the run waited for it forever. Now the workers
    send their batches through pipes, the run says so in one line, and its output is whole."""
    from helpers import run_argv, write_images
    from outcheck import check_output_folder

    write_images(tmp_path / "in", 12)
    before = ["no-tmp", str(tmp_path / "missing")] if mode == "no-tmp" else [mode]
    argv = run_argv(tmp_path / "in", tmp_path / "out", tiny_ckpt, "--workers", "2", "--batch-size", "4")
    p = broken_run(*before, *argv)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert "send their batches through pipes" in p.stderr
    assert ("/dev/shm has 0.1 MB free" if mode == "small-shm" else "no writable temporary folder") in p.stderr
    assert len(check_output_folder(tmp_path / "out", tmp_path / "in")) == 12


def test_a_scoring_pass_hands_its_batches_over_as_the_compute_pass_does(tmp_path, tiny_ckpt):
    """--faithfulness turned on for a folder scores its saved maps in a pass of its own (pipeline/rescore.py), whose
    loader sent its batches through /dev/shm whatever the compute pass had measured: in a 64 MB container the
    workers' batches could not cross, and the scoring run failed."""
    from helpers import cli, manifest_rows, run_argv, write_images

    write_images(tmp_path / "in", 12)
    argv = run_argv(tmp_path / "in", tmp_path / "out", tiny_ckpt, "--workers", "2", "--batch-size", "4")
    assert cli(*argv).returncode == 0
    p = broken_run("small-shm", *argv, "--faithfulness", "--log-json")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    (plan,) = [e for e in map(json.loads, p.stdout.splitlines()) if e["event"] == "plan"]
    assert (plan["to_compute"], plan["scored"]) == (0, 12)  # the scoring pass, not a recompute
    assert len(manifest_rows(tmp_path / "out", "SELECT rel FROM maps WHERE faith_hash IS NOT NULL")) == 12


def test_a_worker_that_cannot_hand_over_a_batch_stops_the_run_with_one_line(tmp_path, tiny_ckpt):
    """/dev/shm filled by something else after the run measured it: the worker's batch is lost. The run used to
    wait for it forever; now the worker ends, the run stops with what to do, and the next run finishes the job."""
    from helpers import cli, run_argv, write_images
    from outcheck import check_output_folder

    from xaibatch.errors import ExitCode

    write_images(tmp_path / "in", 12)
    argv = run_argv(tmp_path / "in", tmp_path / "out", tiny_ckpt, "--workers", "1", "--batch-size", "4")
    p = broken_run("shm-fails", *argv)
    assert p.returncode == ExitCode.RUNTIME, p.stderr
    error = [line for line in p.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "DataLoader worker" in error[0] and "--shm-size" in error[0], p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr
    check_output_folder(tmp_path / "out", tmp_path / "in", report=False)
    again = cli(*argv)
    assert again.returncode == 0, again.stderr
    assert len(check_output_folder(tmp_path / "out", tmp_path / "in")) == 12


def test_loader_died_words_torchs_messages():
    from xaibatch.errors import ExitCode, outcome

    for message in (
        "DataLoader worker (pid(s) 4321) exited unexpectedly",
        "DataLoader worker (pid 4321) is killed by signal: Bus error. It is possible that dataloader's workers are "
        "out of shared memory. Please try to raise your shared memory limit.",
        "DataLoader worker (pid 4321) is killed by signal: Killed.",
    ):
        o = outcome(RuntimeError(message))
        assert not o.internal and o.code == ExitCode.RUNTIME
        assert o.line.startswith("a DataLoader worker (pid 4321) ") and "--workers" in o.line, o.line
    assert "killed by signal Bus error:" in outcome(RuntimeError(message.replace("Killed", "Bus error"))).line


def test_handover_measures_shm_and_the_temporary_folder(tmp_path, monkeypatch):
    import multiprocessing.util
    import tempfile

    from xaibatch.pipeline.loader import PREFETCH, handover

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    assert handover(2, 1000, shm=str(tmp_path)) is None
    assert handover(0, free, shm=str(tmp_path)) is None  # no workers: nothing crosses
    assert "MB free, less than" in handover(1, free // (PREFETCH + 1) + 2**20, shm=str(tmp_path))
    assert handover(1, 1000, shm=str(tmp_path / "none")) is None  # nothing to measure: torch's way
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    monkeypatch.delitem(multiprocessing.util.process.current_process()._config, "tempdir", raising=False)
    assert "no writable temporary folder" in handover(1, 1000, shm=str(tmp_path))


def test_a_batch_as_arrays_and_back_is_the_same_batch():
    """collate_piped's batch (numpy arrays, pickled through a pipe) is collate's once the run makes it tensors
    again: model inputs, LIME's superpixels and --decode device's undecoded JPEG bytes alike."""
    import pickle

    import numpy as np
    import torch

    from xaibatch.dataset import JpegBytes, LoadedBatch, Undecoded

    def batch() -> LoadedBatch:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8, generator=g)
        b = LoadedBatch(
            [], [0, 1], [(8, 8)] * 2, [None, None], [None, None], x=x, segments=torch.arange(128).view(2, 8, 8)
        )
        b.undecoded = Undecoded([JpegBytes(0, torch.arange(5, dtype=torch.uint8), None)], [None, x[1]])
        return b

    sent = batch().arrays()
    assert isinstance(sent.x, np.ndarray) and isinstance(sent.undecoded.jpegs[0].data, np.ndarray)
    got, want = pickle.loads(pickle.dumps(sent)).tensors(), batch()
    assert torch.equal(got.x, want.x) and torch.equal(got.segments, want.segments)
    assert torch.equal(got.undecoded.jpegs[0].data, want.undecoded.jpegs[0].data)
    assert got.undecoded.inputs[0] is None and torch.equal(got.undecoded.inputs[1], want.undecoded.inputs[1])
    assert got.tensors() is got  # idempotent: the run calls it on every batch


def test_train_with_workers_sends_its_batches_through_pipes_where_shm_is_short(tmp_path):
    """train --workers N shares the run's dataset and loader: with a 64 MB /dev/shm its workers could not send a
    batch (the run's hang, then its one-line stop); now it trains, its batches through pipes, and says so once."""
    from xaibatch.tools import synth

    data = synth.write_classes(tmp_path / "data", 6, seed=1)
    argv = ["train", data, "--arch", "test_resnet", "--image-size", "32", "--epochs", "1", "--batch-size", "4"]
    p = broken_run("small-shm", *argv, "--workers", "2", "--out", tmp_path / "m.pt")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m.pt").is_file()
    assert (p.stdout + p.stderr).count("send their batches through pipes") == 1, p.stdout + p.stderr
