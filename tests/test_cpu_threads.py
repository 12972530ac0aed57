"""A CPU run's model threads leave its DataLoader workers their CPUs (defaults.model_threads)."""

from __future__ import annotations

import os

import torch

from helpers import run_opts, write_images
from xaibatch import defaults


def two_cpus(monkeypatch, given: bool = False) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(defaults, "_own_cgroup_cpus", lambda: None)
    monkeypatch.setattr(defaults, "THREADS_GIVEN", given)


def test_the_model_gets_the_cpus_the_workers_leave(monkeypatch):
    two_cpus(monkeypatch)
    assert defaults.model_threads("cpu", 1, 2) == 1  # the 2-core default: 1 worker, 1 model thread
    assert defaults.model_threads("cpu", 0, 2) == 2  # no worker: torch's own
    assert defaults.model_threads("cpu", 4, 2) == 1  # never none
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert defaults.model_threads("cpu", defaults.default_workers("cpu"), 8) == 8  # never more than torch's own
    assert defaults.model_threads("cpu", 4, 16) == 12


def test_a_gpu_run_and_given_threads_keep_torchs_count(monkeypatch):
    two_cpus(monkeypatch)
    assert defaults.model_threads("cuda", 1, 2) == 2
    monkeypatch.setattr(defaults, "THREADS_GIVEN", True)  # OMP_NUM_THREADS set: the user's number
    assert defaults.model_threads("cpu", 1, 2) == 2


def threads_of_a_run(tmp_path, tiny_ckpt, monkeypatch, methods=("gradcam",), options=None) -> tuple[set[int], int]:
    """Run on 4 images with torch at 2 threads and 1 worker on 2 CPUs: (the thread counts each batch ran with,
    torch's count after the run)."""
    from xaibatch.pipeline import compute, run

    two_cpus(monkeypatch)
    seen = []
    job = compute.BatchWorker.job

    def spy(self, *a, **kw):
        seen.append(torch.get_num_threads())
        return job(self, *a, **kw)

    monkeypatch.setattr(compute.BatchWorker, "job", spy)
    inp = tmp_path / "in"
    write_images(inp, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        opts = run_opts(inp, tmp_path / "out", tiny_ckpt, methods=methods, workers=1)
        opts.method_options = options or {}
        assert run(opts).status == "ok"
        return set(seen), torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)


def test_a_run_computes_with_those_threads_and_gives_torchs_back(tmp_path, tiny_ckpt, monkeypatch):
    assert threads_of_a_run(tmp_path, tiny_ckpt, monkeypatch) == ({1}, 2)


def test_a_slow_methods_run_keeps_torchs_threads(tmp_path, tiny_ckpt, monkeypatch):
    """LIME's worker idles while the model runs its 1,000 forwards an image: on a quiet 2-core box 2 threads took
    9.6-11.3 s where 1 took 14.8-15.6 s."""
    two_cpus(monkeypatch)
    assert defaults.model_threads("cpu", 1, 2, slow=True) == 2
    seen, _ = threads_of_a_run(tmp_path, tiny_ckpt, monkeypatch, ("gradcam", "lime"), {"lime": {"samples": 20}})
    assert seen == {2}
