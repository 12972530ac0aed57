"""``xaibatch train``: fit any timm architecture (from scratch) on an ImageFolder split.

Writes xaibatch's checkpoint format, so ``xaibatch run --checkpoint`` needs no
other option. Deterministic for a given seed on the CPU.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..dataset import ImageDataset, collate, collate_piped
from ..files import blocked_by_file, make_dirs
from ..scan import ImageEntry, Scan, file_kind, printable, scan
from ..errors import InputError, Interrupted, UsageError, interrupted_by, out_of_memory
from ..model.loading import check_patches, create, resolve_device, save_atomically, save_checkpoint
from ..pipeline.loader import (
    handover,
    handover_warning,
    more_workers_than_cpus,
    until_stopped,
    worker_context,
    worker_init,
)
from ..pipeline.signals import Stop
from ..preprocess import Preprocess


def save_state_dict(path: Path, model: torch.nn.Module) -> None:
    """Write ``model.state_dict()`` alone (tensors only), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)


@dataclass
class TrainResult:
    path: Path
    val_accuracy: float | None  # None: no held-out image could be read
    test_accuracy: float | None  # None: no test split, or none of its images could be read
    epochs: int
    seconds: float
    size_bytes: int
    classes: list[str]  # in the model's output order


def _splits(data_dir: Path) -> tuple[Path, Path | None]:
    data_dir = Path(data_dir)
    if (data_dir / "train").is_dir():
        test = data_dir / "test"
        return data_dir / "train", test if test.is_dir() else None
    return data_dir, None


def _loader(entries, size, batch_size, shuffle, workers, seed, log=lambda line: None):
    g = torch.Generator().manual_seed(seed)
    dataset = ImageDataset(entries, size)
    piped = handover(workers, batch_size * dataset.tensor_bytes())  # as a run's: /dev/shm, a temporary folder
    if piped is not None:
        log(handover_warning(piped))
    with more_workers_than_cpus():
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate if piped is None else collate_piped,
            generator=g,
            # a stop signal (Ctrl-C, a closed terminal) is the main process's to handle; workers die with it
            worker_init_fn=functools.partial(worker_init, parent=os.getpid()) if workers else None,
            multiprocessing_context=worker_context(workers),
        )


@dataclass
class Feed:
    """Labeled images on their way to the model: their loader, and each batch normalized with its labels.

    A stop signal (``stop``: Ctrl-C, SIGTERM, a closed terminal) ends the iteration between batches with
    KeyboardInterrupt, raised here rather than from the signal handler: an exception thrown into the middle of
    the DataLoader's own code (starting its queue threads, joining its workers) could leave it waiting forever.

    An image that cannot be read is left out of its batch and noted in ``unreadable`` (its path under the split,
    the reason), for train to say so: the counts it prints would otherwise include images nobody saw."""

    loader: torch.utils.data.DataLoader
    labels: dict[int, int]  # dataset index -> class index
    pre: Preprocess
    device: torch.device
    stop: Stop
    rels: list[str] = field(default_factory=list)  # dataset index -> path under the split
    unreadable: dict[str, str] = field(default_factory=dict)  # path under the split -> why it could not be read

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = until_stopped(self.loader, self.stop)  # a signal while waiting for a batch ends the wait at once
        try:
            for b in batches:
                if self.stop.requested:
                    break
                b.tensors()  # a batch that crossed a pipe as arrays (_loader)
                for i, why in b.failed:
                    self.unreadable[self.rels[i] if i < len(self.rels) else str(i)] = why
                if b.x is None:
                    continue
                x = self.pre.normalize(b.x, self.device)
                yield x, torch.tensor([self.labels[i] for i in b.index], device=self.device)
        finally:
            batches.close()  # a loader left early has its workers killed, not joined
        if self.stop.requested:
            raise self.stop.interrupt()


def scan_split(folder: Path) -> Scan:
    """The class folders of one split; a layout train cannot read is refused with train's own advice (it has no
    ``--unlabeled``, which run's messages offer)."""
    try:
        return scan(folder, labeled=True)
    except InputError as e:
        raise InputError(_NO_UNLABELED.sub("", str(e))) from None


_NO_UNLABELED = re.compile(r",? or pass --unlabeled")


def scan_test_split(folder: Path, classes: list[str]) -> Scan:
    """The test split, its labels numbered as the training classes (folders matched as a run matches them: exactly,
    else by case; a test split may lack a class). Checked before the training: a test folder that cannot be scored
    (empty, loose images, a class the training split does not have) ended a finished training with an error and no
    checkpoint, and one whose folders differed from train's in case or number was passed over without a word."""
    try:
        return scan(folder, labeled=True).numbered_by(classes)
    except InputError as e:
        why = _NO_UNLABELED.sub("", str(e)).replace("the model's classes", "the training classes")
        raise InputError(
            f"cannot score the test split {folder}: {why} (or move it aside to train without a test accuracy)"
        ) from None


def hold_out(images: list[ImageEntry], fraction: float, seed: int) -> tuple[list[ImageEntry], list[ImageEntry]]:
    """Training and validation images: a seeded ``fraction`` (at least one image) held out, both in scan order."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(fraction * len(perm))))
    return [images[i] for i in sorted(perm[n_val:])], [images[i] for i in sorted(perm[:n_val])]


def unseen_classes(found: Scan, training: list[ImageEntry]) -> dict[str, int]:
    """The classes none of whose images is among ``training`` (a class of one image held out), with their sizes."""
    sizes = collections.Counter(e.label for e in found.images)
    seen = {e.label for e in training}
    return {c: sizes[k] for k, c in enumerate(found.classes or []) if k not in seen}


def compiler_cache_without_tempdir(out: Path) -> None:
    """torch.optim imports torch._dynamo, which makes its cache folder ($TMPDIR/torchinductor_USER) as it is
    imported: in a container with a read-only root and no TMPDIR, train failed with "No usable temporary directory
    found". Training compiles nothing, so then the cache is named after the checkpoint's folder, which exists
    (nothing is written there: torch only checks that it does). A TORCHINDUCTOR_CACHE_DIR of the user's wins."""
    import tempfile

    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(out).resolve().parent)


def train_epoch(model: torch.nn.Module, feed: Feed, opt: torch.optim.Optimizer, sched) -> float | None:
    """One pass over the training images, each flipped left-right at random; the mean loss (None: no step ran).

    A batch of one image is passed over when the model has batch norm layers, which cannot train on one value
    per channel ("Expected more than 1 value per channel when training"): 65 training images in batches of 64
    ended every epoch that way, and train stopped with an internal error in its first epoch."""
    model.train()
    batch_norm = has_batch_norm(model)
    total_loss = seen = 0.0
    for x, y in feed:
        if batch_norm and len(y) < 2:
            continue
        flip = torch.rand(len(x), device=feed.device) < 0.5  # the one augmentation that keeps evidence intact
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
    return total_loss / seen if seen else None


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def evaluate(model: torch.nn.Module, feed: Feed) -> float | None:
    """The share of ``feed``'s images the model gets right; None when none of them could be read (not 0 %)."""
    model.eval()
    right = total = 0
    for x, y in feed:
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return right / total if total else None


def accuracy_text(accuracy: float | None, digits: int = 1) -> str:
    """An accuracy as train prints it: a percentage, or why there is none (evaluate's None)."""
    return (
        f"{100 * accuracy:.{digits}f}%" if accuracy is not None else "not measured (none of its images could be read)"
    )


def check_runs_at(model: torch.nn.Module, arch: str, size: int, device: torch.device) -> None:
    """Refuse, before any image is read, an --image-size the architecture cannot run at: one its patches would cut
    (run refuses such a checkpoint: the whole training was wasted), or one too small for its layers ("Kernel size
    can't be greater than actual input size": an internal error, exit 3, in the first epoch). A forward of two
    black images in eval mode: no weight, statistic or random state changes."""
    check_patches(model, f"--arch {arch}", size)
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=device))
    except RuntimeError as e:
        if out_of_memory(e) is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise UsageError(
            f"--arch {arch} does not run at --image-size {size}: {type(e).__name__}: {first}; try a larger --image-size"
        ) from None


# what an older torch.save (before its zip format) writes first: its magic number, pickled
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` is a file torch.save wrote: a zip archive with its ``<name>/data.pkl`` (a .docx, .xlsx or
    .jar is a zip archive too), or an older torch's pickle that starts with its magic number (any other pickle is
    not). Raises OSError when it cannot be read."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(LEGACY_TORCH_MAGIC):
        return True
    if not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.count("/") == 1 and n.endswith("/data.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def check_replaceable(out: Path) -> None:
    """An existing --out is replaced (renamed over) at the end: only a regular file that is empty or a PyTorch file.
    ``--out /dev/null`` (to see the accuracies only) replaced the device with a 45 MB file when run as root, and a
    typo (``--out notes.txt``, an image of the data set) replaced the user's file without a word."""
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(
            f"--out {out} is {file_kind(st)}, not a file a checkpoint may replace; give the checkpoint a file name"
        )
    try:
        ours = st.st_size == 0 or is_torch_file(out)
    except OSError as e:
        raise UsageError(f"cannot read --out {out} to check it is a checkpoint: {e.strerror or e}") from None
    if not ours:
        raise UsageError(
            f"--out {out} exists and is not a PyTorch file; train replaces only an earlier checkpoint: give "
            "another name, or move that file away"
        )


def check_out(out: Path) -> None:
    """Refuse a checkpoint path that cannot be written (a file in its way, a read-only folder) or that holds what a
    checkpoint must not replace; make its folder."""
    if (above := blocked_by_file(out)) is not None:
        raise UsageError(f"cannot write --out {out}: Not a directory ({above})")
    check_replaceable(out)
    try:
        make_dirs(out.parent)
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: {e.strerror or e}") from None
    try:  # a file made and removed: os.access says yes to root on a read-only file system or in /proc
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: its folder {out.parent} is not writable ({e.strerror or e})")


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
    stop: Stop | None = None,
) -> TrainResult:
    """Train ``arch``; write xaibatch's checkpoint, or (``save_format="state-dict"``) a plain state_dict that
    ``xaibatch run --model timm:ARCH --classes ... --image-size ...`` loads. ``stop`` (see
    :func:`~xaibatch.pipeline.signals.catch_signals`) ends the training after the batch under way; the model of
    the last finished epoch is then written."""
    stop = stop if stop is not None else Stop()
    t0 = time.monotonic()
    check_out(Path(out))  # before the training, which a checkpoint that cannot be written would waste
    torch.manual_seed(seed)
    dev = resolve_device(device)
    train_dir, test_dir = _splits(data_dir)
    found = scan_split(train_dir)
    if not found.classes or len(found.classes) < 2:
        raise InputError(f"{train_dir} needs at least two class folders to train on")
    test = scan_test_split(test_dir, found.classes) if test_dir is not None else None  # before the epochs it would end
    if not 0 < val_fraction < 1:
        raise UsageError("--val-fraction must be between 0 and 1")
    model = create(arch, len(found.classes), img_size=image_size, seed=None).to(dev)  # from --seed, set above
    check_runs_at(model, arch, image_size, dev)
    if batch_size < 2 and has_batch_norm(model):  # every step would be passed over: a model saved untrained
        raise UsageError(
            f"--batch-size 1: --arch {arch} has batch norm layers, which cannot train on one image per step; "
            "use --batch-size 2 or more"
        )
    pre = Preprocess.for_model(model, image_size)  # the architecture's mean and std, written into the checkpoint

    said: list[str] = []

    def say_once(line: str) -> None:  # the training and validation loaders' warning: the first is enough
        if not said:
            said.append(line)
            log(line)

    def feed(entries: list[ImageEntry], batch_size: int, shuffle: bool = False) -> Feed:
        loader = _loader(entries, image_size, batch_size, shuffle, workers, seed, say_once)
        return Feed(loader, {i: e.label for i, e in enumerate(entries)}, pre, dev, stop, [e.rel for e in entries])

    tr, val = hold_out(found.images, val_fraction, seed)
    train_feed, val_feed = feed(tr, batch_size, shuffle=True), feed(val, 256)
    compiler_cache_without_tempdir(out)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(tr) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    log(f"training {arch} at {image_size}px on {len(tr)} images ({len(val)} held out), classes {found.classes}")
    for name, n in unseen_classes(found, tr).items():
        log(
            f"warning: class {printable(name)!r} has no image to train on (its {n} image(s) are held out for "
            "validation): the model cannot learn it; add images of it, or try another --seed"
        )
    last = Finished(0, None, None)
    test_acc, by = None, None
    try:
        for epoch in range(1, epochs + 1):
            loss = train_epoch(model, train_feed, opt, sched)
            if loss is None:  # nothing trained: saved, it would pass for a trained model
                raise UsageError(f"no training step ran in epoch {epoch}: {no_step(tr, train_feed, model)}")
            val_acc = evaluate(model, val_feed)
            last = Finished(
                epoch, val_acc, cpu_copy(model) if epoch < epochs else None
            )  # one store: a stop sees either
            if epoch == 1:
                note_unreadable(log, {**train_feed.unreadable, **val_feed.unreadable}, train_dir)
            log(f"epoch {epoch}/{epochs}: loss {loss:.4f}, val accuracy {accuracy_text(val_acc)}")

        if test is not None:
            test_feed = feed(test.images, 256)
            test_acc = evaluate(model, test_feed)
            scored = len(test.images) - len(test_feed.unreadable)
            log(f"test accuracy on {test_dir}: {accuracy_text(test_acc, 2)} ({scored} images)")
            note_unreadable(log, test_feed.unreadable, test_dir)
    except KeyboardInterrupt as e:  # from a Feed that saw a stop signal, or a second signal (catch_signals)
        by = interrupted_by(e)
        if last.epoch == 0:
            kept = f" ({out} is as it was)" if Path(out).exists() else ""
            raise Interrupted(
                f"{by} in epoch 1/{epochs}: no checkpoint written{kept}; the same command again starts over"
            ) from None
        if last.state is not None:
            model.load_state_dict(last.state)  # the weights of the last finished epoch, not a half-done one
    meta = {
        "data": str(data_dir),
        "epochs": last.epoch,
        "val_accuracy": last.val_accuracy,
        "test_accuracy": test_acc,
        "seed": seed,
        "train_images": len(tr) - len(train_feed.unreadable),  # the images read: those it learnt from
        "val_images": len(val) - len(val_feed.unreadable),
    }
    if unreadable := len(train_feed.unreadable) + len(val_feed.unreadable):
        meta["unreadable_images"] = unreadable
    if last.epoch < epochs:
        meta["epochs_planned"] = epochs  # the record of an interrupted training
    if save_format == "state-dict":
        save_state_dict(out, model)
    else:
        save_checkpoint(out, model, arch, found.classes, image_size, pre.mean, pre.std, meta)
    if by is not None and last.epoch < epochs:
        raise Interrupted(
            f"{by} in epoch {last.epoch + 1}/{epochs}: wrote {out}, the model after epoch {last.epoch} "
            f"(val accuracy {accuracy_text(last.val_accuracy)}), which run explains as any checkpoint; train does not "
            f"resume: the same command again trains all {epochs} epochs from the start"
        )
    if by is not None:
        raise Interrupted(f"{by} during the test-set evaluation: wrote {out}, the model after all {epochs} epochs")
    size = Path(out).stat().st_size
    return TrainResult(Path(out), last.val_accuracy, test_acc, epochs, time.monotonic() - t0, size, list(found.classes))


def no_step(images: list[ImageEntry], feed: Feed, model: torch.nn.Module) -> str:
    """Why an epoch over ``images`` ran no step: none could be read, or too few for a model with batch norm."""
    read = len(images) - len(feed.unreadable)
    if not read:
        return f"none of the {len(images)} training image(s) could be read"
    return (
        f"{read} training image(s), and a model with batch norm trains on at least 2 per step; add images, or "
        "lower --val-fraction"
        if has_batch_norm(model)
        else f"{read} training image(s) gave no batch"
    )


def note_unreadable(log: Callable[[str], None], unreadable: dict[str, str], split: Path, limit: int = 5) -> None:
    """Say which images of ``split`` could not be read and were left out (the first ``limit``, as a run lists them)."""
    if not unreadable:
        return
    lines = [f"  {printable(rel)}: {why}" for rel, why in sorted(unreadable.items())[:limit]]
    more = [f"  ... and {len(unreadable) - limit} more"] if len(unreadable) > limit else []
    log("\n".join([f"{len(unreadable)} image(s) in {split} could not be read and are left out:", *lines, *more]))


@dataclass(frozen=True)
class Finished:
    """The last finished epoch: its number, validation accuracy, and its weights on the CPU while a later epoch
    may still change the model's (None after the last epoch)."""

    epoch: int
    val_accuracy: float | None
    state: dict[str, torch.Tensor] | None


def cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
