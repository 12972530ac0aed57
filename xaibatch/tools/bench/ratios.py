"""The bench's ratios: xaibatch against the limits, its own parts and the peers, with the targets it keeps."""

from __future__ import annotations

from .options import FAMILIES, BenchOptions, Ratio, Row


def ratios(rows: list[Row], opts: BenchOptions, lime_bs_rows: list[Row]) -> list[Ratio]:
    def find(family: str, kind: str, startswith: str = "") -> Row | None:
        for r in rows:
            if r.family == family and r.kind == kind and r.impl.startswith(startswith):
                return r
        return None

    out: list[Ratio] = []
    fb = find("limits", "limit", "forward + backward")
    fwd_rows = [r for r in rows if r.family == "limits" and r.impl.startswith("forward only")]
    for fam in FAMILIES:
        ours = find(fam, "xaibatch")
        if ours is None:
            continue
        tensors = find(fam, "xaibatch-tensors")
        peers = [r for r in rows if r.family == fam and r.kind == "peer"]
        best = max(peers, key=lambda r: r.rate) if peers else None
        if fam == "gradcam":
            if fb:
                out.append(Ratio("gradcam end to end / forward+backward limit", ours.rate / fb.rate))
            writer, floor = find(fam, "part", "writer alone"), find(fam, "limit", "file system floor")
            if writer and floor:
                out.append(
                    Ratio(
                        "writer alone / file system floor (atomic writes, no encoding)", writer.rate / floor.rate, 0.8
                    )
                )
            pil_jpeg = find(fam, "part", "loader alone, JPEG, PIL")
            dev_jpeg = find(fam, "part", "loader alone, JPEG, decoded on")
            if pil_jpeg and dev_jpeg:
                out.append(
                    Ratio(
                        f"JPEG loader alone at {opts.image_size} px: decoded on {dev_jpeg.extra['decode_on']} "
                        "/ PIL in the workers",
                        dev_jpeg.rate / pil_jpeg.rate,
                        2.0,
                    )
                )  # --decode auto: PIL below
            batched = find(fam, "peer", "pytorch-grad-cam GradCAM, batches")
            if batched:
                out.append(
                    Ratio(
                        "gradcam end to end / pytorch-grad-cam batched (tensors in memory)",
                        ours.rate / batched.rate,
                        0.8,
                    )
                )
        elif fam == "guided-gradcam":
            if fb:  # Grad-CAM's forward+backward, then guided backprop's own forward+backward
                out.append(Ratio("guided-gradcam end to end / (forward+backward limit / 2)", ours.rate / (fb.rate / 2)))
            each = find(fam, "peer", "pytorch-grad-cam")
            if each:
                out.append(
                    Ratio("guided-gradcam end to end / pytorch-grad-cam guided per image", ours.rate / each.rate, 5.0)
                )
        else:
            if fwd_rows:
                lim = max(r.rate for r in fwd_rows) / opts.lime_samples
                out.append(
                    Ratio(
                        f"lime end to end / (best forward-only rate / {opts.lime_samples} samples)",
                        ours.rate / lim,
                        0.8,
                    )
                )
            pkg = find(fam, "peer", "lime package")
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
        if best is not None:
            out.append(Ratio(f"{fam} end to end / best peer ({best.impl})", ours.rate / best.rate))
        if tensors is not None:
            out.append(Ratio(f"{fam} end to end / xaibatch methods alone on tensors", ours.rate / tensors.rate))
    return out
