"""Shared test set-up: the project root on sys.path, quiet TensorFlow, small MNIST-like files."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    """The real MNIST file: $MNIST_PATH, else ../shared/data/mnist.npz beside the project."""
    path = os.environ.get("MNIST_PATH") or os.path.join(ROOT, "..", "shared", "data", "mnist.npz")
    if not os.path.exists(path):
        pytest.skip(f"real MNIST not found at {path}; set MNIST_PATH to run this test")
    return path
