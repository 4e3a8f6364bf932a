"""Defects drawn on normal images, to choose an anomaly detector's settings without test labels.

An inspection set's test defects are what the detector is judged on, so nothing may be chosen
with them. Instead its held-out normal images get defects drawn on them here, of kinds that are
deliberately not the test's (as anomalib's synthetic validation split and DRAEM do: Zavrtanik,
Kristan & Skocaj 2021, "DRAEM", section 3.3): the detector's settings are those that find these
best, and the test reports how far that carries to real defects.

The kinds, each one connected region at a size in proportion to the image:
    patch   a blob-shaped region of another normal image pasted in, shifted and turned: the
            right brightness and the wrong content (DRAEM pastes textures inside Perlin-noise blobs)
    shift   a blob-shaped region made lighter or darker
    line    a straight line one or two pixels wide (scaled), far brighter or darker
The blobs are low-frequency noise thresholded at the level that covers 1.5% to 6% of the image,
a smoothed-noise stand-in for DRAEM's Perlin noise (scipy's filter: one call, no new dependency).
"""

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("patch", "shift", "line")


def _blob(shape, rng):
    """A bool (height, width) mask: one connected region of smoothed noise above the level
    that covers 1.5% to 6% of the image."""
    height, width = shape
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(height, width) / 12,
                                    mode="wrap")
    share = rng.uniform(0.015, 0.06)
    region = noise > np.quantile(noise, 1 - share)
    labelled, count = ndimage.label(region)
    if count > 1:  # keep the largest piece: one defect per image
        sizes = ndimage.sum(region, labelled, range(1, count + 1))
        region = labelled == 1 + int(np.argmax(sizes))
    return region


def _line(shape, rng):
    """A bool (height, width) mask of a straight line across a third to two thirds of the
    image, one or two pixels wide at 28x28 and in proportion above."""
    height, width = shape
    side = min(height, width)
    length = rng.uniform(side / 3, 2 * side / 3)
    angle = rng.uniform(0, np.pi)
    centre = rng.uniform(length / 2, np.array([width, height]) - length / 2)
    offset = length / 2 * np.array([np.cos(angle), np.sin(angle)])
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).line([tuple(centre - offset), tuple(centre + offset)], fill=255,
                              width=max(1, int(round(rng.uniform(1, 2) * side / 28))))
    return np.asarray(mask) > 0


def _most_different_patch(images, index, mask, rng, tries=8):
    """The pixels under mask of another image, shifted at random, turned half a turn and maybe
    mirrored: of a few tries, the one most unlike what it covers (on MNIST most of any image is
    background, and a patch of background on background would be no defect)."""
    best, best_gap = None, -1.0
    height, width = mask.shape
    for _ in range(tries):
        other = images[(index + 1 + rng.integers(max(len(images) - 1, 1))) % len(images)]
        other = np.roll(other[::-1, ::-1][:, ::-1 if rng.random() < 0.5 else 1],
                        (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
        gap = float(np.abs(other[mask] - images[index][mask]).mean())
        if gap > best_gap:
            best, best_gap = other[mask], gap
    return best


def draw_synthetic_defects(images, seed=0):
    """(defective images, masks, kinds) of float images (N, height, width, channels) in [0, 1]:
    every image with one defect, the kinds taken in turn (KINDS), masks bool (N, height,
    width). A patch comes from another image of the same set. Deterministic in seed."""
    images = np.asarray(images, dtype=np.float32)
    rng = np.random.default_rng(seed)
    count, height, width, _ = images.shape
    defective, masks, kinds = images.copy(), np.zeros((count, height, width), bool), []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        image = defective[i]
        if kind == "line":
            mask = _line((height, width), rng)
            level = 1.0 if image[mask].mean() < 0.5 else 0.0  # the far side of what it crosses
            image[mask] = level
        else:
            mask = _blob((height, width), rng)
            if kind == "patch":
                image[mask] = _most_different_patch(images, i, mask, rng)
            else:  # shift: by a third to a half of the range, the way there is room for
                amount = rng.uniform(1 / 3, 1 / 2)
                image[mask] = np.clip(image[mask] + (amount if image[mask].mean() < 0.5
                                                     else -amount), 0, 1)
        masks[i] = mask
        kinds.append(kind)
    return defective, masks, kinds
