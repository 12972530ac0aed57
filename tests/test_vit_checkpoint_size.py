"""A ViT's weights fit one input size (its position embeddings): a mismatch says which --image-size fits."""

from __future__ import annotations

import pytest
import timm
import torch

from helpers import invoke, write_images


@pytest.mark.parametrize("given", [None, "96"])
def test_a_vit_state_dict_at_another_size_names_the_size_it_fits(tmp_path, given):
    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=64)
    torch.save(net.state_dict(), tmp_path / "vit.pt")
    write_images(tmp_path / "in" / "FAKE", 1, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 1, size=32, seed=2)
    size = ["--image-size", given] if given else []
    r = invoke(
        "run", tmp_path / "in", "--model", "timm:test_vit", "--checkpoint", tmp_path / "vit.pt", *size,
        "--out", tmp_path / "out", "--workers", "0", "--device", "cpu", catch_exceptions=True,
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and "pos_embed" in line
    assert line.endswith("its position embeddings fit --image-size 64"), line
    assert not (tmp_path / "out" / "maps").exists()


def test_an_image_size_that_cuts_a_patch_is_refused(tmp_path):
    write_images(tmp_path / "in" / "FAKE", 1, size=32, seed=1)
    write_images(tmp_path / "in" / "REAL", 1, size=32, seed=2)
    r = invoke(
        "run", tmp_path / "in", "--model", "timm:vit_tiny_patch16_224", "--image-size", "72",
        "--out", tmp_path / "out", "--workers", "0", "--device", "cpu", catch_exceptions=True,
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert r.output.strip() == (
        "Error: vit_tiny_patch16_224 cuts its inputs into 16x16 patches: at --image-size 72 the last 8 pixel "
        "rows and columns would never be seen and the maps would be stretched over them; "
        "use --image-size 64 or --image-size 80"
    )


def test_explain_refuses_an_input_size_that_cuts_a_patch():
    import xaibatch
    from xaibatch.errors import ModelError

    net = timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=40).eval()
    images = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    with pytest.raises(ModelError) as e:
        xaibatch.explain(net, images, ["gradcam"], input_size=40, device="cpu")
    assert str(e.value) == (
        "the model cuts its inputs into 16x16 patches: at input_size=40 the last 8 pixel rows and columns would "
        "never be seen and the maps would be stretched over them; use input_size=32 or input_size=48"
    )


def test_a_torchvision_vit_trained_at_another_size_loads_at_that_size(tmp_path):
    """torchvision's ViTs were always built at 224 px: a vit_b_32 trained at 64 px could not be loaded even with
    --image-size 64 ("encoder.pos_embedding is (1, 5, 768) in the file but (1, 50, 768)"), and the message named
    an --arch the user never gave."""
    import torchvision

    from xaibatch.errors import ModelError
    from xaibatch.model.user import load_user_model

    torch.manual_seed(0)
    net = torchvision.models.vit_b_32(num_classes=2, image_size=64)
    torch.save(net.state_dict(), tmp_path / "vit.pt")
    loaded = load_user_model("torchvision:vit_b_32", tmp_path / "vit.pt", 64, 2)
    assert loaded.input_size == 64 and torch.equal(loaded.module.encoder.pos_embedding, net.encoder.pos_embedding)
    with pytest.raises(ModelError, match=r"does not fit --model torchvision:vit_b_32: .*pos_embedding"):
        load_user_model("torchvision:vit_b_32", tmp_path / "vit.pt", 96, 2)


def test_a_checkpoint_of_another_architecture_names_the_option_given(tmp_path):
    from xaibatch.errors import ModelError
    from xaibatch.model.loading import save_checkpoint
    from xaibatch.model.user import load_user_model

    net = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    save_checkpoint(tmp_path / "r.pt", net, "test_resnet", ["FAKE", "REAL"], 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ModelError) as e:
        load_user_model("timm:test_vit", tmp_path / "r.pt", 32, 2)
    assert str(e.value).endswith(
        "was trained as test_resnet, not --model timm:test_vit; drop --model (the checkpoint names its architecture)"
    )
