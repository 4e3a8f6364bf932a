"""explore.py in a real browser (headless Chromium driven by Playwright), and its server's rules."""

import csv
import http.client
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse

import numpy as np
import pytest

from conftest import (
    ROOT,
    fake_mnist_arrays,
    require_file,
    require_module,
    run_script,
    write_images,
)

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless; never a browser Playwright would download. Without either,
    the browser tests are skipped (fail under CI)."""
    require_module("playwright", "pip install -r requirements-dev.txt")
    require_file(CHROMIUM, "Chromium", "apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


def start_explorer(run_dir):
    """explore.py on a free port: (process, its address, seconds until it said it was ready)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "explore.py"), str(run_dir),
                                "--port=0"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        found = re.search(r"at (http://\S+/) ", line)
        if found:
            return process, found.group(1), time.perf_counter() - started
    raise AssertionError(f"explore.py did not start: {process.stderr.read()[-3000:]}")


@pytest.fixture(scope="module")
def grey_explorer(finished_run):
    """explore.py on the short fake-MNIST run, or on the grey run $EXPLORE_RUN_DIR names (how
    the README's screenshot was taken, on a real run)."""
    run_dir = os.environ.get("EXPLORE_RUN_DIR") or finished_run[0]
    files_before = sorted(os.listdir(run_dir))
    process, address, seconds = start_explorer(run_dir)
    print(f"\nexplore.py ready after {seconds:.1f} s (first start, latents computed)")
    yield run_dir, address
    process.terminate()
    process.wait(timeout=30)
    # The only file it may write into the run folder is its cache.
    assert sorted(set(os.listdir(run_dir)) - set(files_before)) in ([], ["explorer_cache.npz"])


def open_page(browser, address):
    """A new page at address, ready, and the console errors it logs."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(address)
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    return page, errors


def screenshot(page, name, tmp_path):
    """Into tmp_path, and also into $EXPLORE_SCREENSHOTS when set (the README's picture)."""
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("EXPLORE_SCREENSHOTS"):
        os.makedirs(os.environ["EXPLORE_SCREENSHOTS"], exist_ok=True)
        shutil.copy(tmp_path / name, os.path.join(os.environ["EXPLORE_SCREENSHOTS"], name))


def move_and_wait(page, x, y):
    """Move the pointer over the plane, and wait for the image decoded there."""
    return timed_move(page, x, y)[0]


def timed_move(page, x, y):
    """(the image decoded under the pointer moved to x, y, as a data URL; the latency the page
    recorded for that move, ms; the time from the move's start to the test's seeing the
    image, as measured here, ms)."""
    count = page.evaluate("window.explorerLatencies.length")
    box = page.locator("#plane").bounding_box()
    started = time.perf_counter()
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_function(f"window.explorerLatencies.length > {count}")
    seen = 1000 * (time.perf_counter() - started)
    latency = page.evaluate(f"window.explorerLatencies[{count}]")
    return page.evaluate("document.getElementById('decoded').toDataURL()"), latency, seen


def wait_for_score(page, title):
    page.wait_for_function("document.getElementById('selected-title').textContent"
                           f".startsWith({title!r})")
    return float(page.locator("#score-value").inner_text())


@pytest.mark.browser
def test_the_page_loads_and_decodes_under_the_pointer(browser, grey_explorer, tmp_path):
    page, errors = open_page(browser, grey_explorer[1])
    first = move_and_wait(page, 60, 60)
    second = move_and_wait(page, 500, 480)
    assert first != second  # two points of the plane decode to two images
    for step in range(30):  # the pointer-to-image latency, as a user moving the mouse sees it
        _, latency, seen = timed_move(page, 100 + 12 * step, 300)
        # The page's clock runs from the pointer event to the image drawn: within what the test
        # saw from moving the mouse to finding the image, and at least the round trip of a
        # decode through the local server (a millisecond or more; not seconds taken for ms).
        assert 1 <= latency <= seen + 1, (latency, seen)
    latencies = page.evaluate("window.explorerLatencies")
    assert len(latencies) == 32
    # What the page shows is the median of what it recorded (the upper middle of an even count).
    shown = re.search(r"median ([0-9.]+) ms over (\d+) moves",
                      page.locator("#latency").inner_text())
    assert shown and int(shown.group(2)) == 32
    assert float(shown.group(1)) == pytest.approx(sorted(latencies)[16], abs=0.051)
    print(f"\npointer to decoded image: median {np.median(latencies):.1f} ms, "
          f"90th percentile {np.percentile(latencies, 90):.1f} ms over {len(latencies)} moves")
    screenshot(page, "explore_grey.png", tmp_path)
    assert errors == []


@pytest.mark.browser
def test_an_uploaded_png_gets_the_score_that_score_py_gives(browser, grey_explorer, tmp_path):
    run_dir, address = grey_explorer
    write_images(tmp_path / "digits", fake_mnist_arrays()["x_test"][:1])
    path = os.environ.get("EXPLORE_UPLOAD") or str(tmp_path / "digits" / "000.png")
    page, errors = open_page(browser, address)
    page.locator("#file").set_input_files(path)
    shown = wait_for_score(page, f"Your image: {os.path.basename(path)}")
    move_and_wait(page, 320, 200)
    screenshot(page, "explore_upload.png", tmp_path)
    result = run_script("score.py", str(run_dir), path, f"--out={tmp_path / 'scores.csv'}")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "scores.csv") as f:
        row = next(csv.DictReader(f))
    assert shown == pytest.approx(float(row["negative_elbo_nats"]), abs=0.01)
    assert float(page.locator("#percentile-value").inner_text()) == pytest.approx(
        float(row["percentile"]), abs=0.1)
    assert errors == []


@pytest.mark.browser
def test_a_drawing_gets_a_score(browser, grey_explorer):
    page, errors = open_page(browser, grey_explorer[1])
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 110, box["y"] + 40)
    page.mouse.down()
    for x, y in ((110, 100), (112, 160), (115, 190)):  # a stroke down the middle: a 1
        page.mouse.move(box["x"] + x, box["y"] + y, steps=5)
    page.mouse.up()
    page.locator("#score-drawing").click()
    assert np.isfinite(wait_for_score(page, "Your image: your drawing"))
    assert errors == []


@pytest.mark.browser
def test_a_corrupt_upload_shows_a_message_and_the_server_goes_on(browser, grey_explorer):
    page, _ = open_page(browser, grey_explorer[1])
    page.locator("#file").set_input_files(
        {"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image at all"})
    page.wait_for_selector("#message:not([hidden])")
    assert "cannot be read as an image" in page.locator("#message").inner_text()
    assert "Traceback" not in page.content()
    assert request(grey_explorer[1], "GET", "/api/info")[0] == 200
    move_and_wait(page, 200, 200)  # and the page still decodes


def request(address, method, path, body=None):
    """(status, body) of one raw HTTP request: the path goes out exactly as written."""
    parts = urllib.parse.urlsplit(address)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request(method, path, body=body)
    response = connection.getresponse()
    return response.status, response.read()


@pytest.mark.parametrize("path", ["/../config.json", "/page/../explore.py", "/%2e%2e/train.py",
                                  "/page/../../README.md", "/run/config.json",
                                  "/run/cvae.weights.h5", "/run/../config.json", "/explore.py"])
def test_only_its_own_files_and_the_run_figures_are_served(grey_explorer, path):
    status, body = request(grey_explorer[1], "GET", path)
    assert status == 404 and b"Nothing is served" in body


def raw_request(address, lines):
    """The status line's code of a request written by hand, byte for byte."""
    import socket

    parts = urllib.parse.urlsplit(address)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
        connection.sendall("\r\n".join(lines).encode() + b"\r\n\r\n")
        return int(connection.recv(4096).split(b" ")[1])


def test_a_request_for_another_host_name_or_with_a_bad_length_is_refused(grey_explorer):
    port = urllib.parse.urlsplit(grey_explorer[1]).port
    # A page of some other site, its name pointed at 127.0.0.1 (DNS rebinding), gets nothing.
    assert raw_request(grey_explorer[1], ["GET /api/latents HTTP/1.1",
                                          f"Host: attacker.example:{port}"]) == 403
    assert raw_request(grey_explorer[1], ["POST /api/score HTTP/1.1", f"Host: 127.0.0.1:{port}",
                                          "Content-Length: -1"]) == 400
    assert request(grey_explorer[1], "GET", "/api/info")[0] == 200


def test_what_it_serves(grey_explorer):
    address = grey_explorer[1]
    for path in ("/", "/page/page.js", "/page/page.css", "/run/latent_space.png"):
        assert request(address, "GET", path)[0] == 200, path
    status, body = request(address, "POST", "/api/score", b"\0" * (20 * 2**20 + 1))
    assert status == 413 and b"limited to 20 MB" in body


# rgb_run and conditional_run: conftest.py's, trained once for this module and test_use_a_run.py.
@pytest.mark.browser
def test_an_rgb_run_with_three_latent_dimensions(browser, rgb_run, tmp_path):
    process, address, _ = start_explorer(rgb_run)
    try:
        page, errors = open_page(browser, address)
        assert page.locator("#sliders input").count() == 1  # the dimension not on the plane
        assert not page.locator("#draw-box").is_visible()  # drawing is for grey runs
        move_and_wait(page, 280, 280)
        path = rgb_run.parent / "squares" / "a" / "000.png"
        page.locator("#file").set_input_files(str(path))
        assert np.isfinite(wait_for_score(page, "Your image: 000.png"))
        screenshot(page, "explore_rgb.png", tmp_path)
        assert errors == []
    finally:
        process.terminate()


@pytest.mark.browser
def test_a_conditional_run_has_a_class_selector(browser, conditional_run, tmp_path):
    process, address, _ = start_explorer(conditional_run[0])
    try:
        page, errors = open_page(browser, address)
        assert page.locator("#class-select option").count() == 10
        page.locator("#class-select").select_option("3")
        move_and_wait(page, 280, 280)
        page.locator("#path-mode").check()
        box = page.locator("#plane").bounding_box()
        page.mouse.click(box["x"] + 60, box["y"] + 60)
        page.mouse.click(box["x"] + 500, box["y"] + 500)
        page.wait_for_function("document.querySelectorAll('#path-strip canvas').length === 10")
        screenshot(page, "explore_conditional.png", tmp_path)
        assert errors == []
    finally:
        process.terminate()
