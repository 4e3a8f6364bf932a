"""Image files on disk: the one preprocessing every file goes through, and a folder of them loaded
as a run's data (its train/ and test/ or class subfolders, the image size to use, the files that
cannot be read, whether to stream it).

prepare_file() is the only code that turns an image file into model input, whether the file is
part of a training folder, is read batch by batch while streaming, or is scored later: the same
conversion and resizing, by Pillow, everywhere.
"""

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from plumbing import arrays
from plumbing.errors import DataError

# The formats Keras's image_dataset_from_directory reads; the extension's letter case is ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
EXIF_ORIENTATION = 0x0112
ROTATED_A_QUARTER = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Errors Pillow raises for a file that is not a readable image (truncated, corrupt, foreign).
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError,
              Image.DecompressionBombError)
# Decoding runs in threads: Pillow releases the interpreter lock while it decodes.
DECODE_THREADS = min(8, os.cpu_count() or 1)
MAX_NAMED_FILES = 10  # a warning about skipped files names this many, then counts the rest


def is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def prepare_file(path, image_size, channels):
    """One image file -> float32 array (height, width, channels) in [0, 1].

    image_size: (height, width). channels: 1 (Pillow's "L", ITU-R 601-2 luma) or 3 ("RGB"); an
    alpha channel is dropped. Images are resized with Pillow's antialiased bilinear filter.
    Raises one of UNREADABLE for a file Pillow cannot decode completely.
    """
    height, width = image_size
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        if image.mode.startswith("I;16"):
            # 16-bit grey (medical and scientific images): Pillow's conversion to 8 bits clips
            # instead of scaling, so the values are scaled into [0, 1] as 32-bit floats.
            image = Image.fromarray(np.asarray(image, dtype=np.float32) / 65535.0)  # mode "F"
            scale = 1.0
        else:
            image = image.convert("L" if channels == 1 else "RGB")
            scale = 1.0 / 255.0
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) * scale
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.repeat(pixels, channels, axis=-1) if pixels.shape[-1] != channels else pixels


def read_header(path):
    """(height, width, is_grey) from a file's header, without decoding its pixels."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION) in ROTATED_A_QUARTER:
            width, height = height, width  # the size prepare_file sees after exif_transpose
        if image.mode == "P":
            # A palette image is grey when every palette entry has R == G == B.
            palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
            is_grey = bool(np.all(palette == palette[:, :1]))
        else:
            is_grey = image.mode in GREY_MODES
    return height, width, is_grey


def map_files(function, paths):
    """[(path, result or None, error message or None)] for every path, decoded in threads."""
    def attempt(path):
        try:
            return path, function(path), None
        except UNREADABLE as error:
            return path, None, f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        return list(pool.map(attempt, paths))


def prepare_files(paths, image_shape):
    """[(path, pixels or None, error or None)]: each file as model input of image_shape."""
    return map_files(lambda path: prepare_file(path, image_shape[:2], image_shape[2]), paths)


def list_class_folder(root):
    """Image files under root (any depth) and the count of other files, both sorted/stable."""
    images, others = [], 0
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if is_image_name(name):
                images.append(os.path.join(folder, name))
            elif not name.startswith("."):
                others += 1
    return images, others


# ---- a folder of image files, loaded -----------------------------------------------------------
def load_folder(root, image_size, channels, test_fraction, seed, stream):
    """The fields of data.ImageData but its description, from a folder of image files: its
    train/ and test/ subfolders, or a seeded share of its images held out for testing (see
    data.load_dataset for the arguments)."""
    description = f"the folder {root!r}"
    train_files, train_labels, test_files, test_labels, class_names = _list_splits(root)
    size, channels = choose_shape(root, train_files + test_files, image_size, channels)
    bytes_per_image = 4 * size[0] * size[1] * channels
    train_share = 1.0 if test_files else 1.0 - test_fraction
    if stream is None:
        stream = train_share * len(train_files) * bytes_per_image > arrays.MEMORY_BUDGET
    # Every file is decoded once here, so that unreadable ones are dropped before the split.
    train_files, train_labels, x_train = decode_all(
        train_files, train_labels, size, channels, keep=not stream)
    if test_files:
        test_files, test_labels, x_test = decode_all(
            test_files, test_labels, size, channels, keep=False)
    else:
        # No train/ + test/ pair: a reproducible share of the images is held out.
        (train_index, train_labels), (test_index, test_labels) = arrays.hold_out(
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
    return {"image_shape": (*size, channels), "x_train": x_train, "y_train": train_labels,
            "x_test": x_test, "y_test": test_labels, "class_names": class_names,
            "train_files": train_files if stream else None}


def _list_splits(root):
    """(train files, their labels, test files, their labels, class names) of a folder: train/
    and test/ subfolders, or one pool of images ([] test files) to be split."""
    splits = {name.lower(): os.path.join(root, name) for name in subfolders(root)}
    if {"train", "test"} < set(splits):
        others = ", ".join(f"{name}/" for name in sorted(set(splits) - {"train", "test"}))
        raise DataError(f"{root!r} has train/ and test/ and also {others}: a split folder holds "
                        f"just train/ and test/. Move the others (a validation split, say) into "
                        f"one of the two, or out of {root!r}.")
    if set(splits) != {"train", "test"}:
        train_files, train_labels, class_names = list_images(root)
        return train_files, train_labels, [], None, class_names
    train_files, train_labels, class_names = list_images(splits["train"])
    test_files, test_labels, test_names = list_images(splits["test"])
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
    return np.stack([prepare_file(path, size, channels) for path in test_files])


def subfolders(folder):
    """The folder's subfolders, sorted, hidden ones left out."""
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def list_images(folder):
    """(paths, labels or None, class names or None): class subfolders, or a flat folder."""
    classes = subfolders(folder)
    if not classes:
        paths, others = list_class_folder(folder)
        labels = None
    else:
        stray = [name for name in os.listdir(folder) if is_image_name(name)]
        if stray:
            warn(f"{len(stray)} image file(s) directly in {folder!r} are ignored: it has class "
                 f"subfolders, and only the images inside those are used.")
        paths, labels, others = [], [], 0
        for label, name in enumerate(classes):
            found, other = list_class_folder(os.path.join(folder, name))
            if not found:
                raise DataError(f"The class folder {os.path.join(folder, name)!r} holds no image "
                                f"files ({', '.join(IMAGE_EXTENSIONS)}). Add images "
                                f"to it or remove it.")
            paths += found
            labels += [label] * len(found)
            others += other
        labels = np.array(labels, dtype=np.int64)
    if others:
        print(f"Ignored {others} file(s) in {folder!r} that are not images by their extension.")
    if not paths:
        raise DataError(f"The folder {folder!r} holds no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}, any letter case). Put "
                        f"images in it, directly or in one subfolder per class.")
    return paths, labels, classes or None


def choose_shape(root, paths, image_size, channels):
    """((height, width), channels): given, or the most common size and 1 if all are grey."""
    headers = [(path, header) for path, header, _ in map_files(
        read_header, paths) if header is not None]
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


def decode_all(paths, labels, size, channels, keep):
    """Decode every file once: drop (with a warning) those that fail; keep the pixels if asked
    (else only each image's shape is kept, so that a folder to be streamed is never held whole)."""
    def decode(path):
        pixels = prepare_file(path, size, channels)
        return pixels if keep else pixels.shape

    results = map_files(decode, paths)
    failed = [(path, error) for path, _, error in results if error is not None]
    if failed:
        named = "; ".join(f"{path} ({error})" for path, error in failed[:MAX_NAMED_FILES])
        more = len(failed) - MAX_NAMED_FILES
        warn(f"skipped {len(failed)} image file(s) that could not be read: {named}"
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


def warn(message):
    print(f"warning: {message}", file=sys.stderr)
