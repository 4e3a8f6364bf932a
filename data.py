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
from plumbing.run_folder import recorded_setting, require_same_data


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
    # Training images held out to choose settings on (validation_images, or an inspection set's
    # normal images); the per-epoch val_* columns measure them when there are any.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    # An inspection set (plumbing/inspection_folders.py): the test images' defect masks
    # (N, height, width), 1 where defective; has_mask says which have one.
    test_masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    # For a model of patches (in_patches): the images themselves, which the anomaly evaluation
    # scores patch by patch; every split above is then their patches.
    whole: "ImageData | None" = None

    @property
    def inspection(self):
        """True for an inspection set: normal training images, labelled defects in the test."""
        return self.test_masks is not None

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

    def with_validation(self, count, seed):
        """A copy with `count` training images, chosen by seed, moved into a validation split
        (x_val, y_val): the images a setting is chosen on, never the test split. Streamed
        training images keep streaming; the validation images are read into memory once."""
        require(not self.inspection,
                f"{self.description} already holds out test_fraction of train/good/ as "
                f"validation images; leave validation_images as None.")
        require(count < self.num_train,
                f"validation_images={count} leaves no training image of the {self.num_train}; "
                f"hold out fewer (a sixth of them, say).")
        held_out = np.zeros(self.num_train, dtype=bool)
        held_out[np.random.default_rng(seed).choice(self.num_train, count, replace=False)] = True
        if self.x_train is None:
            x_val = np.stack([image_files.prepare_file(path, self.image_shape[:2],
                                                       self.image_shape[2])
                              for path in np.asarray(self.train_files)[held_out]])
        else:
            x_val = self.x_train[held_out]
        return dataclasses.replace(self.select_train(~held_out), x_val=x_val,
                                   y_val=None if self.y_train is None else self.y_train[held_out])

    def with_binarized_held_out(self, binarize, seed):
        """A copy whose held-out images (validation and test) are 0/1: thresholded at 0.5
        ("static"), or each pixel drawn once from Bernoulli(pixel) ("dynamic", a fixed draw
        that seed decides, as the dynamically binarized benchmark's test set is). The training
        images stay as they are: the model binarizes them as it sees them (cvae.CVAE)."""
        from keras import ops

        from cvae import binarized

        require(self.image_shape[2] == 1,
                f"binarize={binarize!r} is for grey images, and {self.description} has "
                f"{self.image_shape[2]} channels; leave binarize as None (or use channels=1).")
        rng = np.random.default_rng([seed, 0, 2])  # not EpochShuffle's [seed, epoch]

        def made_binary(x):
            if x is None:
                return None
            threshold = 0.5 if binarize == "static" else rng.random(x.shape, dtype=np.float32)
            return ops.convert_to_numpy(binarized(x, threshold))

        return dataclasses.replace(self, x_test=made_binary(self.x_test),
                                   x_val=made_binary(self.x_val))

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

    def training_input(self, batch_size, shuffle, conditional=False):
        """What fit() takes: batches of the training images, in the order the EpochShuffle
        `shuffle` gives each epoch, from memory (plumbing/batches.py) or decoded from disk when
        streamed; for a conditional model, each batch is {"image": images, "label": labels}."""
        if self.x_train is None:
            return streamed_input(self.train_files, self.image_shape[:2], self.image_shape[2],
                                  batch_size, shuffle, self.y_train if conditional else None)
        return in_memory_batches(self.model_input(self.x_train, self.y_train, conditional),
                                 batch_size, shuffle)

    def monitored_images(self):
        """(images, labels) that fit() measures after each epoch (the val_* columns): the
        validation split when there is one, else the test split, which is then only watched."""
        if self.x_val is not None:
            return self.x_val, self.y_val
        return self.x_test, self.y_test

    def monitored_split(self):
        """(how many images monitored_images holds, and the split's name)."""
        return len(self.monitored_images()[0]), "test" if self.x_val is None else "validation"

    def monitored_input(self, count, batch_size, conditional=False):
        """Batches of the first count monitored images, in order, as the model takes them."""
        x, y = self.monitored_images()
        return in_memory_batches(self.model_input(
            x[:count], y[:count] if conditional else None, conditional), batch_size)

    def in_patches(self, size):
        """A copy for a model of size x size patches (train.py's patch_size): every split cut into
        its overlapping patches (patches.py), image by image, labels repeated (a defective test
        image's patch that misses its masked defect is labelled good), and `whole` keeping these
        images."""
        from patches import patch_positions, patches_of_each_image

        require(self.x_train is not None,
                f"patch_size cuts the training images into patches in memory, and "
                f"{self.description} is streamed from disk; pass stream=False (or a smaller "
                f"image_size), or leave patch_size as None.")
        require(size <= min(self.image_shape[:2]),
                f"patch_size={size} is larger than the images ({self.image_shape[0]}x"
                f"{self.image_shape[1]}); choose at most {min(self.image_shape[:2])}, or None.")
        count = len(patch_positions(self.image_shape, size))

        def cut(x):
            return None if x is None else patches_of_each_image(x, size)

        def repeat(y):
            return None if y is None else np.repeat(y, count)

        y_test = repeat(self.y_test)
        if self.inspection:  # a defective image's patch that misses its defect shows none
            defect_pixels = cut(self.test_masks[..., None]).reshape(len(y_test), -1).sum(axis=1)
            y_test[(defect_pixels == 0) & repeat(self.has_mask)] = 0
        return dataclasses.replace(
            self, image_shape=(size, size, self.image_shape[2]), x_train=cut(self.x_train),
            y_train=repeat(self.y_train), x_test=cut(self.x_test), y_test=y_test,
            x_val=cut(self.x_val), y_val=repeat(self.y_val), test_masks=None, has_mask=None,
            whole=self, description=f"{self.description} in {size}x{size} patches")

    @staticmethod
    def model_input(x, y, conditional):
        return {"image": x, "label": y.astype("int32")} if conditional else x

    def summary(self):
        """What a run records of its data (config.json's "data"), to notice if it changes."""
        summary = {"image_shape": list(self.image_shape), "class_names": self.class_names,
                   "train_images": self.num_train, "test_images": len(self.x_test)}
        if self.x_val is not None:
            summary["validation_images"] = len(self.x_val)
        if self.whole is not None:  # the counts above are then of patches
            summary["patches_of"] = self.whole.summary()
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
    before other datasets existed were MNIST's, with only data_path). With run_dir, split as the
    run trained on it (as_trained), and refused if it is no longer the data the run in run_dir
    recorded."""
    data = load_dataset(**{name: recorded_setting(config, name) for name in (
        "dataset", "data_path", "image_size", "channels", "test_fraction", "seed", "stream")})
    if run_dir is not None:
        data = as_trained(data, config)
        require_same_data(run_dir, config.get("data"), data.summary())
    return data


def as_trained(data, config):
    """The data with the run's holdout_class left out of training, its validation_images held
    out (after the holdout, so that evaluate.py draws the same ones), its train_subset applied,
    its held-out images binarized as binarize says, and every split in patches for a
    patch_size."""
    require(config.get("holdout_class") is None or not data.inspection,
            f"{data.description} already keeps its defects out of training (train/good/ only); "
            f"leave holdout_class as None.")
    if config.get("holdout_class") is not None:
        # Anomaly-detection experiment: the model never sees this class in training.
        holdout = data.class_index(config["holdout_class"])
        data = data.select_train(data.y_train != holdout)
        require(data.num_train > 0, f"With holdout_class={config['holdout_class']!r} no "
                                    f"training images are left; hold out another class or none.")
        require(bool((data.y_test == holdout).any()),
                f"The test split holds no image of holdout_class={config['holdout_class']!r}, so "
                f"anomaly detection cannot be measured; hold out another class.")
    if config.get("validation_images") is not None:
        data = data.with_validation(config["validation_images"], recorded_setting(config, "seed"))
    if config.get("train_subset") is not None:
        require(config["train_subset"] <= data.num_train,
                f"train_subset={config['train_subset']} is more than the {data.num_train} "
                f"training images available.")
        data = data.select_train(np.arange(data.num_train) < config["train_subset"])
    if config.get("binarize") is not None:
        data = data.with_binarized_held_out(config["binarize"], recorded_setting(config, "seed"))
    if config.get("patch_size") is not None:
        data = data.in_patches(config["patch_size"])
    return data


# A grey or colour image set with at least this share of its pixels within NEAR_BINARY of 0 or 1
# is MNIST-like: its pixels are nearly binary, and the article's Bernoulli likelihood fits it.
# (MNIST: 90% within 0.05; the photograph crops of docs/likelihoods.md: 0% and 8%.)
MNIST_LIKE_SHARE = 0.8
NEAR_BINARY = 0.05
# The likelihood for every other image set: chosen on validation images of real photographs
# (docs/likelihoods.md).
GREY_LEVEL_LIKELIHOOD = "discretized_logistic"


def fitting_likelihood(data, config):
    """(the decoder likelihood for likelihood="auto", why): the article's Bernoulli for MNIST,
    binarized images, or training pixels as nearly binary as MNIST's; else
    GREY_LEVEL_LIKELIHOOD."""
    if config.get("binarize") is not None:
        return "bernoulli", f"binarize={config['binarize']} makes every pixel 0 or 1"
    if recorded_setting(config, "dataset") == "mnist":
        return "bernoulli", "MNIST, the article's experiment, has pixels nearly 0 or 1"
    if data.x_train is not None:
        pixels = data.x_train[:1000]
    else:  # streamed: the first training files, decoded as the run decodes them
        decoded = image_files.prepare_files(data.train_files[:200], data.image_shape)
        pixels = np.stack([image for _, image, error in decoded if error is None])
    share = float(np.mean((pixels < NEAR_BINARY) | (pixels > 1.0 - NEAR_BINARY)))
    if share >= MNIST_LIKE_SHARE:
        return "bernoulli", (f"{100 * share:.0f}% of the training pixels lie within "
                             f"{NEAR_BINARY} of 0 or 1, as in MNIST: the article's Bernoulli")
    return GREY_LEVEL_LIKELIHOOD, (
        f"only {100 * share:.0f}% of the training pixels lie within {NEAR_BINARY} of 0 or 1: "
        f"grey levels carry the images, which a Bernoulli likelihood would not reward (its "
        f"posterior collapses on photographs; docs/likelihoods.md)")


def as_the_run_sees(x, config):
    """New images made comparable with a run's (binarized) test images: thresholded at 0.5 for
    binarize="static", as the model saw its training images; as they are otherwise. For
    "dynamic", a grey pixel's Bernoulli loss is already the expected loss over its binary
    draws."""
    if config.get("binarize") == "static":
        from keras import ops

        from cvae import binarized

        return ops.convert_to_numpy(binarized(np.asarray(x, dtype=np.float32), 0.5))
    return x


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
