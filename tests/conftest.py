"""Shared fixtures: tiny models and generated folders, no network, no GPU.

The suite runs on the CPU even on a GPU host: its tests compare maps and probabilities across runs and batch
shapes at float32 tolerances, which TF32 and cuDNN's per-shape algorithms do not keep. The GPU is hidden before
torch is imported, here and in every subprocess; ``XAIBATCH_TEST_GPU=1`` leaves it visible (the tests that need
one then run; benchmarks/gpu_equivalence.py is the GPU-against-CPU check).
"""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("XAIBATCH_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import click.testing
import pytest

if not hasattr(click.testing, "StreamMixer"):  # click < 8.2 (pyproject allows 8.1): the tests read 8.2's Result,
    # whose stderr is always captured apart and whose output holds both streams as written
    import contextlib
    import io
    import sys

    class _Both:
        """A stream that also writes into the mixed output."""

        def __init__(self, stream, mixed: io.StringIO) -> None:
            self._stream, self._mixed = stream, mixed

        def write(self, text: str) -> int:
            self._mixed.write(text)
            return self._stream.write(text)

        def __getattr__(self, name: str):
            return getattr(self._stream, name)

    _runner_init, _isolation, _result_init = (
        click.testing.CliRunner.__init__,
        click.testing.CliRunner.isolation,
        click.testing.Result.__init__,
    )

    def _separate_stderr(self, *args, mix_stderr: bool = False, **kwargs) -> None:
        _runner_init(self, *args, mix_stderr=mix_stderr, **kwargs)

    @contextlib.contextmanager
    def _mixing(self, *args, **kwargs):
        with _isolation(self, *args, **kwargs) as streams:
            self.mixed = io.StringIO()
            sys.stdout, sys.stderr = _Both(sys.stdout, self.mixed), _Both(sys.stderr, self.mixed)
            yield streams

    def _result(self, runner, *args, **kwargs) -> None:
        _result_init(self, runner, *args, **kwargs)
        self.mixed = runner.mixed.getvalue() if hasattr(runner, "mixed") else self.stdout

    click.testing.CliRunner.__init__ = _separate_stderr
    click.testing.CliRunner.isolation = _mixing
    click.testing.Result.__init__ = _result
    click.testing.Result.output = property(lambda r: r.mixed.replace("\r\n", "\n"))

# make_checkpoint and write_images live in helpers.py; imported here too for tests that still import them from conftest
from helpers import CLASSES, make_checkpoint, write_images  # noqa: F401
from xaibatch.tools import synth


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def labeled_dir(tmp_path) -> Path:
    return synth.write_classes(tmp_path / "test", 5, seed=1)  # FAKE from seed 1, REAL from seed 2


@pytest.fixture
def flat_dir(tmp_path) -> Path:
    root = tmp_path / "incoming"
    write_images(root, 6, seed=3)
    return root


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo set (train 200/class, test 60/class) with ground-truth masks."""
    from xaibatch.tools.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root, train_per_class=200, test_per_class=60, seed=0)
    return root
