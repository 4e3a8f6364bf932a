"""An inspection data set in the MVTec AD layout: normal images to train on, and a labelled test
set of normal and defective images, with pixel masks of the defects where they exist.

    ROOT/train/good/                     normal images only: the model learns what normal is
    ROOT/test/good/                      normal test images
    ROOT/test/<defect>/                  defective test images, one folder per kind of defect
    ROOT/ground_truth/<defect>/<name>_mask.png   optional: non-zero where <name> is defective

A seeded share (test_fraction) of train/good is held out as normal validation images: the
anomaly threshold is chosen on them, never on the test labels. Anything unexpected is refused
with one paragraph before anything is written.
"""

import os

import numpy as np
from PIL import Image

from plumbing import arrays, image_files
from plumbing.errors import DataError

GOOD = "good"
MASK_SUFFIX = "_mask"


def is_inspection_folder(root):
    """True for a folder in the MVTec AD layout: train/ and test/, and train/good/ in it."""
    if not os.path.isdir(root):  # a file, a Keras dataset's name, or a path that is not there
        return False
    try:
        subfolders = {name.lower(): name for name in image_files.subfolders(root)}
    except OSError:  # unreadable: the loader says so, in its own words
        return False
    return ({"train", "test"} <= set(subfolders)
            and os.path.isdir(os.path.join(root, subfolders["train"], GOOD)))


def load_inspection_folder(root, image_size, channels, test_fraction, seed):
    """The fields of data.ImageData for an inspection folder (see the module docstring): the
    training and validation images are normal; the test labels are 0 for good and 1, 2, ...
    for the defect kinds, in class_names order; test_masks is (N, height, width) uint8, 1 where
    defective, and has_mask says which test images have one (good ones always do: all zero)."""
    folders = _check_layout(root)
    train_files, _ = image_files.list_class_folder(os.path.join(folders["train"], GOOD))
    test_files, test_labels, class_names = image_files.list_images(folders["test"])
    class_names = [GOOD] + [name for name in class_names if name != GOOD]
    names_in_test = sorted(set(image_files.subfolders(folders["test"])))
    test_labels = np.array([class_names.index(names_in_test[label]) for label in test_labels])
    size, channels = image_files.choose_shape(root, train_files + test_files, image_size,
                                              channels)
    train_files, _, x_normal = image_files.decode_all(train_files, None, size, channels,
                                                      keep=True)
    listed = test_files
    test_files, test_labels, x_test = image_files.decode_all(test_files, test_labels, size,
                                                             channels, keep=True)
    empty = [name for label, name in enumerate(class_names) if not np.any(test_labels == label)]
    if empty:
        raise DataError(f"In {root!r}, test/{empty[0]}/ has no readable image: every kind of "
                        f"test image needs at least one to be measured.")
    (x_train, _), (x_val, _) = arrays.hold_out(x_normal, None, test_fraction, seed,
                                               f"train/good of {root!r}")
    masks, has_mask = _read_masks(root, folders, listed, test_files, test_labels, class_names,
                                  size)
    return {"image_shape": (*size, channels), "x_train": x_train, "y_train": None,
            "x_test": x_test, "y_test": test_labels, "class_names": class_names,
            "x_val": x_val, "test_masks": masks, "has_mask": has_mask}


def _check_layout(root):
    folders = {name.lower(): os.path.join(root, name) for name in image_files.subfolders(root)}
    others = sorted(set(folders) - {"train", "test", "ground_truth"})
    if others:
        raise DataError(f"{root!r} is laid out as an inspection set (train/good/) but also has "
                        f"{', '.join(name + '/' for name in others)}: it may hold only train/, "
                        f"test/ and ground_truth/. Move the others out of it.")
    not_good = [name for name in image_files.subfolders(folders["train"]) if name != GOOD]
    if not_good:
        raise DataError(f"In {root!r}, train/ holds {', '.join(name + '/' for name in not_good)}"
                        f" beside good/: an inspection set trains on normal images only. Move "
                        f"defective images to test/<defect>/, or remove those folders.")
    kinds = image_files.subfolders(folders["test"])
    if GOOD not in kinds or len(kinds) < 2:
        raise DataError(f"In {root!r}, test/ must hold good/ and at least one folder of "
                        f"defective images (test/<defect>/); it holds "
                        f"{', '.join(name + '/' for name in kinds) or 'no folder'}.")
    return folders


def _mask_key(path, folder):
    """A file's path under folder, without its extension: test/<kind>/a/001.png and
    ground_truth/<kind>/a/001_mask.png meet at ("a/001", ...)."""
    return os.path.splitext(os.path.relpath(path, folder))[0]


def _read_masks(root, folders, listed, test_files, test_labels, class_names, size):
    """(masks, has_mask) of the decoded test images; refuses a mask without an image, two
    images that one mask would fit, or a mask of another size than its image, and says which
    defect images have no mask. listed: the test files before the unreadable ones were left out
    (their masks are left out with them)."""
    masks = np.zeros((len(test_files), *size), np.uint8)
    has_mask = test_labels == 0
    index_of = {path: index for index, path in enumerate(test_files)}
    expected = {}
    for path in listed:
        kind = os.path.relpath(path, folders["test"]).split(os.sep)[0]
        key = (kind, _mask_key(path, os.path.join(folders["test"], kind)) + MASK_SUFFIX)
        if key in expected:
            raise DataError(f"{expected[key]!r} and {path!r} differ only in their extension, so "
                            f"one mask would belong to both; rename one of them.")
        expected[key] = path
    truth = folders.get("ground_truth")
    for kind in image_files.subfolders(truth) if truth is not None else []:
        for path in image_files.list_class_folder(os.path.join(truth, kind))[0]:
            key = (kind, _mask_key(path, os.path.join(truth, kind)))
            if key not in expected or kind == GOOD:
                raise DataError(
                    f"The mask {path!r} has no image among the defective ones: "
                    f"ground_truth/<defect>/<name>{MASK_SUFFIX}.png belongs to "
                    f"test/<defect>/<name>.png. Add the image or remove the mask.")
            if expected[key] in index_of:  # else its image could not be read, and is left out
                index = index_of[expected[key]]
                masks[index], has_mask[index] = _read_mask(path, expected[key], size), True
    missing = int(np.sum(~has_mask))
    if missing:
        print(f"{missing} defective test image(s) in {root!r} have no mask: they are evaluated "
              f"at image level only.")
    return masks, has_mask


def _read_mask(path, image_path, size):
    try:
        with Image.open(path) as mask, Image.open(image_path) as image:
            if mask.size != image.size:
                raise DataError(
                    f"The mask {path!r} is {mask.size[0]}x{mask.size[1]} pixels but its image "
                    f"{image_path!r} is {image.size[0]}x{image.size[1]}: a mask must have its "
                    f"image's size. Fix or remove the mask.")
            binary = mask.convert("L").point(lambda value: 255 if value else 0)
            return (np.asarray(binary.resize(size[::-1], Image.Resampling.NEAREST)) > 0
                    ).astype(np.uint8)
    except image_files.UNREADABLE as error:
        raise DataError(f"The mask {path!r} cannot be read ({type(error).__name__}: {error}). "
                        f"Fix or remove it.") from None
