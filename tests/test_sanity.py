"""The cascading randomization test: Grad-CAM loses its maps, a map that ignores the model is flagged."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaibatch.methods import Batch, Explanation, Method
from xaibatch.pipeline import RunOptions, run
from xaibatch.pipeline.prepare import prepare
from xaibatch.evaluation.sanity_file import SanityCurve, SanityResult
from xaibatch.evaluation.sanity import (
    FAIL_RANK,
    _maps,
    SampleBatch,
    cascade,
    reinit,
    spearman,
    ssim,
    stages,
)


class EdgeMagnitude(Method):
    """Deliberately broken: the image's Sobel edge magnitude, whatever the model says (not registered)."""

    name = "edges"
    title = "Edges"

    def explain(self, batch: Batch) -> Explanation:
        gray = batch.x.mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=gray.device)[None, None]
        gx, gy = F.conv2d(gray, kx, padding=1), F.conv2d(gray, kx.transpose(2, 3), padding=1)
        return Explanation(torch.sqrt(gx**2 + gy**2)[:, 0])


def test_metrics_basics():
    a = np.random.default_rng(0).random((8, 8))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, np.zeros_like(a)) == 0.0
    assert ssim(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(1.0)  # absolute values, as the paper's figures


def test_spearman_reads_an_older_scipy(monkeypatch):
    """An older SciPy (scikit-image's floor is scipy>=1.8) returns a SpearmanrResult(correlation, pvalue), with no
    ``statistic``: ``xaibatch sanity`` stopped at its first map pair with "internal error: AttributeError". Found by
    pyright; the coefficient is the result's first item in every SciPy."""
    import collections

    import scipy.stats

    real = scipy.stats.spearmanr
    old = collections.namedtuple("SpearmanrResult", "correlation pvalue")
    monkeypatch.setattr(scipy.stats, "spearmanr", lambda x, y: old(*real(x, y)))
    a, b = np.random.default_rng(0).random((2, 8, 8))
    assert spearman(a, b) == pytest.approx(float(real(a.ravel(), b.ravel())[0]))


def test_reinit_changes_only_the_stage():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    before = [p.detach().clone() for p in net.parameters()]
    assert stages(net) == ["2", "1", "0"]
    reinit(net[2], 0)
    after = list(net.parameters())
    assert torch.equal(before[0], after[0]) and not torch.equal(before[4], after[4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (and XAIBATCH_TEST_GPU=1)")
def test_reinit_gives_the_gpu_the_cpus_weights():
    # torch's CUDA generator gives other numbers than the CPU's for the same seed: a stage on the GPU was
    # randomized to other weights, so sanity's scores depended on the device. (The CPU cannot show it: a meta
    # module has no values to move to the CPU and back.)
    torch.manual_seed(1)
    stage = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    gpu = copy.deepcopy(stage).cuda()
    reinit(stage, 0)
    reinit(gpu, 0)
    assert all(p.is_cuda for p in gpu.parameters())
    for a, b in zip(stage.state_dict().values(), gpu.state_dict().values()):
        assert torch.equal(a, b.cpu())


def test_reinit_is_seeded_and_leaves_the_stage_where_it_was():
    nets = [torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)) for _ in range(2)]
    for net in nets:
        reinit(net, 5)
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert all(p.device.type == "cpu" for p in nets[0].parameters())


def _maps_by_model(original: np.ndarray, after: np.ndarray):
    """A maps_of for cascade(): ``original`` from the unchanged model, ``after`` from any randomized copy."""
    calls = []

    def maps_of(net):
        calls.append(net)
        return {"m": original if len(calls) == 1 else after}

    return maps_of


def test_a_map_that_turns_into_its_negative_still_shows_the_image_and_fails():
    """Eigen-CAM's principal component has no fixed sign: after randomization half the maps came back as their
    own negative (rank correlation about -0.9), the other half as themselves (+0.9); the signed mean was near 0
    and the method "passed". Each image's correlation now counts by its absolute value."""
    rng = np.random.default_rng(0)
    original = rng.random((8, 16, 16)).astype(np.float32)
    flipped = np.stack([1 - m if i % 2 else m for i, m in enumerate(original)])  # min-max scaled, sign flipped
    assert np.mean([spearman(a, b) for a, b in zip(original, flipped)]) == pytest.approx(0.0, abs=1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    (curve,) = cascade(net, _maps_by_model(original, flipped))
    assert curve.rank[-1] == pytest.approx(1.0)
    assert not curve.passed() and "FAILS" in curve.verdict()


def test_slow_original_maps_announce_how_long_the_steps_will_take(monkeypatch):
    """A ViT with seven methods took 30 min and said nothing for its first 10 (the original maps and the first
    step): original maps slower than ESTIMATE_AFTER_S announce the steps to go and their time, before them."""
    import xaibatch.evaluation.sanity as sanity_mod

    def clock(*ticks):  # time.monotonic() giving these, then the last one again
        left = list(ticks)
        return lambda: left.pop(0) if len(left) > 1 else left[0]

    monkeypatch.setattr(sanity_mod.time, "monotonic", clock(100.0, 700.0))  # the original maps take 10 minutes
    rng = np.random.default_rng(0)
    original = rng.random((2, 8, 8)).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    lines = []
    cascade(net, _maps_by_model(original, original[::-1].copy()), log=lines.append)
    assert lines[0] == "sanity: the original maps took 10 min; 2 randomization steps to go, each as long: about 20 min"
    assert [ln.split(":")[1] for ln in lines[1:]] == [" randomized 1", " randomized +0"]
    monkeypatch.setattr(sanity_mod.time, "monotonic", clock(0.0, 2.0))  # a quick check: nothing more
    lines.clear()
    cascade(net, _maps_by_model(original, original[::-1].copy()), log=lines.append)
    assert len(lines) == 2 and lines[0].startswith("sanity: randomized")


def test_empty_maps_cannot_pass_and_are_left_out_of_the_mean():
    """spearman() is 0 for a constant map, so a method whose maps were empty before any randomization
    "passed" (rank correlation 0.00), even under --strict. Images with a constant original map are left out;
    a method with nothing but such maps cannot tell, and does not pass."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    zeros = np.zeros((4, 8, 8), np.float32)
    (curve,) = cascade(net, _maps_by_model(zeros, zeros))
    assert curve.scored == 0 and curve.rank == [None, None, None]
    assert not curve.passed() and "cannot tell" in curve.verdict()

    rng = np.random.default_rng(1)
    some = rng.random((4, 8, 8)).astype(np.float32)
    some[:2] = 0  # two empty maps, two that stay the same
    (curve,) = cascade(net, _maps_by_model(some, some.copy()))
    assert curve.scored == 2 and curve.rank[-1] == pytest.approx(1.0)  # not (0 + 0 + 1 + 1) / 4
    assert "2 of the 4 images had constant maps and are left out" in curve.verdict()


def test_the_verdict_states_its_spread_and_threshold_and_says_when_another_sample_could_flip_it():
    """The verdict gave a bare mean ("FAILS: maps keep 0.57"; the bundled model's InputXGradient on 32 demo images)
    and the page never said where the line is. It now gives two standard errors of the last step's mean over the
    images, the threshold, and says so when the threshold lies within them."""
    rng = np.random.default_rng(0)
    original = rng.random((8, 16, 16)).astype(np.float32)
    noise = rng.random((8, 16, 16)).astype(np.float32)
    weights = np.array([0.9, 0.2] * 4, np.float32)[:, None, None]  # half the images keep their map, half lose it
    after = weights * original + (1 - weights) * noise
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    (curve,) = cascade(net, _maps_by_model(original, after))
    per_image = [abs(spearman(a, b)) for a, b in zip(original, after, strict=True)]
    se = 2 * np.std(per_image, ddof=1) / np.sqrt(8)
    assert curve.rank[-1] == pytest.approx(np.mean(per_image))
    assert abs(curve.rank[-1] - FAIL_RANK) < se  # the threshold within the spread
    text = curve.verdict()
    assert f"(± {se:.2f}, two standard errors over 8 images; a method fails above {FAIL_RANK:.2f}" in text, text
    assert "the threshold is within them: check more images (--images)" in text, text

    (clear,) = cascade(net, _maps_by_model(original, original.copy()))
    assert clear.verdict().endswith(
        f"(± 0.00, two standard errors over 8 images; a method fails above {FAIL_RANK:.2f}): "
        "they show the image, not the model"
    ), clear.verdict()


def test_weight_normed_layers_are_randomized_and_the_model_rebuilt_when_it_cannot_be_copied():
    """A model with torch.nn.utils.weight_norm cannot be deep-copied (its derived weight is no graph leaf):
    sanity crashed with an internal error. It now builds the model again; and reinit, which reset the derived
    weight the next forward recomputes from weight_g and weight_v, randomizes those (spectral_norm's
    weight_orig too)."""
    from torch.nn.utils import spectral_norm, weight_norm

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            weight_norm(torch.nn.Linear(6, 6, bias=False)), spectral_norm(torch.nn.Linear(6, 2, bias=False))
        ).eval()  # spectral_norm's power iteration moves in training mode

    x = torch.randn(5, 6)
    for i in range(2):
        layer = build()[i]
        before = layer(x[:, : layer.in_features]).detach().clone()
        reinit(layer, 3)
        assert not torch.allclose(layer(x[:, : layer.in_features]), before), f"layer {i} was not randomized"

    model = build()
    model(x)  # weight_norm's weight is now a non-leaf tensor
    with pytest.raises(RuntimeError):
        copy.deepcopy(model)
    seen = []

    def maps_of(net):
        seen.append(net)
        return {"m": np.random.default_rng(len(seen)).random((2, 8, 8)).astype(np.float32)}

    curves = cascade(model, maps_of, fresh=build)
    assert curves[0].steps == ["original", "1", "+0"]
    assert seen[1] is not model and torch.equal(model(x), build()(x))  # the original never randomized


def test_a_vits_own_parameters_are_randomized_last():
    """A ViT's position embeddings and class token are parameters of the model itself, in no child: the cascade
    ended at "+patch_embed" with them as trained, and called that the whole network randomized."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=32).eval()
    seen = []

    def maps_of(net):
        seen.append({n: p.detach().clone() for n, p in net.named_parameters()})
        return {"m": np.random.default_rng(len(seen)).random((2, 8, 8)).astype(np.float32)}

    (curve,) = cascade(vit, maps_of)
    assert curve.steps == ["original", "head", "+norm", "+blocks", "+patch_embed", "+cls_token,pos_embed"]
    changed = {n for n, p in seen[-1].items() if not torch.equal(p, seen[0][n])}
    assert {"pos_embed", "cls_token", "patch_embed.proj.weight", "head.weight"} <= changed
    assert torch.equal(vit.pos_embed, seen[0]["pos_embed"])  # the run's model itself is left alone


@pytest.fixture(scope="module")
def demo_sample(demo_dir, tmp_path_factory):
    """24 demo test images (12 per class) and the bundled model, prepared as a run would."""
    src = demo_dir / "test"
    small = tmp_path_factory.mktemp("sanity_in")
    for cls in ("FAKE", "REAL"):
        (small / cls).mkdir()
        for p in sorted((src / cls).glob("*.png"))[:12]:
            shutil.copy(p, small / cls / p.name)
    return small


@pytest.mark.slow
def test_gradcam_passes_and_edges_fail_on_the_demo_model(demo_sample, tmp_path):
    opts = RunOptions(input_dir=demo_sample, out_dir=tmp_path / "o", methods=["gradcam", "guided-gradcam"])
    p = prepare(opts)
    found, model, ctx, methods = p.found, p.model, p.ctx, p.methods
    methods = methods + [EdgeMagnitude(ctx)]
    from xaibatch.dataset import ImageDataset, collate

    b = collate([ImageDataset(found.images, model.input_size)[i] for i in range(len(found.images))])
    x = b.x
    with torch.no_grad():
        targets = ctx.model(ctx.preprocess.normalize(x)).argmax(1)
    rels = [e.rel for e in found.images]
    sample = SampleBatch(rels, x, None, targets)
    curves = {c.method: c for c in cascade(ctx.model, lambda net: _maps(net, ctx, methods, sample, 16))}
    for c in curves.values():
        print(c.verdict(), [round(v, 2) for v in c.rank], [round(v, 2) for v in c.ssim])
    assert curves["gradcam"].rank[0] == 1.0 and curves["gradcam"].rank[-1] < 0.3
    assert curves["gradcam"].passed()
    assert not curves["edges"].passed() and curves["edges"].rank[-1] > FAIL_RANK
    assert "FAILS" in curves["edges"].verdict()
    # The model copy was randomized, never the model itself.
    assert torch.equal(ctx.model(ctx.preprocess.normalize(x[:2])).argmax(1), targets[:2])


@pytest.mark.slow
def test_sanity_command_writes_json_and_report(demo_sample, tmp_path):
    from click.testing import CliRunner

    from xaibatch.cli import cli

    out = tmp_path / "out"
    run(RunOptions(input_dir=demo_sample, out_dir=out, methods=["gradcam"], workers=0), log=lambda s: None)
    res = CliRunner().invoke(cli, ["sanity", str(out), "--images", "8"])
    assert res.exit_code == 0, res.output
    assert "gradcam: passes" in res.output
    data = json.loads((out / "sanity.json").read_text())
    assert data["images"] == 8 and data["curves"][0]["method"] == "gradcam"
    html = (out / "index.html").read_text()
    assert "Sanity check" in html and "gradcam: passes" in html
    assert list((out / "figures").glob("sanity-*.svg"))


def test_sanity_without_a_run_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from xaibatch.cli import cli

    res = CliRunner().invoke(cli, ["sanity", str(tmp_path)])
    assert res.exit_code == 2 and "no xaibatch manifest" in res.output


@pytest.mark.parametrize(
    ("strict", "passed", "code"),
    [(False, [True, False], 0), (True, [True, True], 0), (True, [True, False], 1)],
)
def test_strict_exits_1_when_a_method_fails(monkeypatch, tmp_path, strict, passed, code):
    """--strict turns a failed verdict into exit 1 for a CI job; without it the verdicts are only printed."""
    from click.testing import CliRunner

    import xaibatch.evaluation.sanity as sanity_mod
    from xaibatch.cli import cli

    curves = [_curve(f"m{i}: {'passes' if p else 'FAILS'}", p) for i, p in enumerate(passed)]
    monkeypatch.setattr(sanity_mod, "run_sanity", lambda out, **kw: SanityResult(curves, created=1.0))
    (tmp_path / "xaibatch.sqlite").touch()  # the CLI takes the folder's lock (a run's folder) before the check
    res = CliRunner().invoke(cli, ["sanity", str(tmp_path), *(["--strict"] if strict else [])])
    assert res.exit_code == code, res.output
    assert "m1: " in res.output


def _curve(verdict: str, passed: bool) -> SanityCurve:
    return SanityCurve(verdict.split(":")[0], ["original", "fc"], [1.0, 0.1], [1.0, 0.2], passed, verdict, checked=1.0)


def test_quiet_prints_only_error_lines_as_run_does(monkeypatch, tmp_path):
    """-q, as `run -q`: no progress lines, no verdicts (they are in sanity.json and the report); --strict's exit
    code still says a method failed, and an error is still its one line."""
    from click.testing import CliRunner

    import xaibatch.evaluation.sanity as sanity_mod
    from xaibatch.cli import cli

    def fake_check(out, log, **kw):
        log("sanity: randomized layer4: m0 0.1")
        return SanityResult([_curve("m0: FAILS", False)], created=1.0)

    monkeypatch.setattr(sanity_mod, "run_sanity", fake_check)
    (tmp_path / "xaibatch.sqlite").touch()
    loud = CliRunner().invoke(cli, ["sanity", str(tmp_path), "--strict"])
    assert loud.exit_code == 1 and "randomized layer4" in loud.output and "m0: FAILS" in loud.output
    res = CliRunner().invoke(cli, ["sanity", str(tmp_path), "--strict", "-q"])
    assert (res.exit_code, res.output) == (1, "")
    res = CliRunner().invoke(cli, ["sanity", str(tmp_path / "nowhere"), "--quiet"])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and len(res.output.splitlines()) == 1


def test_sanity_json_as_older_xaibatch_wrote_it_reads_and_is_written_back_byte_for_byte(tmp_path):
    """sanity.json is a SanityResult now; the files earlier versions wrote read as before (version 1: no scored, no
    hash; a hand-written one: no version or created) and come back out as the same bytes."""
    import json

    v2 = {"version": 2, "created": 2.5, "seconds": 1.25, "images": 4, "seed": 0, "checkpoint_sha256": "abc",
          "input_dir": "/in", "curves": [
              {"method": "gradcam", "steps": ["original", "fc"], "rank": [1.0, 0.1], "ssim": [1.0, None], "scored": 4,
               "passed": True, "verdict": "gradcam: passes", "checked": 2.5, "hash": "h1"},
              {"method": "lime", "steps": ["original", "fc"], "rank": [None, None], "ssim": [None, None], "scored": 0,
               "passed": False, "verdict": "lime: cannot tell", "checked": 1.0, "newer": [1]}]}  # fmt: skip
    v1 = {**v2, "version": 1, "curves": [{k: v for k, v in c.items() if k not in ("scored", "hash", "newer")}
                                          for c in v2["curves"]]}  # fmt: skip
    bare = {"images": 4, "curves": [{k: v for k, v in v1["curves"][0].items() if k != "checked"}]}
    for old in (v2, v1, bare):
        text = json.dumps(old, indent=1)
        result = SanityResult.from_json(text)
        assert [c.verdict for c in result.curves] == [c["verdict"] for c in old["curves"]]
        if old is not bare:  # the writer names every top-level key, as it always did
            assert result.to_json() == text
        assert [json.dumps(c.to_dict()) for c in result.curves] == [json.dumps(c) for c in old["curves"]]
    assert SanityResult.from_json(json.dumps(v1)).curves[0].scored is None
    assert SanityResult.from_json(json.dumps(bare)).created is None
    assert SanityResult.from_json(json.dumps(v2)).curves[1].extra == {"newer": [1]}
    odd_method = {**v2["curves"][0], "method": ["gradcam"]}  # a hand-edited file: the report's stale check hashes it
    for bad in (
        "[]",
        '{"images": 3}',
        '{"curves": [7]}',
        '{"curves": [{"method": "gradcam"}]}',
        "{oops",
        json.dumps({**v2, "curves": [odd_method]}),
    ):
        (tmp_path / "sanity.json").write_text(bad)
        assert SanityResult.read(tmp_path) is None, bad
