"""Random sequences of input changes, option changes, runs and killed runs over one output folder, each finished run
checked against a fresh run of the same input (tests/rerun_fuzz.py has the state machine and the checks; it is also
the longer hunt: ``python tests/rerun_fuzz.py --seeds 0-99 --steps 40``)."""

from __future__ import annotations

import pytest
import torch

from rerun_fuzz import play

pytestmark = pytest.mark.slow  # about 10 s a seed on one core, a real process SIGKILLed in some


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fresh run's kernels are the re-run's
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_random_reruns_end_as_a_fresh_run_would(seed, tmp_path, tiny_ckpt):
    w = play(seed, 30, tiny_ckpt, tmp_path)
    assert w.runs >= 4, w.steps  # a seed that hardly runs checks little: these ones run often
