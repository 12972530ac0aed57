"""The loader's items (dataset.ImageDataset): an image already at the model's input size is converted once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xaibatch.data import display_copy, load_image
from xaibatch.dataset import ImageDataset
from xaibatch.scan import scan


@pytest.mark.parametrize("side", [(224, 224), (240, 224), (600, 600)])
def test_input_and_display_copy_are_the_pixels_pil_gives(tmp_path, side):
    """At the input size the display copy is the model input's array (no second conversion), and both hold the
    pixels PIL's resize and display_copy give; at other sizes each is its own resize, as before."""
    rng = np.random.default_rng(0)
    w, h = side
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    entries = scan(tmp_path, labeled=False).images
    item = ImageDataset(entries, 224)[0]
    im = load_image(tmp_path / "a.png")
    want_x = np.asarray(im.resize((224, 224), Image.BILINEAR))
    assert np.array_equal(item.x.permute(1, 2, 0).numpy(), want_x)
    assert np.array_equal(item.display, display_copy(im))
    assert item.orig_size == (h, w)
