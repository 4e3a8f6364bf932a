"""Every data source (Keras dataset files, .npz arrays, folders of images) and every bad input."""

import gzip
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from conftest import coloured_squares, fake_mnist_arrays, write_images, write_npz
from data import load_dataset, load_mnist, one_image_per_class
from plumbing import arrays
from plumbing.batches import EpochShuffle
from plumbing.errors import DataError


# ---- MNIST in the keras.datasets layout --------------------------------------------------------
def test_loads_a_good_mnist_file(fake_mnist_path):
    (x_train, y_train), (x_test, y_test) = load_mnist(fake_mnist_path)
    assert x_train.shape == (120, 28, 28, 1) and x_test.shape == (60, 28, 28, 1)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert y_train.shape == (120,) and y_test.shape == (60,)
    np.testing.assert_allclose(x_test[..., 0], fake_mnist_arrays()["x_test"] / 255.0, rtol=1e-6)
    assert load_dataset("mnist", fake_mnist_path).class_names == [str(d) for d in range(10)]


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
def test_bad_mnist_contents(tmp_path, key, value, message):
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

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="--data_path") as error:
        load_dataset("cifar10")
    assert "network is unreachable" in str(error.value)


def test_default_source_is_keras(monkeypatch):
    import keras

    raw = fake_mnist_arrays()
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: (
        (raw["x_train"], raw["y_train"]), (raw["x_test"], raw["y_test"])))
    (x_train, _), _ = load_mnist()
    assert x_train.shape == (120, 28, 28, 1)


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(DataError, match="mnist, fashion_mnist, cifar10"):
        load_dataset("imagenet")


# ---- the local copies Keras would download -------------------------------------------------------
def test_fashion_mnist_from_the_four_gzip_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix, n in (("train", "train", 30), ("test", "t10k", 20)):
        arrays[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes(16) + arrays[split][0].tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes(8) + arrays[split][1].astype(np.uint8).tobytes())
    loaded = load_dataset("fashion_mnist", str(tmp_path))
    assert loaded.image_shape == (28, 28, 1) and loaded.class_names[9] == "Ankle boot"
    np.testing.assert_allclose(loaded.x_test[..., 0] * 255, arrays["test"][0], atol=1e-3)
    np.testing.assert_array_equal(loaded.y_train, arrays["train"][1])


def write_cifar_batch(path, images, labels):
    # The CIFAR layout: rows of 3072 bytes, all red, then green, then blue.
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"data": rows, b"labels": list(labels)}, f)


def test_cifar10_from_its_extracted_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = coloured_squares(12)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", images[:2], [i, i + 1])
    write_cifar_batch(folder / "test_batch", images[10:], [3, 4])
    loaded = load_dataset("cifar10", str(tmp_path))
    assert loaded.x_train.shape == (10, 32, 32, 3) and loaded.image_shape == (32, 32, 3)
    np.testing.assert_allclose(loaded.x_test * 255, images[10:], atol=1e-3)
    assert [loaded.caption(label) for label in loaded.y_test] == ["cat", "deer"]


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", str(tmp_path))
    assert not (tmp_path / "pwned").exists()


# ---- your own .npz -----------------------------------------------------------------------------
def test_rgb_npz_without_labels_or_test_split_is_split_reproducibly(tmp_path):
    images = coloured_squares(50)
    path = write_npz(tmp_path, x_train=images)
    first = load_dataset(path, test_fraction=0.2, seed=3)
    assert first.image_shape == (32, 32, 3) and first.class_names is None
    assert len(first.x_train) == 40 and len(first.x_test) == 10 and first.y_test is None
    again = load_dataset(path, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    other = load_dataset(path, test_fraction=0.2, seed=4)
    assert not np.array_equal(first.x_test, other.x_test)
    # The two splits are disjoint and together are the whole file.
    both = np.concatenate([first.x_train, first.x_test]).reshape(50, -1)
    assert len(np.unique(both, axis=0)) == len(np.unique(images.reshape(50, -1), axis=0))


def test_float_npz_with_labels_names_and_channel_axis(tmp_path):
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    path = write_npz(tmp_path, x_train=x[:15], y_train=np.arange(15) % 3, x_test=x[15:],
                     y_test=np.arange(5) % 3, class_names=np.array(["cat", "dog", "fox"]))
    loaded = load_dataset(path)
    np.testing.assert_array_equal(loaded.x_test, x[15:])
    assert loaded.class_names == ["cat", "dog", "fox"] and loaded.class_index("fox") == 2
    assert loaded.class_index("1") == 1
    with pytest.raises(DataError, match="cat, dog, fox"):
        loaded.class_index("wolf")


def test_resizing_and_colour_conversion_of_arrays(tmp_path):
    path = write_npz(tmp_path, x_train=coloured_squares(10, size=32))
    grey = load_dataset(path, image_size=16, channels=1)
    assert grey.image_shape == (16, 16, 1) and grey.x_train.dtype == np.float32
    assert 0.0 <= grey.x_train.min() and grey.x_train.max() <= 1.0
    rgb = load_dataset(write_npz(tmp_path, "grey.npz", x_train=np.full((4, 8, 8), 255, np.uint8)),
                       channels=3)
    assert rgb.image_shape == (8, 8, 3) and np.allclose(rgb.x_train, 1.0)


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((5, 8, 8, 2), np.uint8)}, "expected (N, height, width)"),
    ({"x_train": np.full((5, 8, 8), 2.0, np.float32)}, "outside [0, 1]"),
    ({"x_train": np.zeros((5, 8, 8), np.int32)}, "dtype int32"),
    ({"x_train": np.zeros((5, 8, 8), np.uint8), "y_test": np.zeros(2, int)}, "no x_test"),
    ({"x_train": np.zeros((5, 8, 8), np.uint8), "y_train": np.zeros(5, int),
      "x_test": np.zeros((2, 8, 8), np.uint8)}, "only some of the image arrays have labels"),
    ({"x_train": np.zeros((5, 8, 8), np.uint8), "class_names": np.array(["a"])}, "no labels"),
    ({"x_train": np.zeros((5, 8, 8), np.uint8), "y_train": np.full(5, 2), "x_test":
      np.zeros((2, 8, 8), np.uint8), "y_test": np.zeros(2, int), "class_names": np.array(["a"])},
     "labels from 2 to 2"),
    ({"x_train": np.zeros((5, 8, 8), np.uint8), "x_test": np.zeros((2, 9, 8), np.uint8)},
     "one image shape"),
    ({"x_train": np.zeros((1, 8, 8), np.uint8)}, "too few"),
    ({"y_train": np.zeros(5, int)}, "lacks the key(s) x_train"),
])
def test_bad_npz_contents(tmp_path, arrays, message):
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(DataError) as error:
        load_dataset(path)
    assert message in str(error.value) and path in str(error.value)


def test_an_npz_too_large_for_memory_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "MEMORY_BUDGET", 1000)
    path = write_npz(tmp_path, x_train=np.zeros((10, 8, 8), np.uint8))
    with pytest.raises(DataError, match="folder"):
        load_dataset(path)


# ---- folders of image files ------------------------------------------------------------------
@pytest.fixture
def digit_folder(tmp_path, fake_mnist_path):
    """MNIST-like PNGs in one subfolder per class, with a stray text file and an upper-case
    extension."""
    raw = fake_mnist_arrays()
    root = tmp_path / "digits"
    for label in range(3):
        write_images(root / f"class_{label}", raw["x_train"][raw["y_train"] == label])
    os.rename(root / "class_0" / "000.png", root / "class_0" / "000.PNG")
    (root / "class_1" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_with_class_subfolders(digit_folder, capsys):
    loaded = load_dataset(str(digit_folder), test_fraction=0.25, seed=0)
    assert loaded.class_names == ["class_0", "class_1", "class_2"]
    assert loaded.image_shape == (28, 28, 1)  # every PNG is grey
    assert loaded.num_train + len(loaded.x_test) == 36  # 12 per class, the .PNG one included
    assert len(loaded.x_test) == 9 and set(loaded.y_test) <= {0, 1, 2}
    assert "Ignored 1 file(s)" in capsys.readouterr().out
    raw = fake_mnist_arrays()
    # The pixels are the PNGs' own: every test image is one of the class's training digits.
    pool = raw["x_train"].reshape(len(raw["x_train"]), -1) / 255.0
    for image, label in zip(loaded.x_test, loaded.y_test):
        distances = np.abs(pool[raw["y_train"] == label] - image.reshape(-1)).max(axis=1)
        assert distances.min() < 1e-6


def test_a_train_and_test_pair_and_a_flat_unlabelled_folder(tmp_path):
    write_images(tmp_path / "pair" / "train" / "red", coloured_squares(6, seed=1))
    write_images(tmp_path / "pair" / "train" / "blue", coloured_squares(4, seed=2), ".jpg")
    write_images(tmp_path / "pair" / "test" / "blue", coloured_squares(3, seed=3), ".BMP")
    loaded = load_dataset(str(tmp_path / "pair"))
    assert loaded.class_names == ["blue", "red"] and loaded.num_train == 10
    assert list(loaded.y_test) == [0, 0, 0] and loaded.image_shape == (32, 32, 3)

    write_images(tmp_path / "flat", coloured_squares(10), ".gif")
    flat = load_dataset(str(tmp_path / "flat"), test_fraction=0.2)
    assert flat.y_train is None and flat.class_names is None and len(flat.x_test) == 2


def test_mixed_sizes_take_the_most_common_and_image_size_resizes(tmp_path, capsys):
    write_images(tmp_path / "mixed", coloured_squares(5, size=32))
    Image.new("RGB", (20, 10)).save(tmp_path / "mixed" / "odd.png")
    loaded = load_dataset(str(tmp_path / "mixed"), test_fraction=0.2)
    assert loaded.image_shape == (32, 32, 3)
    assert "most common, 32x32" in capsys.readouterr().out
    small = load_dataset(str(tmp_path / "mixed"), image_size=8, channels=1)
    assert small.image_shape == (8, 8, 1) and small.x_train.shape[1:] == (8, 8, 1)


def test_corrupt_and_truncated_files_are_skipped_with_a_warning(digit_folder, capsys):
    (digit_folder / "class_2" / "broken.png").write_bytes(b"\x89PNG not really")
    good = (digit_folder / "class_2" / "001.png").read_bytes()
    (digit_folder / "class_2" / "cut.png").write_bytes(good[: len(good) // 2])
    loaded = load_dataset(str(digit_folder))
    assert loaded.num_train + len(loaded.x_test) == 36
    error = capsys.readouterr().err
    # Both are named, and counted, in the one warning of the files skipped.
    assert "broken.png" in error and "cut.png" in error and "skipped 2 image file(s)" in error


def test_streamed_batches_equal_the_images_in_memory(digit_folder):
    in_memory = load_dataset(str(digit_folder), stream=False)
    streamed = load_dataset(str(digit_folder), stream=True)
    assert streamed.x_train is None and len(streamed.train_files) == in_memory.num_train
    np.testing.assert_array_equal(streamed.x_test, in_memory.x_test)
    batches = streamed.training_input(batch_size=8, shuffle=EpochShuffle(0))
    assert len(batches) == -(-in_memory.num_train // 8)
    seen = np.concatenate([batches[i] for i in range(len(batches))])
    # The same images, shuffled.
    key = lambda x: np.sort(x.reshape(len(x), -1).sum(axis=1))  # noqa: E731
    np.testing.assert_allclose(key(seen), key(in_memory.x_train), rtol=1e-6)
    held = streamed.select_train(streamed.y_train != 1)
    assert len(held.train_files) == int((streamed.y_train != 1).sum())


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "holds no image files"),
    (lambda root: write_images(root, coloured_squares(1)), "too few"),
    (lambda root: (write_images(root / "a", coloured_squares(3)), (root / "b").mkdir()),
     "holds no image files"),
    (lambda root: (root.mkdir(), (root / "x.png").write_bytes(b"junk"),
                   (root / "y.jpg").write_bytes(b"junk")), "could be read"),
    (lambda root: (write_images(root / "train" / "a", coloured_squares(3)),
                   write_images(root / "test" / "b", coloured_squares(2))), "which train/ lacks"),
])
def test_bad_folders(tmp_path, make, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(str(root))
    assert str(root) in str(error.value)


# ---- the images the figures show -------------------------------------------------------------
def test_one_image_per_class_in_order_and_reproducible():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(200) % 10)
    x = np.arange(200, dtype=np.float32)[:, None, None, None] * np.ones((1, 28, 28, 1), "float32")
    names = [f"c{i}" for i in range(10)]
    images, captions = one_image_per_class(x, y, names, seed=3)
    assert images.shape == (10, 28, 28, 1) and captions == names
    # Each image really is an image of its class (the images encode their index).
    np.testing.assert_array_equal(y[images[:, 0, 0, 0].astype(int)], np.arange(10))
    again, _ = one_image_per_class(x, y, names, seed=3)
    np.testing.assert_array_equal(images, again)
    other, _ = one_image_per_class(x, y, names, seed=4)
    assert not np.array_equal(images, other)


def test_missing_classes_are_skipped_and_unlabelled_data_shows_the_first_images():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 0])  # no 7
    x = np.arange(10, dtype=np.float32)[:, None, None, None]
    _, captions = one_image_per_class(x, y, [str(d) for d in range(10)])
    assert captions == ["0", "1", "2", "3", "4", "5", "6", "8", "9"]
    images, captions = one_image_per_class(x, None, None, limit=4)
    assert captions is None and list(images[:, 0, 0, 0]) == [0, 1, 2, 3]


def test_sixteen_bit_grey_pngs_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 8 * 8).astype(np.uint16).reshape(8, 8)
    os.makedirs(tmp_path / "scans")
    for index in range(4):
        Image.fromarray(ramp).save(tmp_path / "scans" / f"{index}.png")
    loaded = load_dataset(str(tmp_path / "scans"))
    assert loaded.image_shape == (8, 8, 1)
    np.testing.assert_allclose(loaded.x_test[0, ..., 0], ramp / 65535.0, atol=1e-6)
    rgb = load_dataset(str(tmp_path / "scans"), channels=3)
    np.testing.assert_allclose(rgb.x_test[0], np.repeat(ramp[..., None] / 65535.0, 3, -1),
                               atol=1e-6)


def test_a_split_folder_with_a_third_subfolder_is_refused(tmp_path):
    for split in ("train", "test", "val"):
        write_images(tmp_path / "pics" / split, coloured_squares(3))
    with pytest.raises(DataError, match="also val/"):
        load_dataset(str(tmp_path / "pics"))
