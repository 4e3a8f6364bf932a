"""Training speed on a folder of image files: streamed from disk versus held in memory.

Writes the first --images MNIST training digits as PNG files, one subfolder per digit (once; the
folder is reused), loads the folder both ways through data.load_dataset, and times the default
model's training steps on each, in alternating repetitions. Usage:

    python benchmarks/folder_speed.py --data_path=../shared/data/mnist.npz --folder=/tmp/mnist_png
"""

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from PIL import Image

from cvae import build_cvae
from data import load_dataset, load_mnist
from plumbing.batches import EpochShuffle
from plumbing.optimizer import make_optimizer
from timing import StepTimer


def write_png_folder(x, y, folder):
    """x (N, 28, 28, 1) in [0, 1] and labels y as folder/<label>/<index>.png."""
    for label in np.unique(y):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)

    def write(index):
        pixels = np.round(x[index, ..., 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, str(y[index]), f"{index:05d}.png"))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(len(x))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="../shared/data/mnist.npz")
    parser.add_argument("--folder", default="/tmp/mnist_png")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=100, help="training steps per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    if not os.path.isdir(args.folder):
        (x, y), _ = load_mnist(args.data_path)
        start = time.perf_counter()
        write_png_folder(x[:args.images], y[:args.images], args.folder)
        print(f"Wrote {args.images} PNG files in {time.perf_counter() - start:.1f} s")
    sources = {}
    for name, stream in (("in memory", False), ("streamed", True)):
        start = time.perf_counter()
        sources[name] = load_dataset(args.folder, stream=stream)
        print(f"load_dataset(stream={stream}): {time.perf_counter() - start:.1f} s for "
              f"{sources[name].num_train} training images")

    keras.utils.set_random_seed(0)
    model = build_cvae(2, sources["in memory"].image_shape, seed=0)
    model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=10**6, warmup_steps=0))
    n = args.steps * args.batch_size
    # Both as train.py feeds them: the same first n training images, shuffled by the same seed.
    inputs = {name: source.select_train(np.arange(source.num_train) < n).training_input(
        args.batch_size, EpochShuffle(0)) for name, source in sources.items()}
    model.fit(inputs["in memory"], steps_per_epoch=4, shuffle=False, verbose=0)  # tracing
    steps, walls = {name: [] for name in inputs}, {name: [] for name in inputs}
    for repeat in range(args.repeats):
        for name, training_input in inputs.items():
            timer = StepTimer()
            start = time.perf_counter()
            model.fit(training_input, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            walls[name].append(n / (time.perf_counter() - start))
            steps[name].extend(timer.seconds)
        print(f"repeat {repeat + 1} (wall clock): " + ", ".join(
            f"{name} {walls[name][-1]:.1f} img/s" for name in inputs))
    rates = {name: args.batch_size / statistics.median(steps[name]) for name in inputs}
    wall = {name: statistics.median(walls[name]) for name in inputs}
    print(f"\n{args.repeats} alternating repetitions of {args.steps} steps of {args.batch_size} "
          f"images, {keras.backend.backend()} backend, {os.cpu_count()} CPU(s):")
    for name in inputs:
        print(f"  {name:10s} {rates[name]:6.1f} images/s by median step, {wall[name]:6.1f} "
              f"by wall clock (median repetition)")
    print(f"streamed / in memory: {rates['streamed'] / rates['in memory']:.3f} by median step, "
          f"{wall['streamed'] / wall['in memory']:.3f} by wall clock")


if __name__ == "__main__":
    main()
