"""Folders of real-photograph crops, from the sample photographs that scikit-image's wheel
bundles (so they need no download): the data of the real-image benchmarks and tests.

    python benchmarks/photo_crops.py --photo=brick --out=/tmp/brick
    python benchmarks/photo_crops.py --photo=grass --out=/tmp/grass_set --inspection

The photographs, in skimage/data/: brick, grass, gravel (grey 512x512 textures), camera (a grey
512x512 photograph with structure: a man, a camera, sky, grass), astronaut (RGB 512x512), coffee
(RGB 600x400) and chelsea (RGB 451x300), among others. scikit-image is a development
requirement: pip install -r requirements-dev.txt.

Crops are square windows of the photograph's own 8-bit pixels, never resampled. The training
crops come from the top three quarters of the photograph and the test crops from the bottom
quarter, so no test crop shares a pixel with a training crop (on a texture the two regions look
alike; on camera they do not: its bottom quarter is mostly grass and tripod).

A crop folder (write_crop_folder) is train/crops/ and test/crops/: data.load_dataset loads it as
one class with its own train/test split. An inspection folder (write_inspection_folder) is in
the MVTec AD layout that data.load_dataset reads as an inspection set: train/good/, test/good/,
test/<defect>/ and ground_truth/<defect>/<name>_mask.png, 255 where the defect is. Each defect
kind is drawn on a test crop, at the size of a real one on a 64x64 crop (it scales with size):
    scratch   a straight line 1-2 px wide and 8-20 px long, much brighter or darker than the crop
    stain     a soft darker elliptical blob, about 6-10 px across (the mask: its visible part)
    hole      a dark filled disc 4-10 px across
    misprint  a 6-12 px rectangle of the photograph's bottom quarter from elsewhere, at half
              scale and turned by a random quarter: the right brightness, the wrong texture
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

DEFECTS = ("scratch", "stain", "hole", "misprint")
TEST_SHARE = 0.25  # the bottom share of the photograph's rows that the test crops come from
INSTALL = "pip install -r requirements-dev.txt"


def skimage_data_folder():
    """skimage/data/, where scikit-image's wheel keeps its bundled sample photographs."""
    try:
        import skimage
    except ImportError:
        raise ImportError(f"The photographs come with scikit-image, which is not installed: "
                          f"{INSTALL} (it installs the development requirements).") from None
    return os.path.join(os.path.dirname(skimage.__file__), "data")


def source_of(name):
    """Where the photograph comes from, in words: its file and scikit-image's version."""
    import skimage

    return (f"{name}.png from scikit-image {skimage.__version__}'s bundled sample data "
            f"({os.path.join(skimage_data_folder(), name + '.png')})")


def _read(name, grey=None):
    """The photograph as uint8 (H, W, C): C=1 for a grey one (or any, with grey=True), else 3."""
    folder = skimage_data_folder()
    path = os.path.join(folder, name + ".png")
    if not os.path.isfile(path):
        names = sorted(entry[:-4] for entry in os.listdir(folder) if entry.endswith(".png"))
        raise FileNotFoundError(f"scikit-image bundles no photograph {name!r} ({path} does not "
                                f"exist); the bundled ones are: {', '.join(names)}.")
    with Image.open(path) as image:
        is_grey = image.mode in ("1", "L", "LA", "I", "I;16") if grey is None else grey
        pixels = np.asarray(image.convert("L" if is_grey else "RGB"), dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def photograph(name):
    """The named photograph of skimage/data/ as float32 in [0, 1]: (H, W, 1) for a grey one,
    (H, W, 3) for a colour one. Read with Pillow from the bundled file (nothing is downloaded);
    ImportError, saying how to install it, without scikit-image."""
    return _read(name).astype(np.float32) / 255.0


def _crop_corners(pixels, size, count, rng, region):
    """count distinct (top, left) corners of size x size crops inside the region ("train": the
    top 1 - TEST_SHARE of the rows, "test": the bottom TEST_SHARE), chosen without
    replacement."""
    height, width = pixels.shape[:2]
    boundary = int(round(height * (1 - TEST_SHARE)))
    first, last = (0, boundary) if region == "train" else (boundary, height)
    rows, columns = last - first - size + 1, width - size + 1
    if rows < 1 or columns < 1:
        raise ValueError(f"A {size}x{size} crop does not fit in the {region} region of the "
                         f"photograph (rows {first}-{last - 1} of {height}, {width} wide); "
                         f"choose a smaller size.")
    if count > rows * columns:
        raise ValueError(f"The {region} region has only {rows * columns} distinct {size}x{size} "
                         f"crops, fewer than the {count} asked for.")
    index = rng.choice(rows * columns, size=count, replace=False)
    return np.stack([first + index // columns, index % columns], axis=1)


def _crops(pixels, corners, size):
    return [pixels[top:top + size, left:left + size] for top, left in corners]


def _save(array, root, *parts):
    path = os.path.join(root, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def _fresh(out):
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out!r} already holds files; give a new folder (or remove it), "
                              f"so that no image of an earlier set is mixed in.")


def write_crop_folder(name, out, size=64, train=2000, test=500, seed=0, grey=True):
    """Write `train` and `test` random size x size crops (seeded) of the named photograph as 8-bit
    PNGs into out/train/crops/ and out/test/crops/: one class, so that data.load_dataset(out)
    loads them with that train/test split. The training crops come from the top three quarters
    of the photograph and the test crops from its bottom quarter, so a test crop never overlaps
    a training crop; no crop is drawn twice. grey: convert a colour photograph to grey (Pillow's
    "L", ITU-R 601-2 luma). Returns out."""
    _fresh(out)
    pixels = _read(name, True if grey else None)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        corners = _crop_corners(pixels, size, count, rng, split)
        for i, crop in enumerate(_crops(pixels, corners, size)):
            _save(crop, out, split, "crops", f"{i:04d}.png")
    return out


# ---- defects -------------------------------------------------------------------------------------
def _centre(size, margin, rng):
    """A point at least margin pixels inside a size x size crop."""
    return rng.uniform(margin, size - margin, size=2)


def draw_defect(crop, kind, rng, source):
    """(defective crop, mask): the uint8 (size, size, C) crop with a defect of the kind drawn on
    it, and the uint8 (size, size) mask, 255 where the defect is. source: uint8 (H, W, C)
    pixels that a misprint takes its patch from. Sizes are for a 64x64 crop, scaled with its
    side."""
    size = crop.shape[0]
    scale = size / 64
    image = crop.astype(np.float64)
    mean = image.mean()
    mask = Image.new("L", (size, size), 0)
    if kind == "scratch":
        length = rng.uniform(8, 20) * scale
        angle = rng.uniform(0, np.pi)
        centre = _centre(size, length / 2 + 1, rng)
        offset = length / 2 * np.array([np.cos(angle), np.sin(angle)])
        width = int(rng.integers(1, 3))
        ImageDraw.Draw(mask).line([tuple(centre - offset), tuple(centre + offset)], fill=255,
                                  width=width)
        contrast = rng.uniform(80, 140) * (1 if rng.random() < 0.5 else -1)
        if not 0 <= mean + contrast / 2 <= 255:
            contrast = -contrast  # no room on that side: the other way, so it shows
        level = np.clip(mean + contrast, 0, 255)
        alpha = np.asarray(mask, dtype=np.float64) / 255
    elif kind == "stain":
        sigmas = rng.uniform(2.0, 3.5, size=2) * scale  # 1.5 sigma each way is the mask
        angle = rng.uniform(0, np.pi)
        cx, cy = _centre(size, 1.5 * sigmas.max() + 1, rng)
        ys, xs = np.mgrid[:size, :size] + 0.5
        along = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
        across = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
        distance = np.hypot(along / sigmas[0], across / sigmas[1])  # in sigmas
        alpha = rng.uniform(0.35, 0.6) * np.exp(-distance ** 2 / 2)
        level = 0.0  # darkens: pixel * (1 - alpha)
        mask = Image.fromarray(np.where(distance <= 1.5, 255, 0).astype(np.uint8))
    elif kind == "hole":
        radius = rng.uniform(2, 5) * scale
        cx, cy = _centre(size, radius + 1, rng)
        ImageDraw.Draw(mask).ellipse([cx - radius, cy - radius, cx + radius, cy + radius],
                                     fill=255)
        level = rng.uniform(0, 30)
        alpha = np.asarray(mask, dtype=np.float64) / 255
    elif kind == "misprint":
        height, width = np.round(rng.uniform(6, 12, size=2) * scale).astype(int)
        top, left = (int(v) for v in rng.integers(1, [size - height, size - width]))
        turns = int(rng.integers(0, 4))
        if turns % 2:
            height, width = width, height  # the patch is read turned, then turned back
        boundary = int(round(source.shape[0] * (1 - TEST_SHARE)))
        y = int(rng.integers(boundary, source.shape[0] - 2 * height + 1))
        x = int(rng.integers(0, source.shape[1] - 2 * width + 1))
        patch = source[y:y + 2 * height, x:x + 2 * width].astype(np.float64)
        patch = patch.reshape(height, 2, width, 2, -1).mean(axis=(1, 3))  # half scale
        patch = np.rot90(patch, turns)
        level = np.zeros_like(image)
        level[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
        ImageDraw.Draw(mask).rectangle([left, top, left + patch.shape[1] - 1,
                                        top + patch.shape[0] - 1], fill=255)
        alpha = np.asarray(mask, dtype=np.float64) / 255
    else:
        raise ValueError(f"No defect kind {kind!r}; the kinds are {', '.join(DEFECTS)}.")
    alpha = alpha[..., None]
    defective = image * (1 - alpha) + level * alpha
    return np.clip(np.round(defective), 0, 255).astype(np.uint8), np.asarray(mask)


def write_inspection_folder(name, out, size=64, train=2000, good=100, per_defect=25, seed=0,
                            grey=True):
    """Write an inspection set in the MVTec AD layout from the named photograph (see the module
    docstring): `train` crops of its top three quarters in train/good/, `good` crops of its
    bottom quarter in test/good/, and `per_defect` more bottom-quarter crops of each kind in
    DEFECTS, drawn on, in test/<kind>/, with their masks in ground_truth/<kind>/. No test crop
    overlaps a training crop, and no crop is drawn twice. Returns out."""
    _fresh(out)
    pixels = _read(name, True if grey else None)
    rng = np.random.default_rng(seed)
    train_corners = _crop_corners(pixels, size, train, rng, "train")
    test_corners = _crop_corners(pixels, size, good + len(DEFECTS) * per_defect, rng, "test")
    for i, crop in enumerate(_crops(pixels, train_corners, size)):
        _save(crop, out, "train", "good", f"{i:04d}.png")
    test_crops = iter(_crops(pixels, test_corners, size))
    for i in range(good):
        _save(next(test_crops), out, "test", "good", f"{i:04d}.png")
    for kind in DEFECTS:
        for i in range(per_defect):
            image, mask = draw_defect(next(test_crops), kind, rng, pixels)
            _save(image, out, "test", kind, f"{i:04d}.png")
            _save(mask[..., None], out, "ground_truth", kind, f"{i:04d}_mask.png")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photo", default="brick",
                        help="a photograph of skimage/data/: brick, grass, gravel, camera, ...")
    parser.add_argument("--out", required=True, help="a new folder")
    parser.add_argument("--inspection", action="store_true",
                        help="an inspection set (MVTec AD layout) with drawn defects")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500, help="crop folder: test crops")
    parser.add_argument("--good", type=int, default=100, help="inspection set: good test crops")
    parser.add_argument("--per_defect", type=int, default=25,
                        help="inspection set: test crops of each defect kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colour", action="store_true",
                        help="keep a colour photograph's colour (default: grey)")
    args = parser.parse_args()
    try:
        if args.inspection:
            write_inspection_folder(args.photo, args.out, args.size, args.train, args.good,
                                    args.per_defect, args.seed, grey=not args.colour)
            what = (f"an inspection set: {args.train} training crops in train/good/, "
                    f"{args.good} in test/good/ and {args.per_defect} of each of "
                    f"{', '.join(DEFECTS)} in test/<defect>/ with masks in ground_truth/")
        else:
            write_crop_folder(args.photo, args.out, args.size, args.train, args.test,
                              args.seed, grey=not args.colour)
            what = (f"{args.train} training crops in train/crops/ and {args.test} test crops "
                    f"in test/crops/")
    except (ImportError, FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    print(f"Wrote {args.out}: {what}, {args.size}x{args.size} "
          f"{'colour' if args.colour else 'grey'}, seed {args.seed}; training crops from the top "
          f"three quarters of the photograph, test crops from its bottom quarter.")
    print(f"The photograph: {source_of(args.photo)}.")


if __name__ == "__main__":
    main()
