"""``--engine ray`` against hostile or absent clusters: a bounded connect, exit 2 in one line, a private local Ray
when no address is given, and nothing of Ray's on stdout. None of these starts a Ray."""

from __future__ import annotations

import importlib.util
import time

import pytest
from click.testing import CliRunner

from xaibatch.cli import cli
from xaibatch.errors import UsageError
from xaibatch.pipeline import RayOptions

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None,
    reason='Ray Data is not installed (pip install "xaibatch[ray]")',
)


@pytest.fixture
def fake_init(monkeypatch):
    """ray.init replaced: records its arguments, then does what the test sets (default: raise ValueError)."""
    import ray

    from xaibatch.pipeline import ray_connect

    calls: list[dict] = []
    behaviour = {
        "do": lambda: (_ for _ in ()).throw(ValueError("Ray Client requires pip package `ray[client]`.\nmore"))
    }

    def init(**kw):
        calls.append(kw)
        behaviour["do"]()

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ray_connect, calls, behaviour


def test_without_an_address_a_private_local_ray_is_started(fake_init):
    """ray.init() with no address joins whatever a stale /tmp/ray/ray_current_cluster names; "local" never does."""
    ray_connect, calls, _ = fake_init
    with pytest.raises(UsageError, match="cannot start a local Ray"):
        ray_connect.connect(RayOptions())
    assert calls and calls[0]["address"] == "local"


def test_an_address_nobody_answers_is_refused_at_once(fake_init):
    ray_connect, calls, _ = fake_init
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1 .*refused"):
        ray_connect.connect(RayOptions(address="127.0.0.1:1"))
    assert time.monotonic() - t0 < 5 and not calls


def test_a_head_that_never_answers_times_out(fake_init, monkeypatch):
    """Something answers on the port but Ray's handshake never completes: Ray would retry forever."""
    ray_connect, calls, behaviour = fake_init
    monkeypatch.setattr(ray_connect, "reachable", lambda address: None)
    monkeypatch.setattr(ray_connect, "CONNECT_TIMEOUT_S", 0.5)

    def hang():
        while True:
            time.sleep(0.01)

    behaviour["do"] = hang
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"cannot join the Ray cluster at 10\.0\.0\.1:6379: no answer within 0\.5 s"):
        ray_connect.connect(RayOptions(address="10.0.0.1:6379"))
    assert time.monotonic() - t0 < 5


def test_rays_own_errors_become_one_line(fake_init):
    ray_connect, _, _ = fake_init
    with pytest.raises(UsageError) as ei:
        ray_connect.connect(RayOptions(address="ray://127.0.0.1:10001"))
    assert str(ei.value) == (
        "cannot join the Ray cluster at ray://127.0.0.1:10001: Ray Client requires pip package `ray[client]`."
    )


def test_auto_without_a_cluster_is_one_line(monkeypatch):
    from ray._private import services

    from xaibatch.pipeline import ray_connect

    def nothing(addr, temp_dir=None):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", nothing)
    with pytest.raises(UsageError, match="^--ray-address auto: Could not find any running Ray instance"):
        ray_connect.reachable("auto")


def test_cli_exit_2_in_one_line_for_a_dead_address(labeled_dir, tmp_path, tiny_ckpt):
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(labeled_dir),
            "--checkpoint",
            str(tiny_ckpt),
            "--out",
            str(tmp_path / "o"),
            "-q",
            "--engine",
            "ray",
            "--ray-address",
            "127.0.0.1:1",
        ],
    )
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach the Ray cluster at 127.0.0.1:1"), r.output


def test_a_dead_address_is_refused_before_the_model_loads(labeled_dir, tmp_path, monkeypatch):
    """The refusal came after the model had loaded (seconds of torch and a model for a mistyped address): the
    address is tried with the run's other checks now, before the model's factory runs."""
    factory = tmp_path / "factory.py"
    marker = tmp_path / "model-built"
    factory.write_text(
        f"from pathlib import Path\nimport timm\n\ndef build():\n    Path({str(marker)!r}).touch()\n"
        "    return timm.create_model('test_resnet', pretrained=False, num_classes=2)\n"
    )
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = [
        "run",
        str(labeled_dir),
        "--model",
        f"{factory}:build",
        "--image-size",
        "32",
        "--target-layer",
        "layer4",
    ]
    r = CliRunner().invoke(
        cli, [*args, "--out", str(tmp_path / "o"), "-q", "--engine", "ray", "--ray-address", "127.0.0.1:1"]
    )
    assert r.exit_code == 2 and r.output.startswith("Error: cannot reach the Ray cluster at 127.0.0.1:1"), r.output
    assert not marker.exists() and not (tmp_path / "o").exists()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # the same address from the environment
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o"), "-q", "--engine", "ray"])
    assert r.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in r.output, r.output
    assert not marker.exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_rays_cluster_messages_never_reach_stdout(quiet, capsys, monkeypatch):
    """Ray prints "(raylet) A worker died ..." to stdout, among --log-json's lines; off a terminal, nowhere."""
    import ray._private.worker as ray_worker

    from xaibatch.pipeline.ray_connect import keep_ray_messages_off_stdout

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored after
    keep_ray_messages_off_stdout(quiet)
    ray_worker.print_to_stdstream(
        {
            "lines": ["\x1b[33mA worker died or was killed while executing a task\x1b[0m"],
            "pid": "raylet",
            "is_err": False,
            "ip": "127.0.0.1",
        },
        ignore_prefix=False,
    )
    got = capsys.readouterr()
    assert got.out == ""
    assert ("A worker died" in got.err) is not quiet


def test_the_runs_stop_handlers_outlive_ray_init(fake_init):
    """ray.init installs its own SIGTERM handler (exit at once); a Ray that took SIGHUP too would kill a run on a
    closed terminal instead of stopping it after its batches. Every stop signal's handler is the run's again."""
    import signal

    from xaibatch.pipeline.signals import STOP_SIGNALS

    ray_connect, _, behaviour = fake_init

    def rays_handler(signum, frame):
        raise SystemExit(signum)

    behaviour["do"] = lambda: [signal.signal(s, rays_handler) for s in STOP_SIGNALS]
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    ray_connect.connect(RayOptions())
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


@pytest.mark.parametrize("mode", [None, "token"])
def test_a_cluster_that_wants_rays_token_says_so(fake_init, monkeypatch, mode):
    """`ray start --head` turns on Ray's token authentication when ~/.ray/auth_token exists (a Ray that a run started
    writes it), and Ray sends the token to an explicit address only under RAY_AUTH_MODE=token: the run said "Failed
    to connect to Ray cluster at ..." and nothing of why (measured: 20 s, then that line)."""
    ray_connect, _, behaviour = fake_init
    monkeypatch.setattr(ray_connect, "reachable", lambda address: None)
    if mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)

    def refused():  # the chain Ray 2.60 raises (ray._private.worker.init over node._init_gcs_client)
        try:
            raise RuntimeError(
                "Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n  ...\n"
                "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing "
                "or incorrect. Note: RAY_AUTH_MODE is currently 'disabled' (not 'token')."
            )
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from e

    behaviour["do"] = refused
    with pytest.raises(UsageError) as ei:
        ray_connect.connect(RayOptions(address="10.0.0.1:6379"))
    text = str(ei.value)
    assert text.startswith("cannot join the Ray cluster at 10.0.0.1:6379: ") and "\n" not in text
    if mode is None:
        assert "RAY_AUTH_MODE=token" in text and "--ray-address auto" in text
    else:
        assert "refused this machine's Ray token" in text and "head node's token" in text
