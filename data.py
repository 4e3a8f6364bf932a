"""MNIST for the CVAE: loading, validation and the one-digit-per-class picker.

Everything here returns float32 images in [0, 1] shaped (N, 28, 28, 1), with the train and
test splits kept apart. A bad input never surfaces as a NumPy traceback: it raises DataError,
whose message names the file, says what is wrong and what to do; train.py turns that into one
paragraph on stderr and a non-zero exit code.
"""

import os
import zipfile
import zlib

import numpy as np

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")

DOWNLOAD_HELP = (
    "If this machine is offline, download mnist.npz elsewhere (for example from "
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz), copy it here and "
    "run again with --data_path=/path/to/mnist.npz."
)


class DataError(ValueError):
    """The data could not be loaded; the message says why and what to do."""


def load_mnist(data_path=None):
    """Return ((x_train, y_train), (x_test, y_test)) with images as float32 in [0, 1].

    data_path: a local .npz with the keys x_train, y_train, x_test, y_test (the layout that
    keras.datasets.mnist.load_data() downloads), or None to let Keras download (or reuse its
    cached copy of) MNIST.
    """
    if data_path is None:
        raw, source = _download_with_keras(), "keras.datasets.mnist"
    else:
        raw, source = _read_npz(data_path), str(data_path)
    _validate(raw, source)
    return (
        (to_float_images(raw["x_train"]), raw["y_train"].astype(np.int64)),
        (to_float_images(raw["x_test"]), raw["y_test"].astype(np.int64)),
    )


def to_float_images(x_uint8):
    """(N, 28, 28) uint8 in 0..255 -> (N, 28, 28, 1) float32 in [0, 1]."""
    return (x_uint8.astype(np.float32) / 255.0).reshape((-1,) + IMAGE_SHAPE)


def _download_with_keras():
    import keras  # imported here so that loading a local file never needs Keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # the download raises many kinds (URLError, OSError, ...)
        raise DataError(
            f"Could not download MNIST through keras.datasets.mnist.load_data(): "
            f"{type(error).__name__}: {error}. {DOWNLOAD_HELP}"
        ) from None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _read_npz(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(
            f"The data file {path!r} does not exist. Check --data_path (a relative path is "
            f"taken from {os.getcwd()!r}), or leave data_path as None to download MNIST "
            f"through Keras."
        )
    if os.path.isdir(path):
        raise DataError(f"The data path {path!r} is a folder; it must name an .npz file.")
    try:
        # allow_pickle=False: a data file must never be able to run code when it is loaded.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy array or a text file
            raise DataError(
                f"The data file {path!r} is a single NumPy array, not an .npz archive of named "
                f"arrays. It must hold x_train, y_train, x_test and y_test, as "
                f"keras.datasets.mnist.load_data() writes them."
            )
        with loaded as npz:
            missing = [key for key in REQUIRED_KEYS if key not in npz.files]
            if missing:
                raise DataError(
                    f"The data file {path!r} lacks the key(s) {', '.join(missing)}; it has "
                    f"{', '.join(npz.files) or 'none'}. It must hold x_train, y_train, x_test "
                    f"and y_test, as keras.datasets.mnist.load_data() writes them."
                )
            return {key: npz[key] for key in REQUIRED_KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        raise DataError(
            f"The data file {path!r} is not a readable .npz archive (it may be truncated or "
            f"another kind of file): {type(error).__name__}: {error}. Download mnist.npz again "
            f"or point --data_path at a good copy."
        ) from None


def _validate(raw, source):
    for split in ("train", "test"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE[:2]:
            raise DataError(
                f"In {source}, x_{split} has shape {x.shape}; expected (N, "
                f"{IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) grey-scale images."
            )
        if x.dtype != np.uint8:
            raise DataError(
                f"In {source}, x_{split} has dtype {x.dtype}; expected uint8 pixels in 0..255 "
                f"(the MNIST layout). Convert it with x.astype('uint8') if the values are 0..255."
            )
        if y.shape != (x.shape[0],):
            raise DataError(
                f"In {source}, y_{split} has shape {y.shape}; expected ({x.shape[0]},), one "
                f"label per image of x_{split}."
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"In {source}, y_{split} has dtype {y.dtype}; expected integers.")
        if x.shape[0] == 0:
            raise DataError(f"In {source}, x_{split} holds no images.")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise DataError(
                f"In {source}, y_{split} has labels from {y.min()} to {y.max()}; MNIST labels "
                f"are the digits 0 to {NUM_CLASSES - 1}."
            )


def get_images_1_to_10(x, y, seed=0):
    """One image of each digit 0..9, in digit order, chosen at random but reproducibly.

    Returns (images, labels) with images shaped (10,) + image shape. The article's helper of this
    name never appended its picks and returned empty arrays; this one raises instead of returning
    fewer than ten.
    """
    rng = np.random.default_rng(seed)
    picks = []
    for digit in range(NUM_CLASSES):
        candidates = np.flatnonzero(y == digit)
        if candidates.size == 0:
            raise DataError(
                f"No image of digit {digit} among the {len(y)} given; pass a split that holds "
                f"every digit 0-{NUM_CLASSES - 1} (the full test set does)."
            )
        picks.append(rng.choice(candidates))
    picks = np.array(picks)
    return x[picks], np.asarray(y)[picks]
