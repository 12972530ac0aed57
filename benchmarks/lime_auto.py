"""Compare LIME runs: samples per image, rank agreement with a reference run, pointing game (docs/benchmarks.md).

    python benchmarks/lime_auto.py INPUT_DIR REFERENCE_OUT OTHER_OUT [OTHER_OUT ...]

Each OUT is an xaibatch output folder of a ``-m lime`` run over INPUT_DIR. Per image, the superpixel
coefficients of both maps (read at the first pixel of each SLIC superpixel, the run's segmentation) give
Spearman's rank correlation and the overlap of the five strongest positive superpixels.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from xaibatch.report.localization import pointing_game
from xaibatch.methods.segmentation import slic_segments


def maps(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    db = sqlite3.connect(out / "xaibatch.sqlite")
    rows = db.execute("SELECT rel, npy, info_json FROM maps WHERE method = 'lime'").fetchall()
    db.close()
    return {rel: (np.load(out / npy), json.loads(info)) for rel, npy, info in rows}


def main(inp: Path, ref_out: Path, others: list[Path]) -> None:
    ref = maps(ref_out)
    fakes = sorted(r for r in ref if r.startswith("FAKE/"))
    segs = {}
    for rel in ref:
        labels = slic_segments(np.asarray(Image.open(inp / rel).convert("RGB")), 50).ravel()
        segs[rel] = [int(np.flatnonzero(labels == j)[0]) for j in range(labels.max() + 1)]
    for out in [ref_out, *others]:
        got = maps(out)
        n = np.array([got[r][1]["samples"] for r in ref])
        noise = np.array([got[r][1]["noise"] or np.inf for r in ref])
        rho, top5 = [], []
        for rel in ref:
            a, b = got[rel][0].ravel()[segs[rel]], ref[rel][0].ravel()[segs[rel]]
            rho.append(spearmanr(a, b)[0])
            top5.append(len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])))
        rho, top5 = np.array(rho), np.array(top5)
        game = pointing_game(out, inp, "lime", fakes)
        print(
            f"{out}: {len(ref)} images; samples mean {n.mean():.0f}, median {np.median(n):.0f}, "
            f"min {n.min()}, max {n.max()}; noise median {np.median(noise):.3f}; "
            f"vs reference: Spearman mean {rho.mean():.3f}, median {np.median(rho):.3f}, "
            f"min {rho.min():.3f}, share >= 0.9 {np.mean(rho >= 0.9):.0%}; top-5 overlap mean {top5.mean():.2f}/5, "
            f"all 5 on {np.mean(top5 == 5):.0%}; pointing game {game}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
