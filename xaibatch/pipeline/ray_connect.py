"""``--engine ray``: joining (or starting) a Ray cluster within a time limit, and keeping Ray's own output quiet.

A scheduler mails whatever reaches stderr and stdout may hold the run's JSON lines: Ray's logs stay in its log
files, its cluster messages go to stderr (or nowhere), and a head that does not answer is a one-line UsageError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading

from ..errors import Interrupted, UsageError
from .options import RayOptions
from .signals import STOP_SIGNALS

# Ray retries a head that does not answer for minutes (forever when something else answers on that port).
REACH_TIMEOUT_S = 10.0  # to open a TCP connection to the head's address at all
CONNECT_TIMEOUT_S = 60.0  # for ray.init to join a cluster
START_TIMEOUT_S = 300.0  # for ray.init to start a local Ray (processes, on a loaded machine)


def connect(r: RayOptions) -> bool:
    """Join the cluster (``r.address``, else $RAY_ADDRESS, else a private new local Ray); True when this call started
    it. An address that cannot be reached within CONNECT_TIMEOUT_S, or that Ray refuses, is a UsageError (exit 2).

    A Ray the caller already initialised (a test, a notebook) is used as it is. Without an address the run never
    joins the cluster a stale ``/tmp/ray/ray_current_cluster`` names (``ray.init()`` would, and hang on a dead head).
    """
    import ray

    if ray.is_initialized():
        return False
    address = r.address or os.environ.get("RAY_ADDRESS") or "local"
    reachable(address)
    quiet = not sys.stderr.isatty()
    if quiet:  # a scheduler mails whatever reaches stderr: Ray's own logs stay in its log files (errors that stop
        # the run are xaibatch's own one-line error)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    keep_ray_messages_off_stdout(quiet)
    # ray.init makes SIGTERM exit the process at once; the run's handlers of every stop signal (stop after the
    # current batches, exit code 5; SIGHUP too, whatever a Ray version does with it) stay in charge.
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main else {}
    limit = START_TIMEOUT_S if address == "local" else CONNECT_TIMEOUT_S
    what = "start a local Ray" if address == "local" else f"join the Ray cluster at {address}"
    try:
        with time_limit(limit if main else None), stderr_silenced(quiet):  # a failure raises: reported below
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR if quiet else logging.WARNING,
            )
    except (SystemExit, KeyboardInterrupt):  # Ray's own SIGTERM handler, or Ctrl-C, while it was connecting
        _shutdown_quietly()
        raise Interrupted("interrupted while connecting to Ray") from None
    except _TimeUp:
        _shutdown_quietly()
        raise UsageError(f"cannot {what}: no answer within {limit:g} s (is it a Ray head, and running?)") from None
    except Exception as e:
        _shutdown_quietly()
        raise UsageError(f"cannot {what}: {_auth_refused(e) or _first_line(e)}") from None
    finally:
        for s, h in handlers.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
    return True


class _TimeUp(BaseException):
    """SIGALRM: a time limit passed (a BaseException, so that Ray's retry loops do not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise _TimeUp in the main thread after ``seconds`` (None: no limit); Ray retries an unanswering head forever."""
    if not seconds:
        yield
        return

    def alarm(signum, frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stderr_silenced(enabled: bool):
    """File descriptor 2 to /dev/null (what Ray's C++ code logs as it starts, whatever the level asked for)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _shutdown_quietly() -> None:
    try:
        import ray

        ray.shutdown()
    except BaseException:
        pass


def reachable(address: str) -> None:
    """Refuse at once (UsageError) a cluster address that names no cluster or whose head does not answer."""
    if address == "local" or address.startswith("ray://"):  # ray://: Ray's client checks it (and its extra)
        return
    hostport = literal_hostport(address)
    if hostport is None:
        try:
            from ray._private.services import canonicalize_bootstrap_address

            hostport = canonicalize_bootstrap_address(address)  # auto: $RAY_ADDRESS, else the last cluster here
        except Exception as e:
            raise UsageError(f"--ray-address {address}: {_first_line(e)}") from None
    if hostport is not None:
        answers(address, hostport)


def literal_hostport(address: str) -> str | None:
    """``host:port`` when ``address`` is one (``10.0.0.5:6379``, ``head:6379``, ``[::1]:6379``), read without
    importing Ray; None for ``local``, ``auto``, ``ray://...`` and the rest, which Ray reads."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in address or host == "ray":
        return None
    return f"{host}:{port}"


def answers(address: str, hostport: str) -> None:
    """Refuse (UsageError) a head at ``hostport`` that does not take a TCP connection within REACH_TIMEOUT_S."""
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        why = (
            f"no answer within {REACH_TIMEOUT_S:g} s"
            if isinstance(e, TimeoutError)
            else getattr(e, "strerror", None) or str(e)
        )
        raise UsageError(
            f"cannot reach the Ray cluster at {address} ({hostport}): {why}; is its head running? "
            "(without --ray-address and $RAY_ADDRESS a Ray is started for the run)"
        ) from None


def keep_ray_messages_off_stdout(quiet: bool) -> None:
    """Ray prints its cluster messages ("(raylet) A worker died ...") to stdout, which holds only the run's own
    output (JSON lines with --log-json): send them to stderr, or nowhere when ``quiet``."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    if hasattr(ray_worker.print_to_stdstream, "xaibatch_quiet"):  # ours already
        ray_worker.print_to_stdstream.xaibatch_quiet = quiet  # type: ignore[attr-defined]
        return
    print_worker_logs = ray_worker.print_worker_logs

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        if not to_stderr.xaibatch_quiet:  # type: ignore[attr-defined]
            print_worker_logs(data, sys.stderr, ignore_prefix)

    to_stderr.xaibatch_quiet = quiet  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _auth_refused(e: BaseException) -> str | None:
    """What to do when the cluster refused the connection for want of Ray's token (None for any other failure).

    ``ray start`` turns token authentication on when ``~/.ray/auth_token`` exists, and a Ray that a run started
    writes that file; a driver joining an explicit address sends the token only under RAY_AUTH_MODE=token (Ray's
    rule: ``auto`` sends it). Ray says only "Failed to connect to Ray cluster at ..." after 20 s of retries, the
    reason buried in the exception it chains.
    """
    seen: set[int] = set()
    chain: list[BaseException] = []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    if not any(type(x).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(x) for x in chain):
        return None
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        return (
            "the cluster refused this machine's Ray token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token):"
            " use the head node's token"
        )
    return (
        "the cluster asks for Ray's token authentication, which Ray uses with an explicit address only under "
        "RAY_AUTH_MODE=token: run with RAY_AUTH_MODE=token and the head node's token (~/.ray/auth_token or "
        "RAY_AUTH_TOKEN), or with --ray-address auto on the head node"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def quiet_ray_data() -> None:
    """No progress bars or execution banners from Ray Data: the run has its own bar, stdout may be JSON lines."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a batch that kills its actor on every retry: the run carries on without it
    for name in ("ray.data", "ray.data._internal"):  # such a batch is logged (with a traceback): the run says it
        logging.getLogger(name).setLevel(logging.CRITICAL)


def resources(r: RayOptions, device: str = "auto") -> tuple[int, float, float]:
    """(actors, GPUs each, CPUs each): GPU workers when the cluster has GPUs, as many as it has room for. A
    ``device`` of cuda with workers that get no GPU is a UsageError here, before any actor loads the model."""
    import ray

    total = ray.cluster_resources()
    gpus = r.gpus_per_worker if r.gpus_per_worker is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    cpus = r.cpus_per_worker
    if gpus == 0 and device.strip().lower().startswith("cuda"):  # each actor would load, then find no GPU
        why = "--gpus-per-worker 0" if r.gpus_per_worker == 0 else f"the cluster has {total.get('GPU', 0):g} GPU(s)"
        raise UsageError(
            f"--device {device}: the Ray workers get no GPU ({why}); use --device auto or cpu, or give them GPUs "
            "with --gpus-per-worker"
        )
    if gpus > total.get("GPU", 0) or cpus > total.get("CPU", 0):  # Ray would wait for them forever
        raise UsageError(
            f"the Ray cluster has {total.get('GPU', 0):g} GPU(s) and {total.get('CPU', 0):g} CPU(s): "
            f"not enough for one worker of {gpus:g} GPU and {cpus:g} CPU; check --gpus-per-worker and "
            "--cpus-per-worker"
        )
    if r.workers is not None:
        return r.workers, gpus, cpus
    room = int(total.get("GPU", 0) // gpus) if gpus > 0 else int(total.get("CPU", 1) // cpus)
    return max(1, room), gpus, cpus
