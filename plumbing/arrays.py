"""Images as arrays: the local copies of the Keras datasets, .npz files, and the checks and
conversion every array goes through before it is a model's input.

A bad array never surfaces as a traceback: DataError names the file, says what is wrong and what
to do. Arrays are checked in full, then converted to float32 (N, height, width, channels) in
[0, 1].
"""

import gzip
import os
import pickle
import zipfile
import zlib

import numpy as np

from plumbing.errors import DataError

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


def load_arrays(dataset, data_path, image_size, channels, test_fraction, seed):
    """(x_train, y_train, x_test, y_test, class_names, description) of a named Keras dataset
    (its local copy data_path, or a download) or of an .npz file: checked, split when it has no
    test split, and converted to model input (see data.load_dataset for the arguments)."""
    if dataset in KERAS_DATASETS:
        loaded = keras_dataset_arrays(dataset, data_path)
        class_names = CLASS_NAMES[dataset]
        description = dataset if data_path is None else f"{dataset} from {data_path}"
    else:
        loaded = read_npz(dataset, required=("x_train",))
        class_names, description = loaded.pop("class_names", None), dataset
        if class_names is not None:
            class_names = [str(name) for name in class_names]
    x_train, y_train, x_test, y_test = check_arrays(loaded, class_names, description)
    if y_train is not None and class_names is None:
        # Labels without names: the label numbers name the classes.
        class_names = [str(label) for label in range(int(y_train.max()) + 1)]
    if x_test is None:
        (x_train, y_train), (x_test, y_test) = hold_out(x_train, y_train, test_fraction, seed,
                                                        description)
    target = x_train.shape[1:3] if image_size is None else (image_size, image_size)
    target_bytes = 4 * (len(x_train) + len(x_test)) * target[0] * target[1] * (
        channels or x_train.shape[-1])
    if target_bytes > MEMORY_BUDGET:
        raise too_large(
            f"{description} at {target[0]}x{target[1]} pixels", target_bytes,
            "Choose a smaller --image_size, or write the images out as files in a folder and "
            "pass the folder as --dataset: a folder that large is streamed from disk.")
    size = None if image_size is None else (image_size, image_size)
    x_train, x_test = (convert_arrays(x, size, channels) for x in (x_train, x_test))
    return x_train, y_train, x_test, y_test, class_names, description


def hold_out(x, y, test_fraction, seed, source):
    """A reproducible random hold-out of round(test_fraction * N) images (at least one)."""
    # At least two test images: the evaluation's standard errors and figures need two.
    n_test = max(2, round(test_fraction * len(x)))
    if len(x) - n_test < 1:
        raise DataError(f"{source} holds {len(x)} image(s): too few to hold out a test split of "
                        f"at least two and train on the rest. Give at least three images.")
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    def pick(values, index):
        return None if values is None else values[index]

    return (pick(x, train), pick(y, train)), (pick(x, test), pick(y, test))


def too_large(what, size_bytes, advice):
    return DataError(f"{what} would take {size_bytes / 2**30:.1f} GiB as float32, more than the "
                     f"{MEMORY_BUDGET / 2**30:.1f} GiB this machine can spare. {advice}")


# ---- named Keras datasets ----------------------------------------------------------------------
def keras_dataset_arrays(name, data_path):
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
        arrays = read_npz(data_path, required=ARRAY_KEYS)
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
def read_npz(path, required):
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
        raise too_large(
            f"The images in {path!r}", 4 * pixels,
            "Write them out as image files in a folder and pass the folder as --dataset: a "
            "folder that large is streamed from disk.")


def check_arrays(arrays, class_names, source):
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


def arrays_as_model_input(x, image_shape, source):
    """An array of images (any of the .npz layouts above) checked and converted to image_shape,
    as a run trained on arrays converts its own; DataError if it cannot be."""
    x = check_arrays({"x_train": x}, None, source)[0]
    return convert_arrays(x, image_shape[:2], image_shape[2])


def convert_arrays(x, size, channels):
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
