"""The bench's ratios: xaibatch against the limits, its own parts and the peers, with the targets it keeps."""

from __future__ import annotations

from .options import FAMILIES, BenchOptions, Ratio, Row


def ratios(rows: list[Row], opts: BenchOptions) -> list[Ratio]:
    """Every ratio the bench prints, in table order: per family, then against its best peer and its tensors row."""
    out: list[Ratio] = []
    for fam in FAMILIES:
        ours = _find(rows, fam, "xaibatch")
        if ours is None:
            continue
        if fam == "gradcam":
            out += _gradcam(rows, ours, opts)
        elif fam == "guided-gradcam":
            out += _guided_gradcam(rows, ours)
        else:
            out += _lime(rows, ours, opts)
        peers = [r for r in rows if r.family == fam and r.kind == "peer"]
        if peers:
            best = max(peers, key=lambda r: r.rate)
            out.append(Ratio(f"{fam} end to end / best peer ({best.impl})", ours.rate / best.rate))
        tensors = _find(rows, fam, "xaibatch-tensors")
        if tensors is not None:
            out.append(Ratio(f"{fam} end to end / xaibatch methods alone on tensors", ours.rate / tensors.rate))
    return out


def _find(rows: list[Row], family: str, kind: str, startswith: str = "") -> Row | None:
    """The first row of ``family`` and ``kind`` whose implementation starts with ``startswith``."""
    for r in rows:
        if r.family == family and r.kind == kind and r.impl.startswith(startswith):
            return r
    return None


def _gradcam(rows: list[Row], ours: Row, opts: BenchOptions) -> list[Ratio]:
    """Grad-CAM end to end against forward+backward and the batched peer; the writer and the JPEG loader."""
    out: list[Ratio] = []
    fb = _find(rows, "limits", "limit", "forward + backward")
    if fb:
        out.append(Ratio("gradcam end to end / forward+backward limit", ours.rate / fb.rate))
    writer = _find(rows, "gradcam", "part", "writer alone")
    floor = _find(rows, "gradcam", "limit", "file system floor")
    if writer and floor:
        out.append(
            Ratio("writer alone / file system floor (atomic writes, no encoding)", writer.rate / floor.rate, 0.8)
        )
    pil_jpeg = _find(rows, "gradcam", "part", "loader alone, JPEG, PIL")
    dev_jpeg = _find(rows, "gradcam", "part", "loader alone, JPEG, decoded on")
    if pil_jpeg and dev_jpeg:
        out.append(
            Ratio(
                f"JPEG loader alone at {opts.image_size} px: decoded on {dev_jpeg.extra['decode_on']} "
                "/ PIL in the workers",
                dev_jpeg.rate / pil_jpeg.rate,
                2.0,
            )
        )  # --decode auto: PIL below
    batched = _find(rows, "gradcam", "peer", "pytorch-grad-cam GradCAM, batches")
    if batched:
        out.append(
            Ratio("gradcam end to end / pytorch-grad-cam batched (tensors in memory)", ours.rate / batched.rate, 0.8)
        )
    return out


def _guided_gradcam(rows: list[Row], ours: Row) -> list[Ratio]:
    """Guided Grad-CAM end to end against two forward+backward passes and the per-image peer."""
    out: list[Ratio] = []
    fb = _find(rows, "limits", "limit", "forward + backward")
    if fb:  # Grad-CAM's forward+backward, then guided backprop's own forward+backward
        out.append(Ratio("guided-gradcam end to end / (forward+backward limit / 2)", ours.rate / (fb.rate / 2)))
    each = _find(rows, "guided-gradcam", "peer", "pytorch-grad-cam")
    if each:
        out.append(Ratio("guided-gradcam end to end / pytorch-grad-cam guided per image", ours.rate / each.rate, 5.0))
    return out


def _lime(rows: list[Row], ours: Row, opts: BenchOptions) -> list[Ratio]:
    """LIME end to end against the forward-only rate over its samples and the lime package; its time outside
    the model."""
    out: list[Ratio] = []
    fwd_rows = [r for r in rows if r.family == "limits" and r.impl.startswith("forward only")]
    if fwd_rows:
        lim = max(r.rate for r in fwd_rows) / opts.lime_samples
        out.append(
            Ratio(f"lime end to end / (best forward-only rate / {opts.lime_samples} samples)", ours.rate / lim, 0.8)
        )
    pkg = _find(rows, "lime", "peer", "lime package")
    if pkg:
        out.append(Ratio("lime end to end / lime package", ours.rate / pkg.rate, 1.0))
    ms = ours.extra.get("model_seconds")
    if ms is not None:
        out.append(
            Ratio(
                "lime: share of the compute phase outside the model's forward",
                100 * max(0.0, 1 - ms / ours.seconds),
                10.0,
                at_most=True,
                unit="%",
            )
        )
    return out
