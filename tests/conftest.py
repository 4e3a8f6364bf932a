"""Shared test set-up and helpers: the project root on sys.path, quiet TensorFlow, the --runslow
option, one rule for a missing optional dependency, small MNIST-like files and image folders, and
the short train.py runs that several modules share (each trained once per session)."""

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def under_ci():
    """CI is set, as .ci/run exports it (CI=true) and as CI services do."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


# ---- the fast tier and the full suite ------------------------------------------------------------
SLOW = "slow: the full suite runs with --runslow"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow: the full suite, as CI runs it")


def pytest_collection_modifyitems(config, items):
    """Without --runslow, the tests marked slow are skipped (pytest's documented recipe): the
    default run is the fast tier."""
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason=SLOW)
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ---- optional dependencies: a skip with its reason, a failure under CI ---------------------------
def missing(reason):
    """What a test needs and the README's first command does not install (another backend,
    Playwright, Chromium, the real MNIST file) is not here: outside CI the test is skipped with
    the reason; under CI, which installs everything, it fails, since a skip there is a check
    lost."""
    if under_ci():
        pytest.fail(f"{reason} (under CI a missing dependency fails its tests)", pytrace=False)
    pytest.skip(reason)


# The package each Keras backend needs, and the requirements file that installs it.
BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "requirements.txt"),
                    "jax": ("jax", "requirements-jax.txt"),
                    "torch": ("torch", "requirements-torch.txt")}


def require_module(name, install):
    """Skip (fail under CI) unless the Python package name can be imported; install: how to get
    it. Looked up without importing it, so that another backend is never loaded here."""
    if importlib.util.find_spec(name) is None:
        missing(f"{name} is not installed: {install}")


def require_backend(backend):
    package, requirements = BACKEND_PACKAGES[backend]
    require_module(package, f"pip install -r {requirements} to run the test on {backend}")


def require_file(path, what, how):
    if not os.path.exists(path):
        missing(f"{what} not found at {path}; {how}")


# ---- skips: each reason said once; CI fails on one the README does not list ----------------------
_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_terminal_summary(terminalreporter):
    """The skips by reason: the slow tests counted in one line, every other skip with its tests
    (what -rs would say, without a line for each slow test's place)."""
    by_reason = {}
    for node, reason in _skipped:
        by_reason.setdefault(reason, []).append(node)
    if not by_reason:
        return
    terminalreporter.section("skipped", sep="-")
    for reason, nodes in by_reason.items():
        if reason == SLOW:
            terminalreporter.write_line(f"{len(nodes)} slow test(s) skipped: the full suite runs "
                                        f"with --runslow")
            continue
        terminalreporter.write_line(f"{len(nodes)} skipped: {reason}")
        for node in nodes:
            terminalreporter.write_line(f"    {node}")


def pytest_sessionfinish(session, exitstatus):
    """Under CI, a skip whose reason the README's list of skips by design does not give fails
    the run: a test that silently stopped running is a check lost."""
    if not under_ci() or not _skipped:
        return
    with open(os.path.join(ROOT, "README.md")) as f:
        listed = re.findall(r"^- skipped: `([^`]+)`", f.read(), re.M)
    unlisted = [(node, reason) for node, reason in _skipped
                if not any(item in reason for item in listed)]
    print(f"\n{len(_skipped)} test(s) skipped, {len(unlisted)} of them for a reason the README "
          f"does not list.")
    for node, reason in unlisted:
        print(f"  not listed: {node}: {reason}")
    if unlisted:
        session.exitstatus = 1


def fake_mnist_arrays(n_train=120, n_test=60, seed=0):
    """Random MNIST-shaped arrays in the keras.datasets layout, every digit present."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"x_{split}"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"y_{split}"] = (np.arange(n) % 10).astype(np.uint8)
    return arrays


@pytest.fixture
def fake_mnist_path(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, **fake_mnist_arrays())
    return str(path)


@pytest.fixture(scope="session")
def real_mnist_path():
    """The real MNIST file: $MNIST_PATH, else ../shared/data/mnist.npz beside the project. On a
    fresh clone without it, the tests that need real digits are skipped; under CI (CI set), a
    missing file fails them (missing): a skip there would hide the only learning check."""
    path = os.environ.get("MNIST_PATH") or os.path.join(ROOT, "..", "shared", "data", "mnist.npz")
    require_file(path, "real MNIST", "set MNIST_PATH to run this test")
    return path


def run_script(script, *arguments, timeout=600):
    """Run one of the project's scripts as a user would, from the project root."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *arguments], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_in_process(script, *arguments):
    """A script's main() called in this process, as run_script runs it in a new one (its exit
    code, and what it printed), without the seconds a new process spends loading TensorFlow.
    For the checks of what a script computes; each script keeps one test through run_script."""
    import io

    from plumbing.errors import ExplainedError

    module = importlib.import_module(script.removesuffix(".py"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(list(arguments))
        except ExplainedError as error:  # as plumbing.command_line.run_command reports it
            print(f"error: {error}", file=sys.stderr)
            code = 2
    return subprocess.CompletedProcess([script, *arguments], code, out.getvalue(),
                                       err.getvalue())


# ---- the short runs that several modules use: each trained once per session ----------------------
# Those of finished_run: two epochs of 4 steps on 100 of the 120 made-up digits.
FINISHED_RUN_SETTINGS = ["--epochs=2", "--batch_size=32", "--train_subset=100",
                         "--warmup_steps=2"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One short run of train.py on a small fake MNIST file: (out_dir, data_path, result). The
    fast tier's one end-to-end run of train.py."""
    folder = tmp_path_factory.mktemp("finished_run")
    data_path = str(folder / "mnist.npz")
    np.savez(data_path, **fake_mnist_arrays())
    out_dir = folder / "run"
    result = run_script("train.py", f"--data_path={data_path}", f"--out_dir={out_dir}",
                        *FINISHED_RUN_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out_dir, data_path, result


@pytest.fixture(scope="session")
def rgb_run(tmp_path_factory):
    """One short RGB run: 32x32 coloured squares in two class folders (RUN/../squares/a and b),
    the strided architecture, three latent dimensions. The run folder."""
    folder = tmp_path_factory.mktemp("rgb_run")
    for name, seed in (("a", 1), ("b", 2)):
        write_images(folder / "squares" / name, coloured_squares(30, seed=seed))
    result = run_script("train.py", f"--dataset={folder / 'squares'}", "--architecture=strided",
                        f"--out_dir={folder / 'run'}", "--epochs=1", "--batch_size=16",
                        "--warmup_steps=2", "--latent_dim=3")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory):
    """One short conditional run on a small fake MNIST file, the strided architecture (what its
    tests check does not depend on it, and it is 14x cheaper than the article's): (out_dir,
    data_path)."""
    folder = tmp_path_factory.mktemp("conditional_run")
    data_path = folder / "mnist.npz"
    np.savez(data_path, **fake_mnist_arrays())
    result = run_script("train.py", f"--data_path={data_path}", f"--out_dir={folder / 'run'}",
                        "--architecture=strided", "--epochs=1", "--batch_size=16",
                        "--warmup_steps=2", "--conditional=True")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", str(data_path)


def folder_contents(folder):
    """Every file under folder, by its path relative to it: (bytes, modification time in ns).
    The empty .lock file, which every train.py opens anew, aside."""
    contents = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            if name == ".lock":
                continue
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return contents


# ---- files the tests write -----------------------------------------------------------------------
def write_npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def write_images(folder, images, extension=".png"):
    """Save uint8 arrays (H, W) or (H, W, 3) as image files 000.png, 001.png, ... in folder."""
    os.makedirs(folder, exist_ok=True)
    for index, pixels in enumerate(images):
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:03d}{extension}"))


def coloured_squares(n, size=32, seed=0):
    """RGB images of one saturated colour square on black: (n, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    for image, channel, corner in zip(images, rng.integers(0, 3, n),
                                      rng.integers(0, size // 2, (n, 2))):
        image[corner[0]:corner[0] + size // 2, corner[1]:corner[1] + size // 2, channel] = 255
    return images


# ---- train.py in the background -----------------------------------------------------------------
def start_train(arguments, stop_at=None):
    """train.py in the background. stop_at: the signal the run sends itself, and when, as
    plumbing/stopping.py reads it: "SIGKILL@2.3" after the third batch of the second epoch,
    "SIGTERM@evaluation" as the evaluation starts; a step, not a moment of the clock."""
    environment = {**os.environ, "CVAE_TEST_SIGNAL": stop_at or ""}
    # A shell starts background jobs with SIGINT ignored, and a child keeps an ignored SIGINT
    # ignored. A handled one is reset to the default at exec, so the child gets Ctrl-C as in a
    # terminal: handle it here while the child starts. (Not preexec_fn: Python code between fork
    # and exec can deadlock in a process with threads, as JAX's and TensorFlow's are.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *arguments],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=environment)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def reserved_port():
    """A free TCP port, kept from every other program until the block ends, for a JAX
    coordinator that a child process starts.

    A port found by binding to port 0 and closing that socket at once is free again for seconds
    before the coordinator binds it (its process must import JAX first): any bind to port 0, or
    any connect() choosing its source port, may take it meanwhile, and the coordinator then fails
    ("Failed to start RPC server"). The socket held here sets SO_REUSEPORT, as gRPC does on the
    coordinator's listening socket: the kernel lets that one bind the same port (same user, both
    with SO_REUSEPORT) and keeps every automatic choice of a port off it. Bound to every address,
    dual-stack, as the coordinator binds; it never listens, so every connection reaches gRPC."""
    try:
        held = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        address = "::"
    except OSError:  # no IPv6 here: gRPC falls back to 0.0.0.0 too
        held, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), "0.0.0.0"
    with held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address, 0))
        yield held.getsockname()[1]


def backed_up_epochs(out_dir):
    path = out_dir / "backup" / "training_metadata.json"
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError):
        return 0


# ---- numbers recomputed independently -----------------------------------------------------------
def numpy_negative_elbo(run_dir, data_path, eval_seed=0, x=None):
    """(reconstruction, kl, z_mean) of every test image (or of the images x), in NumPy in
    float64: the encoder's and decoder's outputs, with one z per image from the generator that
    eval_seed (an int, or a list of them) seeds, and the formulas written out here (Bernoulli
    pixels clipped 1e-7 from 0 and 1; the Gaussian KL)."""
    from data import load_mnist
    from saved_run import load_run

    _, model = load_run(str(run_dir))
    if x is None:
        _, (x, _) = load_mnist(data_path)
    z_mean, z_log_var = (np.asarray(a, np.float64) for a in model.encoder.predict(x, verbose=0))
    epsilon = np.random.default_rng(eval_seed).standard_normal(z_mean.shape)
    z = (z_mean + np.exp(z_log_var / 2) * epsilon).astype("float32")
    p = np.clip(model.decoder.predict(z, verbose=0).astype(np.float64), 1e-7, 1 - 1e-7)
    x = x.astype(np.float64)
    reconstruction = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    kl = 0.5 * np.sum(z_mean**2 + np.exp(z_log_var) - 1 - z_log_var, axis=1)
    return reconstruction, kl, z_mean


def read_train_config(argv):
    """train.py's hyperparameters with the overrides of argv, checked as `python train.py` checks
    them (without loading Keras)."""
    import train
    from plumbing.train_config import read_config

    return read_config(train.HYPERPARAMETERS, train.__annotations__, argv)
