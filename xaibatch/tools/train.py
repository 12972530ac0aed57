"""``xaibatch train``: fit any timm architecture (from scratch) on an ImageFolder split.

Writes xaibatch's checkpoint format, so ``xaibatch run --checkpoint`` needs no
other option. Deterministic for a given seed on the CPU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..dataset import ImageDataset, collate
from ..files import blocked_by_file, make_dirs
from ..scan import scan
from ..errors import InputError, UsageError
from ..model.loading import create, resolve_device, save_checkpoint
from ..preprocess import Preprocess


def save_state_dict(path: Path, model: torch.nn.Module) -> None:
    """Write ``model.state_dict()`` alone (tensors only), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


@dataclass
class TrainResult:
    path: Path
    val_accuracy: float
    test_accuracy: float | None
    epochs: int
    seconds: float
    size_bytes: int


def _splits(data_dir: Path) -> tuple[Path, Path | None]:
    data_dir = Path(data_dir)
    if (data_dir / "train").is_dir():
        test = data_dir / "test"
        return data_dir / "train", test if test.is_dir() else None
    return data_dir, None


def _loader(entries, size, batch_size, shuffle, workers, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ImageDataset(entries, size),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        generator=g,
    )


def _prep(b, labels_of, pre: Preprocess, device):
    x = pre.normalize(b.x, device)
    y = torch.tensor([labels_of[i] for i in b.index], device=device)
    return x, y


@torch.no_grad()
def evaluate(model, loader, labels_of, pre: Preprocess, device) -> float:
    model.eval()
    right = total = 0
    for b in loader:
        if b.x is None:
            continue
        x, y = _prep(b, labels_of, pre, device)
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return right / max(total, 1)


def check_out(out: Path) -> None:
    """Refuse a checkpoint path that cannot be written (a file in its way, a read-only folder); make its folder."""
    if (above := blocked_by_file(out)) is not None:
        raise UsageError(f"cannot write --out {out}: Not a directory ({above})")
    try:
        make_dirs(out.parent)
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: {e.strerror or e}") from None
    if not os.access(out.parent, os.W_OK):  # a read-only file system says so even to root
        raise UsageError(f"cannot write --out {out}: its folder {out.parent} is not writable")


def train(
    data_dir: Path,
    arch: str,
    out: Path,
    image_size: int = 64,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    workers: int = 0,
    log: Callable[[str], None] = print,
    save_format: str = "xaibatch",
) -> TrainResult:
    """Train ``arch``; write xaibatch's checkpoint, or (``save_format="state-dict"``) a plain state_dict that
    ``xaibatch run --model timm:ARCH --classes ... --image-size ...`` loads."""
    t0 = time.time()
    check_out(Path(out))  # before the training, which a checkpoint that cannot be written would waste
    torch.manual_seed(seed)
    dev = resolve_device(device)
    train_dir, test_dir = _splits(data_dir)
    found = scan(train_dir, labeled=True)
    if not found.classes or len(found.classes) < 2:
        raise InputError(f"{train_dir} needs at least two class folders to train on")
    if not 0 < val_fraction < 1:
        raise UsageError("--val-fraction must be between 0 and 1")
    model = create(arch, len(found.classes), img_size=image_size).to(dev)
    pre = Preprocess.for_model(model, image_size)  # the architecture's mean and std, written into the checkpoint

    perm = torch.randperm(len(found.images), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(val_fraction * len(perm))))
    val = [found.images[i] for i in sorted(perm[:n_val])]
    tr = [found.images[i] for i in sorted(perm[n_val:])]
    tr_labels = {i: e.label for i, e in enumerate(tr)}
    val_labels = {i: e.label for i, e in enumerate(val)}
    train_loader = _loader(tr, image_size, batch_size, True, workers, seed)
    val_loader = _loader(val, image_size, 256, False, workers, seed)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(tr) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    log(f"training {arch} at {image_size}px on {len(tr)} images ({len(val)} held out), classes {found.classes}")
    val_acc = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss = seen = 0.0
        for b in train_loader:
            if b.x is None:
                continue
            x, y = _prep(b, tr_labels, pre, dev)
            flip = torch.rand(len(x), device=dev) < 0.5  # the one augmentation that keeps evidence intact
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
        val_acc = evaluate(model, val_loader, val_labels, pre, dev)
        log(f"epoch {epoch}/{epochs}: loss {total_loss / max(seen, 1):.4f}, val accuracy {100 * val_acc:.1f}%")

    test_acc = None
    if test_dir is not None:
        test = scan(test_dir, labeled=True)
        if test.classes == found.classes:
            test_labels = {i: e.label for i, e in enumerate(test.images)}
            test_acc = evaluate(
                model, _loader(test.images, image_size, 256, False, workers, seed), test_labels, pre, dev
            )
            log(f"test accuracy on {test_dir}: {100 * test_acc:.2f}% ({len(test.images)} images)")
    meta = {
        "data": str(data_dir),
        "epochs": epochs,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "seed": seed,
        "train_images": len(tr),
        "val_images": len(val),
    }
    if save_format == "state-dict":
        save_state_dict(out, model)
    else:
        save_checkpoint(out, model, arch, found.classes, image_size, pre.mean, pre.std, meta)
    return TrainResult(Path(out), val_acc, test_acc, epochs, time.time() - t0, Path(out).stat().st_size)
