"""`--model timm:NAME` or `torchvision:NAME` without --checkpoint runs random weights: the run says so."""

from __future__ import annotations

import csv

from helpers import make_checkpoint, run_opts, write_images
from xaibatch.pipeline import run


def test_a_run_of_random_weights_warns_once(tmp_path):
    write_images(tmp_path / "in" / "FAKE", 1, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 1, size=32, seed=2)
    lines: list[str] = []
    opts = run_opts(tmp_path / "in", tmp_path / "out", None, model="timm:test_resnet", image_size=32, device="cpu")
    run(opts, log=lines.append)
    warned = [s for s in lines if "random weights" in s]
    assert warned == [
        "xaibatch: warning: --model timm:test_resnet has random weights (no --checkpoint): its maps explain "
        "an untrained model; give the trained weights with --checkpoint"
    ]
    ckpt = make_checkpoint(tmp_path / "m.pt", size=32)
    lines.clear()
    run(run_opts(tmp_path / "in", tmp_path / "out2", ckpt, device="cpu"), log=lines.append)
    assert not [s for s in lines if "random weights" in s]


def predictions(out) -> list[dict[str, str]]:
    """predictions.csv's rows without the map paths (a method added since has one column more)."""
    with open(out / "predictions.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("npy_")} for row in csv.DictReader(f)]


def test_random_weights_are_the_same_model_on_every_run_and_hashed(tmp_path):
    """Random weights were drawn afresh on each run but recorded with an empty digest: a re-run that added a method
    computed it on another model and kept the first model's maps and predictions beside it. They are now drawn
    from one seed, without touching the caller's random state, and their digest is recorded."""
    import torch

    from xaibatch.model.loading import load_model
    from xaibatch.model.user import load_user_model, weights_sha256

    state = torch.random.get_rng_state()
    for spec in ("timm:test_resnet", "torchvision:resnet18"):
        a, b = (load_user_model(spec, None, 32, 2) for _ in range(2))
        assert a.checkpoint_sha256 == b.checkpoint_sha256 == weights_sha256(b.module) != ""
    a, b = (load_model(None, "test_resnet", 32, 2) for _ in range(2))
    assert a.checkpoint_sha256 == b.checkpoint_sha256 == weights_sha256(a.module)
    assert torch.equal(torch.random.get_rng_state(), state)

    write_images(tmp_path / "in" / "FAKE", 2, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 2, size=32, seed=2)
    opts = run_opts(tmp_path / "in", tmp_path / "out", None, model="timm:test_resnet", image_size=32, device="cpu")
    run(opts, log=lambda s: None)
    before = predictions(tmp_path / "out")
    again = run(
        run_opts(
            tmp_path / "in",
            tmp_path / "out",
            None,
            model="timm:test_resnet",
            image_size=32,
            device="cpu",
            methods=["gradcam", "captum:Saliency"],
        ),
        log=lambda s: None,
    )
    assert again.computed == 4  # the new method's maps, on the same model: no image predicted again
    assert predictions(tmp_path / "out") == before  # the new method adds only its npy_ column


def test_training_draws_its_first_weights_from_its_own_seed(tmp_path, monkeypatch):
    """Random weights are drawn from one fixed seed for runs, but `xaibatch train --seed N` starts from N's weights:
    two seeds, two starting models (an ensemble of seeds would start from one), one seed, the same start."""
    import torch

    from xaibatch.tools import synth
    from xaibatch.tools import train as training

    data = synth.write_classes(tmp_path / "data", 4, seed=1)
    starts: list[dict] = []
    create = training.create

    def recorded(*args, **kw):
        model = create(*args, **kw)
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(training, "create", recorded)
    for seed in (0, 0, 1):
        training.train(data, "test_resnet", tmp_path / f"{len(starts)}.pt", image_size=32, epochs=1, batch_size=8,
                       seed=seed, workers=0, log=lambda s: None)  # fmt: skip
    a, b, c = starts
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_random_weights_warning_is_a_notice_event_with_log_json(tmp_path):
    """The warning was a stderr line only: with --log-json (stdout to a scheduler's log, stderr elsewhere) nothing
    said the maps explain an untrained model. It is a `random-weights` notice now (its only form with --log-json, so
    a scheduler's error log does not grow each run), on a re-run that loads no model, and with -q."""
    import json

    from helpers import invoke

    write_images(tmp_path / "in" / "FAKE", 1, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 1, size=32, seed=2)
    line = (
        "xaibatch: warning: --model timm:test_resnet has random weights (no --checkpoint): its maps explain an "
        "untrained model; give the trained weights with --checkpoint"
    )
    args = ["run", tmp_path / "in", "--out", tmp_path / "out", "--model", "timm:test_resnet", "--image-size", "32"]
    for extra in ((), (), ("-q",)):  # the second run reuses the first one's setup
        r = invoke(*args, "--workers", "0", "--log-json", *extra)
        assert r.exit_code == 0, r.output
        assert r.stderr.splitlines() == [], r.stderr  # --log-json: the event alone (the line without it: above)
        events = [json.loads(s) for s in r.stdout.splitlines()]
        (notice,) = [e for e in events if e["event"] == "notice"]
        assert notice["kind"] == "random-weights" and notice["model"] == "timm:test_resnet"
        assert f"xaibatch: {notice['text']}" == line
