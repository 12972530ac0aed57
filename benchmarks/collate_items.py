"""What does stacking one batch cost: ``dataset.collate`` over the dataset's per-image items.

Makes N small PNGs (default 64, 224x224), reads each once with ``ImageDataset`` (as a DataLoader worker
does), then times ``collate`` over those items (best of R repeats) and pickling one item and one collated
batch, which is what a DataLoader worker sends to the main process.

    python benchmarks/collate_items.py              # 64 images, 224 px
    python benchmarks/collate_items.py -n 256 -s 64 --repeats 200
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xaibatch.dataset import ImageDataset, collate  # noqa: E402
from xaibatch.scan import scan  # noqa: E402
from xaibatch.tools import synth  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=64, help="images in the batch")
    ap.add_argument("-s", "--size", type=int, default=224, help="input size")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        synth.write_images(folder, args.n, args.size, digits=5, compress_level=0)
        entries = scan(folder, labeled=False).images
        ds = ImageDataset(entries, args.size, want_hash=[True] * len(entries))
        items = [ds[i] for i in range(len(ds))]
        t_collate = best(lambda: collate(items), args.repeats)
        t_item = best(lambda: pickle.dumps(items[0], protocol=pickle.HIGHEST_PROTOCOL), args.repeats)
        batch = collate(items)
        t_batch = best(lambda: pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), args.repeats)
        item_bytes = len(pickle.dumps(items[0], protocol=pickle.HIGHEST_PROTOCOL))
    print(f"{args.n} images, {args.size} px, best of {args.repeats}")
    print(f"collate per batch      {t_collate * 1e3:8.3f} ms  ({t_collate / args.n * 1e6:.1f} us per image)")
    print(f"pickle one item        {t_item * 1e6:8.1f} us  ({item_bytes} bytes)")
    print(f"pickle one batch       {t_batch * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
