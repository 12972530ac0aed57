"""Regenerate docs/summary.png and docs/gallery.png: a Grad-CAM run over the demo test split, in headless Chromium.

    python docs/make_screenshots.py                       # the bundled model; --checkpoint for another

Needs /usr/bin/chromium and /usr/bin/chromedriver. The PNGs are palette-quantized to stay well under 300 KB.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from xaibatch.tools.demo import write_demo_data  # noqa: E402
from xaibatch.pipeline import RunOptions, run  # noqa: E402
from xaibatch.tools import chromium  # noqa: E402


def shoot(driver, page: Path, out: Path, width: int, height: int) -> int:
    driver.set_window_size(width, height)
    driver.get(page.resolve().as_uri())
    driver.execute_script("document.querySelectorAll('img').forEach(function (i) { i.loading = 'eager'; });")
    end = time.time() + 10
    while time.time() < end and not driver.execute_script(
        "return Array.prototype.every.call(document.images, i => i.complete)"
    ):
        time.sleep(0.05)
    png = driver.get_screenshot_as_png()
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(out, optimize=True)
    return out.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="xaibatch-shots-")))
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--lime-samples", type=int, default=500)
    args = ap.parse_args()

    data = args.work / "demo"
    write_demo_data(data, train_per_class=1, test_per_class=args.per_class, seed=0)
    out = args.work / "report"
    run(
        RunOptions(
            input_dir=data / "test",
            out_dir=out,
            methods=["gradcam", "guided-gradcam", "lime"],
            checkpoint=args.checkpoint,
            method_options={"lime": {"samples": args.lime_samples}},
        )
    )

    driver = chromium.start(1200, 1000, "--hide-scrollbars")
    try:
        for name, page, size in (
            ("summary.png", out / "index.html", (1200, 1500)),
            ("gallery.png", out / "gallery" / "page-1.html", (1200, 1000)),
        ):
            n = shoot(driver, page, DOCS / name, *size)
            print(f"wrote {DOCS / name} ({n / 1024:.0f} KB)")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
