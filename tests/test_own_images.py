"""train.py on the user's own images: a folder of PNGs, an RGB .npz, the strided architecture, and
every bad input refused with one message and without touching the run already in out_dir. Every
run uses the strided architecture: reading the images does not depend on it, and it is 14x
cheaper than the article's."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import coloured_squares, run_script, write_images, write_npz

# Every test here runs train.py or evaluate.py in a subprocess.
pytestmark = pytest.mark.slow

# What every run writes, whatever its data (roc.png only with holdout_class).
RUN_OUTPUTS = {"config.json", "cvae.weights.h5", "encoder.keras", "decoder.keras", "history.csv",
               "metrics.json",
               "reconstructions.png", "latent_space.png", "manifold.png", "samples.png",
               "interpolation.png", "learning_curves.png", "anomalies.png",
               "score_histogram.png", "test_scores.npy", "snapshots", "training.gif", ".lock"}
SHORT = ["--epochs=1", "--batch_size=16", "--warmup_steps=2"]


def train(out_dir, *arguments):
    result = run_script("train.py", f"--out_dir={out_dir}", *SHORT, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_a_whole_run(out_dir, test_images, image_shape, extra=()):
    assert set(os.listdir(out_dir)) == RUN_OUTPUTS | set(extra)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["data"]["image_shape"] == list(image_shape)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    scores = np.load(out_dir / "test_scores.npy")
    assert scores.shape == (test_images,) and np.isfinite(scores).all()
    assert metrics["test_negative_elbo"] == pytest.approx(scores.mean(), rel=1e-5)
    # Bits per dimension: nats / (pixels * channels * ln 2).
    assert metrics["test_bits_per_dim"] == pytest.approx(
        metrics["test_negative_elbo"] / (np.prod(image_shape) * np.log(2)), rel=1e-9)
    for name in RUN_OUTPUTS:
        if name.endswith(".png"):
            with Image.open(out_dir / name) as png:
                assert png.format == "PNG" and min(png.size) > 100, name
    return config, metrics


def test_a_folder_of_pngs_with_class_subfolders(tmp_path, real_mnist_path):
    digits = np.load(real_mnist_path)
    x, y = digits["x_test"][:300], digits["y_test"][:300]
    folder = tmp_path / "digits"
    for digit, name in ((0, "zero"), (1, "one"), (7, "seven")):
        write_images(folder / name, x[y == digit][:20])
    out_dir = tmp_path / "run"
    result = train(out_dir, f"--dataset={folder}", "--architecture=strided",
                   "--test_fraction=0.25", "--holdout_class=one")
    # 60 digits, 15 held out for testing, and the training "one"s left out.
    from data import load_dataset

    split = load_dataset(str(folder), test_fraction=0.25)
    ones_in_training = int(np.sum(split.y_train == 0))
    assert f"{45 - ones_in_training} training and 15 test images" in result.stdout
    assert "15 test images of shape (28, 28, 1), 3 classes" in result.stdout
    config, metrics = assert_a_whole_run(out_dir, 15, (28, 28, 1), extra=["roc.png"])
    assert config["data"]["class_names"] == ["one", "seven", "zero"]
    assert metrics["holdout_class"] == "one"  # a class held out by its folder's name


def test_an_rgb_npz_without_labels_or_test_split(tmp_path):
    data_path = write_npz(tmp_path, x_train=coloured_squares(60, size=32))
    out_dir = tmp_path / "run"
    result = train(out_dir, f"--dataset={data_path}", "--architecture=strided")
    assert "54 training and 6 test images of shape (32, 32, 3), no labels" in result.stdout
    config, _ = assert_a_whole_run(out_dir, 6, (32, 32, 3))
    assert config["data"]["class_names"] is None
    # Data changed after training: evaluate.py refuses instead of scoring other images.
    write_npz(tmp_path, x_train=coloured_squares(60, size=16))
    result = run_script("evaluate.py", str(out_dir))
    assert result.returncode == 2 and "has changed since it was trained" in result.stderr


def test_the_strided_architecture_on_64x64_rgb_images(tmp_path):
    folder = tmp_path / "shapes"
    write_images(folder / "squares", coloured_squares(24, size=64, seed=1))
    write_images(folder / "more_squares", coloured_squares(24, size=64, seed=2), ".jpg")
    out_dir = tmp_path / "run"
    result = train(out_dir, f"--dataset={folder}", "--architecture=strided", "--latent_dim=4")
    from plumbing.model_size import parameter_count

    assert f"CVAE (strided): {parameter_count((64, 64, 3), 4, 'strided'):,} parameters" in \
        result.stdout
    assert_a_whole_run(out_dir, 5, (64, 64, 3))


@pytest.fixture
def previous_run(tmp_path):
    """An out_dir holding a run whose files must survive every refused command."""
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "config.json").write_text(json.dumps({"latent_dim": 2, "epochs": 1}))
    (out_dir / "cvae.weights.h5").write_bytes(b"precious weights")
    return out_dir


def bad_folder(tmp_path, kind):
    root = tmp_path / "images"
    if kind == "empty":
        root.mkdir()
    elif kind == "one image":
        write_images(root, coloured_squares(1))
    elif kind == "empty class":
        write_images(root / "cats", coloured_squares(4))
        (root / "dogs").mkdir()
    elif kind == "all corrupt":
        root.mkdir()
        for name in ("a.png", "b.JPG"):
            (root / name).write_bytes(b"not an image at all")
    elif kind == "too small":
        write_images(root, np.zeros((6, 2, 2), np.uint8))
    elif kind == "six images":
        write_images(root, coloured_squares(6))
    elif kind == "labels without images":
        np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 8, 8), np.uint8),
                 y_test=np.zeros(2, np.int64))
        return tmp_path / "data.npz"
    return root


@pytest.mark.parametrize("kind, arguments, message", [
    ("empty", [], "holds no image files"),
    ("one image", [], "too few"),
    ("empty class", [], "Add images to it or remove it"),
    ("all corrupt", [], "could be read"),
    ("too small", [], "--image_size"),
    ("labels without images", [], "there is no x_test"),
    ("one image", ["--image_size=64", "--architecture=article", "--channels=3"], "too few"),
    (None, ["--dataset=no/such/folder"], "neither a known dataset name"),
    ("six images", ["--image_size=512"], "--architecture=strided"),
    (None, ["--image_size=1024"], "Choose a smaller --image_size"),
    (None, ["--holdout_class=eleven"], "names no class"),
])
def test_bad_data_is_refused_and_nothing_is_overwritten(tmp_path, previous_run, request, kind,
                                                        arguments, message):
    # Only the two cases without a folder of their own read real MNIST.
    source = ([f"--dataset={bad_folder(tmp_path, kind)}"] if kind else
              [] if any(a.startswith("--dataset") for a in arguments) else
              [f"--data_path={request.getfixturevalue('real_mnist_path')}"])
    result = run_script("train.py", f"--out_dir={previous_run}", "--overwrite=True",
                        *source, *arguments)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert (previous_run / "cvae.weights.h5").read_bytes() == b"precious weights"
    assert set(os.listdir(previous_run)) <= {"config.json", "cvae.weights.h5", ".lock"}


def test_a_streamed_folder_trains_and_is_evaluated(tmp_path):
    folder = tmp_path / "shapes"
    write_images(folder / "a", coloured_squares(20, seed=1))
    write_images(folder / "b", coloured_squares(20, seed=2))
    out_dir = tmp_path / "run"
    result = train(out_dir, f"--dataset={folder}", "--stream=True", "--architecture=strided")
    # 40 images, 4 held out for testing: 36 decoded from disk in every epoch.
    assert "Streaming the 36 training images from disk" in result.stdout
    config, metrics = assert_a_whole_run(out_dir, 4, (32, 32, 3))
    assert config["stream"] is True and len(metrics["per_epoch"]) == 1
