"""On the demo data, the bundled model's maps point into the synthesized region far above chance."""

from __future__ import annotations

import numpy as np
import pytest

from xaibatch.localization import hit, pointing_game
from xaibatch.pipeline import RunOptions, run


def test_hit_uses_the_maximum():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    m = np.zeros((4, 4))
    m[0, 0] = 1
    assert hit(m, mask)
    m[3, 3] = 2
    assert not hit(m, mask)


@pytest.fixture(scope="module")
def demo_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("loc")
    test = demo_dir / "test"
    run(RunOptions(input_dir=test, out_dir=out, methods=["gradcam"], batch_size=64, workers=0))
    return test, out


def test_gradcam_points_into_the_fake_region(demo_run):
    test, out = demo_run
    fakes = sorted(p.relative_to(test).as_posix() for p in (test / "FAKE").glob("*.png"))
    game = pointing_game(out, test, "gradcam", fakes)
    print(f"gradcam pointing game: {game}")
    assert game.images == len(fakes) == 60
    assert 0.05 < game.chance < 0.3
    assert game.rate > 3 * game.chance
    assert game.rate > 0.6


def test_bundled_model_is_accurate_on_demo_test(demo_run):
    import sqlite3

    _, out = demo_run
    db = sqlite3.connect(out / "xaibatch.sqlite")
    right, total = db.execute("SELECT SUM(label = pred), COUNT(*) FROM images").fetchone()
    assert total == 120
    assert right / total > 0.9
