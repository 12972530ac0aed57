"""Time ``xaibatch serve`` from upload to maps in headless Chromium, and take docs/serve.png.

    python benchmarks/serve_latency.py                 # the bundled model, 5 rounds per setting
    python benchmarks/serve_latency.py --screenshot docs/serve.png

Per setting: the file is given to the page's upload box, Explain is clicked, and the clock stops when the
answer's pictures have loaded (wall time in the browser, so upload, queue, compute, PNG encoding and rendering
are all in it); "compute" is the server's batch time printed in the answer. Needs gradio (the serve extra),
/usr/bin/chromium and /usr/bin/chromedriver.
"""

from __future__ import annotations

import argparse
import io
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = [("gradcam",), ("guided-gradcam",), ("lime",), ("gradcam", "guided-gradcam", "lime")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lime-samples", type=int, default=1000)
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()

    from selenium.webdriver.common.by import By

    from test_serve import _answer, _browser, _images_loaded, _wait
    from xaibatch.serve.app import launch
    from xaibatch.serve.core import ServeOptions, Service
    from xaibatch.serve.sources import demo_images

    out = Path(tempfile.mkdtemp(prefix="xaibatch-serve-bench-"))
    t0 = time.perf_counter()
    service = Service(ServeOptions(out=out, method_options={"lime": {"samples": args.lime_samples}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = launch(service, port=port, block=False)
    print(f"model loaded and app started in {time.perf_counter() - t0:.1f} s ({served.url})", file=sys.stderr)
    image = out / "demo-fake.png"
    image.write_bytes(next(v for k, v in demo_images().items() if "fake" in k))
    d = _browser()
    try:
        d.get(served.url)
        _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#xb-upload input[type=file]"))
        rows = []
        for setting in SETTINGS:
            for box in d.find_elements(By.CSS_SELECTOR, "#xb-methods input[type=checkbox]"):
                want = box.find_element(By.XPATH, "..").text.strip() in setting
                if box.is_selected() != want:
                    box.click()
            walls, computes = [], []
            for r in range(args.rounds + 1):  # the first round warms up
                for clear in d.find_elements(By.CSS_SELECTOR, "#xb-upload button[aria-label=Clear]"):
                    clear.click()
                _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#xb-upload input[type=file]"))
                old = _answer(d)
                t = time.perf_counter()
                d.find_element(By.CSS_SELECTOR, "#xb-upload input[type=file]").send_keys(str(image))
                _wait(d, lambda d: image.stem in d.find_element(By.ID, "xb-upload").text, 0.01)
                d.find_element(By.ID, "xb-explain").click()
                _wait(d, lambda d: _answer(d) > old and _images_loaded(d), 600)
                wall = time.perf_counter() - t
                text = d.find_element(By.CSS_SELECTOR, "#xb-result .xb-pred").text
                compute = float(re.search(r"([0-9.]+) s\b", text).group(1))
                if r:
                    walls.append(wall)
                    computes.append(compute)
            rows.append((" + ".join(setting), statistics.median(walls), min(walls), statistics.median(computes)))
        if args.screenshot:
            d.set_window_size(1280, 720)
            time.sleep(0.5)
            im = Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB")
            im = im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS)
            im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.screenshot, optimize=True)
            print(f"wrote {args.screenshot} ({args.screenshot.stat().st_size // 1024} KB)", file=sys.stderr)
    finally:
        d.quit()
        served.close()
    print(
        f"| methods (LIME at {args.lime_samples} samples) | upload to maps, median | fastest | "
        "compute on the server, median |"
    )
    print("|---|---|---|---|")
    for name, med, best, comp in rows:
        print(f"| {name} | {med:.2f} s | {best:.2f} s | {comp:.2f} s |")


if __name__ == "__main__":
    main()
