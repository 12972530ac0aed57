"""Bad options of every command: one line, exit 2, no traceback, and (where no model is needed to tell) before
torch loads. Found by an audit of each command's answers to typos, wrong types, and misplaced folders."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import invoke
from test_cli_errors import assert_one_line
from xaibatch import errors
from xaibatch.tools import synth

HEAVY = ("torch", "timm", "gradio", "ray")


def _heavy_after(code: str) -> list[str]:
    probe = textwrap.dedent(code) + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _one_line_errors_before_torch(cases: list[tuple[list[str], str]], never: str = "Traceback") -> list[str]:
    """Run each (args, needle) through the CLI in one fresh interpreter: each must end in one "Error" line holding
    ``needle``, exit 2, without ``never`` in the output. Returns the heavy modules that got imported (none, we hope)."""
    return _heavy_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        for args, needle in {cases!r}:
            r = CliRunner().invoke(cli, args)
            errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
            assert r.exit_code == 2 and len(errors) == 1 and needle in errors[0], (args, r.output)
            assert {never!r} not in r.output
    """)


def test_a_device_typo_or_a_missing_checkpoint_answers_before_torch(tmp_path):
    """`--device cudda` used to import torch (and Gradio for serve) before saying so: seconds for a typo; serve
    also checked --checkpoint only after Gradio's import. Every command now answers from the options alone."""
    folder, missing = str(tmp_path), str(tmp_path / "missing.pt")
    cases = [
        (["run", folder, "--device", "cudda"], "--device 'cudda' is not one of"),
        (["train", folder, "--out", missing, "--device", "cudda"], "--device 'cudda' is not one of"),
        (["sanity", folder, "--device", "cudda"], "--device 'cudda' is not one of"),
        (["bench", "--device", "cudda"], "--device 'cudda' is not one of"),
        (["serve", "--device", "cudda"], "--device 'cudda' is not one of"),
        (["serve", "--checkpoint", missing], f"--checkpoint {missing}: no such file"),
        (["serve", "--arch", "resnet18"], "--arch resnet18 needs --checkpoint"),
    ]
    assert _one_line_errors_before_torch(cases) == []


def test_methods_may_be_given_comma_separated_as_one_value(tmp_path):
    """`-m gradcam,lime` was refused as one unknown method 'gradcam,lime': it is -m gradcam -m lime, its names
    checked one by one (and LIME's options with them) before torch."""
    from xaibatch.cli.options import known_methods

    assert known_methods(("gradcam,lime", " cam:scorecam ", "captum:Saliency,")) == [
        "gradcam",
        "lime",
        "cam:scorecam",
        "captum:Saliency",
    ]
    synth.write_images(tmp_path / "in", 1, 32, 0, "png")
    folder = str(tmp_path / "in")
    cases = [
        (["run", folder, "-m", "gradcam,limee"], "unknown method 'limee'"),
        (  # lime came from the list: its options are checked with it
            ["run", folder, "-m", "gradcam,lime", "--lime-samples", "auto", "--lime-samples-max", "10"],
            "--lime-samples-max 10 is below the first round of --lime-samples auto",
        ),
        (["serve", "-m", "cam:scorecam,gradcamm"], "unknown method 'gradcamm'"),
    ]
    assert _one_line_errors_before_torch(cases) == []


@pytest.mark.parametrize("value", ["0", "2000,-1", "a,b", ","])
def test_bench_memory_images_must_be_counts(value):
    """`--memory-images 0` used to start a run over no images and end in a child's 16-line traceback, exit 3."""
    assert_one_line(invoke("bench", "--memory", "--memory-images", value, catch_exceptions=True), errors.EXIT_USAGE,
                    "--memory-images", "at least 1")  # fmt: skip


def test_bench_memory_refuses_the_timing_tables_options():
    """`bench --memory --budget 60 --arch resnet50` measured timm's test_resnet with no budget, without a word;
    `--memory-images 5` without --memory timed the tables. Both are one line, exit 2."""
    r = invoke("bench", "--memory", "--budget", "60", "--arch", "resnet50", catch_exceptions=True)
    assert_one_line(r, errors.EXIT_USAGE, "--arch, --budget: not with --memory")
    r = invoke("bench", "--memory-images", "5", catch_exceptions=True)
    assert_one_line(r, errors.EXIT_USAGE, "--memory-images: only with --memory")


def test_an_empty_target_layer_is_refused(tmp_path):
    """`--target-layer "$LAYER"` with the variable unset named the model itself: "layer '' does not output a (B,
    C, H, W) feature map", after the model had loaded. Now one line at parse, exit 2."""
    r = invoke("run", tmp_path, "--target-layer", "", catch_exceptions=True)
    assert_one_line(r, errors.EXIT_USAGE, "--target-layer is empty; give a value or leave the option out")


def test_bench_refuses_an_unknown_arch_before_generating_its_images(tmp_path):
    """`bench --arch resnt18` used to generate its 1024 images, then fail with 'internal error: RuntimeError:
    Unknown model', exit 3. Now it is one line with timm's close names, exit 2, and nothing generated."""
    keep = tmp_path / "keep"
    r = invoke("bench", "--arch", "resnt18", "--keep", keep, "-q", catch_exceptions=True)
    assert_one_line(r, errors.EXIT_USAGE, "unknown --arch 'resnt18'", "did you mean resnet18")
    assert not keep.exists() or not any(keep.iterdir())


def test_model_timm_name_typo_names_the_option_given(tmp_path):
    """`--model timm:resnt18` used to answer "unknown --arch 'resnt18'", an option the user never gave."""
    r = invoke("run", synth.write_classes(tmp_path / "in", 1, seed=1), "--model", "timm:resnt18", catch_exceptions=True)
    line = assert_one_line(r, errors.EXIT_USAGE, "unknown timm model 'resnt18'", "did you mean resnet18")
    assert "--arch" not in line


def _manifest(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "xaibatch.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")


def test_an_output_folder_given_as_input_dir_is_refused(tmp_path):
    """`xaibatch run reports/demo` (the report, not its images) used to answer "folder classes ['images', 'maps'] do
    not match the model's classes", or with --unlabeled explain the report's own thumbnails and maps."""
    report = tmp_path / "report"
    _manifest(report)
    synth.write_classes(report / "images", 1, seed=1)
    for extra in ([], ["--unlabeled"]):
        r = invoke("run", report, "--out", tmp_path / "o", *extra, catch_exceptions=True)
        assert_one_line(
            r, errors.EXIT_USAGE, "is an xaibatch output folder", "give the folder its report was made from"
        )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace"])
def test_out_inside_input_dir_holding_files_is_refused_even_with_replace(tmp_path, replace):
    """`--out data/FAKE --replace` used to turn a class folder into an output folder: every later run of data/
    then skipped it, and its images silently left every report. Without --replace the refusal suggested it."""
    data = synth.write_classes(tmp_path / "data", 2, seed=1)
    before = sorted(p.name for p in (data / "FAKE").iterdir())
    r = invoke("run", data, "--out", data / "FAKE", *(["--replace"] if replace else []), catch_exceptions=True)
    line = assert_one_line(r, errors.EXIT_USAGE, "is a folder inside INPUT_DIR", "choose a new or empty folder")
    assert "--replace" not in line
    assert sorted(p.name for p in (data / "FAKE").iterdir()) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_train_refuses_an_out_it_cannot_create_before_training(tmp_path):
    """os.access says yes to root for /proc (and for a read-only file system): `train --out /proc/m.pt` trained
    for its whole time, then failed with 'internal error: RuntimeError: ... open file failed', exit 3. A file made
    and removed in --out's folder tells before the training."""
    data = synth.write_classes(tmp_path / "data", 2, seed=1)
    r = invoke("train", data, "--arch", "test_resnet", "--out", "/proc/xaibatch-m.pt", catch_exceptions=True)
    assert_one_line(r, errors.EXIT_USAGE, "cannot write --out /proc/xaibatch-m.pt")
    assert "epoch" not in r.output


def test_workers_past_four_per_cpu_are_refused_before_torch(tmp_path):
    """--workers 1000 forked 1000 DataLoader processes (no progress in a minute, most of another to stop): a number
    past 4 per CPU is a slip, refused at parsing in every command that takes --workers."""
    from xaibatch.defaults import cpu_count

    many = str(4 * cpu_count() + 1)
    folder = str(tmp_path)
    cases = [
        ["run", folder, "--workers", many],
        ["train", folder, "--out", str(tmp_path / "m.pt"), "--workers", many],
        ["bench", "--workers", many],
    ]
    loaded = _heavy_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        for args in {cases!r}:
            r = CliRunner().invoke(cli, args)
            errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
            assert r.exit_code == 2 and len(errors) == 1, (args, r.output)
            assert "--workers {many} is more than 4 per CPU" in errors[0] and "at most" in errors[0], r.output
    """)
    assert loaded == []
    assert invoke("run", tmp_path / "missing", "--workers", str(4 * cpu_count())).exit_code == 2  # the folder's
    assert "does not exist" in invoke("run", tmp_path / "missing", "--workers", str(4 * cpu_count())).output


def test_lime_options_are_checked_together_at_parsing_in_the_users_words(tmp_path):
    """--lime-samples auto --lime-samples-max 10 passed each option's check, then failed seconds later (torch
    loaded) naming samples_min, which nobody gave; --method-option lime.tolerance=-1 likewise. Both now answer at
    parsing, one line, exit 2, no torch, naming the options given and what works."""
    synth.write_images(tmp_path / "in", 1, 32, 0, "png")
    folder = str(tmp_path / "in")
    auto = ["run", folder, "-m", "lime", "--lime-samples", "auto"]
    cases = [
        (
            [*auto, "--lime-samples-max", "10"],
            "Error: --lime-samples-max 10 is below the first round of --lime-samples auto (200 samples); give "
            "--lime-samples-max 200 or more (or --method-option lime.samples_min=10 or less)",
        ),
        (
            [*auto, "--method-option", "lime.samples_min=5000"],
            "Error: --lime-samples-max 2000 (the default) is below the first round of --lime-samples auto (5000 "
            "samples); give --lime-samples-max 5000 or more (or --method-option lime.samples_min=2000 or less)",
        ),
        (
            [
                "run",
                folder,
                "-m",
                "lime",
                "--method-option",
                "lime.samples=auto",
                "--method-option",
                "lime.samples_max=100",
            ],
            "Error: --method-option lime.samples_max=100 is below the first round of --method-option "
            "lime.samples=auto (200 samples)",
        ),  # fmt: skip
        ([*auto, "--method-option", "lime.tolerance=-1"], "lime: tolerance must be a positive number, not -1.0"),
        (["run", folder, "-m", "lime", "--method-option", "lime.tolerance=-1"], "lime: tolerance must be a positive"),
        (["run", folder, "-m", "lime", "--method-option", "lime.samples_round=0"], "samples_round must be at least 1"),
    ]
    assert _one_line_errors_before_torch(cases, never="samples_min <=") == []
    r = invoke(*auto[:1], tmp_path / "missing", *auto[2:], "--lime-samples-max", "200", catch_exceptions=True)
    assert r.exit_code == 2 and "does not exist" in r.output, r.output  # a working pair passes parsing


def test_options_that_would_do_nothing_or_say_one_thing_twice_are_refused_before_torch(tmp_path):
    """--lime-samples without -m lime, --faithfulness-steps without --faithfulness, and a LIME setting given both as
    a flag and as --method-option lime.* (which won, silently) were taken without a word: the run did something
    else than the command line reads. Each is one line, exit 2, at parsing, as a Ray option without --engine ray."""
    synth.write_images(tmp_path / "in", 1, 32, 0, "png")
    folder = str(tmp_path / "in")
    cases = [
        (["run", folder, "--lime-samples", "50"], "Error: --lime-samples: only with -m lime"),
        (["run", folder, "--lime-segments", "20", "--lime-hide", "zero"], "Error: --lime-segments, --lime-hide: only"),
        (
            ["run", folder, "-m", "lime", "--lime-samples", "50", "--method-option", "lime.samples=30"],
            "Error: --lime-samples 50 and --method-option lime.samples=30 both set LIME's samples: give one of them",
        ),
        (["run", folder, "--faithfulness-steps", "5"], "Error: --faithfulness-steps: only with --faithfulness"),
        (["run", folder, "--faithfulness-baseline", "zero"], "Error: --faithfulness-baseline: only with"),
    ]
    assert _one_line_errors_before_torch(cases) == []
    for ok in (["-m", "lime", "--lime-samples", "50"], ["--faithfulness", "--faithfulness-steps", "5"]):
        r = invoke("run", tmp_path / "missing", *ok, catch_exceptions=True)
        assert r.exit_code == 2 and "does not exist" in r.output, r.output  # together they pass parsing
