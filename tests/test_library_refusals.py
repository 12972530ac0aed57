"""A library method that cannot run on a model family says why in words a user can act on, in one line."""

from __future__ import annotations

import pytest
import torch
import torchvision

from _methods_helpers import make_ctx
from xaibatch.errors import ModelError
from xaibatch.methods import create_method


@pytest.mark.parametrize("name", ["captum:DeepLift", "captum:NoiseTunnel.DeepLift"])
def test_deeplift_on_a_reused_activation_module(name):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()  # each BasicBlock calls self.relu twice
    with pytest.raises(ModelError) as e:
        create_method(name, make_ctx(net, 32))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (
        f"{name} cannot run on this model: it calls the same activation module more than once per forward "
        "(as torchvision's ResNets reuse self.relu), which DeepLift's rules cannot follow; "
        "use captum:IntegratedGradients"
    )
