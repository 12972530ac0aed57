"""Start-up: help never loads the heavy libraries (torch, timm, captum, lime, pytorch-grad-cam, matplotlib, ray)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "timm", "captum", "lime", "pytorch_grad_cam", "matplotlib", "skimage", "sklearn", "ray")


def _modules_after(code: str) -> list[str]:
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_nothing_heavy():
    loaded = _modules_after("""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        for args in (["--help"], *([c, "--help"] for c in cli.commands)):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 0 and "Usage:" in r.output, (args, r.output)
    """)
    assert loaded == []


def test_the_package_and_its_light_modules_import_nothing_heavy():
    loaded = _modules_after("""
        import xaibatch, xaibatch.cli, xaibatch.errors, xaibatch.layout, xaibatch.defaults, xaibatch.runlog, xaibatch.console
        import xaibatch.results
    """)
    assert loaded == []


def test_a_first_run_on_a_fresh_machine_builds_no_font_cache(tmp_path, tiny_ckpt):
    """#20: on the fresh H200 machine matplotlib's first figure scanned the system's fonts for 15 s (its font
    cache). The figures are SVG written by xaibatch: a first run, every figure drawn, never imports matplotlib
    (its colour maps are written out in colourmaps.py: the import cost 0.3 s on the first batch's path), and the
    empty matplotlib config folder of a fresh machine stays without a font list."""
    from helpers import write_images

    inp, out, mpl = tmp_path / "in", tmp_path / "out", tmp_path / "mplconfig"
    write_images(inp / "FAKE", 4, seed=1)
    write_images(inp / "REAL", 4, seed=2)
    mpl.mkdir()
    probe = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(tiny_ckpt)!r}), workers=0, handle_signals=False), log=lambda s: None)
        assert r.computed == 8, r
        print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"))
    """)
    r = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MPLCONFIGDIR": str(mpl)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    drawn = sorted(p.name.split("-")[0] for p in (out / "figures").iterdir())
    assert [d for d in drawn if d != "mean"] == ["confidence", "reliability", "roc"] and "mean" in drawn  # mean maps
    assert not [p.name for p in mpl.rglob("*") if "font" in p.name]


def test_unchanged_rerun_never_imports_torch(tmp_path, tiny_ckpt):
    """Cron over a folder with nothing new: a scan, a manifest read and the report, but no model load."""
    from helpers import write_images

    from xaibatch.pipeline import RunOptions, run

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 6)
    first = run(
        RunOptions(
            input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt, workers=0, handle_signals=False
        ),
        log=lambda s: None,
    )
    assert first.computed == 6
    probe = f"""
        import sys
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(tiny_ckpt)!r}), workers=0, handle_signals=False), log=lambda s: None)
        assert (r.computed, r.unchanged, r.layer) == (0, 6, {first.layer!r}), r
    """
    assert _modules_after(probe) == []  # no torch, timm, captum, lime; no matplotlib: no figure changed (issue 20)
    # Something to compute (a new image): the model loads as before, with the same hashes.
    write_images(inp, 7)
    again = run(
        RunOptions(
            input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt, workers=0, handle_signals=False
        ),
        log=lambda s: None,
    )
    assert (again.computed, again.unchanged) == (1, 6)
    # A changed option (another method) is a new request: it loads the model and computes only that method.
    third = run(
        RunOptions(
            input_dir=inp,
            out_dir=out,
            methods=["gradcam", "guided-gradcam"],
            checkpoint=tiny_ckpt,
            workers=0,
            handle_signals=False,
        ),
        log=lambda s: None,
    )
    assert (third.computed, third.unchanged) == (7, 0)


def test_a_rerun_over_unchanged_broken_files_and_the_report_command_import_nothing_heavy(tmp_path, tiny_ckpt):
    """A truncated image, refused once, is listed by the next run without loading torch to read it again; and
    `xaibatch report` renders a folder's report with no model at all."""
    from helpers import write_images

    from xaibatch.pipeline import RunOptions, run

    inp, out = tmp_path / "in", tmp_path / "out"
    good = write_images(inp, 3)
    (inp / "cut.png").write_bytes(good[0].read_bytes()[:150])
    opts = dict(methods=["gradcam"], checkpoint=tiny_ckpt, workers=0, handle_signals=False)
    first = run(RunOptions(input_dir=inp, out_dir=out, **opts), log=lambda s: None)
    assert [rel for rel, _ in first.failed] == ["cut.png"]
    (out / "index.html").unlink()
    probe = f"""
        from pathlib import Path
        from click.testing import CliRunner
        from xaibatch.cli import cli
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(tiny_ckpt)!r}), workers=0, handle_signals=False), log=lambda s: None)
        assert (r.computed, r.unchanged, [rel for rel, _ in r.failed]) == (0, 3, ["cut.png"]), r
        res = CliRunner().invoke(cli, ["report", {str(out)!r}])
        assert res.exit_code == 0 and Path({str(out / "index.html")!r}).is_file(), res.output
    """
    assert _modules_after(probe) == []


def test_the_clis_builtin_method_names_are_the_registrys():
    from xaibatch.cli import BUILTIN_METHODS
    from xaibatch.methods import METHODS

    assert set(BUILTIN_METHODS) <= set(METHODS)
    assert {m for m in METHODS if ":" not in m} == set(BUILTIN_METHODS)


def test_library_method_names_are_checked_without_torch(tmp_path):
    """-m cam:... and -m captum:... are checked from method_specs (no torch); a wrong name still gets its hint."""
    missing = str(tmp_path / "missing")
    names = ["-m", "cam:scorecam", "-m", "captum:IntegratedGradients", "-m", "captum:NoiseTunnel.Saliency"]
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        r = CliRunner().invoke(cli, ["run", {missing!r}, *{names!r}])
        assert r.exit_code == 2 and "does not exist" in r.output, r.output
    """)
    assert loaded == []


def test_the_library_method_names_are_the_registrys():
    from xaibatch.method_specs import NT_PREFIX, TUNNELABLE, is_library_method
    from xaibatch.methods import METHODS

    library = {m for m in METHODS if ":" in m}
    assert library and all(is_library_method(m) for m in library)
    assert all(is_library_method(NT_PREFIX + b) for b in TUNNELABLE)
    for wrong in ("cam:nope", "captum:Nope", "captum:NoiseTunnel.Occlusion", "cam:", "gradcam", "captum:NoiseTunnel."):
        assert not is_library_method(wrong)


def test_an_unchanged_rerun_with_a_library_method_imports_no_torch(tmp_path, tiny_ckpt):
    """-m cam:NAME is checked when the run loads its methods: parsing it needs no torch (it loaded the registry)."""
    from click.testing import CliRunner

    from conftest import write_images
    from xaibatch.cli import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 2)
    args = ["run", str(inp), "-m", "cam:eigencam", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0"]
    assert CliRunner().invoke(cli, [*args, "-q"]).exit_code == 0
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        r = CliRunner().invoke(cli, {[*args, "-q"]!r})
        assert r.exit_code == 0, r.output
    """)
    assert "torch" not in loaded and "pytorch_grad_cam" not in loaded
    r = CliRunner().invoke(cli, [*args, "-m", "cam:eigencm"])  # a typo: the same one line, exit 2, no image done
    assert r.exit_code == 2 and "unknown method 'cam:eigencm'; did you mean cam:eigencam" in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1


def test_method_options_are_checked_without_torch(tmp_path):
    """--method-option of a built-in or library method is checked from method_specs: a typo, a wrong type or an
    impossible value is one line, exit 2, with no torch imported (it imported the registry: seconds)."""
    missing = str(tmp_path / "missing")
    bad = [
        (["-m", "cam:scorecam", "--method-option", "cam:scorecam.batchsize=8"], "unknown option batchsize"),
        (["-m", "cam:scorecam", "--method-option", "cam:scorecam.batch_size=x"], "batch_size must be an integer"),
        (["-m", "captum:Occlusion", "--method-option", "captum:Occlusion.reduce=max"], "reduce must be one of"),
        (
            ["-m", "captum:GuidedGradCam", "--method-option", "captum:GuidedGradCam.interpolate_mode=linear"],
            "captum:GuidedGradCam: interpolate_mode must be one of nearest, nearest-exact, bilinear, bicubic, area",
        ),
        (
            ["-m", "captum:IntegratedGradients", "--method-option", "captum:IntegratedGradients.method=riemann"],
            "captum:IntegratedGradients: method must be one of gausslegendre, riemann_left",
        ),
        (
            ["-m", "captum:NoiseTunnel.Saliency", "--method-option", "captum:NoiseTunnel.Saliency.nt_type=smooth"],
            "captum:NoiseTunnel.Saliency: nt_type must be one of smoothgrad, smoothgrad_sq, vargrad, not 'smooth'",
        ),
        (
            ["-m", "captum:NoiseTunnel.Saliency", "--method-option", "captum:NoiseTunnel.Saliency.nt_samples=0"],
            "at least 1",
        ),
        (["-m", "lime", "--method-option", "lime.sample=9"], "lime: unknown option sample"),
        (["-m", "lime", "--method-option", "lime.samples=abc"], "lime: options samples (or auto), segments"),
        (["-m", "lime", "--method-option", "lime.hide=grey"], "lime: hide must be one of mean, zero, blur"),
        (["-m", "gradcam", "--method-option", "gradcam.x=1"], "gradcam: unknown option x (it takes: no options)"),
    ]
    good = ["-m", "lime", "-m", "cam:scorecam", "--method-option", "lime.samples=50"]
    good += ["--method-option", "cam:scorecam.batch_size=4", "--method-option", "cam:scorecam.aug_smooth=true"]
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        for args, needle in {bad!r}:
            r = CliRunner().invoke(cli, ["run", {missing!r}, *args])
            errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
            assert r.exit_code == 2 and len(errors) == 1 and needle in errors[0], (args, r.output)
        r = CliRunner().invoke(cli, ["run", {missing!r}, *{good!r}])
        assert r.exit_code == 2 and "does not exist" in r.output, r.output
    """)
    assert loaded == []


def test_unknown_method_names_get_their_close_matches_without_torch(tmp_path):
    """A misspelt -m, --method-option or bench --only is one line with the registry's hint, and no torch."""
    missing = str(tmp_path / "missing")
    cases = [
        (["run", missing, "-m", "gradcma"], "unknown method 'gradcma'; did you mean gradcam"),
        (["run", missing, "-m", "cam:gradcam+"], "did you mean cam:gradcam"),
        (["run", missing, "-m", "captum:noisetunnel.saliency"], "did you mean captum:Saliency"),
        (["run", missing, "--method-option", "lmie.samples=5"], "unknown method 'lmie'; did you mean lime"),
        (["bench", "--only", "gradcam,limee"], "unknown method 'limee'; did you mean lime"),
    ]
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        for args, needle in {cases!r}:
            r = CliRunner().invoke(cli, args)
            errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
            assert r.exit_code == 2 and len(errors) == 1 and needle in errors[0], (args, r.output)
    """)
    assert loaded == []


def test_the_clis_unknown_method_message_is_the_registrys():
    from xaibatch.errors import UsageError
    from xaibatch.method_specs import all_method_names, check_method_names
    from xaibatch.methods import FAMILIES, METHODS, method_class

    assert all_method_names() == list(METHODS) + [f.pattern for f in FAMILIES]
    for wrong in ("gradcma", "cam:gradcam+", "Lime", "captum:Saliencyy", "nope"):
        with pytest.raises(UsageError) as registry:
            method_class(wrong)
        with pytest.raises(UsageError) as specs:
            check_method_names([wrong])
        assert str(specs.value) == str(registry.value)


def test_the_builtin_methods_option_names_are_their_classes():
    from xaibatch.method_specs import BUILTIN_OPTIONS, library_defaults
    from xaibatch.methods import METHODS

    for name, options in BUILTIN_OPTIONS.items():
        cls = METHODS[name]
        assert set(options) == set(cls.defaults) | ({"seed"} if cls.takes_seed else set()), name
    for name, cls in METHODS.items():
        if ":" in name:
            assert library_defaults(name) == cls.defaults, name
    # and every native method is there: the CLI checks -m against BUILTIN_OPTIONS (no torch), so a method
    # registered but left out of it would answer "unknown method" to `xaibatch run -m <name>`
    natives = {n for n, cls in METHODS.items() if ":" not in n and cls.__module__.startswith("xaibatch.methods.")}
    assert natives == set(BUILTIN_OPTIONS)


@pytest.mark.parametrize("classes", [("REAL", "FAKE"), ("FAKE", "OTHER", "REAL")])
def test_an_unchanged_rerun_over_folders_numbered_in_the_models_order_imports_no_torch(tmp_path, classes):
    """The folders FAKE/REAL (sorted) and a model whose classes are REAL,FAKE, or FAKE,OTHER,REAL: the run numbers
    the labels in the model's order. The request it recorded held those classes, never the scan's, so every
    unchanged re-run loaded torch and the model (2.5 s here, and a large model's load); it plans from the scan,
    numbered as that run numbered it: a touched file (same bytes, new mtime) keeps its label."""
    import csv
    import os

    from helpers import make_checkpoint
    from xaibatch.pipeline import RunOptions, run
    from xaibatch.tools.synth import write_classes

    inp, out = write_classes(tmp_path / "in", 3), tmp_path / "out"
    ckpt = make_checkpoint(tmp_path / "m.pt", classes=list(classes))
    opts = RunOptions(input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=ckpt, workers=0, handle_signals=False)
    assert run(opts, log=lambda s: None).computed == 6

    def labels() -> dict[str, str]:
        with open(out / "predictions.csv", newline="") as f:
            return {r["path"]: r["label"] for r in csv.DictReader(f)}

    assert labels() == {f"{c}/img_{i:03d}.png": c for c in ("FAKE", "REAL") for i in range(3)}
    before = labels()
    touched = inp / "REAL" / "img_001.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    probe = f"""
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(ckpt)!r}), workers=0, handle_signals=False), log=lambda s: None)
        assert (r.computed, r.unchanged) == (0, 6), r
    """
    assert _modules_after(probe) == []
    assert labels() == before


def test_a_rerun_after_images_moved_between_class_folders_imports_no_torch(tmp_path, tiny_ckpt):
    """A labelling tool moved an image to the other class folder and renamed another: their predictions and maps
    go along (plan.Move), nothing to compute, so no model loads either; predictions.csv lists the new paths and
    labels."""
    import csv

    from xaibatch.pipeline import RunOptions, run
    from xaibatch.tools.synth import write_classes

    inp, out = write_classes(tmp_path / "in", 3), tmp_path / "out"
    opts = RunOptions(
        input_dir=inp, out_dir=out, methods=["gradcam"], checkpoint=tiny_ckpt, workers=0, handle_signals=False
    )
    assert run(opts, log=lambda s: None).computed == 6
    (inp / "REAL" / "img_001.png").rename(inp / "FAKE" / "relabelled.png")
    (inp / "FAKE" / "img_002.png").rename(inp / "FAKE" / "renamed.png")
    probe = f"""
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(inp)!r}), out_dir=Path({str(out)!r}), methods=["gradcam"],
                           checkpoint=Path({str(tiny_ckpt)!r}), workers=0, handle_signals=False), log=lambda s: None)
        assert (r.computed, r.unchanged, r.counts.added, r.counts.removed) == (0, 6, 0, 0), r
    """
    assert _modules_after(probe) == []
    with open(out / "predictions.csv", newline="") as f:
        labels = {r["path"]: r["label"] for r in csv.DictReader(f)}
    assert labels["FAKE/relabelled.png"] == "FAKE" and labels["FAKE/renamed.png"] == "FAKE"
    assert "REAL/img_001.png" not in labels and "FAKE/img_002.png" not in labels


def test_an_unchanged_rerun_from_the_cli_imports_no_torch(tmp_path, tiny_ckpt):
    from click.testing import CliRunner

    from helpers import write_images
    from xaibatch.cli import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, 4)
    args = ["run", str(inp), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    loaded = _modules_after(f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        r = CliRunner().invoke(cli, {args!r})
        assert r.exit_code == 0, r.output
    """)
    assert "torch" not in loaded and "timm" not in loaded


# --- what a run imports, and what it checks before ------------------------------------------------

NOT_FOR_GRADCAM = (
    "torch._dynamo",
    "torch.distributed.fsdp",
    "captum",
    "lime",
    "pytorch_grad_cam",
    "sklearn",
    "skimage",
    "scipy",
)


def _loaded_after(code: str, names=NOT_FOR_GRADCAM) -> list[str]:
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_gradcam_run_imports_neither_the_compiler_nor_other_methods_libraries(tmp_path, tiny_ckpt):
    """torchvision and timm import torch._dynamo (and FSDP) at import time: about 1 s here, several on a fresh
    GPU host. A native Grad-CAM run needs neither it nor LIME's, captum's or pytorch-grad-cam's libraries."""
    from helpers import write_images

    write_images(tmp_path / "in", 4)
    loaded = _loaded_after(f"""
        from pathlib import Path
        from xaibatch.pipeline import RunOptions, run
        r = run(RunOptions(input_dir=Path({str(tmp_path / "in")!r}), out_dir=Path({str(tmp_path / "out")!r}),
                           methods=["gradcam", "guided-gradcam"], checkpoint=Path({str(tiny_ckpt)!r}), workers=0,
                           handle_signals=False), log=lambda s: None)
        assert r.computed == 4, r
    """)
    assert loaded == []


def test_timm_without_the_compiler_still_compiles_and_runs_torchvision_ops():
    """imports.py defers torch._dynamo; whatever uses it later gets the real thing."""
    loaded = _loaded_after(
        """
        import sys
        import torch
        from xaibatch.imports import import_timm
        timm = import_timm()
        assert "torch._dynamo" not in sys.modules and "torch._dynamo.utils" not in sys.modules
        assert torch.compiler.disable.__module__ == "torch.compiler"  # put back after the import

        try:
            from timm.layers import disable_compiler  # what timm's naflexvit decorates with: deferred
        except ImportError:  # timm < 1.0.19 (pyproject allows older): the decorator it applies, torch's own
            disable_compiler = torch.compiler.disable
        @disable_compiler
        def double(x):
            return 2 * x
        assert double(3) == 6 and "torch._dynamo" in sys.modules  # the real decorator, on first call
        from torchvision.ops import roi_align  # bound to the stand-in's is_compile_supported
        out = roi_align(torch.ones(1, 1, 8, 8), torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]]), 2)
        assert out.shape == (1, 1, 2, 2) and torch.allclose(out, torch.ones(1, 1, 2, 2))
        import torch._dynamo.utils
        assert type(torch._dynamo.utils).__name__ == "module"
        assert torch.compile(lambda a: a * 3, backend="eager")(torch.ones(2)).tolist() == [3.0, 3.0]
    """,
        names=("torch._dynamo",),
    )
    assert loaded == ["torch._dynamo"]


def test_the_deferred_compiler_disable_works_with_a_torch_whose_disable_takes_no_reason():
    # torch 2.6 (pyproject's floor): torch.compiler.disable(fn=None, recursive=True), no reason=. The stand-in passed
    # reason=None to it, so a function a newer timm decorates at import (naflexvit) raised TypeError on its first call.
    from xaibatch.imports import _lazy_disable

    seen = []

    def old_disable(fn=None, recursive=True):
        seen.append(recursive)
        return fn

    lazy = _lazy_disable(old_disable)
    assert lazy(lambda x: 2 * x)(3) == 6
    assert lazy(recursive=False)(lambda x: x + 1)(1) == 2
    assert lazy(abs)(-4) == 4  # not a Python function: the real decorator at once
    assert seen == [True, False, True]
    reasons = []
    lazy = _lazy_disable(lambda fn, recursive=True, *, reason=None: reasons.append(reason) or fn)
    assert lazy(reason="why")(lambda x: x)(5) == 5 and reasons == ["why"]  # a newer torch still gets it


def test_timm_without_the_hub_client_still_downloads_through_it():
    """imports.py defers huggingface_hub's client while timm is imported; timm's hub functions import it on their
    first call, the error classes timm catches become the real ones, and ``import huggingface_hub`` afterwards is
    the real package (a notebook that imported xaibatch first still downloads pretrained weights)."""
    loaded = _loaded_after(
        """
        import os, sys
        os.environ["HF_HUB_OFFLINE"] = "1"  # no network: the real client says it is offline, in its own words
        import torch
        from xaibatch.imports import defer_hub, import_timm
        defer_hub()  # as `xaibatch run` does
        timm = import_timm()
        assert "huggingface_hub.hf_api" not in sys.modules and "httpx" not in sys.modules
        assert "huggingface_hub.file_download" not in sys.modules
        import huggingface_hub, huggingface_hub.utils
        assert type(huggingface_hub) is type(os) and huggingface_hub.__file__.endswith("__init__.py")
        from timm.models import _hub
        assert _hub._has_hf_hub
        try:
            _hub.hf_hub_download("timm/resnet18.a1_in1k", "model.safetensors")
        except Exception as e:
            assert type(e).__module__.startswith("huggingface_hub"), type(e)
        else:
            raise AssertionError("downloaded offline")
        from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError
        assert _hub.EntryNotFoundError is EntryNotFoundError
        if hasattr(_hub, "HfApi"):  # timm 1.0.22 and later
            assert _hub.RepositoryNotFoundError is RepositoryNotFoundError
            assert isinstance(_hub.HfApi(), huggingface_hub.HfApi)
        else:  # older timm (pyproject allows 1.0.16) imports hf_hub_url, create_repo, ... instead
            assert _hub.hf_hub_url("timm/resnet18.a1_in1k", "model.safetensors").startswith("https://")
        assert timm.create_model("resnet18", pretrained=False, num_classes=2).num_classes == 2
    """,
        names=("huggingface_hub.file_download",),
    )
    assert loaded == ["huggingface_hub.file_download"]  # the real client downloaded


def test_the_cli_run_imports_no_hub_client_and_a_library_user_gets_the_real_one(tmp_path, tiny_ckpt):
    """`xaibatch run` (its process is xaibatch's alone) imports timm without huggingface_hub's client; a library
    user's process (threads of their own may import from huggingface_hub meanwhile) imports timm as timm does."""
    from helpers import write_images

    write_images(tmp_path / "in", 4)
    loaded = _loaded_after(
        f"""
        from click.testing import CliRunner
        from xaibatch.cli import cli
        r = CliRunner().invoke(cli, ["run", {str(tmp_path / "in")!r}, "--checkpoint", {str(tiny_ckpt)!r}, "--out",
                                     {str(tmp_path / "out")!r}, "--workers", "0", "-q"])
        assert r.exit_code == 0, r.output
    """,
        names=("huggingface_hub.hf_api", "httpx", "timm"),
    )
    assert loaded == ["timm"]
    loaded = _loaded_after(
        """
        import torch
        from xaibatch.imports import import_timm
        import_timm()
        import huggingface_hub
        assert huggingface_hub.__spec__ is not None  # the package itself, never a stand-in
    """,
        names=("huggingface_hub.hf_api", "timm"),
    )
    assert loaded == ["huggingface_hub.hf_api", "timm"]


def _cheap_cases(tmp_path, tiny_ckpt):
    from helpers import write_images

    images, empty = tmp_path / "in", tmp_path / "empty"
    write_images(images, 2)
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    return {
        "missing folder": ({"input_dir": tmp_path / "nope"}, "does not exist"),
        "empty folder": ({"input_dir": empty}, "holds no images"),
        "input is a file": ({"input_dir": images / sorted(p.name for p in images.iterdir())[0]}, "not a folder"),
        "missing checkpoint": ({"checkpoint": tmp_path / "none.pt"}, "--checkpoint"),
        "checkpoint is a folder": ({"checkpoint": images}, "a folder, not a checkpoint"),
        "--arch without --checkpoint": ({"checkpoint": None, "arch": "resnet18"}, "needs --checkpoint"),
        "--model and --arch": ({"model": "timm:resnet18", "arch": "resnet18"}, "not both"),
        "missing --model file": ({"checkpoint": None, "model": str(tmp_path / "net.py") + ":build"}, "no such file"),
        "bad --device": ({"device": "gpu0"}, "is not one of"),
        "no method": ({"methods": []}, "at least one --method"),
        "bad --batch-size": ({"batch_size": 0}, "--batch-size"),
        "NaN --threshold": ({"threshold": float("nan")}, "--threshold nan must be between 0 and 1"),
        "--model of no known form": ({"checkpoint": None, "model": "resnet18"}, "expected FILE.py:FACTORY"),
        "--out under a file": ({"out_dir": images / "img_000.png" / "out"}, "Not a directory"),
        "--out is a device": ({"out_dir": Path(os.devnull)}, "exists and is not a folder"),
    }, images


CHEAP = (
    "missing folder",
    "empty folder",
    "input is a file",
    "missing checkpoint",
    "checkpoint is a folder",
    "--arch without --checkpoint",
    "--model and --arch",
    "missing --model file",
    "bad --device",
    "no method",
    "bad --batch-size",
    "NaN --threshold",
    "--model of no known form",
    "--out under a file",
    "--out is a device",
)


@pytest.mark.parametrize("case", CHEAP)
def test_cheap_checks_come_before_the_model_and_its_imports(case, tmp_path, tiny_ckpt, monkeypatch):
    """A typo answers at once (issue 21, item 7: a missing folder took 9-16 s, an empty one 23 s on a GPU host)."""
    import dataclasses
    import importlib

    from xaibatch.errors import XaibatchError
    from xaibatch.pipeline import RunOptions

    def heavy(*args, **kwargs):
        raise AssertionError("the model (and torch) were loaded before the check")

    run_module = importlib.import_module("xaibatch.pipeline.run")  # the package's `run` is the function
    monkeypatch.setattr(run_module, "load_setup", heavy)
    monkeypatch.setattr(run_module, "Warmup", lambda *a, **k: dataclasses.make_dataclass("W", [])(), raising=False)
    cases, images = _cheap_cases(tmp_path, tiny_ckpt)
    change, message = cases[case]
    opts = RunOptions(
        input_dir=images,
        out_dir=tmp_path / "out",
        methods=["gradcam"],
        checkpoint=tiny_ckpt,
        workers=0,
        handle_signals=False,
    )
    with pytest.raises(XaibatchError, match=re.escape(message)):
        run_module.run(dataclasses.replace(opts, **change), log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_log_json_says_where_the_time_went(tmp_path, tiny_ckpt):
    from helpers import write_images

    from xaibatch.pipeline import RunOptions, run

    write_images(tmp_path / "in", 3)
    opts = RunOptions(
        input_dir=tmp_path / "in",
        out_dir=tmp_path / "out",
        methods=["gradcam"],
        checkpoint=tiny_ckpt,
        workers=0,
        handle_signals=False,
    )
    first = run(opts, log=lambda s: None).timings
    assert {"scan", "import", "model", "prepare", "plan", "compute", "first_batch", "report"} <= set(first)
    assert first["scan"] + first["import"] + first["model"] <= first["prepare"] + 0.05
    assert first["prepare"] <= first["first_batch"] <= first["prepare"] + first["plan"] + first["compute"] + 0.05
    again = run(opts, log=lambda s: None).timings  # nothing to compute: no model, no imports
    assert "scan" in again and not {"import", "model", "first_batch"} & set(again)


_EXIT_PROBE = """
import atexit, sys
{pre}
class Teardown:
    def __del__(self):
        sys.stdout.write("teardown\\n")
keep = Teardown()  # freed only by the interpreter's teardown
atexit.register(lambda: sys.stdout.write("atexit\\n"))
sys.argv = ["xaibatch", *{args!r}]
from xaibatch.cli import main
main()
"""


def _exit_probe(pre: str, args: list[str]) -> subprocess.CompletedProcess:
    code = _EXIT_PROBE.format(pre=pre, args=args)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_command_with_torch_loaded_exits_without_the_interpreter_teardown():
    """cli.main ends the process once the output is flushed and the atexit handlers ran (0.7 s saved after a
    20,000-image run); the exit code and every line of output are kept, also for an error."""
    r = _exit_probe("import torch", ["methods"])
    assert r.returncode == 0, r.stderr
    assert "gradcam" in r.stdout and r.stdout.rstrip().endswith("atexit"), r.stdout  # all of it, then atexit's
    assert "teardown" not in r.stdout
    r = _exit_probe("import torch", ["run", "/nonexistent/xaibatch-in", "--out", "/nonexistent/xaibatch-out"])
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("Error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "teardown" not in r.stdout and "atexit" in r.stdout


def test_without_torch_the_usual_exit():
    r = _exit_probe("", ["--version"])
    assert r.returncode == 0, r.stderr
    assert "xaibatch" in r.stdout and "teardown" in r.stdout and "atexit" in r.stdout


def test_under_a_profiler_the_usual_exit(tmp_path):
    """`python -m cProfile -o FILE -m xaibatch ...` writes FILE after the command returns: the quick exit would
    skip it, so a profiler (or a tracer: a debugger, coverage) keeps the usual exit."""
    prof = tmp_path / "run.prof"
    r = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "xaibatch", "methods"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "gradcam" in r.stdout and prof.stat().st_size > 0


def test_a_profiler_through_sys_monitoring_keeps_the_usual_exit(monkeypatch):
    """Python 3.12's cProfile watches through sys.monitoring, and sys.getprofile() says None: the quick exit
    skipped its file (the GPU machine's profile of a run was never written). Simulated here for any Python."""
    from types import SimpleNamespace

    from xaibatch.cli import _observed

    tools: dict[int, str] = {}
    fake = SimpleNamespace(DEBUGGER_ID=0, COVERAGE_ID=1, PROFILER_ID=2, get_tool=tools.get)
    monkeypatch.setattr(sys, "monitoring", fake, raising=False)
    monkeypatch.setattr(sys, "getprofile", lambda: None)
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    assert not _observed()
    for tool, name in ((2, "cProfile"), (1, "coverage"), (0, "pdb")):
        tools.clear()
        tools[tool] = name
        assert _observed(), name


@pytest.mark.parametrize(
    "spec, available, count, current, want",
    [
        ("cpu", True, 2, 0, None),
        ("auto", False, 0, 0, None),
        ("auto", True, 2, 1, "cuda:1"),  # the process's current device, as torch.device("cuda") would be
        ("cuda", True, 1, 0, "cuda:0"),
        ("CUDA:1", True, 2, 0, "cuda:1"),
        ("cuda:2", True, 2, 0, None),  # no such GPU: the run says so itself, later
        ("cuda:x", True, 2, 0, None),
        ("cuda:0", False, 0, 0, None),
        (None, True, 1, 0, None),
    ],
)
def test_the_device_a_run_starts_beside_its_imports(monkeypatch, spec, available, count, current, want):
    """A GPU run creates its CUDA context during the imports (warmup.py); only for the device it will use, never
    for a CPU run on a GPU host, nor for a spec the run refuses."""
    import torch

    from xaibatch.pipeline import warmup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    assert warmup.warm_device(spec) == want
    assert warmup.may_use_cuda(spec) == (spec is not None and spec.lower() != "cpu")


def test_the_device_thread_alone_asks_torch_about_cuda(monkeypatch):
    """Asking for the current device initialises CUDA (torch.cuda._lazy_init): never in the import thread, and in
    the device's own thread only once something else initialised it; else the run's "cuda" is device 0."""
    import torch

    from xaibatch.pipeline import warmup

    asked: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append("is_available") or True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: asked.append("current_device") or 1)
    assert warmup.warm_device("auto") == "cuda:0" and "current_device" not in asked
    asked.clear()
    started: list[str] = []
    monkeypatch.setattr(warmup, "_start_device", started.append)
    thread = warmup.start_device("auto")  # from the words alone: torch is asked nothing here
    thread.join()
    assert asked == [] and started == ["auto"]


def test_the_device_warm_up_reaches_a_convolution_and_a_matrix_product():
    """cuDNN's and cuBLAS's handles are created on first use (each costs the first forward on a fresh GPU host): the
    warm-up runs one operator that goes to each, on the device it is given (here the CPU: the same operators)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from xaibatch.pipeline import warmup

    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Record():
        warmup.touch_libraries("cpu")
    assert "convolution" in seen
    assert seen & {"mm", "addmm", "matmul", "linear"}


def test_the_device_thread_is_joined_before_the_run_goes_on(monkeypatch):
    """The device starts in a thread of its own, and Warmup.wait() returns only once it is done: the forks that
    follow (DataLoader workers, writer processes, the report's) see no other thread."""
    import threading
    import time

    from xaibatch.pipeline import warmup

    seen: list[str] = []

    def slow_start(name: str) -> None:
        time.sleep(0.3)
        seen.append(name)

    monkeypatch.setattr(warmup, "_start_device", slow_start)
    w = warmup.Warmup(device="cuda")
    w.wait()
    assert seen == ["cuda"]
    assert not any(t.name == "xaibatch-device" for t in threading.enumerate())
    assert warmup.start_device("cpu") is None
