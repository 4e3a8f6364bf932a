"""How fast explore.py is, as a user sees it: its start-up, and pointer-to-image latency.

    python benchmarks/explore_speed.py RUN_DIR [--moves=200] [--starts=3]

Start-up: from launching `python explore.py RUN_DIR` to the first answer of the page's data
(/api/latents), timed once with the latents' cache removed (the first start computes them) and
then --starts times with it. Latency: headless Chromium (/usr/bin/chromium, through Playwright)
moves the pointer over the latent plane --moves times, and the page times each move from the
pointer event to the decoded image drawn on its canvas. Reported, not asserted.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def start(run_dir):
    """(process, address, seconds from launch until /api/latents answered)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "explore.py"), run_dir,
                                "--port=0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        found = re.search(r"at (http://\S+/) ", line)
        if found:
            address = found.group(1)
            with urllib.request.urlopen(address + "api/latents", timeout=120) as response:
                response.read()
            return process, address, time.perf_counter() - started
    raise SystemExit("explore.py did not start")


def pointer_latencies(address, moves):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(address)
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        box = page.locator("#plane").bounding_box()
        for move in range(moves):
            count = page.evaluate("window.explorerLatencies.length")
            # A sweep back and forth across the plane, as a hand moving the mouse makes.
            x = box["x"] + 20 + (move * 37) % int(box["width"] - 40)
            y = box["y"] + 20 + (move * 53) % int(box["height"] - 40)
            page.mouse.move(x, y)
            page.wait_for_function(f"window.explorerLatencies.length > {count}")
        latencies = page.evaluate("window.explorerLatencies")
        browser.close()
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    cache = os.path.join(args.run_dir, "explorer_cache.npz")
    if os.path.exists(cache):
        os.remove(cache)
    seconds = []
    for attempt in range(args.starts + 1):
        process, address, took = start(args.run_dir)
        seconds.append(took)
        if attempt < args.starts:
            process.terminate()
            process.wait()
    print(f"start-up until the page's data answers: first (latents computed) {seconds[0]:.1f} s; "
          f"with the cache: median {statistics.median(seconds[1:]):.1f} s "
          f"({', '.join(f'{s:.1f}' for s in seconds[1:])})")
    try:
        latencies = sorted(pointer_latencies(address, args.moves))
    finally:
        process.terminate()
    print(f"pointer to decoded image over {len(latencies)} moves: median "
          f"{statistics.median(latencies):.1f} ms, 90th percentile "
          f"{latencies[int(0.9 * len(latencies))]:.1f} ms, largest {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
