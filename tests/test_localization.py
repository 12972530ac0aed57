"""On the demo data, the bundled model's maps point into the synthesized region far above chance.

Chance is the mean share of the image the synthesized region covers (a map
that points at random hits that often). Each method must beat it by a wide,
statistically unmistakable margin (binomial tail under 1e-5).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from helpers import manifest_rows
from xaibatch.report.localization import hit, pointing_game
from xaibatch.pipeline import RunOptions, run


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_hit_uses_the_maximum():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    m = np.zeros((4, 4))
    m[0, 0] = 1
    assert hit(m, mask)
    m[3, 3] = 2
    assert not hit(m, mask)


# The demo set and the bundled model's runs over it take about 3 minutes on 2 cores: the slow tier.
@pytest.fixture(scope="module")
def demo_run(demo_dir, tmp_path_factory):
    """Grad-CAM and Guided Grad-CAM on the 120 demo test images; LIME (fewer samples) on 30 of them."""
    out = tmp_path_factory.mktemp("loc")
    test = demo_dir / "test"
    run(
        RunOptions(input_dir=test, out_dir=out, methods=["gradcam", "guided-gradcam"], batch_size=64, workers=0),
        log=lambda s: None,
    )
    small = tmp_path_factory.mktemp("lime_in")
    for cls, n in (("FAKE", 24), ("REAL", 6)):
        (small / cls).mkdir()
        for p in sorted((test / cls).glob("*.png"))[:n]:
            shutil.copy(p, small / cls / p.name)
            mask = p.with_name(p.stem + ".mask.npy")
            if mask.exists():
                shutil.copy(mask, small / cls / mask.name)
    lime_out = tmp_path_factory.mktemp("loc_lime")
    run(
        RunOptions(
            input_dir=small,
            out_dir=lime_out,
            methods=["lime"],
            batch_size=32,
            workers=0,
            method_options={"lime": {"samples": 300}},
        ),
        log=lambda s: None,
    )
    return {"gradcam": (test, out), "guided-gradcam": (test, out), "lime": (small, lime_out)}


@pytest.mark.slow
@pytest.mark.parametrize("method,min_ratio", [("gradcam", 2.0), ("guided-gradcam", 4.0), ("lime", 3.0)])
def test_each_method_points_into_the_fake_region(demo_run, method, min_ratio):
    root, out = demo_run[method]
    fakes = sorted(p.relative_to(root).as_posix() for p in (root / "FAKE").glob("*.png"))
    game = pointing_game(out, root, method, fakes)
    print(f"{method} pointing game: {game}")
    assert game.images == len(fakes) > 0
    assert 0.05 < game.chance < 0.3
    assert game.rate >= min_ratio * game.chance
    assert binomial_tail(game.hits, game.images, game.chance) < 1e-5


@pytest.mark.slow
def test_bundled_model_is_accurate_on_demo_test(demo_run):
    _, out = demo_run["gradcam"]
    ((right, total),) = manifest_rows(out, "SELECT SUM(label = pred), COUNT(*) FROM images")
    assert total == 120
    assert right / total > 0.9
