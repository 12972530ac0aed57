"""xaibatch in a container under a CPU quota (docker --cpus, a pod's limits.cpu) that the affinity mask does not show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xaibatch import defaults

V2_MOUNT = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate"
V1_MOUNTS = [
    "31 25 0:27 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct",
    "32 25 0:28 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory",
]


def fake_host(root: Path, cgroup: str, mounts: list[str], files: dict[str, str]) -> str:
    """/proc/self/cgroup, /proc/self/mountinfo and cgroup files under ``root``; returns it for cgroup_cpus."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text("\n".join(["1 0 8:1 / / rw - ext4 /dev/sda1 rw", *mounts]) + "\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(root)


def test_a_cgroup_v2_quota_in_a_containers_own_namespace(tmp_path):
    """docker --cpus=4 on a cgroup v2 host: the container sees its cgroup as "/" and cpu.max says 4."""
    root = fake_host(tmp_path, "0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": "400000 100000\n"})
    assert defaults.cgroup_cpus(root) == 4.0


def test_no_quota_is_none(tmp_path):
    root = fake_host(tmp_path, "0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert defaults.cgroup_cpus(root) is None
    assert defaults.cgroup_cpus(str(tmp_path / "nothing-here")) is None


def test_the_lowest_quota_on_the_way_up_counts(tmp_path):
    """A pod's limit set on its parent slice (2.5 CPUs) and a looser one on the process's own cgroup (8)."""
    files = {
        "sys/fs/cgroup/kubepods/pod1/cpu.max": "250000 100000\n",
        "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "800000 100000\n",
        "sys/fs/cgroup/cpu.max": "garbage\n",
    }
    root = fake_host(tmp_path, "0::/kubepods/pod1/ctr\n", [V2_MOUNT], files)
    assert defaults.cgroup_cpus(root) == 2.5


def test_a_cgroup_v1_quota_below_a_mount_root(tmp_path):
    """Docker on a v1 host without a cgroup namespace: the cgroup is /docker/abc, which is the mount's root."""
    files = {
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    }
    cgroup = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    root = fake_host(tmp_path, cgroup, V1_MOUNTS, files)
    assert defaults.cgroup_cpus(root) == 1.5
    (tmp_path / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")
    assert defaults.cgroup_cpus(root) is None


def test_every_count_follows_a_cpu_quota_rounded_up(monkeypatch):
    """On a 64-core host under docker --cpus=1.5 the affinity mask shows 64 CPUs: the workers, writer processes and
    threads and the report's forks count 2, never 64 (nor 0 under --cpus=0.5)."""
    from xaibatch.pipeline.writer import writer_threads
    from xaibatch.report.render import detail_processes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(defaults, "_own_cgroup_cpus", lambda: 1.5)
    assert defaults.cpu_count() == 2
    assert defaults.default_workers("cuda") == 1
    assert defaults.default_workers("cpu") == 1
    assert defaults.default_writers("cuda", 1) == 1
    assert writer_threads("cuda", 1) == 1
    assert detail_processes() == 1
    assert defaults.workers_problem(9) is not None
    monkeypatch.setattr(defaults, "_own_cgroup_cpus", lambda: 0.5)
    assert defaults.cpu_count() == 1
    monkeypatch.setattr(defaults, "_own_cgroup_cpus", lambda: None)
    assert defaults.cpu_count() == 64


@pytest.mark.skipif(not Path("/proc/self/mountinfo").exists(), reason="Linux only")
def test_this_hosts_quota_reads_without_error():
    quota = defaults.cgroup_cpus()
    assert quota is None or quota > 0
    assert defaults.cpu_count() >= 1


def test_torch_starts_as_many_threads_as_the_quota_gives(monkeypatch):
    """torch's OpenMP counts the affinity mask: 64 threads for a 4-CPU container on a 64-core host, which the quota
    then throttles. The command sets OMP_NUM_THREADS to the quota before torch loads; a value already set wins."""
    from xaibatch.cli import openmp_env

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(defaults, "_own_cgroup_cpus", lambda: 4.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    openmp_env()
    assert os.environ["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    openmp_env()
    assert os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(defaults, "_own_cgroup_cpus", lambda: None)  # no quota: torch's own count
    openmp_env()
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_cgroup_memory_limit_v2_and_v1(tmp_path):
    v2 = fake_host(
        tmp_path / "v2",
        "0::/pod/ctr\n",
        [V2_MOUNT],
        {
            "sys/fs/cgroup/pod/memory.max": "2147483648\n",
            "sys/fs/cgroup/pod/ctr/memory.max": "max\n",
        },
    )
    assert defaults.cgroup_memory(v2) == 2 << 30
    v1 = fake_host(
        tmp_path / "v1",
        "5:memory:/docker/abc\n",
        V1_MOUNTS,
        {
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        },
    )
    assert defaults.cgroup_memory(v1) is None
    (tmp_path / "v1/sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("1572864000\n")
    assert defaults.cgroup_memory(v1) == 1572864000
    assert defaults.cgroup_cpus(v1) is None  # no cpu mount there


def test_a_run_after_one_the_oom_killer_ended_says_what_may_have_happened(tmp_path, tiny_ckpt, monkeypatch):
    """In a pod with a 2 GiB limit a run at 224 px (2.4 GB at its default batch with two methods) was SIGKILLed by
    the kernel: no line, exit 137, and the next run said only that the previous one did not finish."""
    from helpers import run_opts, write_images

    import sqlite3

    from xaibatch.pipeline import recovery, run

    write_images(tmp_path / "in", 4)
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=lambda s: None)
    db = sqlite3.connect(tmp_path / "out" / "xaibatch.sqlite")  # what a SIGKILL leaves: the run row "running"
    with db:
        db.execute("UPDATE runs SET status = 'running' WHERE id = (SELECT max(id) FROM runs)")
    db.close()
    monkeypatch.setattr(recovery, "cgroup_memory", lambda: 2 << 30)
    said: list[str] = []
    (tmp_path / "in" / "img_new.png").write_bytes((tmp_path / "in" / "img_000.png").read_bytes())
    run(run_opts(tmp_path / "in", tmp_path / "out", tiny_ckpt), log=said.append)
    line = next(s for s in said if "did not finish" in s)
    assert "memory limit, 2.0 GiB, the out-of-memory killer" in line and "--batch-size" in line, line
    assert line.endswith("what it finished is kept")
    assert recovery.memory_note(0) == ""
