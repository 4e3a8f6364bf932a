"""The images a run trains on, from any source: a Keras dataset by name, an .npz of arrays, or a
folder of image files.

load_dataset() is the one entry point. Whatever the source, it returns an ImageData: float32
pixels in [0, 1] shaped (N, height, width, channels), a train and a test split kept apart, labels
and class names when the source has them. A bad input never surfaces as a traceback: it raises
DataError, whose message names the file, says what is wrong and what to do.
"""

import dataclasses
import gzip
import os
import pickle
import sys
import zipfile
import zlib
from collections import Counter

import numpy as np

import image_files
from batches import in_memory_batches

MNIST_IMAGE_SHAPE = (28, 28, 1)
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
CLASS_NAMES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Above this many bytes of float32 pixels a folder is streamed from disk instead of loaded, and an
# .npz is refused: a quarter of this machine's memory, at most 4 GiB.
MEMORY_BUDGET = min(4 * 2**30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
MAX_NAMED_FILES = 10  # a warning about skipped files names this many, then counts the rest


class DataError(ValueError):
    """The data could not be loaded; the message says why and what to do."""


def _too_large(what, size_bytes, advice):
    return DataError(f"{what} would take {size_bytes / 2**30:.1f} GiB as float32, more than the "
                     f"{MEMORY_BUDGET / 2**30:.1f} GiB this machine can spare. {advice}")


@dataclasses.dataclass
class ImageData:
    image_shape: tuple  # (height, width, channels)
    x_train: np.ndarray | None  # float32 (N, *image_shape); None when streamed from train_files
    y_train: np.ndarray | None  # int64 (N,), or None without labels
    x_test: np.ndarray
    y_test: np.ndarray | None
    class_names: list | None
    description: str
    train_files: list | None = None  # the training images' paths, when streamed

    @property
    def num_train(self):
        return len(self.train_files if self.x_train is None else self.x_train)

    def select_train(self, keep):
        """A copy whose training split is the images where the boolean mask `keep` is True."""
        keep = np.asarray(keep, dtype=bool)
        files = None if self.train_files is None else [
            path for path, kept in zip(self.train_files, keep) if kept]
        return dataclasses.replace(
            self, train_files=files,
            x_train=None if self.x_train is None else self.x_train[keep],
            y_train=None if self.y_train is None else self.y_train[keep])

    def class_index(self, name_or_index):
        """The label of a class given by name or by index; DataError naming the classes if none."""
        if self.class_names is None:
            raise DataError(f"{self.description} has no class labels, so no class can be held "
                            f"out; leave holdout_class as None.")
        if name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        if name_or_index.lstrip("-").isdigit() and 0 <= int(name_or_index) < len(self.class_names):
            return int(name_or_index)
        raise DataError(f"holdout_class={name_or_index!r} names no class of {self.description}. "
                        f"Its classes are: {', '.join(self.class_names)} (or give the index, 0 to "
                        f"{len(self.class_names) - 1}).")

    def shown_images(self, seed):
        """(images, captions, labels) of the test images the figures show: one per class (see
        one_image_per_class); captions and labels are None without labels."""
        images, captions = one_image_per_class(self.x_test, self.y_test, self.class_names, seed)
        labels = None
        if captions is not None:
            labels = np.array([self.class_names.index(name) for name in captions])
        return images, captions, labels

    def caption(self, label):
        return self.class_names[label] if self.class_names else str(label)

    def training_input(self, batch_size, seed, conditional=False):
        """What fit() takes: batches of the training images, shuffled every epoch by seed, from
        memory (batches.in_memory_batches) or decoded from disk when streamed; for a conditional
        model, each batch is {"image": images, "label": labels}."""
        if self.x_train is None:
            return image_files.streamed_input(self.train_files, self.image_shape[:2],
                                              self.image_shape[2], batch_size, seed,
                                              self.y_train if conditional else None)
        return in_memory_batches(self.model_input(self.x_train, self.y_train, conditional),
                                 batch_size, shuffle_seed=seed)

    def test_input(self, count, batch_size, conditional=False):
        """Batches of the first count test images, in order, as the model takes them."""
        return in_memory_batches(self.model_input(
            self.x_test[:count], self.y_test[:count] if conditional else None, conditional),
            batch_size)

    @staticmethod
    def model_input(x, y, conditional):
        return {"image": x, "label": y.astype("int32")} if conditional else x

    def summary(self):
        """What a run records of its data (config.json's "data"), to notice if it changes."""
        return {"image_shape": list(self.image_shape), "class_names": self.class_names,
                "train_images": self.num_train, "test_images": len(self.x_test)}


def load_dataset(dataset="mnist", data_path=None, image_size=None, channels=None,
                 test_fraction=0.1, seed=0, stream=None):
    """Load and check any source (see the module docstring); returns an ImageData.

    dataset: a name in KERAS_DATASETS, a path to an .npz, or a path to a folder of images.
    data_path: for a named dataset, the local copy Keras would otherwise download.
    image_size: None (the data's own size) or an int, the side of the square the images are
    resized to. channels: None (1 if every image is grey, else 3), 1 or 3.
    test_fraction, seed: the held-out share when the source has no test split.
    stream: None (stream a folder from disk when its pixels exceed MEMORY_BUDGET), True, False.
    """
    if dataset in KERAS_DATASETS:
        arrays = _keras_dataset_arrays(dataset, data_path)
        class_names = CLASS_NAMES[dataset]
        description = dataset if data_path is None else f"{dataset} from {data_path}"
    elif os.path.isdir(dataset):
        return _load_folder(dataset, image_size, channels, test_fraction, seed, stream)
    elif os.path.isfile(dataset):
        arrays = _read_npz(dataset, required=("x_train",))
        class_names, description = arrays.pop("class_names", None), dataset
        if class_names is not None:
            class_names = [str(name) for name in class_names]
    else:
        raise DataError(
            f"dataset={dataset!r} is neither a known dataset name ({', '.join(KERAS_DATASETS)}) "
            f"nor an existing .npz file or folder of images. Check the spelling or the path (a "
            f"relative path is taken from {os.getcwd()!r}).")
    x_train, y_train, x_test, y_test = _check_arrays(arrays, class_names, description)
    if y_train is not None and class_names is None:
        # Labels without names: the label numbers name the classes.
        class_names = [str(label) for label in range(int(y_train.max()) + 1)]
    if x_test is None:
        (x_train, y_train), (x_test, y_test) = _split(x_train, y_train, test_fraction, seed,
                                                      description)
    target = x_train.shape[1:3] if image_size is None else (image_size, image_size)
    target_bytes = 4 * (len(x_train) + len(x_test)) * target[0] * target[1] * (
        channels or x_train.shape[-1])
    if target_bytes > MEMORY_BUDGET:
        raise _too_large(
            f"{description} at {target[0]}x{target[1]} pixels", target_bytes,
            "Choose a smaller --image_size, or write the images out as files in a folder and "
            "pass the folder as --dataset: a folder that large is streamed from disk.")
    size = None if image_size is None else (image_size, image_size)
    x_train, x_test = (_convert_arrays(x, size, channels) for x in (x_train, x_test))
    return ImageData(x_train.shape[1:], x_train, y_train, x_test, y_test, class_names,
                     description)


def load_dataset_of_run(config):
    """The data a run was trained on, loaded again from its config.json's settings (runs made
    before other datasets existed were MNIST's, with only data_path)."""
    return load_dataset(config.get("dataset", "mnist"), config.get("data_path"),
                        config.get("image_size"), config.get("channels"),
                        config.get("test_fraction", 0.1), config.get("seed", 0),
                        config.get("stream"))


def load_mnist(data_path=None):
    """((x_train, y_train), (x_test, y_test)) of MNIST as float32 (N, 28, 28, 1) in [0, 1]."""
    data = load_dataset("mnist", data_path)
    return (data.x_train, data.y_train), (data.x_test, data.y_test)


# ---- named Keras datasets ----------------------------------------------------------------------
def _keras_dataset_arrays(name, data_path):
    if data_path is None:
        import keras  # only a download needs Keras

        try:
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
        except Exception as error:  # a download raises many kinds (URLError, OSError, ...)
            raise DataError(
                f"Could not download {name} through keras.datasets.{name}.load_data(): "
                f"{type(error).__name__}: {error}. If this machine is offline, download it "
                f"elsewhere and pass its local copy with --data_path (see the README).") from None
        return {"x_train": x_train, "y_train": y_train.reshape(-1), "x_test": x_test,
                "y_test": y_test.reshape(-1)}
    if not os.path.exists(data_path):
        raise DataError(f"The data file {data_path!r} does not exist. Check --data_path (a "
                        f"relative path is taken from {os.getcwd()!r}), or leave data_path as "
                        f"None to download {name} through Keras.")
    if os.path.isfile(data_path) or name == "mnist":
        arrays = _read_npz(data_path, required=ARRAY_KEYS)
        expected_shape = MNIST_IMAGE_SHAPE[:2] if name == "mnist" else None
        for split in ("train", "test"):
            x = arrays[f"x_{split}"]
            if expected_shape and (x.ndim != 3 or x.shape[1:] != expected_shape):
                raise DataError(f"In {data_path}, x_{split} has shape {x.shape}; expected (N, "
                                f"{expected_shape[0]}, {expected_shape[1]}) grey-scale images.")
            if x.dtype != np.uint8:
                raise DataError(f"In {data_path}, x_{split} has dtype {x.dtype}; expected uint8 "
                                f"pixels in 0..255 (the layout of keras.datasets.{name}).")
        return arrays
    reader = {"fashion_mnist": _read_fashion_mnist_folder, "cifar10": _read_cifar10_folder}[name]
    try:
        return reader(data_path)
    except (OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as error:
        raise DataError(
            f"Could not read {name} from {data_path!r}: {type(error).__name__}: {error}. Point "
            f"--data_path at the folder keras.datasets.{name}.load_data() downloads (see the "
            f"README), or at an .npz with x_train, y_train, x_test, y_test.") from None


def _read_fashion_mnist_folder(folder):
    # The four gzip files Keras downloads: IDX format, a 16-byte header for images, 8 for labels.
    def read(name, offset):
        with gzip.open(os.path.join(folder, name), "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        arrays[f"y_{split}"] = read(f"{prefix}-labels-idx1-ubyte.gz", 8)
        arrays[f"x_{split}"] = read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    return arrays


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 ships as Python pickles, and a pickle can run any code it names. This one may
    only rebuild NumPy arrays; Keras guards its own loader the same way."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_cifar10_folder(folder):
    inner = os.path.join(folder, "cifar-10-batches-py")
    folder = inner if os.path.isdir(inner) else folder

    def read(name):
        with open(os.path.join(folder, name), "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
        # Rows of 3072 bytes, all red then green then blue: (N, 3, 32, 32) -> (N, 32, 32, 3).
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.asarray(batch[b"labels"], np.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    return {"x_train": np.concatenate([x for x, _ in train]),
            "y_train": np.concatenate([y for _, y in train]), "x_test": x_test, "y_test": y_test}


# ---- .npz files of arrays ----------------------------------------------------------------------
def _read_npz(path, required):
    if os.path.isdir(path):
        raise DataError(f"The data path {path!r} is a folder; it must name an .npz file.")
    try:
        # allow_pickle=False: a data file must never be able to run code when it is loaded.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy array or a text file
            raise DataError(
                f"The data file {path!r} is a single NumPy array, not an .npz archive of named "
                f"arrays. Save it with numpy.savez(path, x_train=..., [y_train=..., x_test=..., "
                f"y_test=..., class_names=...]).")
        with loaded as npz:
            missing = [key for key in required if key not in npz.files]
            if missing:
                raise DataError(f"The data file {path!r} lacks the key(s) {', '.join(missing)}; "
                                f"it has {', '.join(npz.files) or 'none'}. It must hold "
                                f"{', '.join(required)}.")
            _refuse_if_too_large(npz, path)
            return {key: npz[key] for key in (*ARRAY_KEYS, "class_names") if key in npz.files}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        raise DataError(
            f"The data file {path!r} is not a readable .npz archive (it may be truncated or "
            f"another kind of file): {type(error).__name__}: {error}. Point --dataset (or "
            f"--data_path) at a good copy.") from None


def _refuse_if_too_large(npz, path):
    """Read the image arrays' shapes from their headers and refuse before loading them whole."""
    pixels = 0
    for key in ("x_train", "x_test"):
        if key in npz.files:
            with npz.zip.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                shape, _, _ = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(member)
            pixels += int(np.prod(shape))
    if 4 * pixels > MEMORY_BUDGET:
        raise _too_large(
            f"The images in {path!r}", 4 * pixels,
            "Write them out as image files in a folder and pass the folder as --dataset: a "
            "folder that large is streamed from disk.")


def _check_arrays(arrays, class_names, source):
    """(x_train, y_train, x_test, y_test) checked, images float32 (N, H, W, C) in [0, 1]."""
    def fail(message):
        raise DataError(f"In {source}, {message}")

    for split in ("train", "test"):
        if f"y_{split}" in arrays and f"x_{split}" not in arrays:
            fail(f"y_{split} has labels but there is no x_{split}: give the images too, or drop "
                 f"the labels.")
    has_test = "x_test" in arrays
    labelled = ["y_train" in arrays] + (["y_test" in arrays] if has_test else [])
    if any(labelled) and not all(labelled):
        fail("only some of the image arrays have labels: give y_train and y_test both, or "
             "neither.")
    if class_names is not None and not any(labelled):
        fail("class_names is given but there are no labels (y_train).")
    checked = []
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            checked += [None, None]
            continue
        x, y = arrays[f"x_{split}"], arrays.get(f"y_{split}")
        if y is not None and y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # Keras's CIFAR-10 labels are shaped (N, 1)
        if x.ndim == 4 and x.shape[-1] not in (1, 3) or x.ndim not in (3, 4):
            fail(f"x_{split} has shape {x.shape}; expected (N, height, width) grey images, or "
                 f"(N, height, width, 1) / (N, height, width, 3).")
        if x.shape[0] == 0:
            fail(f"x_{split} holds no images.")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
                fail(f"x_{split} is {x.dtype} with values outside [0, 1] (or NaN); float images "
                     f"must be in [0, 1] (divide 0..255 values by 255).")
            x = x.astype(np.float32)
        else:
            fail(f"x_{split} has dtype {x.dtype}; expected uint8 pixels in 0..255 or floats in "
                 f"[0, 1]. Convert it with x.astype('uint8') if the values are 0..255.")
        x = x.reshape(x.shape[:3] + (x.shape[3] if x.ndim == 4 else 1,))
        if y is not None:
            if y.shape != (len(x),):
                fail(f"y_{split} has shape {y.shape}; expected ({len(x)},), one label per image "
                     f"of x_{split}.")
            if not np.issubdtype(y.dtype, np.integer):
                fail(f"y_{split} has dtype {y.dtype}; expected integers.")
            n_classes = len(class_names) if class_names is not None else None
            if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
                allowed = (f"0 to {n_classes - 1}, one per class name" if n_classes is not None
                           else "0 or more")
                fail(f"y_{split} has labels from {y.min()} to {y.max()}; labels must be "
                     f"{allowed}.")
            y = y.astype(np.int64)
        checked += [x, y]
    if checked[2] is not None and checked[2].shape[1:] != checked[0].shape[1:]:
        fail(f"x_train holds images of shape {checked[0].shape[1:]} but x_test of shape "
             f"{checked[2].shape[1:]}; both splits must have one image shape.")
    return checked


def _split(x, y, test_fraction, seed, source):
    """A reproducible random hold-out of round(test_fraction * N) images (at least one)."""
    # At least two test images: the evaluation's standard errors and figures need two.
    n_test = max(2, round(test_fraction * len(x)))
    if len(x) - n_test < 1:
        raise DataError(f"{source} holds {len(x)} image(s): too few to hold out a test split of "
                        f"at least two and train on the rest. Give at least three images.")
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    pick = lambda values, index: None if values is None else values[index]  # noqa: E731
    return (pick(x, train), pick(y, train)), (pick(x, test), pick(y, test))


def arrays_as_model_input(x, image_shape, source):
    """An array of images (any of the .npz layouts above) checked and converted to image_shape,
    as a run trained on arrays converts its own; DataError if it cannot be."""
    x = _check_arrays({"x_train": x}, None, source)[0]
    return _convert_arrays(x, image_shape[:2], image_shape[2])


def _convert_arrays(x, size, channels):
    """Resize to size (height, width) and convert to channels with keras.ops.image (antialiased
    bilinear, ITU-R 601 luma); None keeps the array's own."""
    if channels is not None and channels != x.shape[-1]:
        if channels == 3:
            x = np.repeat(x, 3, axis=-1)
        else:
            from keras import ops

            x = ops.convert_to_numpy(ops.image.rgb_to_grayscale(x))
    if size is not None and x.shape[1:3] != tuple(size):
        from keras import ops

        x = np.concatenate([ops.convert_to_numpy(ops.image.resize(
            x[start:start + 1000], tuple(size), antialias=True))
            for start in range(0, len(x), 1000)])
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# ---- folders of image files --------------------------------------------------------------------
def _load_folder(root, image_size, channels, test_fraction, seed, stream):
    description = f"the folder {root!r}"
    splits = {name.lower(): os.path.join(root, name) for name in _subfolders(root)}
    if {"train", "test"} < set(splits):
        others = ", ".join(f"{name}/" for name in sorted(set(splits) - {"train", "test"}))
        raise DataError(f"{root!r} has train/ and test/ and also {others}: a split folder holds "
                        f"just train/ and test/. Move the others (a validation split, say) into "
                        f"one of the two, or out of {root!r}.")
    if set(splits) == {"train", "test"}:
        train_files, train_labels, class_names = _list_images(splits["train"])
        test_files, test_labels, test_names = _list_images(splits["test"])
        if (class_names is None) != (test_names is None):
            raise DataError(f"In {root!r}, only one of train/ and test/ has class subfolders: "
                            f"give both class subfolders, or neither.")
        if class_names is not None:
            unknown = sorted(set(test_names) - set(class_names))
            if unknown:
                raise DataError(f"In {root!r}, test/ has the class(es) {', '.join(unknown)}, "
                                f"which train/ lacks: every test class needs training images.")
            test_labels = np.array([class_names.index(test_names[i]) for i in test_labels])
    else:
        train_files, train_labels, class_names = _list_images(root)
        test_files, test_labels = [], None
    size, channels = _choose_shape(root, train_files + test_files, image_size, channels)
    bytes_per_image = 4 * size[0] * size[1] * channels
    train_share = 1.0 if test_files else 1.0 - test_fraction
    if stream is None:
        stream = train_share * len(train_files) * bytes_per_image > MEMORY_BUDGET
    # Every file is decoded once here, so that unreadable ones are dropped before the split.
    train_files, train_labels, x_train = _decode(train_files, train_labels, size, channels,
                                                 keep=not stream)
    if test_files:
        test_files, test_labels, x_test = _decode(test_files, test_labels, size, channels,
                                                  keep=False)
    else:
        # No train/ + test/ pair: a reproducible share of the images is held out.
        (train_index, train_labels), (test_index, test_labels) = _split(
            np.arange(len(train_files)), train_labels, test_fraction, seed, description)
        test_files = [train_files[i] for i in test_index]
        if x_train is not None:
            x_train = x_train[train_index]
        train_files = [train_files[i] for i in train_index]
    if len(test_files) < 2:
        raise DataError(f"The test split of {description} holds {len(test_files)} readable "
                        f"image(s); the evaluation needs at least two. Add test images.")
    if len(test_files) * bytes_per_image > MEMORY_BUDGET:
        raise _too_large(
            f"The {len(test_files)} test images of {description}",
            len(test_files) * bytes_per_image,
            "The evaluation holds the test split in memory: lower --test_fraction or "
            "--image_size, or move images out of test/.")
    # The test split is held in memory: the evaluation scores every test image.
    x_test = np.stack([image_files.prepare_file(path, size, channels) for path in test_files])
    # A seeded order, so that train_subset takes images of every class, not the first folders.
    order = np.random.default_rng(seed).permutation(len(train_files))
    train_files = [train_files[i] for i in order]
    train_labels = None if train_labels is None else train_labels[order]
    x_train = None if x_train is None else x_train[order]
    if stream:
        print(f"Streaming the {len(train_files)} training images from disk in each epoch "
              f"(as float32 they would take {len(train_files) * bytes_per_image / 2**30:.2f} "
              f"GiB).")
    return ImageData((*size, channels), x_train, train_labels, x_test, test_labels, class_names,
                     description, train_files=train_files if stream else None)


def _subfolders(folder):
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def _list_images(folder):
    """(paths, labels or None, class names or None): class subfolders, or a flat folder."""
    classes = _subfolders(folder)
    if not classes:
        paths, others = image_files.list_class_folder(folder)
        labels = None
    else:
        stray = [name for name in os.listdir(folder) if image_files.is_image_name(name)]
        if stray:
            _warn(f"{len(stray)} image file(s) directly in {folder!r} are ignored: it has class "
                  f"subfolders, and only the images inside those are used.")
        paths, labels, others = [], [], 0
        for label, name in enumerate(classes):
            found, other = image_files.list_class_folder(os.path.join(folder, name))
            if not found:
                raise DataError(f"The class folder {os.path.join(folder, name)!r} holds no image "
                                f"files ({', '.join(image_files.IMAGE_EXTENSIONS)}). Add images "
                                f"to it or remove it.")
            paths += found
            labels += [label] * len(found)
            others += other
        labels = np.array(labels, dtype=np.int64)
    if others:
        print(f"Ignored {others} file(s) in {folder!r} that are not images by their extension.")
    if not paths:
        raise DataError(f"The folder {folder!r} holds no image files "
                        f"({', '.join(image_files.IMAGE_EXTENSIONS)}, any letter case). Put "
                        f"images in it, directly or in one subfolder per class.")
    return paths, labels, classes or None


def _choose_shape(root, paths, image_size, channels):
    """((height, width), channels): given, or the most common size and 1 if all are grey."""
    headers = [(path, header) for path, header, _ in image_files.map_files(
        image_files.read_header, paths) if header is not None]
    if not headers:
        raise DataError(f"None of the {len(paths)} image files in {root!r} could be read; they "
                        f"may be corrupt or not images despite their extension.")
    if image_size is not None:
        size = (image_size, image_size)
    else:
        sizes = Counter(header[:2] for _, header in headers)
        size, count = sizes.most_common(1)[0]
        if len(sizes) > 1:
            print(f"The images in {root!r} differ in size; all are resized to the most common, "
                  f"{size[0]}x{size[1]} (height x width, {count} of {len(headers)} images). "
                  f"Choose another with --image_size.")
    if channels is None:
        channels = 1 if all(header[2] for _, header in headers) else 3
    return size, channels


def _decode(paths, labels, size, channels, keep):
    """Decode every file once: drop (with a warning) those that fail; keep the pixels if asked
    (else only each image's shape is kept, so that a folder to be streamed is never held whole)."""
    def decode(path):
        pixels = image_files.prepare_file(path, size, channels)
        return pixels if keep else pixels.shape

    results = image_files.map_files(decode, paths)
    failed = [(path, error) for path, _, error in results if error is not None]
    if failed:
        named = "; ".join(f"{path} ({error})" for path, error in failed[:MAX_NAMED_FILES])
        more = len(failed) - MAX_NAMED_FILES
        _warn(f"skipped {len(failed)} image file(s) that could not be read: {named}"
              f"{f'; and {more} more' if more > 0 else ''}.")
    ok = np.array([error is None for _, _, error in results], dtype=bool)
    if paths and not ok.any():
        raise DataError(f"None of the {len(paths)} image files could be decoded (the first: "
                        f"{failed[0][0]}, {failed[0][1]}); they may be corrupt.")
    kept_paths = [path for path, good in zip(paths, ok) if good]
    kept_labels = None if labels is None else labels[ok]
    pixels = None
    if keep and kept_paths:
        pixels = np.stack([result for _, result, error in results if error is None])
    return kept_paths, kept_labels, pixels


def _warn(message):
    print(f"warning: {message}", file=sys.stderr)


def one_image_per_class(x, y, class_names, seed=0, limit=10):
    """Images to show: one test image per class (the first `limit` classes that have one),
    chosen reproducibly, with its class name; without labels, the first `limit` images.

    Returns (images, captions); captions is None without labels. The article's helper for this
    (get_images_1_to_10) silently returned nothing; this one never returns an empty set.
    """
    if y is None:
        return x[:limit], None
    rng = np.random.default_rng(seed)
    n_classes = len(class_names) if class_names else int(y.max()) + 1
    picks, captions = [], []
    for label in range(n_classes):
        candidates = np.flatnonzero(y == label)
        if candidates.size:
            picks.append(rng.choice(candidates))
            captions.append(class_names[label] if class_names else str(label))
        if len(picks) == limit:
            break
    return x[np.array(picks)], captions
