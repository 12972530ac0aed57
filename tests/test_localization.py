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
from xaibatch import layout
from xaibatch.errors import UsageError
from xaibatch.report.localization import pointing_game
from xaibatch.pipeline import RunOptions, run


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _scored(tmp_path, maps: dict[str, np.ndarray], masks: dict[str, np.ndarray], method: str, signed: bool):
    """An output folder whose manifest holds ``maps`` (.npy files too) with their views, as a run stores them,
    and an input folder with ``masks`` beside the images."""
    from xaibatch.manifest import ImageRow, Manifest, MapRow
    from xaibatch.overlay import view_of

    inp, out = tmp_path / "in", tmp_path / "out"
    for rel, mask in masks.items():
        (inp / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(inp / rel.replace(".png", ".mask.npy"), mask)
    out.mkdir()
    m = Manifest(out / layout.MANIFEST)
    run_id = m.start_run(str(inp), {"methods": {}}, "p")
    with m.transaction():
        for rel, a in maps.items():
            stem = rel[: -len(".png")]
            npy = layout.map_npy(method, stem)
            (out / npy).parent.mkdir(parents=True, exist_ok=True)
            np.save(out / npy, a)
            h, w = a.shape
            m.put_image(ImageRow(rel, stem, 100, 0, "0" * 64, w, h, 0, 0, 0, 1.0, [1.0, 0.0], "p", run_id))
            view = view_of(a, w, h, signed)
            m.put_map(MapRow(rel, method, "h", npy, layout.map_png(method, stem), None, None, run_id, view=view))
    m.close()
    return inp, out


def test_the_pointing_game_scores_the_stored_peak_and_a_map_pointing_nowhere_misses(tmp_path):
    """A map hits when its peak (the stored view's, as the report's detail view marks it) is in the mask. A signed
    map with no positive value points nowhere: a miss, whichever method made it (it was scored by its raw
    maximum unless the method was "lime", here a hit on the mask's one pixel)."""
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    inside, outside, against = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), -np.ones((4, 4))
    inside[1, 1] = outside[3, 3] = 1
    against[1, 1] = -0.01  # its largest value, in the mask; but no evidence for the class anywhere
    maps = {"FAKE/in.png": inside, "FAKE/out.png": outside, "FAKE/against.png": against.astype(np.float32)}
    inp, out = _scored(tmp_path, maps, dict.fromkeys(maps, mask), "captum:IntegratedGradients", signed=True)
    game = pointing_game(out, inp, "captum:IntegratedGradients", sorted(maps) + ["FAKE/none.png"])
    assert (game.images, game.hits) == (3, 1) and game.chance == 1 / 16
    assert game.nowhere == 1


def test_the_pointing_game_scores_a_map_pointing_at_the_centre_on_the_same_images(tmp_path):
    """The only chance line was the mask's mean area (12.9 % on the demo FAKEs), yet a map that always points at the
    centre hits 28.3 % of them (the patches lie anywhere, so the centre is covered more often than the average
    pixel), about what Grad-CAM's 36.7 % was "clearly above". The game scores the centre point too."""
    centred, corner = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    centred[2:6, 2:6] = True  # covers the centre pixel (3, 3)
    corner[0:4, 4:8] = True  # the same area, away from it
    peak_in_corner = np.zeros((8, 8), np.float32)
    peak_in_corner[0, 7] = 1
    maps = {"FAKE/a.png": peak_in_corner, "FAKE/b.png": peak_in_corner, "FAKE/c.png": peak_in_corner}
    masks = {"FAKE/a.png": centred, "FAKE/b.png": centred, "FAKE/c.png": corner}
    inp, out = _scored(tmp_path, maps, masks, "gradcam", signed=False)
    game = pointing_game(out, inp, "gradcam", sorted(maps))
    assert (game.images, game.hits, game.chance) == (3, 1, 0.25)
    assert game.centre == 2 and game.centre_rate == pytest.approx(2 / 3)
    assert str(game) == "33.3% hits on 3 images (chance 25.0%; the centre point 66.7%)"


def test_the_pointing_game_of_a_folder_without_a_manifest_is_one_line_and_makes_none(tmp_path):
    with pytest.raises(UsageError, match="not an xaibatch output folder"):
        pointing_game(tmp_path, tmp_path, "gradcam", ["a.png"])
    assert not (tmp_path / layout.MANIFEST).exists()


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
    # a map that always points at the centre hits two to three times the mean area (28.3 % of the 60, 41.7 % of
    # the 24); Guided Grad-CAM and LIME beat it, Grad-CAM at 4x4 does not clearly (36.7 %: binomial tail 0.10)
    assert 0.2 < game.centre_rate < 0.45
    if method != "gradcam":
        assert binomial_tail(game.hits, game.images, game.centre_rate) < 1e-2


@pytest.mark.slow
def test_bundled_model_is_accurate_on_demo_test(demo_run):
    _, out = demo_run["gradcam"]
    ((right, total),) = manifest_rows(out, "SELECT SUM(label = pred), COUNT(*) FROM images")
    assert total == 120
    assert right / total > 0.9
