"""What a run is asked to do and what it reports: the types at both ends of :func:`~xaibatch.pipeline.run`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from ..defaults import DEFAULT_MAX_MAP_SIDE
from .. import targets
from ..manifest import RunCounts
from ..runstatus import RunStatus
from ..scan import Failure


@dataclass
class RayOptions:
    """Where and how ``--engine ray`` runs its workers (see pipeline/ray_engine.py)."""

    address: str | None = None  # None: $RAY_ADDRESS, else a Ray started for this run on this machine
    workers: int | None = None  # actors in all; None: as many as the cluster's GPUs (or CPUs) allow
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU workers)
    cpus_per_worker: float = 1.0  # also the threads that decode a batch in a worker


@dataclass(kw_only=True)
class ModelOptions:
    """The model as asked for: ``xaibatch run``'s and ``xaibatch serve``'s model options (RunOptions, ServeOptions)."""

    checkpoint: Path | None = None  # None: the bundled default model
    arch: str | None = None
    model: str | None = None  # FILE.py:FACTORY, module.path:FACTORY, torchvision:NAME or timm:NAME (usermodel)
    classes: list[str] | None = None  # class names in output order (else the checkpoint's or the folder's)
    positive_class: str | None = None  # two classes: the one the threshold is about (see heads.decision_for)
    threshold: float | None = None  # two classes: predict positive when its probability is >= this (0.5)
    image_size: int | None = None
    # the model's normalization, in units of pixels scaled to [0, 1]: one number or three (R, G, B); None: the
    # checkpoint's, else the model's own (timm's pretrained_cfg), else ImageNet's (preprocess.channel_values)
    mean: float | Sequence[float] | None = None
    std: float | Sequence[float] | None = None
    target_layer: str | None = None

    def model_options(self) -> dict[str, Any]:
        """These fields by name, to pass on as another ModelOptions' (``RunOptions(**serve.model_options())``)."""
        return {f.name: getattr(self, f.name) for f in fields(ModelOptions)}


@dataclass
class RunOptions(ModelOptions):
    """What a run is asked to do: the model (ModelOptions' fields, keyword only), the methods and the rest."""

    input_dir: Path
    out_dir: Path
    methods: list[str]
    target: str = "pred"  # pred | label | pred,label (misclassified images: both; see targets.py)
    batch_size: int | None = 32  # None: chosen from the device and the input size (defaults.py)
    device: str = "auto"
    workers: int | None = 0  # DataLoader processes; None: chosen from the device and the host's CPUs
    writers: int | None = (
        None  # processes that encode and write the pictures; 0: the writer thread; None: from the host
    )
    decode: str = "auto"  # JPEG decoding: auto (on the device when it is CUDA), cpu (PIL in the workers), device
    labeled: bool | None = None  # None: decide from the folder layout
    follow_links: bool = False  # follow symlinked folders that lead outside input_dir
    check_ctime: bool = True  # an image whose ctime alone moved is hashed to check it (False: --no-ctime)
    max_map_side: int = DEFAULT_MAX_MAP_SIDE  # saved .npy maps at most about N x N pixels; 0: the image's own size
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0  # for every method that takes one (LIME); part of only those methods' hashes
    template_dir: Path | None = None
    progress: bool = False  # a progress bar (a terminal)
    heartbeat: float = 0.0  # without the bar: a progress line (with on_event: an event) this often, in s; 0: none
    wait: bool = False  # another run holds out_dir: wait for it instead of raising LockHeld
    wait_timeout: float | None = None  # with wait: give up after this many seconds
    on_event: Callable[[dict[str, Any]], None] | None = None  # plan and failure events (see runlog)
    handle_signals: bool = True  # SIGINT/SIGTERM/SIGHUP stop after the current batch (main thread only)
    replace: bool = False  # out_dir may hold another input's report or foreign files: write there anyway
    faithfulness: Any = None  # faithfulness.FaithConfig: deletion/insertion scores for every map; None: off
    engine: str = "local"  # local: this process (DataLoader workers); ray: Ray Data actors (pipeline/ray_engine.py)
    ray: RayOptions = field(default_factory=RayOptions)  # with engine="ray"

    @property
    def events_only(self) -> bool:
        """--log-json (``on_event``): what the run says with an event (notices, estimates, a split batch, progress)
        is that event only; its log lines keep to what has none. The one place that rule is decided."""
        return self.on_event is not None

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):  # one method by name, as explain() takes it (its letters were methods)
            self.methods = [self.methods]
        self.target = targets.spelled(self.target)  # "PRED", "pred, label": as --target and explain() read them


@dataclass
class RunResult:
    out_dir: Path
    counts: RunCounts  # the run row's; its numbers are also this result's attributes (seen, computed, ...)
    failed: list[Failure]  # unpacks as (rel, reason) pairs, as before it was typed
    seconds: float
    report: Path | None
    layer: str | None
    accuracy: float | None
    status: RunStatus = RunStatus.OK  # ok | some-failed | interrupted (the run row's status)
    run_id: int | None = None
    # Seconds per phase: prepare (of which scan, import: torch and the libraries, model: load and hashes), plan,
    # compute, report, wait (for the lock); first_batch: from the start to the first batch explained.
    timings: dict[str, float] = field(default_factory=dict)
    # the runs before this one that did not finish whose images it did not compute again (``resumed`` of them):
    # id -> status (interrupted, killed, error)
    resumed_from: dict[int, RunStatus] = field(default_factory=dict)
    # images the scan listed that were moved or deleted before their batch read them: no failure, left to the next
    # run (errors.VANISHED)
    vanished: list[Failure] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.counts.seen

    @property
    def computed(self) -> int:
        return self.counts.computed

    @property
    def unchanged(self) -> int:
        """The images not computed again, ``resumed`` ones included (RunCounts.skipped)."""
        return self.counts.skipped

    @property
    def resumed(self) -> int:
        """Of ``unchanged``, the images not computed because runs before this one that did not finish had done them."""
        return self.counts.resumed

    @property
    def added(self) -> int:
        return self.counts.added

    @property
    def changed(self) -> int:
        return self.counts.changed

    @property
    def removed(self) -> int:
        return self.counts.removed

    def summary_line(self) -> str:
        stopped = " (interrupted)" if self.status == RunStatus.INTERRUPTED else ""
        resumed = f"{self.resumed} already done by {unfinished_words(self.resumed_from)}, " if self.resumed else ""
        waited = self.timings.get("wait", 0.0)  # --wait: a cron job's log must not read the wait as the run's work
        wait = f" ({waited:.1f}s of it waiting for the folder to be free)" if waited >= 0.05 else ""
        return (
            f"xaibatch: {self.seen} images seen, {self.computed} computed, {resumed}{self.counts.unchanged} skipped "
            f"(unchanged), {len(self.failed)} failed, {self.removed} removed, {self.seconds:.1f}s{wait}{stopped} -> "
            f"{self.report}"
        )


# a status of runstatus.ENDED_BADLY, as an adjective
_ENDED = {RunStatus.INTERRUPTED: "interrupted", RunStatus.KILLED: "killed", RunStatus.ERROR: "failed"}


def unfinished_words(runs: dict[int, RunStatus]) -> str:
    """Runs that did not finish, in words: "the interrupted run 3", "the killed runs 2 and 3",
    "runs 2 (killed) and 3 (interrupted)", "5 runs that did not finish (2 to 9)"."""
    if not runs:
        return "earlier runs that did not finish"
    ids = sorted(runs)
    if len(ids) > 3:
        return f"{len(ids)} runs that did not finish ({ids[0]} to {ids[-1]})"
    words = {_ENDED.get(s, s) for s in runs.values()}
    if len(words) == 1:
        return f"the {words.pop()} run{'s' if len(ids) > 1 else ''} {_listed([str(i) for i in ids])}"
    return "runs " + _listed([f"{i} ({_ENDED.get(runs[i], runs[i])})" for i in ids])


def _listed(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def checkpoint_path(opts: ModelOptions) -> Path:
    """The weights file a run loads: --checkpoint, else the bundled model (--arch alone is refused)."""
    from ..errors import UsageError
    from ..resources import default_checkpoint

    if opts.checkpoint is not None:
        return opts.checkpoint
    if opts.arch is not None:
        raise UsageError(
            f"--arch {opts.arch} needs --checkpoint with its weights (random weights explain nothing); "
            "omit both to use the bundled model"
        )
    return default_checkpoint()
