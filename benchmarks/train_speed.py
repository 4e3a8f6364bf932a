"""Training and evaluation speed of the project's CVAE on each Keras backend, against plain Keras.

    python benchmarks/train_speed.py --data_path=../shared/data/mnist.npz      # TensorFlow
    python benchmarks/train_speed.py --backends=tensorflow,jax,torch           # every backend
    python benchmarks/train_speed.py --images=6400 --repeats=3                 # shorter passes
    python benchmarks/train_speed.py --variants=float32,float32+xla,float32+plain,float32+guard
    python benchmarks/train_speed.py --variants=float32,mixed_bfloat16     # mixed_float16 on a GPU
    python benchmarks/train_speed.py --backends=tensorflow,tensorflow+keptmem  # glibc keeps memory

Each backend runs in a process of its own (Keras reads KERAS_BACKEND once, at import), one after
the other, in alternating order from one repetition to the next. A process builds train.py's model
and optimizer for every variant, traces them on a few batches, then trains each for one pass over
--images images (60,000 by default: one whole MNIST epoch, fed as train.py feeds it), and reports
the median step and the wall clock of the whole pass, which is what a user waits for. It then
times the encoding and decoding of the test images (measures.reconstruct, as the evaluation does)
and a large matrix product, the backend's peak.

The TensorFlow process also times the baseline: the article's architecture written the way its
readers would in Keras 3, one functional model, the KL term added with add_loss,
compile(optimizer="rmsprop") with a summed binary cross-entropy and fit(x, x) on NumPy arrays.

Variants: a precision (float32, mixed_bfloat16, mixed_float16: plumbing/precision.PRECISIONS but
"auto"), then +xla to compile the whole step (XLA on TensorFlow, torch.compile on PyTorch; JAX
always compiles it), +plain for Keras's own optimizer update instead of the fused one (TensorFlow
only, see plumbing/optimizer.py), +guard for train.py's per-batch NaN check. Under a 16-bit
precision train.py computes the decoder's layer that reads z in float32 and sums every bias
gradient in float32 (plumbing/precision.float32_where_16_bits_lose); +f32bias adds the biases in
float32 instead, as the default did before 2026-12-07; +f32dense also computes the other Dense
layers in float32 (the default of 2026-12-05), +bf16dense keeps the layer that reads z in 16 bits
too (auto's split before 2026-12-05, never the default), +bf16bias is Keras's own mixed precision,
float32 only where cvae.py fixes it (the heads, the output layer: bias gradients summed in bf16),
and +bf16convbias is +f32bias with the biases of the encoder's three convolutions back in Keras's
bf16 (to time what float32 biases cost there, docs/speed.md; never the default). Those five need
a 16-bit precision, +bf16dense goes with neither +f32dense nor +bf16bias, and +bf16convbias and
+f32bias not with +bf16bias: such variants are refused, as are misspelt ones.
"+keptmem" after a backend runs its process with glibc told to keep freed memory
(MALLOC_TRIM_THRESHOLD_ and friends): an A/B test of the allocator.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from plumbing.precision import PRECISIONS  # noqa: E402  (imports only os; Keras loads in the child)

MNIST_EPOCH = 60_000
KEPT_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**25), "MALLOC_TRIM_THRESHOLD_": str(2**32),
               "MALLOC_TOP_PAD_": str(2**30)}


# ---- the baseline: plain Keras, as a reader of the article would write it today ---------------
def build_baseline(latent_dim=2):
    import keras
    from keras import layers, ops

    from cvae import kl_to_standard_normal
    from plumbing.arrays import MNIST_IMAGE_SHAPE

    class BaselineSampling(layers.Layer):
        def call(self, inputs):
            z_mean, z_log_var = inputs
            self.add_loss(ops.mean(kl_to_standard_normal(z_mean, z_log_var)))
            return z_mean + ops.exp(0.5 * z_log_var) * keras.random.normal(ops.shape(z_mean))

    def summed_binary_crossentropy(x, x_decoded):
        return ops.sum(keras.losses.binary_crossentropy(x, x_decoded), axis=(1, 2))

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


# A timed variant names the policy itself: "auto" is whichever of these the machine gets.
TIMED_PRECISIONS = tuple(precision for precision in PRECISIONS if precision != "auto")
EXTRAS = ("xla", "plain", "guard", "f32dense", "bf16dense", "bf16bias", "bf16convbias", "f32bias")
# Extras that set the same layers' dtypes two ways (make_project_model would silently let one win),
# or one that does nothing under the other: either way the variant would be timed under a name
# that says otherwise.
CONTRADICTORY_EXTRAS = ({"bf16dense", "f32dense"}, {"bf16dense", "bf16bias"},
                        {"bf16convbias", "bf16bias"}, {"f32bias", "bf16bias"})
# Extras that move layers between 16 bits and float32: under float32 they would change nothing.
SPLIT_EXTRAS = {"f32dense", "bf16dense", "bf16bias", "bf16convbias", "f32bias"}


def unknown_variants(variants):
    """The comma-separated variants that are not a precision and known extras, that combine
    contradictory extras, that split a float32 model, or that ask float16 for the float32 biases
    it has anyway: each would otherwise be timed as something other than its name. (Off
    TensorFlow every 16-bit policy adds its biases in float32, so +f32bias changes nothing there
    either; that depends on the backend, which each process learns only when it starts.)"""
    unknown = []
    for variant in variants.split(","):
        precision, *extras = variant.split("+")
        if (precision not in TIMED_PRECISIONS or any(extra not in EXTRAS for extra in extras)
                or any(pair <= set(extras) for pair in CONTRADICTORY_EXTRAS)
                or (precision == "float32" and SPLIT_EXTRAS & set(extras))
                # float16 adds its biases in float32 already (precision.bias_method)
                or (precision == "mixed_float16" and "f32bias" in extras)):
            unknown.append(variant)
    return unknown


# ---- one backend's process ----------------------------------------------------------------------
def make_project_model(variant):
    import keras

    from cvae import build_cvae
    from plumbing.arrays import MNIST_IMAGE_SHAPE
    from plumbing.optimizer import make_optimizer
    from plumbing.precision import BIAS_METHODS, bias_method, float32_where_16_bits_lose

    precision, *extras = variant.split("+")
    keras.mixed_precision.set_dtype_policy(precision)
    model = build_cvae(2, MNIST_IMAGE_SHAPE, seed=0)
    # +f32bias: biases added in float32, the default before 2026-12-07 (+bf16convbias builds on it)
    method = "float32" if {"f32bias", "bf16convbias"} & set(extras) else None
    if "bf16dense" in extras:  # the layer reading z in bf16 too (never the default)
        BIAS_METHODS[method or bias_method(model)](model)
    elif "bf16bias" not in extras:  # +bf16bias: Keras's own mixed precision
        float32_where_16_bits_lose(model, recorded_bias_method=method)
    if "bf16convbias" in extras:  # the encoder's convolutions add their biases in bf16 again
        for layer in model.encoder.layers:
            if isinstance(layer, keras.layers.Conv2D):
                layer.bias._autocast = True
    if "f32dense" in extras:  # every Dense layer in float32 (the default of 2026-12-05)
        for layer in model.encoder.layers + model.decoder.layers:
            if isinstance(layer, keras.layers.Dense):
                layer.dtype_policy = "float32"
    # "auto", as in train.py: Keras compiles the whole step with XLA on a GPU, not on a CPU.
    model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=10**6, warmup_steps=0,
                                           fused="plain" not in extras),
                  jit_compile=True if "xla" in extras else "auto")
    keras.mixed_precision.set_dtype_policy("float32")
    return model


def time_pass(name, model, x, batch_size):
    """One fit() over x: (median step seconds, images/s by the wall clock of the whole pass)."""
    from plumbing.batches import EpochShuffle, in_memory_batches
    from plumbing.stopping import DivergenceGuard
    from timing import StepTimer

    timer = StepTimer()
    callbacks = [timer] + ([DivergenceGuard()] if "guard" in name.split("+") else [])
    start = time.perf_counter()
    if name == "baseline":
        model.fit(x, x, batch_size=batch_size, verbose=0, callbacks=callbacks)
    else:
        model.fit(in_memory_batches(x, batch_size, EpochShuffle(0)), shuffle=False, verbose=0,
                  callbacks=callbacks)
    return statistics.median(timer.seconds), len(x) / (time.perf_counter() - start)


def matmul_gflops(size=4096, repeats=5):
    """The backend's float32 peak: the best of a few size x size matrix products."""
    import keras
    import numpy as np

    a = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal(
        (size, size), dtype="float32"))
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        product = jax.jit(lambda m: m @ m)
        wait = lambda result: result.block_until_ready()  # noqa: E731
    elif backend == "tensorflow":
        import tensorflow as tf

        product = tf.function(lambda m: tf.matmul(m, m))
        wait = lambda result: result.numpy()  # noqa: E731
    else:
        import torch

        product = lambda m: m @ m  # noqa: E731
        wait = lambda result: torch.cuda.synchronize() if result.is_cuda else None  # noqa: E731
    wait(product(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        wait(product(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def child(args):
    sys.path.insert(0, os.path.dirname(HERE))
    import keras

    import measures
    from data import load_mnist
    from plumbing.model_size import training_gflops_per_image

    (x_train, _), (x_test, _) = load_mnist(args.data_path)
    x = x_train[:args.images]
    keras.utils.set_random_seed(0)
    models = {"baseline": build_baseline()} if keras.backend.backend() == "tensorflow" else {}
    models.update({variant: make_project_model(variant) for variant in args.variants.split(",")})
    for name, model in models.items():  # tracing and one-off allocations
        time_pass(name, model, x_train[:5 * args.batch_size], args.batch_size)
    result = {"variants": {}, "training_gflops_per_image": training_gflops_per_image(
        models[args.variants.split(",")[0]])}
    for name, model in models.items():
        step, wall = time_pass(name, model, x, args.batch_size)
        result["variants"][name] = {"step_seconds": step, "wall": wall}
    model = models[args.variants.split(",")[0]]
    measures.reconstruct(model, x_test[:500])  # tracing
    start = time.perf_counter()
    measures.reconstruct(model, x_test)
    result["evaluation"] = len(x_test) / (time.perf_counter() - start)
    result["matmul_gflops"] = matmul_gflops()
    result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result["versions"] = {"keras": keras.__version__, "backend": backend_version()}
    print(json.dumps(result))


def backend_version():
    import keras

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[keras.backend.backend()]
    return __import__(module).__version__


# ---- the parent: alternate the backends, then the table -----------------------------------------
def run_child(spec, args):
    backend, _, setting = spec.partition("+")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if setting == "keptmem":
        env.update(KEPT_MEMORY)
    elif setting:
        sys.exit(f"error: {spec!r}: the only setting a backend takes is +keptmem.")
    command = [sys.executable, HERE, "--child", f"--data_path={args.data_path}",
               f"--images={args.images}", f"--batch_size={args.batch_size}",
               f"--variants={args.variants}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"error: the {spec} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="../shared/data/mnist.npz")
    parser.add_argument("--backends", default="tensorflow",
                        help="comma-separated: tensorflow, jax, torch, each optionally +keptmem")
    parser.add_argument("--variants", default="float32",
                        help="comma-separated project settings (see above); train.py's default, "
                             "precision=auto, is mixed_bfloat16 on a CPU with native bf16 under "
                             "TensorFlow, mixed_float16 on a GPU with tensor cores, float32 "
                             "elsewhere")
    parser.add_argument("--images", type=int, default=MNIST_EPOCH,
                        help="images per timed pass (default: one MNIST epoch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    unknown = unknown_variants(args.variants)
    if unknown:
        contradictions = " nor ".join(" with ".join(sorted("+" + extra for extra in pair))
                                      for pair in CONTRADICTORY_EXTRAS)
        parser.error(f"--variants: {', '.join(unknown)}: not a variant this script knows. A "
                     f"variant is a precision ({', '.join(TIMED_PRECISIONS)}) followed by any of "
                     f"{', '.join('+' + extra for extra in EXTRAS)}, for example "
                     f"mixed_bfloat16+f32dense, but never "
                     f"{contradictions}, which set the same layers two ways, nor "
                     f"{', '.join(sorted('+' + extra for extra in SPLIT_EXTRAS))} after float32, "
                     f"where they change nothing; the list is in this script's docstring.")

    specs = args.backends.split(",")
    runs = {spec: [] for spec in specs}
    for repeat in range(args.repeats):
        for spec in specs if repeat % 2 == 0 else specs[::-1]:
            runs[spec].append(run_child(spec, args))
            print(f"repeat {repeat + 1}, {spec}: " + ", ".join(
                f"{name} {result['wall']:.1f} images/s by wall clock"
                for name, result in runs[spec][-1]["variants"].items()), flush=True)
    print_table(runs, args)


def print_table(runs, args):
    first = next(iter(runs.values()))[0]
    gflops = first["training_gflops_per_image"]
    peak = max(run["matmul_gflops"] for spec_runs in runs.values() for run in spec_runs)
    baseline = [run["variants"]["baseline"]["step_seconds"] for spec_runs in runs.values()
                for run in spec_runs if "baseline" in run["variants"]]
    baseline_rate = args.batch_size / statistics.median(baseline) if baseline else None
    print(f"\n{args.repeats} passes of {args.images:,} images in batches of {args.batch_size} "
          f"per backend, {os.cpu_count()} CPU(s). A training step is {gflops:.3f} GFLOP per "
          f"image; the machine's matmul peak is {peak:.0f} GFLOP/s (the best backend's "
          f"4096x4096 float32 product).")
    print("images/s by median step, and by the wall clock of whole passes (median):")
    header = (f"{'backend':>20} {'variant':>20} {'median step':>12} {'wall clock':>11} "
              f"{'x baseline':>11} {'% of peak':>10} {'s / 60k':>8} {'evaluation':>11}")
    print(header)
    for spec, spec_runs in runs.items():
        for name in spec_runs[0]["variants"]:
            step = args.batch_size / statistics.median(
                run["variants"][name]["step_seconds"] for run in spec_runs)
            wall = statistics.median(run["variants"][name]["wall"] for run in spec_runs)
            evaluation = statistics.median(run["evaluation"] for run in spec_runs)
            ratio = f"{step / baseline_rate:11.2f}" if baseline_rate else f"{'':>11}"
            print(f"{spec:>20} {name:>20} {step:12.1f} {wall:11.1f} {ratio} "
                  f"{step * gflops / peak:10.0%} {MNIST_EPOCH / wall:8.0f} "
                  f"{evaluation if name != 'baseline' else float('nan'):11.0f}")
    for spec, spec_runs in runs.items():
        run = spec_runs[0]
        print(f"{spec}: {run['versions']}, matmul {run['matmul_gflops']:.0f} GFLOP/s, peak "
              f"resident memory {max(r['peak_memory_gib'] for r in spec_runs):.2f} GiB")


if __name__ == "__main__":
    main()
