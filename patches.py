"""Images as overlapping square patches, for a model of texture patches (train.py's patch_size).

A texture has no place where things belong: a brick wall's joints fall anywhere in a 64x64 crop,
and a VAE with a small latent space must spend it on where they fall, so it draws them as a blur
and every good crop with a joint scores as anomalous. A model of small patches sees fewer
arrangements; the MVTec AD paper (Bergmann et al. 2021, "The MVTec Anomaly Detection Dataset",
IJCV) trains its texture autoencoders on patches and scores an image patch by patch in the same
way. Here the patches overlap by half (stride size // 2, the last one flush with the far edge),
the model is trained on every patch of every training image, and a map computed per patch (a
pixel's loss, say) is brought back to the image by averaging it where patches overlap.

Both functions are keras.ops, so that the anomaly scorer cuts and reassembles inside its own
graph (and the exported scorer.onnx with it), and so that the NumPy baselines and the training
data are cut by the same code.
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
    return total / coverage
