"""Every exit code of ``xaibatch run`` end to end, as a scheduler sees it (no terminal).

4 (lock held) is tested in test_lock.py and 5 (interrupted) in test_crash.py, each with real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, REPO, cli, manifest_rows, manifest_value, write_images


def _run(inp: Path, out: Path, ckpt: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        "run", str(inp), "--checkpoint", str(ckpt), "--out", str(out), "--batch-size", "4", "--workers", "0", *extra
    )


def _events(stdout: str) -> list[dict]:
    lines = stdout.strip().splitlines()
    return [json.loads(line) for line in lines]  # every line is JSON


def test_help_documents_every_exit_code():
    r = cli("run", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for code in (
        "0 success",
        "1 success, but some images could not be read",
        "2 usage error",
        "3 runtime error",
        "4 another run holds",
        "5 interrupted",
    ):
        assert code in text, code
    assert "--wait" in text and "--log-json" in text


@pytest.mark.slow
def test_exit_0_one_summary_line_and_no_progress_bar(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 6)
    r = _run(inp, tmp_path / "out", tiny_ckpt)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no progress bar when not on a terminal
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("xaibatch: 6 images seen, 6 computed, 0 skipped (unchanged), 0 failed")


@pytest.mark.slow
def test_exit_1_lists_unreadable_images(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 4)
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = _run(inp, tmp_path / "out", tiny_ckpt)
    assert r.returncode == 1, r.stderr
    assert "1 image(s) could not be read" in r.stderr and "broken.png" in r.stderr
    assert "5 images seen, 4 computed, 0 skipped (unchanged), 1 failed" in r.stdout


@pytest.mark.slow
def test_log_json_lines_with_failures_and_exit_code(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 4)
    (inp / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    r = _run(inp, out, tiny_ckpt, "--log-json")
    assert r.returncode == 1, r.stderr
    ev = _events(r.stdout)
    assert [e["event"] for e in ev] == ["start", "plan", "failure", "end"]
    assert ev[0]["pid"] > 0 and ev[0]["out_dir"] == str(out) and ev[0]["methods"] == ["gradcam"]
    assert ev[1]["to_compute"] == 5 and ev[1]["added"] == 5
    assert ev[2]["path"] == "broken.png" and ev[2]["reason"]
    end = ev[-1]
    assert end["exit_code"] == 1 and end["status"] == "some-failed"
    assert (end["seen"], end["computed"], end["skipped"], end["failed"]) == (5, 4, 0, 1)
    assert end["report"].endswith("index.html") and end["seconds"] > 0
    assert all("time" in e for e in ev)
    assert "xaibatch:" not in r.stdout  # no human summary line

    again = _events(_run(inp, out, tiny_ckpt, "--log-json").stdout)[-1]
    assert (again["computed"], again["skipped"], again["failed"], again["exit_code"]) == (0, 4, 1, 1)


@pytest.mark.slow
def test_exit_2_usage_errors(tmp_path, tiny_ckpt):
    r = _run(tmp_path / "missing", tmp_path / "out", tiny_ckpt)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start

    r = cli("run", str(tmp_path), "--batch-size", "0", "--log-json")  # rejected by option parsing
    assert r.returncode == 2
    end = _events(r.stdout)[-1]
    assert end["event"] == "end" and end["exit_code"] == 2 and "--batch-size" in end["error"]


@pytest.mark.slow
def test_exit_3_runtime_error_unusable_manifest(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "xaibatch.sqlite").write_bytes(b"this is not a database" * 100)
    r = _run(inp, out, tiny_ckpt, "--log-json")
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "manifest" in r.stderr and "Traceback" not in r.stderr
    ev = _events(r.stdout)
    assert ev[0]["event"] == "start" and ev[-1]["exit_code"] == 3 and ev[-1]["status"] == "error"
    assert not list(out.rglob("*.tmp")) and (out / ".xaibatch.lock").read_text() == ""  # lock released


@pytest.mark.parametrize("log_json", [False, True], ids=["summary", "log-json"])
def test_a_closed_stdout_loses_nothing(tmp_path, tiny_ckpt, log_json):
    """``xaibatch run ... | head -1``: the reader leaving is not the run's end. It computed nothing and exited 3
    ("Error: Broken pipe", run row 'error') when its first JSON line met a closed pipe; a finished run's summary
    line turned its exit 0 into 3. The run finishes, quietly, with the exit code it would have had."""
    write_images(tmp_path / "in", 3)
    args = ["run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", tmp_path / "out", "--workers", "0"]
    p = subprocess.Popen(
        [sys.executable, "-c", "from xaibatch.cli import main; main()", *map(str, args + ["--log-json"] * log_json)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.stdout.close()  # before the first line: every write meets a closed pipe
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert err == ""
    assert manifest_rows(tmp_path / "out", "SELECT status FROM runs") == [("ok",)]
    assert manifest_value(tmp_path / "out", "SELECT COUNT(*) FROM maps") == 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "full, extra", [("stdout", []), ("stdout", ["--log-json"]), ("stderr", [])], ids=["summary", "log-json", "stderr"]
)
def test_a_log_on_a_full_disk_fails_no_run(tmp_path, tiny_ckpt, full, extra):
    """cron's ``>> /var/log/xaibatch.jsonl 2>> xaibatch.err`` with /var full (here /dev/full: every write ENOSPC).
    The first line that could not be written ended the run: with --log-json its start event, before any image
    (exit 3, "Error: No space left on device", row 'error' "no space left on device writing to OUT": OUT's disk
    blamed for the log's); a finished run's summary turned its exit 1 into 3. The lines are dropped instead and the
    run ends as it would have: every image computed, the unreadable one listed as failed, exit 1."""
    write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    args = ["run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", tmp_path / "out", "--workers", "0", *extra]
    with open("/dev/full", "w") as dev_full:
        streams = {"stdout": dev_full} if full == "stdout" else {"stderr": dev_full}
        other = "stderr" if full == "stdout" else "stdout"
        r = subprocess.run(
            [sys.executable, "-c", "from xaibatch.cli import main; main()", *map(str, args)],
            cwd=REPO,
            env=ENV,
            text=True,
            timeout=120,
            **streams,
            **{other: subprocess.PIPE},
        )
    said = r.stderr if full == "stdout" else r.stdout
    assert r.returncode == 1, said
    assert manifest_rows(tmp_path / "out", "SELECT status, reason FROM runs") == [("some-failed", None)]
    assert manifest_value(tmp_path / "out", "SELECT COUNT(*) FROM maps") == 3
    assert (tmp_path / "out" / "index.html").exists()


@pytest.mark.parametrize("closed", [(1,), (1, 2), (0, 1, 2)], ids=["stdout", "stdout-stderr", "all"])
def test_a_run_started_with_its_output_closed(tmp_path, tiny_ckpt, closed):
    """``xaibatch run ... >&-`` (or a daemon that closed its descriptors before starting it): "Error: internal
    error: AttributeError: 'NoneType' object has no attribute 'isatty'", exit 3, nothing computed; with stderr
    closed too the manifest took descriptor 1 and the run failed, "unable to open database" (exit 1). Closed
    descriptors now lead to /dev/null and the run finishes."""
    write_images(tmp_path / "in", 3)
    args = ["run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", tmp_path / "out", "--workers", "1"]
    r = subprocess.run(
        [sys.executable, "-c", "from xaibatch.cli import main; main()", *map(str, args + ["--log-json"])],
        cwd=REPO,
        env=ENV,
        timeout=120,
        preexec_fn=lambda: [os.close(fd) for fd in closed],
    )
    assert r.returncode == 0
    assert manifest_rows(tmp_path / "out", "SELECT status, reason FROM runs") == [("ok", None)]
    assert manifest_rows(tmp_path / "out", "PRAGMA integrity_check") == [("ok",)]
    assert manifest_value(tmp_path / "out", "SELECT COUNT(*) FROM maps") == 3


@pytest.mark.parametrize("out", ["absolute", "default"])
def test_a_run_from_a_deleted_working_folder_says_so(tmp_path, tiny_ckpt, out):
    """A cron job's folder replaced under it (or a shell left in a removed folder): importing torch ended the
    run with "Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so", the default --out with "Error: No such
    file or directory". One line says what happened, exit 2."""
    write_images(tmp_path / "in", 2)
    gone = tmp_path / "gone"
    gone.mkdir()
    args = ["run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--workers", "0"]
    args += ["--out", tmp_path / "out"] if out == "absolute" else []
    r = subprocess.run(
        [sys.executable, "-c", "from xaibatch.cli import main; main()", *map(str, args)],
        cwd=gone,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=gone.rmdir,  # after the child's chdir
    )
    assert (r.returncode, r.stderr) == (
        2,
        "Error: the working folder no longer exists (deleted since this shell entered it): cd to a folder that "
        "exists and run again\n",
    )
    for asked in (["--version"], ["run", "--help"]):  # these need no folder: they answer anywhere
        gone.mkdir()
        r = subprocess.run(
            [sys.executable, "-c", "from xaibatch.cli import main; main()", *asked],
            cwd=gone,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=gone.rmdir,
        )
        assert r.returncode == 0 and r.stdout and not r.stderr, (asked, r.stderr)


def _into_closed_pipe(*code_or_args: str, code: str = "from xaibatch.cli import main; main()"):
    """Run ``xaibatch ARGS`` (or a ``python -c`` script) with stdout a pipe whose reader has already left, as
    ``| head -1`` leaves it after its line; (exit code, stderr)."""
    import os

    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run(
            [sys.executable, "-c", code, *code_or_args], cwd=REPO, env=ENV, stdout=w, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(w)
    return p.returncode, p.stderr


@pytest.mark.parametrize(
    "args",
    [["methods"], ["--help"], ["--version"], ["run", "--help"], ["sanity", "--help"], ["bench", "--help"]],
    ids=" ".join,
)
def test_a_listing_into_a_closed_pipe_is_no_failure(args):
    """``xaibatch methods | head -1`` exited 1 without a word (click's handling of a closed stdout)."""
    assert _into_closed_pipe(*args) == (0, "")


def test_demo_data_into_a_closed_pipe_writes_its_files(tmp_path):
    rc, err = _into_closed_pipe("demo-data", str(tmp_path / "d"), "--train-per-class", "1", "--test-per-class", "1")
    assert (rc, err) == (0, "")
    assert len(list((tmp_path / "d").rglob("*.png"))) == 4  # train and test, two classes, one image each


# a command of the boundary that prints with click.echo (as bench does), and one whose own pipe breaks
_ECHOING = """
import sys, click
from xaibatch.cli.boundary import Group, reported
@click.group(cls=Group)
def g(): pass
@g.command()
@reported
def table():
    for i in range(10000): click.echo(f"row {i}")
    sys.stderr.write("finished\\n")
@g.command()
@reported
def other():
    raise BrokenPipeError(32, "Broken pipe")
g(prog_name="x")
"""


def test_a_closed_stdout_in_a_reported_command_exits_0_other_broken_pipes_exit_3():
    rc, err = _into_closed_pipe("table", code=_ECHOING)
    assert (rc, err) == (0, "")  # cut short: its last table was all it had left to do
    r = subprocess.run([sys.executable, "-c", _ECHOING, "other"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (3, "Error: Broken pipe\n")  # not stdout's reader: an error as before


@pytest.mark.parametrize("flag", ["-q", "--log-json"])
def test_more_workers_than_cpus_prints_no_torch_warning(tmp_path, tiny_ckpt, flag):
    """-q prints only Error: lines and --log-json only JSON: torch's paragraph about a DataLoader with more workers
    than CPUs (twice: when it is made and when it starts) is not printed; --workers is the user's choice. Run on one
    CPU, so that 2 workers are more than torch suggests on any host."""
    inp = tmp_path / "in"
    write_images(inp, 6)
    cpu = min(os.sched_getaffinity(0))
    r = subprocess.run(
        [sys.executable, "-m", "xaibatch", "run", inp, "--checkpoint", tiny_ckpt, "--out", tmp_path / "out",
         "--batch-size", "2", "--workers", "2", flag],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert flag == "--log-json" or r.stdout == ""


def test_log_json_says_lime_s_estimate_as_an_event_not_a_line(tmp_path, tiny_ckpt):
    """--log-json gives events instead of the text lines: LIME's up-front cost ("LIME: 2 image(s) x 10 samples =
    20 model forwards ...") was printed to stderr as well, which a scheduler's error log collected every run."""
    inp = tmp_path / "in"
    write_images(inp, 2)
    r = _run(
        inp, tmp_path / "out", tiny_ckpt, "-m", "lime", "--lime-samples", "10", "--lime-segments", "4", "--log-json"
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    (estimate,) = [e for e in _events(r.stdout) if e["event"] == "estimate"]
    assert estimate["method"] == "lime" and "model forwards" in estimate["text"]


def test_no_more_loader_workers_than_batches(tmp_path, tiny_ckpt, monkeypatch):
    """A worker loads whole batches: more than the run's batches only fork and idle (--workers 1000 over 2
    batches forked 1000 processes and made no progress in a minute)."""
    import torch

    from helpers import run_opts
    from xaibatch.pipeline import run
    from xaibatch.pipeline.compute import loader_workers

    assert [loader_workers(1000, 40, 32), loader_workers(3, 40, 4), loader_workers(0, 40, 4)] == [2, 3, 0]
    made: list[int] = []

    class Recorded(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recorded)
    inp = tmp_path / "in"
    write_images(inp, 3)
    r = run(run_opts(inp, tmp_path / "out", tiny_ckpt, workers=2), log=lambda s: None)  # one batch of 4
    assert r.computed == 3 and made == [1]
