"""An inspection set in the MVTec AD layout made from MNIST digits, with drawn defects and their
masks: the data of the anomaly-detection tests and of benchmarks/anomaly_detection.py.

    python benchmarks/inspection_set.py --data_path=../shared/data/mnist.npz --out=/tmp/digits

train/good/ and test/good/ hold plain digits; each defect kind draws on a test digit and writes
its mask, 255 where it drew, into ground_truth/<kind>/<name>_mask.png:
    scratch  a bright straight line, one pixel wide, across the digit
    blob     a bright filled disc of radius 3
    hole     the ink of a 6x6 square of the digit erased (the mask is the ink removed)
    faint    a scratch at a quarter of full brightness: the hard case
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

DEFECTS = ("scratch", "blob", "hole", "faint")


def draw_defect(digit, kind, rng):
    """(defective digit, mask): uint8 (28, 28) images, the mask 255 where the defect is."""
    image = Image.fromarray(digit)
    mask = Image.new("L", image.size, 0)
    if kind in ("scratch", "faint"):
        angle = rng.uniform(0, np.pi)
        centre = rng.uniform(10, 18, size=2)
        offset = 9 * np.array([np.cos(angle), np.sin(angle)])
        ends = [tuple(centre - offset), tuple(centre + offset)]
        ImageDraw.Draw(image).line(ends, fill=255 if kind == "scratch" else 64, width=1)
        ImageDraw.Draw(mask).line(ends, fill=255, width=1)
    elif kind == "blob":
        x, y = rng.uniform(7, 21, size=2)
        box = [x - 3, y - 3, x + 3, y + 3]
        ImageDraw.Draw(image).ellipse(box, fill=255)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
    else:  # hole: erase ink where the digit has some
        ink = np.argwhere(digit > 128)
        y, x = ink[rng.integers(len(ink))] if len(ink) else (14, 14)
        top, left = int(np.clip(y - 3, 0, 22)), int(np.clip(x - 3, 0, 22))
        pixels = np.asarray(image).copy()
        erased = np.zeros_like(pixels, dtype=bool)
        erased[top:top + 6, left:left + 6] = pixels[top:top + 6, left:left + 6] > 0
        pixels[erased] = 0
        return pixels, np.where(erased, 255, 0).astype(np.uint8)
    return np.asarray(image), np.asarray(mask)


def write_inspection_set(root, digits, n_train, n_good, n_per_defect, seed=0, defects=DEFECTS,
                         masks_for=DEFECTS):
    """Write the set under root from uint8 (N, 28, 28) digits: n_train normal training
    images, n_good normal test images and n_per_defect of each defect kind (with masks for the
    kinds in masks_for). Uses n_train + n_good + len(defects) * n_per_defect digits."""
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(digits)))

    def save(array, *parts):
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(array).save(path)

    for i in range(n_train):
        save(digits[next(order)], "train", "good", f"{i:04d}.png")
    for i in range(n_good):
        save(digits[next(order)], "test", "good", f"{i:04d}.png")
    for kind in defects:
        for i in range(n_per_defect):
            image, mask = draw_defect(digits[next(order)], kind, rng)
            save(image, "test", kind, f"{i:04d}.png")
            if kind in masks_for:
                save(mask, "ground_truth", kind, f"{i:04d}_mask.png")
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", required=True, help="mnist.npz")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=1800)
    parser.add_argument("--good", type=int, default=200)
    parser.add_argument("--per_defect", type=int, default=100)
    args = parser.parse_args()
    with np.load(args.data_path) as mnist:
        digits = mnist["x_train"]
    write_inspection_set(args.out, digits, args.train, args.good, args.per_defect)
    print(f"Wrote {args.out}: {args.train} training, {args.good} good and {args.per_defect} of "
          f"each of {', '.join(DEFECTS)} test images.")


if __name__ == "__main__":
    main()
