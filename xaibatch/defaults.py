"""Defaults chosen from the host and the device (DataLoader workers, batch size, where JPEGs are decoded), and the
defaults and choices that the CLI shows before anything heavy loads (imports nothing heavy)."""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Iterator

# --decode: auto decodes JPEGs with PIL in the DataLoader workers except on device types measured faster
# (decode.AUTO_ON_DEVICE: none yet; an H200 measured nvJPEG slower)
DECODE_CHOICES = ("auto", "cpu", "device")
# model input sides (--image-size, explain()'s input_size, a checkpoint's input_size): whole numbers in this range
IMAGE_SIDES = (8, 4096)
DEFAULT_MAX_MAP_SIDE = 1024  # --max-map-side: an 8000x8000 image would otherwise make a 256 MB .npy per method

# LIME's options (methods/lime.py, which imports torch) and their defaults, here so that --help shows them cheaply
LIME_HIDE_MODES = ("mean", "zero", "blur")
LIME_DEFAULTS = {
    "samples": 1000,
    "segments": 50,
    "hide": "mean",
    "seed": 0,
    "samples_min": 200,
    "samples_max": 2000,
    "samples_round": 100,
    "tolerance": 0.1,
}
# --faithfulness (evaluation/faithfulness.py, which imports torch): what removed pixels become (the first is the
# default) and the steps of each curve, here so that --help shows them cheaply
FAITH_BASELINES = ("blur", "zero", "mean")
FAITH_STEPS = 20


MODEL_FORMS = "FILE.py:FACTORY, module.path:FACTORY, torchvision:NAME or timm:NAME"  # what --model takes


def model_spec_problem(spec: str) -> str | None:
    """Why ``--model`` is not of a form MODEL_FORMS names, or None (whether that file, module or model exists is
    for loading it to say)."""
    where, _, name = spec.rpartition(":")
    if (where in ("timm", "torchvision") and name) or (where and name.isidentifier()):
        return None
    return f"--model {spec!r}: expected {MODEL_FORMS}"


_CUDA_N = re.compile(r"cuda:(0|[1-9][0-9]*)", re.ASCII)


def device_spec_problem(spec: str) -> str | None:
    """Why ``--device`` is not of a form auto, cpu, cuda, cuda:N, or None (whether that device exists is torch's
    to say). N is an index torch reads: ASCII digits, no leading zero (``cuda:``, ``cuda:01`` made torch.device()
    raise an internal error on a GPU host)."""
    spec = spec.strip().lower()
    if spec in ("auto", "cpu", "cuda") or _CUDA_N.fullmatch(spec):
        return None
    return f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N"


def cpu_count() -> int:
    """CPUs this process may use: those its affinity mask lets it run on (taskset, Slurm, a cpuset), fewer under a
    cgroup CPU quota (``docker --cpus=4``, a pod's ``limits.cpu``: the mask still shows every core of the host),
    rounded up, at least 1. Every process and thread count of xaibatch starts from this number."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _own_cgroup_cpus()
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def quota_threads() -> int | None:
    """The threads torch's OpenMP should start under a cgroup CPU quota lower than the CPUs the affinity mask
    shows (it counts the mask: 64 threads for a 4-CPU container on a 64-core host), or None: no such quota."""
    try:
        mask = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mask = os.cpu_count() or 1
    n = cpu_count()
    return n if n < mask else None


@functools.cache
def _own_cgroup_cpus() -> float | None:
    """:func:`cgroup_cpus` of this process, read once (1 ms: /proc/self/mountinfo)."""
    return cgroup_cpus()


def cgroup_cpus(root: str = "/") -> float | None:
    """The CPUs a cgroup CPU quota gives this process (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``; the lowest on the way from its cgroup up to the root of the mount, as the JVM and Go
    read it), or None: no quota, or none readable. ``root``: where /proc and /sys are (tests)."""
    found = [q for folder, v2 in _cgroup_folders(root, "cpu") if (q := _quota_in(folder, v2)) is not None]
    return min(found) if found else None


def cgroup_memory(root: str = "/") -> int | None:
    """The bytes a cgroup memory limit gives this process (v2 ``memory.max``, v1 ``memory.limit_in_bytes``; the
    lowest on the way up, as :func:`cgroup_cpus`), or None: no limit, or none readable. Past it the kernel's
    out-of-memory killer ends the run (SIGKILL: no error to catch, no line said)."""
    found = []
    for folder, v2 in _cgroup_folders(root, "memory"):
        try:
            limit = int((folder / ("memory.max" if v2 else "memory.limit_in_bytes")).read_text().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            continue  # "max" (v2), or unreadable
        if 0 < limit < 1 << 60:  # v1 says "no limit" as a number near 2**63
            found.append(limit)
    return min(found) if found else None


def _cgroup_folders(root: str, controller: str) -> Iterator[tuple[Path, bool]]:
    """Each cgroup folder whose ``controller`` files apply to this process, from its own cgroup up to the root of
    each mount that shows it, with whether it is cgroup v2."""
    base = Path(root)
    try:
        cgroups = (base / "proc/self/cgroup").read_text().splitlines()
        mounts = (base / "proc/self/mountinfo").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return
    for line in cgroups:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        v2 = controllers == ""
        if not path.startswith("/") or not (v2 or controller in controllers.split(",")):
            continue
        for mount_root, mount_point in _cgroup_mounts(mounts, v2, controller):
            rel = path[len(mount_root) :] if path.startswith(mount_root.rstrip("/") + "/") else ""
            rel = "" if path == mount_root else rel
            top = base / mount_point.lstrip("/")
            here = top / rel.strip("/")
            while True:
                yield here, v2
                if here == top or top not in here.parents:
                    break
                here = here.parent


def _cgroup_mounts(mountinfo: list[str], v2: bool, controller: str) -> list[tuple[str, str]]:
    """(root within the hierarchy, mount point) of each cgroup2 mount (``v2``) or v1 mount with the
    ``controller``, from /proc/self/mountinfo's lines."""
    out = []
    for line in mountinfo:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        fstype, options = rest[0], rest[2].split(",")
        if (v2 and fstype == "cgroup2") or (not v2 and fstype == "cgroup" and controller in options):
            out.append((_unescape(fields[3]), _unescape(fields[4])))
    return out


def _unescape(field: str) -> str:
    """A mountinfo path: a space, tab, newline or backslash is written as an octal escape (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _quota_in(folder: Path, v2: bool) -> float | None:
    """CPUs of the quota set in one cgroup ``folder``, or None (none set, or not readable)."""
    try:
        if v2:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        q, p = int(quota), int(period or 100000)
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # "max" (v2) or unreadable
    return q / p if q > 0 and p > 0 else None  # -1: none (v1)


def default_workers(device_type: str = "cpu") -> int:
    """DataLoader processes that decode images.

    On the CPU the model needs the cores too: one fewer than the CPUs, at most 4. On a GPU decoding is the
    host's main job: half the CPUs (at most 16), the rest left to the writer's threads.
    """
    n = cpu_count()
    if device_type == "cpu":
        return max(0, min(4, n - 1))
    return max(1, min(16, n // 2))


# the torch threads the user asked for (read when this module is first imported: before cli.openmp_env sets its own)
THREADS_GIVEN = "OMP_NUM_THREADS" in os.environ


def model_threads(device_type: str, workers: int, threads: int, slow: bool = False) -> int:
    """torch's CPU threads for a run's model: ``threads`` (torch's own number) at most, and no more than the CPUs
    its ``workers`` (DataLoader processes) leave, at least 1; on a GPU, with OMP_NUM_THREADS given, or for a
    ``slow`` method (LIME, faithfulness: many forwards per image, the workers idle meanwhile), ``threads``.

    A worker decodes the next batch while the model runs, so on 2 CPUs torch's 2 threads and 1 worker make 3 busy
    on 2 cores, and an OpenMP thread that waits at each barrier for one that lost its core spins (measured on the
    2-core box, shared: Grad-CAM on the 500 demo images computed in 1.5-2.3 s with 1 thread, 4.7-7.7 s with 2,
    LIME in 25-43 s against 37-50 s for 16 images, Grad-CAM at 224 px (timm resnet18, 96 photos) in 7.2-7.5 s
    against 9.2-9.5; the model alone at 32 px, 2,200-3,300 images/s against 700-2,300). On the box quiet: Grad-CAM
    1.2-1.3 s against 1.3-1.5, but LIME 14.8-15.6 s against 9.6-11.3 s (64 images, 250 samples): a slow method's
    worker idles while the model runs, which takes both cores then."""
    if device_type != "cpu" or THREADS_GIVEN or slow:
        return threads
    return max(1, min(threads, cpu_count() - max(0, workers)))


WORKERS_PER_CPU = 4  # --workers above this many per CPU is refused (workers_problem)


def workers_problem(workers: int) -> str | None:
    """Why ``--workers`` is too many for this host, or None. Decoding is CPU work: past a few processes per CPU
    more only compete and start slowly (--workers 1000 made no progress in a minute), so such a number is a slip."""
    cpus = cpu_count()
    if workers <= WORKERS_PER_CPU * cpus:
        return None
    here = f"{cpus} CPU(s) here, by the container's CPU quota" if quota_threads() is not None else f"{cpus} CPU(s) here"
    return (
        f"--workers {workers} is more than {WORKERS_PER_CPU} per CPU ({here}: at most "
        f"{WORKERS_PER_CPU * cpus}); decoding is CPU work, more processes only compete"
    )


def default_writers(device_type: str = "cpu", workers: int = 0) -> int:
    """Writer processes that encode PNGs and write the files (pipeline/writer_pool.py); 0: the writer thread.

    On the CPU none: the model's threads already take every core, and a process only adds the hand-over
    (measured on a 2-core box: a run's compute phase no faster with one). On a GPU the CPUs that the
    DataLoader ``workers`` and the main process leave, 1 to 8 (an H200 host's one writer thread reached 1/8
    of its file system's rate).
    """
    if device_type == "cpu":
        return 0
    return max(1, min(8, cpu_count() - max(1, workers) - 1))


def default_batch_size(device_type: str, input_size: int) -> int:
    """Images per batch: 32 on the CPU; on a GPU as many as keep it busy without running out of memory for
    the activations and gradients that Grad-CAM keeps (measured on an H100 with resnet50: 128 at 224 px). A batch
    that does not fit a smaller GPU (or a heavier method) is split by the run (pipeline/compute.BatchWorker)."""
    if device_type == "cpu":
        return 32
    if input_size <= 64:
        return 512
    if input_size <= 128:
        return 256
    return 128 if input_size <= 256 else 32


def image_side_ok(v: object) -> bool:
    """Whether ``v`` is a model input side xaibatch takes (:data:`IMAGE_SIDES`; a bool is no number here)."""
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and IMAGE_SIDES[0] <= v <= IMAGE_SIDES[1]
