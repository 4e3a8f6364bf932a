"""Training and evaluation speed of the project's CVAE against a plain-Keras baseline.

The baseline is the article's architecture written the way its readers would in Keras 3: one
functional model, the KL term added with add_loss, compile(optimizer="rmsprop") with a summed
binary cross-entropy, and fit(x, x) on NumPy arrays with default settings. Both are timed in this
one process, in alternating repetitions, on the same real MNIST images, after a warm-up that
absorbs graph tracing. Usage:

    python benchmarks/train_speed.py --data_path=../shared/data/mnist.npz
    python benchmarks/train_speed.py --steps=1000 --repeats=5        # longer, steadier
    python benchmarks/train_speed.py --variants=float32,float32+guard,mixed_bfloat16,float32+xla
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from callbacks import DivergenceGuard  # noqa: E402
from cvae import IMAGE_SHAPE, build_cvae, kl_to_standard_normal  # noqa: E402
from data import load_mnist  # noqa: E402
from evaluation import decode, encode  # noqa: E402
from optimization import make_optimizer  # noqa: E402


# ---- the baseline: plain Keras, as a reader of the article would write it today ---------------
class BaselineSampling(layers.Layer):
    def call(self, inputs):
        z_mean, z_log_var = inputs
        self.add_loss(ops.mean(kl_to_standard_normal(z_mean, z_log_var)))
        return z_mean + ops.exp(0.5 * z_log_var) * keras.random.normal(ops.shape(z_mean))


def summed_binary_crossentropy(x, x_decoded):
    return ops.sum(keras.losses.binary_crossentropy(x, x_decoded), axis=(1, 2))


def build_baseline(latent_dim=2):
    x = keras.Input(IMAGE_SHAPE)
    h = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = layers.Dense(128, activation="relu")(layers.Flatten()(h))
    z = BaselineSampling()([layers.Dense(latent_dim)(h), layers.Dense(latent_dim)(h)])
    h = layers.Dense(128, activation="relu")(z)
    h = layers.Reshape((28, 28, 64))(layers.Dense(28 * 28 * 64, activation="relu")(h))
    h = layers.Conv2DTranspose(64, 3, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(64, 3, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(32, 3, padding="same", activation="relu")(h)
    x_decoded = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(h)
    model = keras.Model(x, x_decoded)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss=summed_binary_crossentropy)
    return model


# ---- FLOPs from the layer shapes ----------------------------------------------------------------
def forward_flops_per_image(model):
    """Multiply-adds x 2 of every Conv2D, Conv2DTranspose and Dense layer, for one image."""
    total = 0
    for sub in (model.encoder, model.decoder):
        for layer in sub.layers:
            if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)):
                height, width, out_channels = layer.output.shape[1:]
                in_channels = layer.input.shape[-1]
                k_h, k_w = layer.kernel_size
                total += 2 * height * width * out_channels * k_h * k_w * in_channels
            elif isinstance(layer, layers.Dense):
                total += 2 * layer.input.shape[-1] * layer.units
    return total


# ---- timing -------------------------------------------------------------------------------------
def make_project_model(precision, jit_compile):
    keras.mixed_precision.set_dtype_policy(precision)
    model = build_cvae(2, IMAGE_SHAPE, seed=0)
    model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=10**6, warmup_steps=0),
                  jit_compile=jit_compile)
    keras.mixed_precision.set_dtype_policy("float32")
    return model


def time_fit(model, x, batch_size, name):
    start = time.perf_counter()
    if name == "baseline":
        model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0)
    else:
        # "+guard": with train.py's per-batch divergence check, to measure what it costs.
        callbacks = [DivergenceGuard()] if "guard" in name.split("+") else []
        model.fit(x, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks)
    return len(x) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="../shared/data/mnist.npz")
    parser.add_argument("--steps", type=int, default=150, help="training steps per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--variants", default="float32,mixed_bfloat16",
                        help="project settings to time: a precision, then +xla for "
                             "jit_compile and +guard for train.py's per-batch NaN check")
    args = parser.parse_args()

    (x_train, _), (x_test, _) = load_mnist(args.data_path)
    x = x_train[: args.steps * args.batch_size]
    warmup = x_train[: 5 * args.batch_size]
    keras.utils.set_random_seed(0)

    models = {"baseline": build_baseline()}
    for variant in args.variants.split(","):
        precision, *extras = variant.split("+")
        models[variant] = make_project_model(precision, "xla" in extras)
    flops = forward_flops_per_image(models[args.variants.split(",")[0]])
    print(f"FLOPs per image: forward {flops / 1e9:.3f} GFLOP, training step ~3x forward = "
          f"{3 * flops / 1e9:.3f} GFLOP (Conv2D, Conv2DTranspose and Dense layers)")
    for name, model in models.items():  # warm-up: tracing and one-off allocations
        time_fit(model, warmup, args.batch_size, name)

    rates = {name: [] for name in models}
    for repeat in range(args.repeats):
        for name, model in models.items():
            rates[name].append(time_fit(model, x, args.batch_size, name))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{n} {r[-1]:.1f} img/s"
                                                  for n, r in rates.items()), flush=True)

    baseline = np.median(rates["baseline"])
    print(f"\nTraining, {args.steps} steps of {args.batch_size} images, median of "
          f"{args.repeats} alternating repetitions:")
    for name, values in rates.items():
        median = np.median(values)
        print(f"  {name:24s} {median:7.1f} images/s  ({median / baseline:4.2f}x baseline, "
              f"{median * 3 * flops / 1e9:6.1f} GFLOP/s achieved, "
              f"{60000 / median:5.0f} s per epoch of 60,000)")

    model = models[args.variants.split(",")[0]]
    start = time.perf_counter()
    z_mean, _ = encode(model, x_test)
    decode(model, z_mean.astype("float32"))
    seconds = time.perf_counter() - start
    print(f"Evaluation: encode + decode of {len(x_test)} test images in {seconds:.1f} s = "
          f"{len(x_test) / seconds:.0f} images/s ({len(x_test) / seconds / baseline:.1f}x the "
          f"baseline's training rate)")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"Peak resident memory of this process: {peak_kib / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
