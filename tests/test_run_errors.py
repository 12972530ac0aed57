"""Failures during a run give one clear line and the right exit code: Ctrl-C while starting, NaN weights, bad
templates, a damaged manifest; huge maps are capped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REPO, invoke, manifest_rows, manifest_value, write_images

# Sends this process SIGINT when torch starts loading: a Ctrl-C at the worst moment of the slow start
# (--help, --version, method names and their options never load it; a run that computes does).
_CTRL_C_AT_TORCH_IMPORT = textwrap.dedent("""
    import os, signal, sys
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                os.kill(os.getpid(), signal.SIGINT)
            return None
    sys.meta_path.insert(0, Finder())
    sys.argv = ["xaibatch", "run", *sys.argv[1:], "-m", "cam:gradcam", "--method-option", "cam:gradcam.aug_smooth=true"]
""")


@pytest.mark.parametrize(
    "entry",
    ["from xaibatch.cli import main; main()", "import runpy; runpy.run_module('xaibatch', run_name='__main__')"],
    ids=["script", "python-m"],
)
def test_ctrl_c_while_importing_is_exit_5_with_one_line(entry, tmp_path, tiny_ckpt):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    write_images(tmp_path / "in", 2)
    args = [tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", tmp_path / "out"]
    p = subprocess.run(
        [sys.executable, "-c", _CTRL_C_AT_TORCH_IMPORT + entry, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert p.stderr.strip() == "Error: interrupted by SIGINT while loading the model; nothing was computed"
    assert not (tmp_path / "out").exists()


def _files_under(out: Path, *tops: str) -> list[str]:
    return sorted(str(p.relative_to(out)) for t in tops for p in (out / t).rglob("*") if p.is_file())


def test_nan_weights_are_refused_before_anything_is_written(tmp_path, tiny_ckpt):
    import torch
    from click.testing import CliRunner

    from xaibatch.cli import cli

    ck = torch.load(tiny_ckpt, weights_only=True)
    sd = ck["state_dict"] if "state_dict" in ck else ck
    key = next(k for k, v in sd.items() if torch.is_floating_point(v) and v.dim() > 1)
    sd[key] = torch.full_like(sd[key], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(ck, bad)
    write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["run", str(tmp_path / "in"), "--checkpoint", str(bad), "--out", str(out), "--workers", "0"]
    )
    assert r.exit_code == 2, r.output
    assert "nan.pt" in r.output and "NaN" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_a_model_that_overflows_to_nan_stops_with_one_line_and_nothing_half_written(tmp_path, tiny_ckpt):
    import torch
    from click.testing import CliRunner

    from xaibatch.cli import cli

    ck = torch.load(tiny_ckpt, weights_only=True)
    sd = ck["state_dict"] if "state_dict" in ck else ck
    key = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2][-1]  # the classifier
    sd[key] = torch.full_like(sd[key], 3e38)  # finite weights, infinite logits
    bad = tmp_path / "overflow.pt"
    torch.save(ck, bad)
    write_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["run", str(tmp_path / "in"), "--checkpoint", str(bad), "--out", str(out), "--workers", "0"]
    )
    assert r.exit_code == 2, r.output
    assert "overflow.pt" in r.output and "NaN or infinite" in r.output
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(0,)]
    assert manifest_rows(out, "SELECT status FROM runs") == [("error",)]
    assert _files_under(out, "images", "thumbs", "maps") == []


def test_a_template_with_a_syntax_error_fails_before_any_compute(tmp_path, tiny_ckpt):
    write_images(tmp_path / "in", 2)
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "detail.html").write_text("{% extends 'base.html' %}\n{% block body %}{{ r.rel }\n{% endblock %}\n")
    out = tmp_path / "out"
    r = invoke("run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, "--template-dir", tpl)
    assert r.exit_code == 2, r.output
    assert "detail.html, line 2" in r.output and "internal error" not in r.output
    assert not (out / "maps").exists() and not (out / "images").exists()


def test_a_template_failing_at_render_time_is_one_line_and_the_run_row_says_error(tmp_path, tiny_ckpt):
    write_images(tmp_path / "in", 2)
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "history.html").write_text("{{ no_such_name.field }}\n")
    out = tmp_path / "out"
    r = invoke("run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, "--template-dir", tpl)
    assert r.exit_code == 3, r.output
    assert "cannot render the report" in r.output and "internal error" not in r.output
    assert manifest_rows(out, "SELECT status FROM runs") == [("error",)]


def test_a_damaged_manifest_page_is_named_not_an_internal_error(tmp_path, tiny_ckpt):
    write_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = ("run", tmp_path / "in", "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0)
    assert invoke(*args).exit_code == 0
    path = out / "xaibatch.sqlite"
    page = manifest_value(out, "SELECT rootpage FROM sqlite_master WHERE name = 'images'")
    size = manifest_value(out, "PRAGMA page_size")
    data = bytearray(path.read_bytes())
    data[(page - 1) * size : page * size] = b"\x5a" * size  # the images table's root page
    path.write_bytes(bytes(data))
    r = invoke(*args)
    assert r.exit_code == 3, r.output
    assert "is damaged (database disk image is malformed)" in r.output and "internal error" not in r.output


def test_max_map_side_caps_the_saved_npy(tmp_path, tiny_ckpt):
    import numpy as np
    from PIL import Image

    root = tmp_path / "in"
    root.mkdir()
    Image.new("RGB", (3000, 1200), (90, 20, 200)).save(root / "wide.png")  # 3.6 megapixels
    Image.new("RGB", (4000, 10), (90, 20, 200)).save(root / "strip.png")  # long but small: kept
    for extra, limit in (([], 1024), (["--max-map-side", "300"], 300), (["--max-map-side", "0"], None)):
        out = tmp_path / f"out{limit}"
        r = invoke("run", root, "--checkpoint", tiny_ckpt, "--out", out, "--workers", 0, *extra)
        assert r.exit_code == 0, r.output
        h, w = np.load(out / "maps/gradcam/wide.npy").shape
        if limit is None:
            assert (h, w) == (1200, 3000)
        else:
            assert h * w <= limit * limit * 1.01 and h * w >= limit * limit * 0.98, (h, w)
            assert abs(w / h - 2.5) < 0.02
        assert np.load(out / "maps/gradcam/strip.npy").shape == (10, 4000)


OOM_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Greedy(nn.Module):
        # The second batch of two images needs more memory than the GPU has (the start-up probes use one image).
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
            self.batches = 0

        def forward(self, x):
            self.batches += x.shape[0] > 1
            if self.batches > 1:
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
                    "which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.10 GiB memory in "
                    "use. Of the allocated memory 76.2 GiB is allocated by PyTorch. If reserved but unallocated "
                    "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
                    "fragmentation.  See documentation for Memory Management"
                )
            return self.head(self.features(x))

    def build():
        return Greedy()
    """
)


def test_a_gpu_out_of_memory_is_one_line_that_says_what_to_do(tmp_path):
    # Only a GPU runs out of device memory: torch's OutOfMemoryError (a paragraph on allocator settings) came out
    # as "internal error: OutOfMemoryError: ..." although nothing is wrong with xaibatch. A model raising it
    # stands in for the GPU.
    (tmp_path / "greedy.py").write_text(OOM_MODEL)
    write_images(tmp_path / "in", 4)
    out = tmp_path / "out"
    r = invoke(
        "run", tmp_path / "in", "--model", f"{tmp_path / 'greedy.py'}:build", "--classes", "a,b",
        "--out", out, "--workers", 0, "--batch-size", 2,
    )  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert (  # the batch was split down to one image first (test_out_of_memory.py): --batch-size cannot help
        "the GPU ran out of memory (2.00 GiB asked for, 1.06 GiB free of 79.19 GiB) with one image at a time: try a "
        "smaller --image-size, smaller inner batches (LIME's model batches: --method-option lime.batch_size=N); or "
        "--device cpu; what a run finished is kept"
    ) in " ".join(r.output.split())
    assert manifest_rows(out, "SELECT count(*) FROM images") == [(2,)]  # the first batch is kept


DETACHED_LAYER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.head = nn.Linear(3, 2)

        def forward(self, x):  # the output never sees the features' gradient
            return self.head(x.mean((2, 3))) + 0.0 * self.features(x).detach().mean()

    def build():
        return Detached()
    """
)


@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam"])
def test_a_target_layer_the_output_does_not_depend_on_is_one_line(tmp_path, method):
    # The gradient of the class score with respect to a detached (or unused) layer does not exist: autograd's
    # "One of the differentiated Tensors appears to not have been used in the graph" came out as an internal error.
    (tmp_path / "detached.py").write_text(DETACHED_LAYER_MODEL)
    write_images(tmp_path / "in", 2)
    r = invoke(
        "run", tmp_path / "in", "--model", f"{tmp_path / 'detached.py'}:build", "--classes", "a,b", "-m", method,
        "--out", tmp_path / "out", "--workers", 0,
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert "the model's output does not depend on the target layer features.2" in " ".join(r.output.split())
    assert "--target-layer" in r.output


def test_the_host_running_out_of_memory_is_one_line_that_says_what_to_do(tmp_path):
    # torch's CPU allocator failing ("[enforce fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator: can't allocate
    # memory: you tried to allocate 642252800 bytes") came out as "internal error: RuntimeError: ..." (an audit's
    # IntegratedGradients run at 224 px under a memory limit).
    host = OOM_MODEL.replace(
        "raise torch.cuda.OutOfMemoryError(",
        "raise RuntimeError(\"[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
        'you tried to allocate 642252800 bytes. Error code 12 (Cannot allocate memory)"); raise ValueError(',
    )
    (tmp_path / "greedy.py").write_text(host)
    write_images(tmp_path / "in", 4)
    r = invoke(
        "run", tmp_path / "in", "--model", f"{tmp_path / 'greedy.py'}:build", "--classes", "a,b",
        "--out", tmp_path / "out", "--workers", 0, "--batch-size", 2,
    )  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert "out of memory (0.60 GiB asked for) with one image at a time: try a smaller --image-size" in " ".join(
        r.output.split()
    )
