"""Image files on disk: the one preprocessing every file goes through, the folder scan, and the
streamed training input for folders too large to hold in memory.

prepare_file() is the only code that turns an image file into model input, whether the file is
part of a training folder, is read batch by batch while streaming, or is scored later: the same
conversion and resizing, by Pillow, everywhere.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def streamed_input(paths, image_size, channels, batch_size, seed, labels=None):
    """A keras.utils.PyDataset that decodes each training batch from disk, shuffled per epoch;
    with labels, each batch is {"image": images, "label": labels}, a conditional model's input.

    Keras's own dataset class rather than a tf.data pipeline: it runs on every Keras backend, and
    its worker threads decode the next batches while the current one trains.
    """
    import keras

    class ImageFileBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=2, max_queue_size=8)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(paths))

        def __len__(self):
            return math.ceil(len(paths) / batch_size)

        def __getitem__(self, index):
            chosen = self.order[index * batch_size:(index + 1) * batch_size]
            images = np.stack([prepare_file(paths[i], image_size, channels) for i in chosen])
            if labels is None:
                return images
            return {"image": images, "label": labels[chosen].astype("int32")}

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(paths))

    return ImageFileBatches()
