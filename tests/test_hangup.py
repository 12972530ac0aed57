"""A closed terminal (SIGHUP) and SIGTERM during `train`, `sanity` and `bench`: each stops as on Ctrl-C (what it has,
exit 5) instead of dying where it stands; under `nohup` (SIGHUP ignored) each goes on. Run under a pseudo-terminal
(tests/ptyrun.py), whose closed window makes the kernel send SIGHUP to the whole foreground process group."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import time

import pytest
import torch

import ptyrun
from helpers import ENV, REPO, invoke
from xaibatch.tools import synth

NOHUP = (
    "import signal, runpy, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "sys.argv = ['xaibatch', *sys.argv[1:]]; runpy.run_module('xaibatch', run_name='__main__')"
)


def _xaibatch(*args, nohup: bool = False) -> list[str]:
    head = [sys.executable, "-c", NOHUP] if nohup else [sys.executable, "-m", "xaibatch"]
    return [*head, *map(str, args)]


def _slowed(tmp_path, patch: str) -> dict:
    """The child's environment with a sitecustomize that runs ``patch`` (slows a step, so the window closes
    mid-way on any machine)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(patch)
    return {**ENV, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


def _close_after(t: ptyrun.Terminal, needle: str, timeout: float = 120) -> int:
    assert t.wait_for(needle, timeout), t.text
    assert t.poll() is None, t.text
    t.close_window()
    return t.code


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    return synth.write_classes(tmp_path_factory.mktemp("hup") / "data", 8, seed=1)


def _train(data, out, epochs, **kw) -> list[str]:
    return _xaibatch(
        "train", data, "--arch", "test_resnet", "--image-size", "32", "--batch-size", "8", "--epochs", epochs,
        "--workers", "1", "--out", out, **kw,
    )  # fmt: skip


def test_a_closed_terminal_saves_trains_last_finished_epoch(tmp_path, train_data):
    """SIGHUP used to kill `train` at once: hours of epochs lost, a checkpoint half-written if it came during the
    save. Now the epoch under way is dropped, the model after the last finished one is written (its record says
    so), and the command exits 5; its DataLoader worker (in the terminal's group too) does not fail it."""
    out = tmp_path / "m.pt"
    t = ptyrun.Terminal(_train(train_data, out, 1000), env=ENV)
    assert _close_after(t, "epoch 2/1000") == 5
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["epochs"] >= 2 and ckpt["meta"]["epochs_planned"] == 1000
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left
    assert invoke("run", train_data, "--checkpoint", out, "--out", tmp_path / "o", "-q").exit_code == 0


def test_train_under_nohup_goes_on(tmp_path, train_data):
    out = tmp_path / "m.pt"
    log = tmp_path / "nohup.out"
    t = ptyrun.Terminal(_train(train_data, out, 4, nohup=True), env=ENV, stdout_file=str(log), stderr_file=str(log))
    while "epoch 1/4" not in (log.read_text() if log.exists() else ""):
        assert t.poll() is None, log.read_text()
        time.sleep(0.05)
    t.close_window()
    assert t.code == 0, log.read_text()
    assert torch.load(out, map_location="cpu", weights_only=True)["meta"]["epochs"] == 4


def test_an_interrupted_training_saves_the_weights_of_its_last_finished_epoch(tmp_path, train_data, monkeypatch):
    """The weights written are those at the end of the last finished epoch, not the half-trained ones of the
    epoch the signal stopped: compared tensor by tensor with a copy taken when that epoch ended."""
    from xaibatch.tools import train as train_mod

    real, calls, ended = train_mod.train_epoch, [], {}

    def train_epoch(model, feed, opt, sched):
        calls.append(1)
        if len(calls) == 3:  # epoch 3 of 4
            ended.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            real(model, feed, opt, sched)  # half an epoch's changes, then the signal
            raise KeyboardInterrupt("by SIGTERM")
        return real(model, feed, opt, sched)

    monkeypatch.setattr(train_mod, "train_epoch", train_epoch)
    r = invoke("train", train_data, "--arch", "test_resnet", "--image-size", "32", "--epochs", "4", "--out",
               tmp_path / "m.pt", catch_exceptions=True)  # fmt: skip
    assert r.exit_code == 5
    assert "Error: interrupted by SIGTERM in epoch 3/4: wrote" in r.output and "after epoch 2" in r.output
    assert "train does not resume: the same command again trains all 4 epochs from the start" in r.output
    state = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert state.keys() == ended.keys()
    assert all(torch.equal(state[k], ended[k]) for k in ended)


def test_a_signal_during_a_training_step_lets_that_step_finish_and_stops_before_the_next(
    tmp_path, train_data, monkeypatch
):
    """The stop is taken between batches, never raised from the signal handler into whatever code runs: thrown into
    the DataLoader's own code (starting its queue threads, joining a worker), it left `train` waiting forever after
    a closed terminal. A SIGTERM sent from inside the loss of epoch 2's first step: that step runs to its end, no
    later step runs, and the model of epoch 1 is written."""
    import types

    from xaibatch.tools import train as train_mod

    steps, finished = [], []

    def cross_entropy(logits, y):
        steps.append(len(y))
        if len(steps) == 3:  # 14 training images in batches of 8: epoch 2's first step
            os.kill(os.getpid(), signal.SIGTERM)
            finished.append(len(steps))  # not reached if the handler raises here
        return torch.nn.functional.cross_entropy(logits, y)

    monkeypatch.setattr(train_mod, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    out = tmp_path / "m.pt"
    r = invoke("train", train_data, "--arch", "test_resnet", "--image-size", "32", "--batch-size", "8",
               "--epochs", "4", "--out", out, catch_exceptions=True)  # fmt: skip
    assert r.exit_code == 5, r.output
    assert "Error: interrupted by SIGTERM in epoch 2/4: wrote" in r.output and "after epoch 1 " in r.output
    assert finished == [3] and len(steps) == 3
    assert torch.load(out, map_location="cpu", weights_only=True)["meta"]["epochs"] == 1


def test_a_training_stopped_in_its_first_epoch_leaves_out_as_it_was(tmp_path, train_data, monkeypatch):
    from xaibatch.tools import train as train_mod

    def train_epoch(*a):
        raise KeyboardInterrupt

    out = tmp_path / "m.pt"
    torch.save({"an earlier model": torch.zeros(1)}, out)
    before = out.read_bytes()
    monkeypatch.setattr(train_mod, "train_epoch", train_epoch)
    r = invoke("train", train_data, "--arch", "test_resnet", "--out", out, catch_exceptions=True)
    assert r.exit_code == 5 and "interrupted in epoch 1/10: no checkpoint written" in r.output
    # what to do, and that the earlier file is still there (it said only "no checkpoint written")
    assert f"({out} is as it was); the same command again starts over" in r.output
    assert out.read_bytes() == before


def test_a_checkpoint_save_stopped_midway_leaves_no_half_written_file(tmp_path, monkeypatch):
    from xaibatch.model import loading

    def save(obj, f):  # a path (a fixed temporary name, before) or an open file
        f.write_bytes(b"half") if isinstance(f, os.PathLike) else f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(loading.torch, "save", save)
    out = tmp_path / "m.pt"
    out.write_bytes(b"before")
    (tmp_path / "m.pt.tmp").write_bytes(b"the user's")  # the fixed temporary name it wrote through and removed
    with pytest.raises(KeyboardInterrupt):
        loading.save_atomically({}, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.tmp"] and out.read_bytes() == b"before"
    assert (tmp_path / "m.pt.tmp").read_bytes() == b"the user's"
    monkeypatch.undo()
    loading.save_atomically({"a": 1}, out)
    assert torch.load(out, weights_only=True) == {"a": 1} and (tmp_path / "m.pt.tmp").read_bytes() == b"the user's"


# -- sanity -----------------------------------------------------------------------------------------------------

SLOW_SANITY = (  # each randomized stage takes a second: the window closes between two of them
    "import time, xaibatch.evaluation.sanity as s\n"
    "_reinit = s.reinit\n"
    "def reinit(*a, **k):\n"
    "    time.sleep(1.0)\n"
    "    return _reinit(*a, **k)\n"
    "s.reinit = reinit\n"
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, train_data):
    from helpers import make_checkpoint

    root = tmp_path_factory.mktemp("hup-sanity")
    ckpt = make_checkpoint(root / "tiny.pt")
    assert invoke("run", train_data, "--checkpoint", ckpt, "--out", root / "out", "-q").exit_code == 0
    return root / "out"


@pytest.mark.parametrize("nohup", [False, True], ids=["hangup", "nohup"])
def test_sanity_on_a_closed_terminal(tmp_path, finished_run, nohup):
    """SIGHUP used to kill `sanity` mid-cascade. Now it stops as on Ctrl-C: nothing written (no sanity.json), exit
    5, the lock released (a run may follow at once). Under nohup it finishes and writes its result."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    log = tmp_path / "log.txt"
    streams = {"stdout_file": str(log), "stderr_file": str(log)} if nohup else {}
    t = ptyrun.Terminal(_xaibatch("sanity", out, "--images", "4", nohup=nohup), env=_slowed(tmp_path, SLOW_SANITY),
                        **streams)  # fmt: skip
    while "sanity: randomized" not in (log.read_text() if nohup and log.exists() else t.text):
        assert t.poll() is None, t.text + (log.read_text() if log.exists() else "")
        t.read(0.1)
    t.close_window()
    if nohup:
        assert t.code == 0, log.read_text()
        assert (out / "sanity.json").exists()
    else:
        assert t.code == 5, t.text
        assert not (out / "sanity.json").exists()
        from xaibatch.lock import OutputLock

        with OutputLock(out):
            pass


# -- bench ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_on_a_closed_terminal_prints_the_rows_it_measured(tmp_path):
    """`xaibatch bench > bench.md` from a terminal that is then closed: SIGHUP used to kill it with nothing in the
    file. Now the rows measured so far are printed there, marked as cut off, and it exits 5."""
    tables = tmp_path / "bench.md"
    args = ("bench", "--arch", "test_resnet", "--image-size", "32", "--images", "8", "--batch-size", "4",
            "--lime-images", "2", "--only", "gradcam", "--no-peers", "--repeats", "1000", "--markdown")  # fmt: skip
    t = ptyrun.Terminal(_xaibatch(*args), env=ENV, stdout_file=str(tables))
    assert _close_after(t, "bench: limits: round 2/1000", 240) == 5
    text = tables.read_text()
    assert "CUT OFF by a signal" in text and "| limits |" in text, text


# -- run --engine ray -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None,
    reason='Ray Data is not installed (pip install "xaibatch[ray]")',
)
def test_a_ray_run_on_a_closed_terminal_stops_like_a_local_one(tmp_path):
    """`--engine ray` with a Ray it started itself, whose processes share the terminal's process group: a closed
    window stops the run as it stops a local one (batches under way finish, exit 5, the row 'interrupted', a
    consistent folder)."""
    from helpers import make_checkpoint, manifest_rows, write_images
    from outcheck import check_output_folder

    # Once its actors are up, the run's later batches go fast: 22 images of LIME at 300 samples took 0.3 s here, less
    # than a stop takes to reach the actors, and a run that has finished everything before the stop lands is "ok"
    # (exit 0; CI saw it once). So there is enough left after the first batch for the stop to land mid-way.
    inp, out = tmp_path / "in", tmp_path / "o"
    write_images(inp / "FAKE", 24, seed=1)
    write_images(inp / "REAL", 24, seed=2)
    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}
    argv = _xaibatch("run", inp, "--out", out, "--checkpoint", ckpt, "-m", "gradcam", "-m", "lime", "--lime-samples",
                     "2000", "--batch-size", "2", "--engine", "ray", "--ray-workers", "2")  # fmt: skip
    t = ptyrun.Terminal(argv, env=env)
    deadline = time.monotonic() + 300
    while not re.search(r" [1-9]\d*/48 \[", t.text):
        assert time.monotonic() < deadline and t.poll() is None, t.text
        t.read(0.2)
    t.close_window(timeout=240)
    assert t.code == 5, f"hangup_sent={t.hangup_sent}\n{t.text}"
    ((status, computed),) = manifest_rows(out, "SELECT status, n_computed FROM runs")
    assert status == "interrupted" and 0 < computed < 48
    assert len(check_output_folder(out, inp)) == computed
