"""Does training at the article's settings survive its first steps, for several seeds?

Trains the CVAE (RMSprop, lr 1e-3, batch 64) for a few hundred steps per seed, with and without
the learning-rate warm-up, and reports the largest loss and the largest |z_log_var| seen, and
whether the loss became NaN/inf. Usage:
    python benchmarks/warmup_stability.py --data_path=../shared/data/mnist.npz --steps=650
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cvae import build_cvae  # noqa: E402
from data import load_mnist  # noqa: E402
from plumbing.arrays import MNIST_IMAGE_SHAPE  # noqa: E402
from plumbing.optimizer import make_optimizer  # noqa: E402


class WatchDivergence(keras.callbacks.Callback):
    """Records each batch's loss and the encoder's largest |z_log_var| on a fixed probe batch."""

    def __init__(self, probe):
        super().__init__()
        self.probe, self.losses, self.max_log_var = probe, [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
        if batch % 10 == 0:
            _, z_log_var = self.model.encoder(self.probe, training=False)
            self.max_log_var = max(self.max_log_var, float(np.abs(z_log_var).max()))
        if not np.isfinite(self.losses[-1]):
            self.model.stop_training = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="../shared/data/mnist.npz")
    parser.add_argument("--steps", type=int, default=650)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--warmups", default="0,500")
    args = parser.parse_args()
    (x_train, _), _ = load_mnist(args.data_path)
    x_train = x_train[: args.steps * 64]
    for warmup in [int(w) for w in args.warmups.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            keras.utils.set_random_seed(seed)
            model = build_cvae(2, MNIST_IMAGE_SHAPE, seed=seed)
            model.compile(optimizer=make_optimizer("rmsprop", 1e-3, total_steps=10 * 938,
                                                   warmup_steps=warmup, schedule="cosine"))
            watch = WatchDivergence(x_train[:256])
            model.fit(x_train, batch_size=64, epochs=1, verbose=0, callbacks=[watch])
            losses = np.array(watch.losses)
            finite = np.isfinite(losses)
            print(f"warmup={warmup:4d} seed={seed} steps={len(losses):4d} "
                  f"diverged={not finite.all()} max_loss={np.nanmax(losses[finite]):.1f} "
                  f"max|z_log_var|={watch.max_log_var:.2f} "
                  f"last_running_loss={losses[-1]:.1f}", flush=True)


if __name__ == "__main__":
    main()
