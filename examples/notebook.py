"""Explain a classifier in a notebook: look at the maps, then keep them (Jupyter or VS Code ``# %%`` cells).

Runs as a script too (``python examples/notebook.py [FOLDER]``): FOLDER is an ImageFolder such as
``xaibatch demo-data data/demo`` makes (``data/demo/test``); without one, random images stand in. The model
here is an untrained ``resnet18`` (``pretrained=False``): put your own ``nn.Module`` (or a checkpoint path) in.
"""

# %%
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch

import xaibatch

CLASSES = ["FAKE", "REAL"]
folder = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
if folder is not None and folder.is_dir():  # an ImageFolder: the true class of each image is its folder's
    files = [(f, k) for k, c in enumerate(CLASSES) for f in sorted((folder / c).glob("*.png"))[:4]]
    images, labels = [f for f, _ in files], [k for _, k in files]
else:
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = [0, 0, 0, 1, 1, 1]
model = timm.create_model("resnet18", pretrained=False, num_classes=2).train()  # as mid-training

# %% Explain: the prediction, and the true class of every misclassified image ("why this" / "why not the truth")
out = xaibatch.explain(
    model,
    images,
    ["gradcam", "lime"],
    input_size=64,
    classes=CLASSES,
    labels=labels,
    target="pred,label",
    method_options={"lime": {"samples": 200}},
)
assert model.training  # handed back as it came: still training, its gradients untouched, no hooks left
out  # in Jupyter: a grid of overlays (images x methods)

# %% One picture, in the report's colours
out.overlay(0, "gradcam")

# %% What the result knows
print(out)
print("classes", out.classes, "layer", out.layer, "input", out.preprocess.record())
print("predicted", [out.class_name(p) for p in out.preds.tolist()], "misclassified", out.misclassified)
print("versions", dict(out.versions))

# %% Keep it: one folder per image (.npy, overlay and heatmap PNGs) and a manifest.json, written atomically
saved = out.save(Path("outputs") / "notebook-explained", overwrite=True, context={"example": "examples/notebook.py"})
print("saved", saved)
