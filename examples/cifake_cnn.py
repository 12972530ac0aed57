"""A CIFAKE-style detector of your own: a small CNN with ONE output logit (P(REAL) = sigmoid(z)).

Train it (a plain state_dict, as most projects save theirs) and explain it with xaibatch::

    xaibatch demo-data data/demo
    python examples/cifake_cnn.py data/demo/train models/cnn.pt --epochs 5
    xaibatch run data/demo/test --model examples/cifake_cnn.py:build --checkpoint models/cnn.pt \\
        -m gradcam -m guided-gradcam -m lime --threshold 0.5 --out outputs/demo-cnn

``build`` is the factory ``--model`` calls (with no arguments). ``pretrained_cfg`` tells xaibatch how the
network wants its input: 32x32 pixels scaled to [0, 1] (mean 0, std 1), as Keras' ``Rescaling(1/255)`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


class CifakeCNN(nn.Module):
    """Conv-ReLU-Pool twice, then a dense layer and one logit, like the CIFAKE paper's baseline."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 1))
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """The factory for ``xaibatch run --model examples/cifake_cnn.py:build``."""
    return CifakeCNN()


def load_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images of an ImageFolder (``FAKE/``, ``REAL/``) as a [0, 1] tensor, labels 0/1 by sorted class name."""
    import numpy as np
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
            img = Image.open(f).convert("RGB").resize((32, 32))
            xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.float32), classes


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 5, seed: int = 0) -> nn.Module:
    """Fit with binary cross-entropy on the one logit (Adam, batches of 32)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the example CNN and save its state_dict.")
    ap.add_argument("train_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    x, y, classes = load_folder(args.train_dir)
    model = train(build(), x, y, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"classes {classes} (the logit is P({classes[1]})); wrote {args.out}")


if __name__ == "__main__":
    main()
