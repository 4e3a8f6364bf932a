import numpy as np
import pytest

import data
from conftest import fake_mnist_arrays
from data import DataError, get_images_1_to_10, load_mnist


def write_npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def test_loads_a_good_file(fake_mnist_path):
    (x_train, y_train), (x_test, y_test) = load_mnist(fake_mnist_path)
    assert x_train.shape == (120, 28, 28, 1) and x_test.shape == (60, 28, 28, 1)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert y_train.shape == (120,) and y_test.shape == (60,)
    raw = fake_mnist_arrays()
    np.testing.assert_allclose(x_test[..., 0], raw["x_test"] / 255.0, rtol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(str(tmp_path / "nowhere.npz"))


def test_not_an_npz(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_text("this is not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_mnist(str(path))


def test_truncated_npz(tmp_path, fake_mnist_path):
    content = open(fake_mnist_path, "rb").read()
    path = tmp_path / "truncated.npz"
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(str(path))


def test_a_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "mnist.npy"
    np.save(path, np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError, match="single NumPy array"):
        load_mnist(str(path))


def test_missing_keys(tmp_path):
    arrays = fake_mnist_arrays()
    del arrays["y_test"]
    with pytest.raises(DataError, match="lacks the key.*y_test"):
        load_mnist(write_npz(tmp_path, **arrays))


@pytest.mark.parametrize("key, value, message", [
    ("x_train", np.zeros((120, 28, 27), np.uint8), "shape"),
    ("x_test", np.zeros((60, 784), np.uint8), "shape"),
    ("x_train", np.zeros((120, 28, 28), np.float32), "dtype"),
    ("y_train", np.zeros((119,), np.uint8), "one label per image"),
    ("y_test", np.full((60,), 10, np.uint8), "labels from"),
    ("y_train", np.full((120,), -1, np.int64), "labels from"),
    ("y_test", np.zeros((60,), np.float32), "integers"),
])
def test_bad_contents(tmp_path, key, value, message):
    arrays = fake_mnist_arrays()
    arrays[key] = value
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as error:
        load_mnist(path)
    assert path in str(error.value)  # the message names the file


def test_pickled_objects_are_refused(tmp_path):
    arrays = fake_mnist_arrays()
    arrays["x_train"] = np.array([object()] * 3, dtype=object)
    with pytest.raises(DataError):
        load_mnist(write_npz(tmp_path, **arrays))


def test_failed_download_says_how_to_supply_the_file(monkeypatch):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match="--data_path") as error:
        load_mnist(None)
    assert "network is unreachable" in str(error.value)


def test_default_source_is_keras(monkeypatch):
    import keras

    raw = fake_mnist_arrays()
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: (
        (raw["x_train"], raw["y_train"]), (raw["x_test"], raw["y_test"])))
    (x_train, _), _ = data.load_mnist()
    assert x_train.shape == (120, 28, 28, 1)


def test_one_image_per_digit_in_order_and_reproducible():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(200) % 10)
    x = np.arange(200, dtype=np.float32)[:, None, None, None] * np.ones((1, 28, 28, 1), "float32")
    images, labels = get_images_1_to_10(x, y, seed=3)
    assert images.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(labels, np.arange(10))
    # Each image really is an image of its label (the images encode their index).
    np.testing.assert_array_equal(y[images[:, 0, 0, 0].astype(int)], np.arange(10))
    again, _ = get_images_1_to_10(x, y, seed=3)
    np.testing.assert_array_equal(images, again)
    other, _ = get_images_1_to_10(x, y, seed=4)
    assert not np.array_equal(images, other)


def test_a_missing_digit_raises():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 0])  # no 7
    with pytest.raises(ValueError, match="digit 7"):
        get_images_1_to_10(np.zeros((10, 28, 28, 1)), y)
