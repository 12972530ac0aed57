"""--model: the user's own nn.Module (one sigmoid logit, an SRM front end), torchvision and timm; --threshold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import invoke, manifest_rows, manifest_value
from xaibatch.cli import cli
from xaibatch.tools.demo import write_demo_data
from xaibatch.model.heads import OneLogitHead

CNN_SRC = """
import torch
from torch import nn


class SigmoidCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 1))
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def forward(self, x):
        return self.classifier(self.features(x))


class ChannelAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x)


class SRMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.srm = nn.Conv2d(3, 3, 5, padding=2, bias=False)
        k = torch.tensor([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                          [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12
        with torch.no_grad():
            self.srm.weight.zero_()
            for c in range(3):
                self.srm.weight[c, c] = k
        self.srm.requires_grad_(False)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.attention = ChannelAttention(16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1))

    def forward(self, x):
        return self.head(self.attention(self.body(self.srm(x))))


def cnn():
    return SigmoidCNN()


def srm():
    torch.manual_seed(0)
    return SRMNet()


def raises():
    raise ValueError("no weights here")


def not_a_module():
    return {"weights": 1}


def three_outputs():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


class Buggy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(10, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))  # 4 features into a Linear of 10: wrong at every input size


def buggy():
    return Buggy()


def parallel():
    return nn.DataParallel(srm())
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo data, the models file, and the sigmoid CNN trained a few epochs (a plain state_dict)."""
    root = tmp_path_factory.mktemp("own")
    write_demo_data(root / "demo", 40, 8, 0)
    (root / "mymodels.py").write_text(CNN_SRC)
    ns: dict = {}
    exec(compile(CNN_SRC, "mymodels", "exec"), ns)
    x, y = _load(root / "demo" / "train")
    torch.manual_seed(0)
    model = ns["cnn"]()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(6):
        for idx in torch.randperm(len(x)).split(16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.eval().state_dict(), root / "cnn.pt")
    return {"root": root, "ns": ns, "model": model}


def _load(folder):
    xs, ys, rels = [], [], []
    for label, name in enumerate(("FAKE", "REAL")):
        for f in sorted((folder / name).glob("*.png")):
            a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
            xs.append(torch.from_numpy(a).permute(2, 0, 1))
            ys.append(float(label))
            rels.append(f"{name}/{f.name}")
    _load.rels = rels
    return torch.stack(xs), torch.tensor(ys)


def _run(args):
    return invoke("run", *args, "--workers", "0", "-q")


def _csv(out):
    with open(out / "predictions.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def _cnn_args(world, out, *extra, checkpoint=None):
    """The run of the world's CNN into ``out``, with its own checkpoint or ``checkpoint``."""
    root = world["root"]
    return [
        str(root / "demo" / "test"),
        "--model",
        f"{root}/mymodels.py:cnn",
        "--checkpoint",
        str(checkpoint or root / "cnn.pt"),
        "--out",
        str(out),
        *extra,
    ]


def test_sigmoid_cnn_end_to_end_matches_pytorch_grad_cam(world, tmp_path):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    out = tmp_path / "out"
    r = _run(_cnn_args(world, out, "-m", "gradcam", "-m", "guided-gradcam", "-m", "lime", "--lime-samples", "60"))
    assert r.exit_code == 0, r.output
    rows = _csv(out)
    x, y = _load(world["root"] / "demo" / "test")
    rels = _load.rels
    net = world["model"]
    with torch.no_grad():
        p = torch.sigmoid(net(x)[:, 0]).numpy()
    for rel, pr in zip(rels, p):  # P(REAL) = sigmoid(z), REAL (second sorted) is positive
        assert float(rows[rel]["p_REAL"]) == pytest.approx(pr, abs=1e-5)
        assert rows[rel]["pred"] == ("REAL" if pr >= 0.5 else "FAKE")
    preds = (p >= 0.5).astype(int)
    assert 0 < preds.sum() < len(preds), "the fixture should have both predicted classes"
    for m in ("gradcam", "guided-gradcam", "lime"):
        assert all((out / "maps" / m / f"{rel[:-4]}.npy").is_file() for rel in rels)
    ours = np.stack([np.load(out / "maps" / "gradcam" / f"{rel[:-4]}.npy") for rel in rels])
    with GradCAM(model=net, target_layers=[net.features[3]]) as cam:
        ref = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(int(c)) for c in preds])
    for a, b in zip(ours, ref):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
    assert "features.3" in (out / "index.html").read_text()


def _gradcam_of(net, layer, x, score_fn):
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        s = score_fn(net(x))
    finally:
        h.remove()
    (g,) = torch.autograd.grad(s.sum(), store["a"])
    return torch.relu((g.mean((2, 3), keepdim=True) * store["a"]).sum(1)).detach()


def test_negative_class_gets_the_gradient_of_minus_z(world):
    net = world["model"]
    head = OneLogitHead(net, positive=1)
    x, _ = _load(world["root"] / "demo" / "test")
    layer = net.features[3]
    neg = _gradcam_of(head, layer, x, lambda out: out[:, 0])  # the negative column
    minus_z = _gradcam_of(net, layer, x, lambda z: -z[:, 0])
    pos = _gradcam_of(head, layer, x, lambda out: out[:, 1])
    plus_z = _gradcam_of(net, layer, x, lambda z: z[:, 0])
    assert torch.allclose(neg * 2, minus_z, atol=1e-6) and torch.allclose(pos * 2, plus_z, atol=1e-6)
    assert minus_z.abs().sum() > 0 and not torch.allclose(minus_z, plus_z)
    probs = torch.softmax(head(x), 1)
    assert torch.allclose(probs[:, 1], torch.sigmoid(net(x)[:, 0]), atol=1e-6)
    flipped = torch.softmax(OneLogitHead(net, positive=0)(x), 1)
    assert torch.allclose(flipped[:, 0], probs[:, 1], atol=1e-6)


def test_negative_predictions_in_the_run_are_maps_of_minus_z(world, tmp_path):
    out = tmp_path / "out"
    assert _run(_cnn_args(world, out, "-m", "gradcam")).exit_code == 0
    rows = _csv(out)
    x, _ = _load(world["root"] / "demo" / "test")
    rels = _load.rels
    net = world["model"]
    ref = _gradcam_of(net, net.features[3], x, lambda z: -z[:, 0])
    ref = torch.nn.functional.interpolate(ref[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    negatives = [i for i, rel in enumerate(rels) if rows[rel]["pred"] == "FAKE"]
    assert negatives
    for i in negatives:
        ours = np.load(out / "maps" / "gradcam" / f"{rels[i][:-4]}.npy")
        r = ref[i].numpy()
        r = (r - r.min()) / (r.max() - r.min() + 1e-12)
        assert np.abs(ours - r).max() < 1e-3


def test_library_methods_on_one_logit_equal_the_libraries_on_the_users_model(world, tmp_path, monkeypatch):
    """cam:* and captum:* on a one-logit model give the libraries' own maps of the user's module: pytorch-grad-cam's
    BinaryClassifierOutputTarget (z for the positive class, -z for the negative) and captum's attributions of the one
    output (negated for the negative class). They read the head's [-z/2, z/2] before: Score-CAM's softmax over
    channels flattened (correlation 0.56 with the library's map on a trained CNN), Grad-CAM++'s weights moved, and
    every captum attribution was half the logit's."""
    from captum.attr import IntegratedGradients, Occlusion
    from pytorch_grad_cam import GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
    from tqdm import tqdm

    # the reference Score-CAM's bar would start tqdm's monitor thread, which outlives the test and keeps every
    # later test's report from forking (report/forked.py: no fork beside another thread)
    monkeypatch.setattr(tqdm, "monitor_interval", 0)

    out = tmp_path / "out"
    methods = "cam:scorecam,cam:gradcam++,captum:IntegratedGradients,captum:Occlusion"
    r = _run(_cnn_args(world, out, "-m", methods, "--target", "pred,label"))
    assert r.exit_code == 0, r.output
    rows = _csv(out)
    x, _ = _load(world["root"] / "demo" / "test")
    rels = _load.rels
    net = world["model"]
    for key, column in (("", "pred"), ("_40label", "label")):
        idx = [i for i, rel in enumerate(rels) if not key or rows[rel]["correct"] == "0"]
        target = torch.tensor([int(rows[rels[i]][column] == "REAL") for i in idx])
        assert 0 < int(target.sum()) < len(idx), "both classes explained, the negative one included"
        xs, sign = x[idx], (target * 2 - 1).float()[:, None, None]
        refs = {}
        for name, cls in (("cam-scorecam", ScoreCAM), ("cam-gradcampp", GradCAMPlusPlus)):
            with cls(model=net, target_layers=[net.features[3]]) as cam:
                refs[name] = cam(input_tensor=xs, targets=[BinaryClassifierOutputTarget(int(t)) for t in target])
        ig = IntegratedGradients(net).attribute(xs, target=0, baselines=torch.zeros_like(xs), method="gausslegendre")
        refs["captum-IntegratedGradients"] = (ig.sum(1) * sign).detach().numpy()
        occ = Occlusion(net).attribute(xs, target=0, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0)
        refs["captum-Occlusion"] = (occ.mean(1) * sign).detach().numpy()
        for folder, ref in refs.items():
            ours = np.stack([np.load(out / "maps" / f"{folder}{key}" / f"{rels[i][:-4]}.npy") for i in idx])
            scale = max(float(np.abs(ref).max()), 1e-12)
            assert np.abs(ours - ref).max() <= 1e-4 * scale, (folder, key)


def test_threshold_moves_predictions_and_only_flipped_maps(world, tmp_path):
    out = tmp_path / "out"
    assert _run(_cnn_args(world, out, "-m", "gradcam")).exit_code == 0
    before = _csv(out)
    npys = {rel: (out / "maps" / "gradcam" / f"{rel[:-4]}.npy") for rel in before}
    mtimes = {rel: p.stat().st_mtime_ns for rel, p in npys.items()}
    p_real = {rel: float(r["p_REAL"]) for rel, r in before.items()}
    t = float(np.median(list(p_real.values())))
    r = _run(_cnn_args(world, out, "-m", "gradcam", "--threshold", str(t)))
    assert r.exit_code == 0, r.output
    after = _csv(out)
    for rel, p in p_real.items():
        assert after[rel]["pred"] == ("REAL" if p >= t else "FAKE")
        assert float(after[rel]["p_REAL"]) == p  # probabilities are the same model's
    flipped = {rel for rel in before if before[rel]["pred"] != after[rel]["pred"]}
    assert flipped
    runs = manifest_rows(out, "SELECT predict_hash, config_json, n_computed FROM runs ORDER BY id")
    assert runs[0][0] != runs[1][0]
    assert json.loads(runs[1][1])["decision"]["threshold"] == t
    assert runs[1][2] == len(flipped)  # maps recomputed only where the target class flipped
    for rel, p in npys.items():
        assert (p.stat().st_mtime_ns != mtimes[rel]) == (rel in flipped)
    html = (out / "index.html").read_text()
    labels = {rel: rel.split("/")[0] for rel in after}
    tp = sum(1 for rel in after if after[rel]["pred"] == "REAL" and labels[rel] == "REAL")
    fp = sum(1 for rel in after if after[rel]["pred"] == "REAL" and labels[rel] == "FAKE")
    assert f"{tp} of {tp + fp} predicted REAL" in html
    assert "ROC AUC" in html and "roc-" in html
    # the same threshold again: nothing to do
    _run(_cnn_args(world, out, "-m", "gradcam", "--threshold", str(t)))
    assert manifest_rows(out, "SELECT n_computed FROM runs ORDER BY id DESC")[0][0] == 0


def test_threshold_on_a_softmax_model(tmp_path):
    from xaibatch.model.heads import Decision, predict

    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.25, 0.75], [0.5, 0.5]])
    assert predict(probs, Decision(1, 0.5, "REAL", False)).tolist() == [0, 1, 1, 1]
    assert predict(probs, Decision(1, 0.7, "REAL", False)).tolist() == [0, 0, 1, 0]
    assert predict(probs, Decision(0, 0.5, "FAKE", False)).tolist() == [0, 1, 1, 0]
    assert predict(probs, None).tolist() == [0, 1, 1, 0]


def test_a_batch_of_rows_is_predicted_as_each_row_alone():
    """build_job predicts a batch's rows in one call (predict_rows): the same classes as predict_one, row by row,
    and as the explainer's float32 probabilities on the device (predict): its maps explain the row's class, also at
    the threshold itself. float32 0.7 (0.69999999) was the positive class on the device (compared in float32) and
    the negative one in the row (compared in float64): the map explained the class the row did not predict."""
    import numpy as np
    from xaibatch.model.heads import Decision, predict, predict_one, predict_rows

    probs = np.array(
        [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.25, 0.75], [0.5, 0.5], [np.float32(0.3), np.float32(0.7)]],
        dtype=np.float32,
    )
    for decision in (
        None,
        Decision(1, 0.5, "REAL", False),
        Decision(1, 0.7, "REAL", False),
        Decision(0, 0.3, "F", True),
    ):
        assert predict_rows(probs, decision) == [predict_one(p, decision) for p in probs]
        assert predict(torch.from_numpy(probs), decision).tolist() == predict_rows(probs, decision)
    three = np.random.default_rng(0).dirichlet([1, 1, 1], 50).astype(np.float32)
    assert predict_rows(three, None) == [predict_one(p, None) for p in three]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=8),
    st.sampled_from([0, 1]),
    st.one_of(st.floats(0, 1), st.integers(0, 1_000_000).map(lambda k: k / 1e6)),
    st.sampled_from([None, -1, 0, 1]),
)
def test_every_reading_of_a_two_class_decision_agrees(ps, positive, t, at):
    """A batch on the device (predict), the batch's rows (predict_rows), one row (predict_one), a row re-decided
    from the manifest's stored values under a new threshold (apply.redecider) and a user reading predictions.csv
    (``p >= t`` on the printed probability) decide alike, also with the threshold at (or one step of the stored
    decimals beside) a stored value."""
    from xaibatch.model.heads import Decision, predict, predict_one, predict_rows, stored

    p = np.array(ps, dtype=np.float32)
    probs = np.stack([1 - p, p] if positive == 1 else [p, 1 - p], axis=1)
    kept = stored(torch.from_numpy(probs))
    if at is not None:  # the threshold right at a stored value, or one printed step beside it
        t = min(1.0, max(0.0, round(float(kept[0, positive]) + at * 1e-6, 6)))
    d = Decision(positive, t, "P", False)
    want = predict(torch.from_numpy(probs), d).tolist()
    assert predict_rows(probs, d) == want == [predict_one(row, d) for row in probs]
    assert [predict_one(row, d) for row in kept.tolist()] == want
    csv = [positive if float(f"{row[positive]:.6f}") >= t else 1 - positive for row in kept.tolist()]
    assert csv == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (and XAIBATCH_TEST_GPU=1)")
def test_probabilities_are_stored_and_decided_bit_equal_on_the_gpu():
    """The explainer decides on the device, the manifest's rows on the CPU: the stored values must be the same bits.
    Divided by a Python number, CUDA multiplied by its reciprocal: 1 ulp off for 1.5M of 5M values on an H100,
    and a threshold at a stored value (0.710141) could fall on either side."""
    from xaibatch.model.heads import Decision, predict, stored

    p = torch.rand(2_000_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(stored(p.cuda()).cpu(), stored(p))
    probs = torch.stack([1 - p, p], 1)
    for t in (0.5, 0.7, float(stored(p[:1])[0])):
        d = Decision(1, t, "REAL", False)
        assert torch.equal(predict(probs.cuda(), d).cpu(), predict(probs, d))


def test_a_threshold_copied_from_the_csv_decides_as_a_fresh_run_does(world, tmp_path):
    """The probabilities are stored (and shown in predictions.csv) with 6 decimals. A threshold copied from the CSV
    was compared with the stored value when a new --threshold re-decided a folder, but with the float32 one in a
    fresh run: the image at the threshold was REAL in one report and FAKE in the other, and the fresh CSV said
    ``p_REAL 0.xxxxxx, pred FAKE`` at that very threshold. Now every run decides by the probability it stores."""
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    assert _run(_cnn_args(world, first, "-m", "gradcam")).exit_code == 0
    shown = {rel: float(r["p_REAL"]) for rel, r in _csv(first).items()}
    raw = dict(manifest_rows(first, "SELECT rel, confidence FROM images WHERE pred = 1"))  # P(REAL), unrounded
    above = sorted(rel for rel, p in raw.items() if shown[rel] > p)  # shown rounded up: p < the CSV's value
    assert above, "the fixture should have a REAL prediction whose probability the CSV rounds up"
    t = shown[above[0]]
    assert _run(_cnn_args(world, first, "-m", "gradcam", "--threshold", str(t))).exit_code == 0  # re-decided
    assert _run(_cnn_args(world, fresh, "-m", "gradcam", "--threshold", str(t))).exit_code == 0  # computed anew
    redecided, computed = _csv(first), _csv(fresh)
    for rel, p in shown.items():
        want = "REAL" if p >= t else "FAKE"  # the rule, on the CSV's own numbers
        assert (redecided[rel]["pred"], computed[rel]["pred"]) == (want, want), rel
    assert computed[above[0]]["pred"] == "REAL"


@pytest.mark.parametrize("classes", ["FAKE,REAL", "REAL,FAKE"])
def test_one_logit_classes_name_the_sigmoid_in_their_order_as_explain_does(world, tmp_path, classes):
    """``--classes A,B`` names the outputs in order: a one-logit head's sigmoid(z) is P(B), as explain() reads
    ``classes=[A, B]``. The run took the second in sorted order whatever the order given: ``--classes REAL,FAKE``
    (a detector whose sigmoid is P(FAKE)) was read as P(REAL), and every prediction and label check inverted
    without a word, where explain() with the same names said the opposite."""
    import xaibatch

    out = tmp_path / "out"
    assert _run(_cnn_args(world, out, "-m", "gradcam", "--classes", classes)).exit_code == 0
    rows = _csv(out)
    x, _ = _load(world["root"] / "demo" / "test")
    names = classes.split(",")
    with torch.no_grad():
        sig = torch.sigmoid(world["model"](x)[:, 0]).numpy()
    ref = xaibatch.explain(world["model"], x, methods=["gradcam"], classes=names)
    for i, (rel, s) in enumerate(zip(_load.rels, sig)):
        assert float(rows[rel][f"p_{names[1]}"]) == pytest.approx(s, abs=1e-5), rel
        assert rows[rel]["pred"] == names[int(s >= 0.5)] == names[int(ref.preds[i])], rel
        assert rows[rel]["label"] == rel.split("/")[0]


def test_positive_class_against_the_order_of_given_classes_is_refused(world, tmp_path):
    """``--classes FAKE,REAL`` says a one-logit model's sigmoid(z) is P(REAL); ``--positive-class FAKE`` read it as
    P(FAKE) instead: every prediction inverted without a word (on a trained CNN, ROC AUC 0.07 for 0.93). One line,
    exit 2, before anything is written; the positive class the order names is accepted."""
    out = tmp_path / "out"
    r = invoke(
        "run", *_cnn_args(world, out, "-m", "gradcam", "--classes", "FAKE,REAL", "--positive-class", "FAKE"), "-q"
    )
    assert r.exit_code == 2
    assert r.output.strip() == (
        "Error: --positive-class FAKE: this one-logit model's sigmoid(z) is P(REAL), the second of --classes "
        "FAKE,REAL; if it is P(FAKE), give --classes REAL,FAKE (and no --positive-class)"
    )
    assert not out.exists()
    ok = _run(_cnn_args(world, out, "-m", "gradcam", "--classes", "FAKE,REAL", "--positive-class", "REAL"))
    assert ok.exit_code == 0, ok.output


def test_sanity_of_a_folder_whose_run_read_the_logit_inverted_says_to_run_again(world, tmp_path):
    """A folder made before the refusal above, with --positive-class against the given order: sanity's rebuild met
    the refusal and advised --classes (which sanity does not take) or passing the model (which gave the same
    error). It says the run read the model inverted and how to run it again."""
    import sqlite3

    out = tmp_path / "out"
    args = _cnn_args(world, out, "-m", "gradcam", "--classes", "FAKE,REAL", "--positive-class", "REAL")
    assert _run(args).exit_code == 0
    db = sqlite3.connect(out / "xaibatch.sqlite")  # what the run recorded before the refusal existed
    cfg = json.loads(db.execute("SELECT config_json FROM runs").fetchone()[0])
    cfg["source"]["positive_class"] = "FAKE"
    db.execute("UPDATE runs SET config_json = ?", (json.dumps(cfg),))
    db.commit()
    db.close()
    r = invoke("sanity", str(out), "--images", "4")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"Error: sanity cannot check {out}: its run read this one-logit model's sigmoid(z) as P(FAKE) "
        "(--positive-class FAKE with the classes FAKE,REAL), inverted: runs now refuse it; run xaibatch run again "
        "with --classes REAL,FAKE and no --positive-class, then sanity"
    )


CHECKPOINT_FORMS = {
    "training-dict": lambda sd: {"epoch": 6, "net": sd, "optimizer": {"state": {}, "param_groups": []}},
    "torch.compile": lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    "DataParallel(torch.compile)": lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
    "lightning": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10},
    "DataParallel checkpoint": lambda sd: {"epoch": 6, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("form", list(CHECKPOINT_FORMS))
def test_checkpoint_forms_of_a_training_script_load_as_the_state_dict(world, tmp_path, form):
    """The ways training scripts save weights load as the plain state_dict does. Before, a training checkpoint
    whose weights sat under another key (``{"net": ..., "epoch": 6}``) was "no tensors found: not a state_dict",
    and the keys of ``torch.compile``'s ``_orig_mod.`` or a LightningModule's ``model.`` did not fit the module."""
    ckpt = tmp_path / f"{form}.pt"
    torch.save(CHECKPOINT_FORMS[form](world["model"].state_dict()), ckpt)
    plain, out = tmp_path / "plain", tmp_path / "out"
    assert _run(_cnn_args(world, plain, "-m", "gradcam")).exit_code == 0
    r = _run(_cnn_args(world, out, "-m", "gradcam", checkpoint=ckpt))
    assert r.exit_code == 0, r.output
    want = {rel: (row["pred"], row["p_REAL"]) for rel, row in _csv(plain).items()}
    assert {rel: (row["pred"], row["p_REAL"]) for rel, row in _csv(out).items()} == want


def test_checkpoint_with_two_sets_of_weights_names_them(world, tmp_path):
    sd = world["model"].state_dict()
    ckpt = tmp_path / "two.pt"
    torch.save({"net": sd, "ema": sd, "epoch": 6}, ckpt)
    r = invoke("run", *_cnn_args(world, tmp_path / "out", "-m", "gradcam", "-q", checkpoint=ckpt))
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"Error: {ckpt}: no tensors at its top level, and weights under 'net' and 'ema': re-save the ones to "
        "explain alone, e.g. torch.save(ckpt['net'], ...)"
    )


def test_torchscript_file_is_named_as_such(world, tmp_path):
    """A TorchScript file was "not a checkpoint of plain weights": the message now says what it is and how to get
    its weights, and the file is still never loaded."""
    net = world["model"]
    ts = torch.jit.trace(net, torch.zeros(1, 3, 32, 32))  # scripted and traced modules save the same archive
    ckpt = tmp_path / "model.ts.pt"
    torch.jit.save(ts, ckpt)
    r = invoke("run", *_cnn_args(world, tmp_path / "out", "-m", "gradcam", "-q", checkpoint=ckpt))
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"Error: {ckpt}: a TorchScript archive (torch.jit.save), not plain weights; xaibatch loads no TorchScript. "
        "Save the model's state_dict (torch.jit.load(...).state_dict() keeps its keys, if you trust the file) and "
        "give its nn.Module with --model FILE.py:FACTORY"
    )
    torch.save(torch.jit.load(ckpt).state_dict(), tmp_path / "sd.pt")  # the advice works
    assert _run(_cnn_args(world, tmp_path / "out", "-m", "gradcam", checkpoint=tmp_path / "sd.pt")).exit_code == 0


def test_one_logit_model_without_classes_says_which_probability_its_sigmoid_is(world, tmp_path):
    """A one-logit model that names no classes was warned about "its outputs ... in sorted order" (it has one), and
    ``--positive-class FAKE`` re-reading a P(REAL) logit as P(FAKE) went unsaid. The line names the class whose
    probability sigmoid(z) is read as, and why; a re-run that loads no model says the same."""
    want = {
        (): "P(REAL) = sigmoid(z) (the second of the class folders FAKE,REAL); if it is P(FAKE), give --classes "
        "REAL,FAKE instead",
        ("--positive-class", "FAKE"): "P(FAKE) = sigmoid(z) (--positive-class FAKE); if it is P(REAL), give "
        "--classes FAKE,REAL instead",
    }
    for i, (extra, text) in enumerate(want.items()):
        line = f"xaibatch: warning: the model names no classes: its one logit is read as {text}"
        for _ in range(2):
            r = invoke("run", *_cnn_args(world, tmp_path / f"out{i}", "-m", "gradcam", *extra), "--workers", "0")
            assert r.exit_code == 0, r.output
            assert r.stderr.splitlines().count(line) == 1, r.stderr


def test_srm_model_end_to_end_layer_after_the_filters(world, tmp_path):
    root = world["root"]
    out = tmp_path / "out"
    r = _run(
        [
            str(root / "demo" / "test"),
            "--model",
            f"{root}/mymodels.py:srm",
            "--image-size",
            "32",
            "-m",
            "gradcam",
            "-m",
            "guided-gradcam",
            "-m",
            "lime",
            "--lime-samples",
            "40",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads(manifest_value(out, "SELECT config_json FROM runs"))
    assert cfg["layer"].startswith("body.") and cfg["layer"] != "srm"
    assert cfg["layer"] in (out / "index.html").read_text()
    assert len(list((out / "maps" / "guided-gradcam").rglob("*.npy"))) == 16


@pytest.mark.parametrize(
    "factory, words",
    [
        ("raises", "raises() raised ValueError: no weights here"),
        ("not_a_module", "returned a dict, not a torch.nn.Module"),
        ("three_outputs", "the model has 3 outputs"),
        ("missing", "has no function 'missing'"),
    ],
)
def test_bad_factory_is_one_line_exit_2(world, tmp_path, factory, words):
    root = world["root"]
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(root / "demo" / "test"),
            "--model",
            f"{root}/mymodels.py:{factory}",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert words in r.output


def test_a_forward_that_raises_names_the_users_exception_not_the_input_size(world, tmp_path):
    """A bug in the factory's forward was reported as "a forward pass at 32x32 failed (...); give the input size it
    was trained at with --image-size": the size hint sent the user after the wrong cause, and said not where."""
    root = world["root"]
    r = _run([root / "demo" / "test", "--model", f"{root}/mymodels.py:buggy", "--image-size", 32, "--out", tmp_path])
    line = r.output.strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1, r.output
    assert line.startswith(
        f"Error: --model {root}/mymodels.py:buggy: its forward raised RuntimeError: mat1 and mat2 shapes cannot be "
        "multiplied (1x4 and 10x2) ("
    ), line
    assert "mymodels.py, line" in line and "in forward), on a 32x32 input" in line
    assert "--image-size" not in line  # the error is the same at 224 px: not the size's


def test_a_factory_that_returns_data_parallel_runs_the_module_it_wraps(world, tmp_path):
    """Through the wrapper the layer search saw ``module.*`` names and picked another layer: its maps were not the
    model's. The wrapped module is run: the same layer and maps as the bare factory's."""
    root, outs = world["root"], {}
    for factory in ("srm", "parallel"):
        outs[factory] = tmp_path / factory
        args = [root / "demo" / "test", "--model", f"{root}/mymodels.py:{factory}", "--image-size", 32]
        r = _run([*args, "--out", outs[factory], "--device", "cpu", "-m", "gradcam"])
        assert r.exit_code == 0, r.output
    layers = {f: json.loads(manifest_value(o, "SELECT config_json FROM runs"))["layer"] for f, o in outs.items()}
    assert layers["parallel"] == layers["srm"] and layers["srm"].startswith("body."), layers
    bare = sorted((outs["srm"] / "maps" / "gradcam").rglob("*.npy"))
    assert len(bare) == 16
    for f in bare:
        wrapped = np.load(outs["parallel"] / f.relative_to(outs["srm"]))
        assert np.array_equal(np.load(f), wrapped), f.name


def test_a_data_parallel_factorys_target_layer_may_be_named_in_the_wrapper(world, tmp_path):
    """``--target-layer module.body...`` (the name print(model) shows for a DataParallel, and what a run recorded
    before the wrapped module was run) names the wrapped module's layer: the run and a sanity rebuild find it,
    and the run records the module's own name, as a bare factory's run does."""
    root = world["root"]
    bare = tmp_path / "bare"
    args = [root / "demo" / "test", "--image-size", 32, "--device", "cpu", "-m", "gradcam"]
    assert _run([*args, "--model", f"{root}/mymodels.py:srm", "--out", bare]).exit_code == 0
    layer = json.loads(manifest_value(bare, "SELECT config_json FROM runs"))["layer"]
    out = tmp_path / "wrapped"
    r = _run([*args, "--model", f"{root}/mymodels.py:parallel", "--target-layer", f"module.{layer}", "--out", out])
    assert r.exit_code == 0, r.output
    assert json.loads(manifest_value(out, "SELECT config_json FROM runs"))["layer"] == layer
    r = invoke("sanity", str(out), "--images", "4")
    assert r.exit_code == 0, r.output


def test_bad_target_layer_lists_candidates(world, tmp_path):
    r = _run(_cnn_args(world, tmp_path / "o", "--target-layer", "nope"))
    assert r.exit_code == 2 and "features.0" in r.output and "features.3" in r.output


def test_example_factory_builds_and_runs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "cifake_cnn.py"
    spec = importlib.util.spec_from_file_location("cifake_cnn_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build()(torch.zeros(2, 3, 32, 32)).shape == (2, 1)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:efficientnet_b0"])
def test_torchvision_and_timm_end_to_end(world, tmp_path, spec):
    out = tmp_path / "out"
    r = _run(
        [
            str(world["root"] / "demo" / "test"),
            "--model",
            spec,
            "--image-size",
            "64",
            "-m",
            "gradcam",
            "-m",
            "guided-gradcam",
            "--out",
            str(out),
            "--batch-size",
            "8",
        ]
    )
    assert r.exit_code == 0, r.output
    assert len(list((out / "maps" / "gradcam").rglob("*.npy"))) == 16
    assert len(_csv(out)) == 16


def test_train_state_dict_round_trip(world, tmp_path):
    demo = world["root"] / "demo"
    ck = tmp_path / "m.pt"
    r = CliRunner().invoke(
        cli,
        [
            "train",
            str(demo),
            "--arch",
            "test_resnet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--format",
            "state-dict",
            "--out",
            str(ck),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    assert "format" not in torch.load(ck, weights_only=True)  # a plain state_dict
    # it does not carry its input size: the last line says how to run it (without, a run would use 224 px)
    assert r.output.strip().splitlines()[-1] == (
        f"explain with: xaibatch run IMAGES --model timm:test_resnet --checkpoint {ck} --image-size 32 "
        "--classes FAKE,REAL"  # nor its class names: a flat folder's run would call them class_0, class_1
    )
    r = _run(
        [
            str(demo / "test"),
            "--model",
            "timm:test_resnet",
            "--checkpoint",
            str(ck),
            "--classes",
            "FAKE,REAL",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert r.exit_code == 0, r.output
    assert len(_csv(tmp_path / "out")) == 16


def test_a_model_file_imports_its_neighbours_and_a_module_spec_the_current_folder(tmp_path, monkeypatch):
    """`--model models/net.py:make` whose file imports `blocks.py` beside it failed with "No module named 'blocks'"
    (only PYTHONPATH=. helped); `python net.py` finds it. A module spec finds packages in the current folder, as
    uvicorn's module:app does. Both folders go last on sys.path, so they shadow nothing installed."""
    import sys

    from xaibatch.model.user import build_factory

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "blocks_7f3a.py").write_text("import torch\nWIDTH = 5\n")
    (tmp_path / "models" / "net_7f3a.py").write_text(
        "import torch\nfrom blocks_7f3a import WIDTH\n\ndef make():\n    return torch.nn.Linear(WIDTH, 2)\n"
    )
    (tmp_path / "proj_7f3a").mkdir()
    (tmp_path / "proj_7f3a" / "__init__.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Linear(3, 2)\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    assert build_factory(f"{tmp_path / 'models' / 'net_7f3a.py'}:make")[0].in_features == 5
    assert build_factory("proj_7f3a:make")[0].in_features == 3
    assert sys.path[-2:] == [str((tmp_path / "models").resolve()), str(tmp_path.resolve())]


def test_train_ends_with_a_command_a_shell_reads_and_trains_past_a_batch_of_one(world, tmp_path):
    """80 demo images, 8 held out, in batches of 71: every epoch ended with a batch of one image, which batch norm
    cannot train on ("Expected more than 1 value per channel when training": an internal error in the first
    epoch, no checkpoint). And the printed command named a path with a space or a quote unquoted."""
    import shlex

    ck = tmp_path / "my models" / "it's.pt"
    r = CliRunner().invoke(
        cli,
        ["train", str(world["root"] / "demo"), "--arch", "test_resnet", "--image-size", "32", "--epochs", "1",
         "--batch-size", "71", "--format", "state-dict", "--out", str(ck)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "on 72 images (8 held out)" in r.output and ck.is_file()
    argv = shlex.split(r.output.strip().splitlines()[-1].removeprefix("explain with: "))
    assert argv[argv.index("--checkpoint") + 1] == str(ck)
    assert argv[argv.index("--classes") + 1] == "FAKE,REAL"
