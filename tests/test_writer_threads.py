"""The writer's parallel path (used on GPUs): same files as one thread, errors still stop the batch's commit."""

from __future__ import annotations

import threading

import pytest

from conftest import write_images
from xaibatch.pipeline import compute, writer
from xaibatch.manifest import Manifest
from xaibatch.pipeline import RunOptions, run
from xaibatch.pipeline.writer import PARALLEL_WRITE_MIN_PIXELS


def _opts(inp, out, ckpt):
    return RunOptions(input_dir=inp, out_dir=out, methods=["gradcam", "lime"], checkpoint=ckpt, batch_size=4,
                      workers=0, handle_signals=False, method_options={"lime": {"samples": 20}})


def test_parallel_writer_writes_the_same_files(tmp_path, tiny_ckpt, monkeypatch):
    assert 128 * 128 >= PARALLEL_WRITE_MIN_PIXELS  # so these images take the parallel path
    inp = tmp_path / "in"
    write_images(inp, 10, size=128, seed=5)
    names: set[str] = set()
    item = writer.write_item

    def recording(*a, **k):
        names.add(threading.current_thread().name)
        return item(*a, **k)

    monkeypatch.setattr(writer, "write_item", recording)
    files = {}
    for threads in (1, 3):
        monkeypatch.setattr(compute, "writer_threads", lambda device, workers, t=threads: t)
        out = tmp_path / f"out{threads}"
        run(_opts(inp, out, tiny_ckpt), log=lambda s: None)
        files[threads] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.suffix in (".png", ".npy")}
    assert any(n.startswith("xaibatch-encode") for n in names) and "xaibatch-writer" in names
    assert len(files[1]) == 10 + 10 * 2 * 2  # image, and npy + png per method (128 px: their own thumbnails)
    assert files[1] == files[3]


def test_parallel_writer_error_commits_nothing_of_its_batch(tmp_path, tiny_ckpt, monkeypatch):
    inp = tmp_path / "in"
    write_images(inp, 8, size=128, seed=6)
    monkeypatch.setattr(compute, "writer_threads", lambda device, workers: 3)
    write = writer.OutputDir.write

    def failing(self, rel, data):
        if threading.current_thread().name.startswith("xaibatch-encode") and rel.startswith("maps/lime/"):
            raise OSError(28, "No space left on device")
        return write(self, rel, data)

    monkeypatch.setattr(writer.OutputDir, "write", failing)
    with pytest.raises(OSError, match="No space left"):
        run(_opts(inp, tmp_path / "out", tiny_ckpt), log=lambda s: None)
    m = Manifest(tmp_path / "out" / "xaibatch.sqlite")
    try:
        assert m.images() == {} and m.maps() == {}
        assert m.runs()[-1]["status"] == "error"
    finally:
        m.close()
