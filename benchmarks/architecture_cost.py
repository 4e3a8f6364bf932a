"""What the two architectures cost at several image shapes: parameters, GFLOP per training image,
and training images/s by median step on random images (the data does not change the cost).

    python benchmarks/architecture_cost.py
    python benchmarks/architecture_cost.py --shapes=28x28x1,64x64x3 --steps=20
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from cvae import build_cvae
from plumbing.model_size import architecture_problem, parameter_count, training_gflops_per_image
from plumbing.optimizer import make_optimizer
from timing import StepTimer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="28x28x1,32x32x3,64x64x3,128x128x3")
    parser.add_argument("--architectures", default="article,strided")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    print(f"{'shape':>10} {'architecture':>12} {'parameters':>12} {'GFLOP/image':>12} "
          f"{'images/s':>9}")
    for text in args.shapes.split(","):
        shape = tuple(int(side) for side in text.split("x"))
        for architecture in args.architectures.split(","):
            problem = architecture_problem(shape, 2, architecture)
            if problem is not None:
                count = parameter_count(shape, 2, architecture)
                print(f"{text:>10} {architecture:>12} {count:>12,} {'refused':>12}")
                continue
            keras.utils.set_random_seed(0)
            model = build_cvae(2, shape, architecture, seed=0)
            model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=10**6,
                                                   warmup_steps=0))
            x = np.random.default_rng(0).random(
                ((args.steps + 3) * args.batch_size,) + shape).astype("float32")
            model.fit(x[:3 * args.batch_size], batch_size=args.batch_size, verbose=0)  # tracing
            timer = StepTimer()
            model.fit(x[3 * args.batch_size:], batch_size=args.batch_size, verbose=0,
                      callbacks=[timer])
            rate = args.batch_size / statistics.median(timer.seconds)
            print(f"{text:>10} {architecture:>12} {model.count_params():>12,} "
                  f"{training_gflops_per_image(model):>12.3f} {rate:>9.1f}")


if __name__ == "__main__":
    main()
