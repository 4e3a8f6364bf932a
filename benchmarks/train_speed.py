"""Training and evaluation speed of the project's CVAE against a plain-Keras baseline.

The baseline is the article's architecture written the way its readers would in Keras 3: one
functional model, the KL term added with add_loss, compile(optimizer="rmsprop") with a summed
binary cross-entropy, and fit(x, x) on NumPy arrays with default settings. Both are timed in this
one process, in alternating repetitions, on the same real MNIST images, after a warm-up that
absorbs graph tracing. Usage:

    python benchmarks/train_speed.py --data_path=../shared/data/mnist.npz
    python benchmarks/train_speed.py --steps=500 --repeats=5         # longer, steadier
    python benchmarks/train_speed.py --variants=float32,float32+plain,float32+guard,float32+xla
    python benchmarks/train_speed.py --variants=float32,mixed_bfloat16   # or mixed_float16 on a GPU
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import layers, ops

from callbacks import DivergenceGuard
from cvae import (
    build_cvae,
    forward_flops_per_image,
    kl_to_standard_normal,
    training_gflops_per_image,
)
from data import MNIST_IMAGE_SHAPE, load_mnist
from measures import decode, encode
from optimization import make_optimizer
from timing import StepTimer


# ---- the baseline: plain Keras, as a reader of the article would write it today ---------------
class BaselineSampling(layers.Layer):
    def call(self, inputs):
        z_mean, z_log_var = inputs
        self.add_loss(ops.mean(kl_to_standard_normal(z_mean, z_log_var)))
        return z_mean + ops.exp(0.5 * z_log_var) * keras.random.normal(ops.shape(z_mean))


def summed_binary_crossentropy(x, x_decoded):
    return ops.sum(keras.losses.binary_crossentropy(x, x_decoded), axis=(1, 2))


def build_baseline(latent_dim=2):
    height, width, channels = MNIST_IMAGE_SHAPE
    x = keras.Input(MNIST_IMAGE_SHAPE)
    h = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = layers.Dense(128, activation="relu")(layers.Flatten()(h))
    z = BaselineSampling()([layers.Dense(latent_dim)(h), layers.Dense(latent_dim)(h)])
    h = layers.Dense(128, activation="relu")(z)
    h = layers.Reshape((height, width, 64))(layers.Dense(height * width * 64, activation="relu")(h))
    h = layers.Conv2DTranspose(64, 3, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(64, 3, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(32, 3, padding="same", activation="relu")(h)
    x_decoded = layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(h)
    model = keras.Model(x, x_decoded)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss=summed_binary_crossentropy)
    return model


# ---- timing -------------------------------------------------------------------------------------
def make_project_model(precision, jit_compile, fused):
    keras.mixed_precision.set_dtype_policy(precision)
    model = build_cvae(2, MNIST_IMAGE_SHAPE, seed=0)
    # "auto", as in train.py and the baseline: Keras compiles the whole step with XLA on a GPU and
    # not on a CPU. +xla forces it on.
    model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=10**6, warmup_steps=0,
                                           fused=fused),
                  jit_compile=True if jit_compile else "auto")
    keras.mixed_precision.set_dtype_policy("float32")
    return model


def time_fit(model, x, batch_size, name, step_times=None):
    """Images/s over the whole fit, wall clock; the step times go to step_times."""
    timer = StepTimer()
    start = time.perf_counter()
    if name == "baseline":
        model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0, callbacks=[timer])
    else:
        # "+guard": with train.py's per-batch divergence check, to measure what it costs.
        callbacks = [timer] + ([DivergenceGuard()] if "guard" in name.split("+") else [])
        model.fit(x, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks)
    if step_times is not None:
        step_times.extend(timer.seconds)
    return len(x) / (time.perf_counter() - start)


def matmul_peak_gflops(size=4096, repeats=5):
    """The machine's float32 peak as TensorFlow reaches it: a large square matrix product."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    product = tf.function(lambda m: tf.matmul(m, m))
    product(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="../shared/data/mnist.npz")
    parser.add_argument("--steps", type=int, default=60,
                        help="training steps per repetition (the default run takes ~3 minutes "
                             "on two CPU cores; use --steps=500 --repeats=5 for a steadier one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--variants", default="float32",
                        help="comma-separated project settings to time: a precision (float32, "
                             "mixed_bfloat16, mixed_float16), then +xla to compile the whole step "
                             "with XLA, +plain for Keras's unfused optimizer, +guard for "
                             "train.py's per-batch NaN check. float32 alone is train.py's default")
    args = parser.parse_args()

    (x_train, _), (x_test, _) = load_mnist(args.data_path)
    x = x_train[: args.steps * args.batch_size]
    warmup = x_train[: 5 * args.batch_size]
    keras.utils.set_random_seed(0)
    print(f"TensorFlow {tf_version()}, Keras {keras.__version__}, {os.cpu_count()} CPU(s), "
          f"accelerators: {accelerators() or 'none'}")

    models = {"baseline": build_baseline()}
    for variant in args.variants.split(","):
        precision, *extras = variant.split("+")
        models[variant] = make_project_model(precision, "xla" in extras, "plain" not in extras)
    project = models[args.variants.split(",")[0]]
    training_gflops = training_gflops_per_image(project)
    print(f"FLOPs per image: forward {forward_flops_per_image(project) / 1e9:.3f} GFLOP, training "
          f"step ~3x forward = {training_gflops:.3f} GFLOP (Conv2D, Conv2DTranspose and Dense "
          f"layers)")
    for name, model in models.items():  # warm-up: tracing and one-off allocations
        time_fit(model, warmup, args.batch_size, name)

    wall_rates = {name: [] for name in models}
    step_times = {name: [] for name in models}
    for repeat in range(args.repeats):
        for name, model in models.items():
            wall_rates[name].append(time_fit(model, x, args.batch_size, name, step_times[name]))
        print(f"repeat {repeat + 1} (wall clock): " + ", ".join(
            f"{n} {r[-1]:.1f} img/s" for n, r in wall_rates.items()), flush=True)

    peak = matmul_peak_gflops()
    step_rate = {name: args.batch_size / np.median(times) for name, times in step_times.items()}
    print(f"\nTraining, {args.repeats} alternating repetitions of {args.steps} steps of "
          f"{args.batch_size} images. images/s from the median step time (robust to the host's "
          f"pauses), then from the wall clock of whole repetitions (median):")
    for name in models:
        rate = step_rate[name]
        achieved = rate * training_gflops
        print(f"  {name:24s} {rate:6.1f} images/s ({rate / step_rate['baseline']:4.2f}x baseline, "
              f"{achieved:5.1f} GFLOP/s = {achieved / peak:4.0%} of the matmul peak, "
              f"{60000 / rate:4.0f} s per 60,000 images); wall clock "
              f"{np.median(wall_rates[name]):6.1f} images/s")
    print(f"Machine peak: a 4096x4096 float32 matmul runs at {peak:.0f} GFLOP/s")

    model = models[args.variants.split(",")[0]]
    start = time.perf_counter()
    z_mean, _ = encode(model, x_test)
    decode(model, z_mean.astype("float32"))
    seconds = time.perf_counter() - start
    rate = len(x_test) / seconds
    print(f"Evaluation: encode + decode of {len(x_test)} test images in {seconds:.1f} s = "
          f"{rate:.0f} images/s ({rate / step_rate['baseline']:.1f}x the baseline's training "
          f"rate)")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"Peak resident memory of this process: {peak_kib / 1024**2:.2f} GiB")


def tf_version():
    import tensorflow as tf

    return tf.__version__


def accelerators():
    import tensorflow as tf

    return ", ".join(d.name for d in tf.config.list_physical_devices() if d.device_type != "CPU")


if __name__ == "__main__":
    main()
