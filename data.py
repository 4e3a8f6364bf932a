"""The images a run trains on, from any source: a Keras dataset by name, an .npz of arrays, or a
folder of image files.

load_dataset() is the one entry point. Whatever the source, it returns an ImageData: float32
pixels in [0, 1] shaped (N, height, width, channels), a train and a test split kept apart, labels
and class names when the source has them. A bad input never surfaces as a traceback: it raises
DataError, whose message names the file, says what is wrong and what to do. How each source is
read and checked is in plumbing/arrays.py and plumbing/image_files.py.
"""

import dataclasses
import os

import numpy as np

from plumbing import arrays, image_files
from plumbing.arrays import KERAS_DATASETS
from plumbing.batches import in_memory_batches, streamed_input
from plumbing.errors import ConfigError, DataError, require


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

    def class_index(self, name_or_index, setting="holdout_class"):
        """The label of a class given by name or by index (see class_index)."""
        require(self.class_names is not None,
                f"{self.description} has no class labels, so no class can be named; leave "
                f"{setting} as None.", DataError)
        return class_index(name_or_index, self.class_names, setting, self.description,
                           DataError)

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
        memory (plumbing/batches.py) or decoded from disk when streamed; for a conditional
        model, each batch is {"image": images, "label": labels}."""
        if self.x_train is None:
            return streamed_input(self.train_files, self.image_shape[:2],
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
    stream: None (stream a folder when its pixels exceed plumbing/arrays.py's MEMORY_BUDGET),
    True, False.
    """
    if dataset in KERAS_DATASETS:
        loaded = arrays.keras_dataset_arrays(dataset, data_path)
        class_names = arrays.CLASS_NAMES[dataset]
        description = dataset if data_path is None else f"{dataset} from {data_path}"
    elif os.path.isdir(dataset):
        return _load_folder(dataset, image_size, channels, test_fraction, seed, stream)
    elif os.path.isfile(dataset):
        loaded = arrays.read_npz(dataset, required=("x_train",))
        class_names, description = loaded.pop("class_names", None), dataset
        if class_names is not None:
            class_names = [str(name) for name in class_names]
    else:
        raise DataError(
            f"dataset={dataset!r} is neither a known dataset name ({', '.join(KERAS_DATASETS)}) "
            f"nor an existing .npz file or folder of images. Check the spelling or the path (a "
            f"relative path is taken from {os.getcwd()!r}).")
    x_train, y_train, x_test, y_test = arrays.check_arrays(loaded, class_names, description)
    if y_train is not None and class_names is None:
        # Labels without names: the label numbers name the classes.
        class_names = [str(label) for label in range(int(y_train.max()) + 1)]
    if x_test is None:
        (x_train, y_train), (x_test, y_test) = _split(x_train, y_train, test_fraction, seed,
                                                      description)
    target = x_train.shape[1:3] if image_size is None else (image_size, image_size)
    target_bytes = 4 * (len(x_train) + len(x_test)) * target[0] * target[1] * (
        channels or x_train.shape[-1])
    if target_bytes > arrays.MEMORY_BUDGET:
        raise arrays.too_large(
            f"{description} at {target[0]}x{target[1]} pixels", target_bytes,
            "Choose a smaller --image_size, or write the images out as files in a folder and "
            "pass the folder as --dataset: a folder that large is streamed from disk.")
    size = None if image_size is None else (image_size, image_size)
    x_train, x_test = (arrays.convert_arrays(x, size, channels) for x in (x_train, x_test))
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


def _split(x, y, test_fraction, seed, source):
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


# ---- folders of image files --------------------------------------------------------------------
def _load_folder(root, image_size, channels, test_fraction, seed, stream):
    description = f"the folder {root!r}"
    train_files, train_labels, test_files, test_labels, class_names = _list_splits(root)
    size, channels = image_files.choose_shape(root, train_files + test_files, image_size,
                                              channels)
    bytes_per_image = 4 * size[0] * size[1] * channels
    train_share = 1.0 if test_files else 1.0 - test_fraction
    if stream is None:
        stream = train_share * len(train_files) * bytes_per_image > arrays.MEMORY_BUDGET
    # Every file is decoded once here, so that unreadable ones are dropped before the split.
    train_files, train_labels, x_train = image_files.decode_all(
        train_files, train_labels, size, channels, keep=not stream)
    if test_files:
        test_files, test_labels, x_test = image_files.decode_all(
            test_files, test_labels, size, channels, keep=False)
    else:
        # No train/ + test/ pair: a reproducible share of the images is held out.
        (train_index, train_labels), (test_index, test_labels) = _split(
            np.arange(len(train_files)), train_labels, test_fraction, seed, description)
        test_files = [train_files[i] for i in test_index]
        if x_train is not None:
            x_train = x_train[train_index]
        train_files = [train_files[i] for i in train_index]
    x_test = _load_test_files(test_files, size, channels, description)
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


def _list_splits(root):
    """(train files, their labels, test files, their labels, class names) of a folder: train/
    and test/ subfolders, or one pool of images ([] test files) to be split."""
    splits = {name.lower(): os.path.join(root, name) for name in image_files.subfolders(root)}
    if {"train", "test"} < set(splits):
        others = ", ".join(f"{name}/" for name in sorted(set(splits) - {"train", "test"}))
        raise DataError(f"{root!r} has train/ and test/ and also {others}: a split folder holds "
                        f"just train/ and test/. Move the others (a validation split, say) into "
                        f"one of the two, or out of {root!r}.")
    if set(splits) != {"train", "test"}:
        train_files, train_labels, class_names = image_files.list_images(root)
        return train_files, train_labels, [], None, class_names
    train_files, train_labels, class_names = image_files.list_images(splits["train"])
    test_files, test_labels, test_names = image_files.list_images(splits["test"])
    if (class_names is None) != (test_names is None):
        raise DataError(f"In {root!r}, only one of train/ and test/ has class subfolders: "
                        f"give both class subfolders, or neither.")
    if class_names is not None:
        unknown = sorted(set(test_names) - set(class_names))
        if unknown:
            raise DataError(f"In {root!r}, test/ has the class(es) {', '.join(unknown)}, "
                            f"which train/ lacks: every test class needs training images.")
        test_labels = np.array([class_names.index(test_names[i]) for i in test_labels])
    return train_files, train_labels, test_files, test_labels, class_names


def _load_test_files(test_files, size, channels, description):
    """The test split, decoded into memory: the evaluation scores every test image."""
    bytes_per_image = 4 * size[0] * size[1] * channels
    if len(test_files) < 2:
        raise DataError(f"The test split of {description} holds {len(test_files)} readable "
                        f"image(s); the evaluation needs at least two. Add test images.")
    if len(test_files) * bytes_per_image > arrays.MEMORY_BUDGET:
        raise arrays.too_large(
            f"The {len(test_files)} test images of {description}",
            len(test_files) * bytes_per_image,
            "The evaluation holds the test split in memory: lower --test_fraction or "
            "--image_size, or move images out of test/.")
    return np.stack([image_files.prepare_file(path, size, channels) for path in test_files])


# ---- classes -------------------------------------------------------------------------------------
def class_index(name_or_index, class_names, setting, source, error=ConfigError):
    """The label of a class given by its name or by its index (0 to N - 1), the one lookup for
    every setting that names a class; error (a setting's ConfigError, or a DataError) listing
    the classes when it names none."""
    if name_or_index in class_names:
        return class_names.index(name_or_index)
    require(name_or_index.isdigit() and int(name_or_index) < len(class_names),
            f"{setting}={name_or_index!r} names no class of {source}. Its classes are: "
            f"{', '.join(class_names)} (or give the index, 0 to {len(class_names) - 1}).", error)
    return int(name_or_index)


def label_of_run(name_or_index, config):
    """sample.py's and score.py's --class_name: the label of that class in a conditional run;
    None when none is given."""
    if name_or_index is None:
        return None
    require(config.get("conditional"), "--class_name is for a conditional run (trained with "
                                       "--conditional=True); this one models every class at once.")
    return class_index(name_or_index, config["data"]["class_names"], "--class_name", "this run")


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
