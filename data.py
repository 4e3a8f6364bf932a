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

from plumbing import arrays, image_files, inspection_folders
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
    # An inspection set (plumbing/inspection_folders.py): held-out normal images, and the test
    # images' defect masks (N, height, width), 1 where defective; has_mask says which have one.
    x_val: np.ndarray | None = None
    test_masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None

    @property
    def inspection(self):
        """True for an inspection set: normal training images, labelled defects in the test."""
        return self.x_val is not None

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
        summary = {"image_shape": list(self.image_shape), "class_names": self.class_names,
                   "train_images": self.num_train, "test_images": len(self.x_test)}
        if self.inspection:
            summary["validation_images"] = len(self.x_val)
        return summary


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
    if dataset in KERAS_DATASETS or os.path.isfile(dataset):
        x_train, y_train, x_test, y_test, class_names, description = arrays.load_arrays(
            dataset, data_path, image_size, channels, test_fraction, seed)
        return ImageData(x_train.shape[1:], x_train, y_train, x_test, y_test, class_names,
                         description)
    if os.path.isdir(dataset) and inspection_folders.is_inspection_folder(dataset):
        folder = inspection_folders.load_inspection_folder(dataset, image_size, channels,
                                                           test_fraction, seed)
        return ImageData(**folder, description=f"the inspection set {dataset!r}")
    if os.path.isdir(dataset):
        folder = image_files.load_folder(dataset, image_size, channels, test_fraction, seed,
                                         stream)
        return ImageData(**folder, description=f"the folder {dataset!r}")
    raise DataError(
        f"dataset={dataset!r} is neither a known dataset name ({', '.join(KERAS_DATASETS)}) "
        f"nor an existing .npz file or folder of images. Check the spelling or the path (a "
        f"relative path is taken from {os.getcwd()!r}).")


def load_dataset_of_run(config, run_dir=None):
    """The data a run was trained on, loaded again from its config.json's settings (runs made
    before other datasets existed were MNIST's, with only data_path). With run_dir, refused if
    it is no longer the data the run in run_dir recorded (its training count aside, which
    holdout_class and train_subset change after loading)."""
    data = load_dataset(config.get("dataset", "mnist"), config.get("data_path"),
                        config.get("image_size"), config.get("channels"),
                        config.get("test_fraction", 0.1), config.get("seed", 0),
                        config.get("stream"))
    if run_dir is not None:
        summary = {key: value for key, value in data.summary().items() if key != "train_images"}
        require_same_data(run_dir, config.get("data"), summary)
    return data


def require_same_data(run_dir, old_data, new_data):
    """Refuse to resume or evaluate a run whose data has changed since it was trained (images
    added to a folder would move between the splits; another size would not fit the model)."""
    changed = [f"{key}: {old_data[key]!r} then, {new_data[key]!r} now" for key in new_data
               if key in (old_data or {}) and old_data[key] != new_data[key]]
    if changed:
        raise ConfigError(
            f"The data of the run in {run_dir!r} has changed since it was trained "
            f"({'; '.join(changed)}). Restore the data, or train a new run in another --out_dir "
            f"(or with --overwrite=True).")


def load_mnist(data_path=None):
    """((x_train, y_train), (x_test, y_test)) of MNIST as float32 (N, 28, 28, 1) in [0, 1]."""
    data = load_dataset("mnist", data_path)
    return (data.x_train, data.y_train), (data.x_test, data.y_test)


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
