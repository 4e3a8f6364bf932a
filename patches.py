"""Images as overlapping square patches, for a model of texture patches (train.py's patch_size;
why and what it measured: docs/anomaly-detection.md, "A model of patches, for textures").

The patches overlap by half (stride size // 2, the last one flush with the far edge). A map
computed per patch (a pixel's loss, say) is brought back to its image by averaging it where
patches overlap. cut_into_patches and average_patch_maps are keras.ops, so that the anomaly
scorer cuts and reassembles inside its own graph (and the exported scorer.onnx with it); the
training data and the NumPy baselines are cut by the same code.
"""

import numpy as np
from keras import ops


def patch_corners(side, size):
    """The first row (or column) of each patch along a side: every size // 2, and one flush with
    the far edge when the stride does not land there."""
    if not 1 <= size <= side:
        raise ValueError(f"A patch of {size} pixels does not fit in a side of {side}.")
    corners = list(range(0, side - size + 1, max(1, size // 2)))
    if corners[-1] != side - size:
        corners.append(side - size)
    return corners


def patch_positions(image_shape, size):
    """(top, left) of every patch of an image, row by row."""
    return [(top, left) for top in patch_corners(image_shape[0], size)
            for left in patch_corners(image_shape[1], size)]


def cut_into_patches(images, size):
    """(N, height, width, C) -> (P * N, size, size, C): patch by patch, so that the n-th image's
    p-th patch is at p * N + n (P = len(patch_positions))."""
    return ops.concatenate([images[:, top:top + size, left:left + size]
                            for top, left in patch_positions(tuple(images.shape[1:3]), size)],
                           axis=0)


def patches_of_each_image(images, size):
    """NumPy (N, height, width, C) -> (N * P, size, size, C), image by image: the n-th image's
    p-th patch at n * P + p, so that a split's first rows are whole images' patches."""
    cut = ops.convert_to_numpy(cut_into_patches(images, size))
    count = len(cut) // len(images)
    by_image = np.swapaxes(cut.reshape((count, len(images)) + cut.shape[1:]), 0, 1)
    return by_image.reshape((-1,) + cut.shape[1:])


def patch_size_of(model, image_shape):
    """The side of the patches a model scores images of image_shape by; None when the model
    takes the images whole."""
    model_shape = tuple(model.encoder.inputs[0].shape[1:])
    return None if model_shape == tuple(image_shape) else model_shape[0]


def average_patch_maps(maps, image_shape):
    """(P * N, size, size) per-patch maps, in cut_into_patches's order -> (N, height, width):
    each pixel's average over the patches that cover it."""
    height, width = image_shape[:2]
    size = maps.shape[-1]
    positions = patch_positions((height, width), size)
    maps = ops.reshape(maps, (len(positions), -1, size, size))  # (P, N, size, size)
    coverage = np.zeros((height, width), dtype="float32")
    total = None
    for index, (top, left) in enumerate(positions):
        coverage[top:top + size, left:left + size] += 1.0
        placed = ops.pad(maps[index], [[0, 0], [top, height - top - size],
                                       [left, width - left - size]])
        total = placed if total is None else total + placed
    # A NumPy constant, not a tensor: inside the scorer's graph a tensor made outside it would
    # become an input of the exported ONNX file.
    return total / coverage
