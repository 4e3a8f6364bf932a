"""What the run can add to the article's training: a moving average of the weights, weight decay
on the two wide Dense kernels, a validation split to choose settings on, and binarized images
(the field's benchmark)."""

import json

import keras
import numpy as np
import pytest

from conftest import fake_mnist_arrays, numpy_negative_elbo, read_train_config, run_script
from cvae import build_cvae, wide_dense_kernels
from data import load_dataset
from plumbing.errors import ExplainedError
from plumbing.optimizer import make_optimizer

SHAPE = (8, 8, 1)


def small_model(**settings):
    return build_cvae(2, SHAPE, seed=0, **settings)


def test_weight_decay_shrinks_the_two_wide_kernels_and_nothing_else():
    model = small_model()
    variables = model.trainable_variables
    optimizer = make_optimizer("rmsprop", 1e-2, total_steps=10, warmup_steps=0,
                               schedule="constant", fused=False, weight_decay=0.5,
                               decayed=wide_dense_kernels(model), variables=variables)
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    # Zero gradients: RMSprop moves nothing, so whatever changes is the decay alone.
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    decayed = {id(v) for v in wide_dense_kernels(model)}
    assert len(decayed) == 2
    for variable, old in zip(variables, before):
        expected = old * (1 - 1e-2 * 0.5) if id(variable) in decayed else old
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-6,
                                   err_msg=variable.path)


def test_fit_ends_with_the_moving_average_of_the_weights_it_trained():
    model = small_model()
    model.compile(optimizer=make_optimizer("rmsprop", 1e-3, total_steps=6, warmup_steps=0,
                                           schedule="constant", fused=False, ema_momentum=0.6))
    trajectory = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trajectory.append([keras.ops.convert_to_numpy(v)
                               for v in self.model.trainable_variables])

    x = np.random.default_rng(0).random((48, *SHAPE)).astype("float32")
    model.fit(x, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
    assert len(trajectory) == 6
    # Keras's average: the first step's weights, then 0.6 * average + 0.4 * weights each step.
    average = trajectory[0]
    for weights in trajectory[1:]:
        average = [0.6 * a + 0.4 * w for a, w in zip(average, weights)]
    for variable, expected in zip(model.trainable_variables, average):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(model.trainable_variables[0]),
                           trajectory[-1][0])


@pytest.mark.parametrize("binarize", ["static", "dynamic"])
def test_training_images_are_binarized_as_the_model_sees_them(binarize):
    model = small_model(binarize=binarize)
    x = np.broadcast_to(np.linspace(0.0, 1.0, 64, dtype="float32").reshape(SHAPE),
                        (500, *SHAPE)).copy()
    seen = keras.ops.convert_to_numpy(model(x, training=True)["image"])
    assert set(np.unique(seen)) <= {0.0, 1.0}
    if binarize == "static":
        np.testing.assert_array_equal(seen, (x > 0.5).astype("float32"))
    else:
        # Each pixel drawn from Bernoulli(its grey level): over 500 draws, the share of ones is
        # the grey level (binomial standard error at most 0.023).
        np.testing.assert_allclose(seen.mean(axis=0), x[0], atol=0.1)
        again = keras.ops.convert_to_numpy(model(x, training=True)["image"])
        assert not np.array_equal(seen, again)  # drawn anew each time it is seen
    # Outside training the images are taken as given (the held-out ones are binarized once).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)["image"]), x)


def test_the_held_out_images_are_binarized_once(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, **fake_mnist_arrays())
    grey = load_dataset("mnist", str(path))
    static = grey.with_binarized_held_out("static", seed=0)
    np.testing.assert_array_equal(static.x_test, (grey.x_test > 0.5).astype("float32"))
    np.testing.assert_array_equal(static.x_train, grey.x_train)  # the model binarizes these
    dynamic = grey.with_binarized_held_out("dynamic", seed=0)
    again = grey.with_binarized_held_out("dynamic", seed=0)
    np.testing.assert_array_equal(dynamic.x_test, again.x_test)
    assert set(np.unique(dynamic.x_test)) == {0.0, 1.0}
    assert abs(dynamic.x_test.mean() - grey.x_test.mean()) < 0.01
    other_seed = grey.with_binarized_held_out("dynamic", seed=1)
    assert not np.array_equal(dynamic.x_test, other_seed.x_test)


def test_binarizing_colour_images_is_refused(tmp_path):
    from conftest import coloured_squares, write_images

    write_images(tmp_path / "pics", coloured_squares(12, size=8))
    with pytest.raises(ExplainedError, match="binarize='static' is for grey images"):
        load_dataset(str(tmp_path / "pics")).with_binarized_held_out("static", seed=0)


def test_the_validation_split_comes_out_of_the_training_images(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, **fake_mnist_arrays(n_train=100))
    data = load_dataset("mnist", str(path))
    split = data.with_validation(30, seed=4)
    assert split.num_train == 70 and len(split.x_val) == 30 and len(split.y_val) == 30
    # Together, exactly the training images (each image is told apart by its pixels).
    def keys(x):
        return sorted(x.reshape(len(x), -1).tobytes() for x in x)
    assert keys(np.concatenate([split.x_train, split.x_val])) == keys(data.x_train)
    np.testing.assert_array_equal(split.x_val, data.with_validation(30, seed=4).x_val)
    assert not np.array_equal(split.x_val, data.with_validation(30, seed=5).x_val)
    np.testing.assert_array_equal(split.x_test, data.x_test)  # the test split untouched
    assert split.monitored_images()[0] is split.x_val
    with pytest.raises(ExplainedError, match="leaves no training image"):
        data.with_validation(100, seed=0)


@pytest.mark.slow
def test_a_binarized_run_with_a_validation_split_reports_it_and_exports_a_thresholding_scorer(
        tmp_path):
    data_path = tmp_path / "mnist.npz"
    np.savez(data_path, **fake_mnist_arrays(n_train=200, n_test=40))
    out_dir = tmp_path / "run"
    # The strided architecture: what is tested does not depend on it, and it is 14x cheaper.
    result = run_script("train.py", f"--data_path={data_path}", f"--out_dir={out_dir}",
                        "--architecture=strided", "--epochs=1", "--batch_size=32",
                        "--warmup_steps=5",
                        "--validation_images=50", "--binarize=static", "--ema_momentum=0.9")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "150 training, 50 validation and 40 test images" in result.stdout
    config = json.loads((out_dir / "config.json").read_text())
    assert config["data"]["validation_images"] == 50
    metrics = json.loads((out_dir / "metrics.json").read_text())

    data = load_dataset("mnist", str(data_path)).with_validation(50, seed=0)
    data = data.with_binarized_held_out("static", seed=0)
    # The validation split's own draws: eval_seed 0's second stream (evaluate.validation_metrics).
    reconstruction, kl, _ = numpy_negative_elbo(out_dir, data_path, eval_seed=[0, 0, 1],
                                                x=data.x_val)
    assert metrics["validation_negative_elbo"] == pytest.approx(
        np.mean(reconstruction + kl), abs=1e-2)
    # Each validation image's own score is kept, for benchmarks/paired_runs.py --split=validation.
    np.testing.assert_allclose(np.load(out_dir / "validation_scores.npy"), reconstruction + kl,
                               atol=1e-2)
    reconstruction, kl, _ = numpy_negative_elbo(out_dir, data_path, x=data.x_test)
    assert metrics["test_negative_elbo"] == pytest.approx(np.mean(reconstruction + kl),
                                                          abs=1e-2)

    # Its exported scorer thresholds grey images itself: they score as their 0/1 versions do.
    import onnxruntime

    result = run_script("export.py", str(out_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    session = onnxruntime.InferenceSession(str(out_dir / "scorer.onnx"),
                                           providers=["CPUExecutionProvider"])
    grey = load_dataset("mnist", str(data_path)).x_test[:8]
    assert 0.05 < np.mean((grey > 0) & (grey < 1)), "the images must have grey pixels to test"
    binary = (grey > 0.5).astype("float32")
    grey_scores, grey_maps = session.run(None, {"image": grey})
    binary_scores, binary_maps = session.run(None, {"image": binary})
    np.testing.assert_array_equal(grey_scores, binary_scores)
    np.testing.assert_array_equal(grey_maps, binary_maps)
    assert "thresholded at 0.5 inside the file" in session.get_modelmeta().custom_metadata_map[
        "input"]


@pytest.mark.parametrize("capability, flags, tensorflow_choice, other_choice", [
    ((8, 0), set(), "mixed_float16", "mixed_float16"),  # tensor cores
    ((6, 1), {"amx_bf16"}, "float32", "float32"),  # a GPU without them; the CPU does not count
    (None, {"avx512f", "avx512_bf16"}, "mixed_bfloat16", "float32"),
    (None, {"amx_bf16", "amx_tile"}, "mixed_bfloat16", "float32"),
    (None, {"avx512f", "avx2"}, "float32", "float32"),
    (None, None, "float32", "float32"),  # /proc/cpuinfo unreadable
])
def test_precision_auto_chooses_what_the_hardware_runs_natively(monkeypatch, capability, flags,
                                                                tensorflow_choice, other_choice):
    from plumbing import precision

    monkeypatch.setattr(precision, "gpu_capability", lambda backend: capability)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    policy, why = precision.resolve("auto")
    assert policy == (tensorflow_choice if keras.backend.backend() == "tensorflow"
                      else other_choice)
    assert why.startswith("precision=auto: ")
    assert precision.resolve("mixed_bfloat16") == ("mixed_bfloat16", "as set")
    # A resumed run keeps the precision it started with, whatever this machine would choose.
    other = "float32" if policy != "float32" else "mixed_bfloat16"
    assert precision.resolve("auto", started_with=other) == (
        other, "precision=auto: as this run started")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "float32"])
def test_under_a_16_bit_policy_the_convolutions_and_wide_dense_layers_compute_in_16_bits(policy):
    # With the Dense layer that reads z in bf16 too, seed 2 ended half a nat worse (docs/speed.md,
    # a measurement, not an explanation); the
    # convolutions and the wide Dense layers are where the speed is. Every layer with weights,
    # as train.py leaves it:
    from plumbing.precision import float32_where_16_bits_lose

    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = build_cvae(2, (28, 28, 1), seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    method = float32_where_16_bits_lose(model)
    computed = {f"{part.name}/{layer.name}": layer.compute_dtype
                for part in (model.encoder, model.decoder) for layer in part.layers
                if layer.weights}
    sixteen = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(policy, "float32")
    assert computed == {
        "encoder/conv_1": sixteen, "encoder/conv_2": sixteen, "encoder/conv_3": sixteen,
        "encoder/dense_hidden": sixteen, "encoder/z_mean": "float32",
        "encoder/z_log_var": "float32", "decoder/dense_hidden": "float32",
        "decoder/dense_unflatten": sixteen, "decoder/deconv_1": sixteen,
        "decoder/deconv_2": sixteen, "decoder/deconv_3": sixteen,
        "decoder/pixel_probabilities": "float32"}
    # How the biases keep their gradients summed in float32 (precision.bias_method): on
    # TensorFlow, bf16 layers add them in bf16 and only the gradient sums in float32; elsewhere
    # the bias is added in float32, which makes a 16-bit layer's output float32.
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert method == (None if policy == "float32" else
                      "bf16_summed_in_float32" if on_tensorflow and sixteen == "bfloat16"
                      else "float32")
    # The variables stay float32 either way.
    assert {variable.dtype for variable in model.trainable_variables} == {"float32"}
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    features = model.encoder.get_layer("flatten")
    hidden = model.encoder.get_layer("dense_hidden")
    probe = keras.Model(model.encoder.input, [features.output, hidden.output])
    flat, h = probe(x)
    assert keras.backend.standardize_dtype(flat.dtype) == sixteen
    assert keras.backend.standardize_dtype(h.dtype) == ("float32" if method == "float32"
                                                         else sixteen)
    # The conditional decoder's first Dense layer reads z and the class: the same layer, by name.
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        conditional = build_cvae(2, (28, 28, 1), seed=0, num_classes=10)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    float32_where_16_bits_lose(conditional)
    assert [layer.compute_dtype for layer in conditional.decoder.layers
            if layer.name in ("dense_hidden", "dense_unflatten")] == ["float32", sixteen]


def article_model_under_bf16():
    """The article's model built under Keras's mixed_bfloat16, the global policy restored after."""
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        return build_cvae(2, (28, 28, 1), seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_a_resumed_run_keeps_the_float32_layers_it_recorded_not_this_codes_split():
    # config.json records the split (float32_layers); a run started under 2026-12-05's split,
    # every Dense layer in float32, resumes with it, not with today's.
    from plumbing.precision import (
        float32_layers,
        float32_where_16_bits_lose,
        unknown_recorded_layers,
    )

    todays = article_model_under_bf16()
    float32_where_16_bits_lose(todays)
    assert float32_layers(todays) == ["encoder/z_mean", "encoder/z_log_var",
                                      "decoder/dense_hidden", "decoder/pixel_probabilities"]
    every_dense = ["encoder/dense_hidden", "encoder/z_mean", "encoder/z_log_var",
                   "decoder/dense_hidden", "decoder/dense_unflatten",
                   "decoder/pixel_probabilities"]
    resumed = article_model_under_bf16()
    assert unknown_recorded_layers(resumed, every_dense) == []
    # Such a run recorded no bias_method: it started with its biases added in float32, and
    # finishes so.
    assert float32_where_16_bits_lose(resumed, recorded_layers=every_dense) == "float32"
    assert float32_layers(resumed) == every_dense
    conv_1 = resumed.encoder.get_layer("conv_1")
    assert not conv_1.bias._autocast and "call" not in vars(conv_1)
    assert conv_1.compute_dtype == "bfloat16"
    # Exactly the recorded layers, matched with their part: a layer cvae.py or this code keeps
    # in float32 today, unrecorded, computes in bf16, as it did when the run started.
    other_split = ["encoder/z_mean", "decoder/dense_unflatten"]
    resumed = article_model_under_bf16()
    assert float32_where_16_bits_lose(resumed, recorded_layers=other_split,
                                      recorded_bias_method="bf16_summed_in_float32") == (
        "bf16_summed_in_float32")
    assert float32_layers(resumed) == other_split
    conv_1 = resumed.encoder.get_layer("conv_1")
    assert conv_1.bias._autocast and "call" in vars(conv_1)
    # A recorded name this model lacks (a renamed layer, a hand edit) is found, to be refused.
    assert unknown_recorded_layers(resumed, ["decoder/dense_hiden", "encoder/z_mean"]) == [
        "decoder/dense_hiden"]
    assert unknown_recorded_layers(resumed, "decoder/dense_hidden") == ["'decoder/dense_hidden'"]
    assert float32_layers(build_cvae(2, (28, 28, 1), seed=0)) is None  # float32: nothing to keep


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="bf16 is chosen on TensorFlow only (plumbing/precision.py)")
def test_under_mixed_bfloat16_a_bias_gradient_is_summed_in_float32():
    # A transposed convolution's bias gradient sums the gradient over every image and pixel. With
    # an all-ones gradient that sum is the count of positive outputs, in the thousands, which
    # bf16 (8 significant bits) cannot count to: summed in bf16, 6,384 came out as 512.
    import tensorflow as tf

    from plumbing.precision import biases_added_in_float32

    model = article_model_under_bf16()
    biases_added_in_float32(model)
    layer = model.decoder.get_layer("deconv_1")
    assert layer.compute_dtype == "bfloat16"  # the convolution itself keeps bf16's speed
    x = np.random.default_rng(0).standard_normal((16, 28, 28, 64)).astype("float32")
    with tf.GradientTape() as tape:
        output = tf.cast(layer(x), "float32")
        loss = tf.reduce_sum(output)
    gradient = tape.gradient(loss, layer.bias).numpy()
    positive = np.sum(output.numpy() > 0, axis=(0, 1, 2))
    assert positive.max() > 2000
    np.testing.assert_array_equal(gradient, positive)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the bf16 bias add with a float32 gradient sum is TensorFlow's")
def test_under_bf16_on_tensorflow_a_bias_is_added_in_bf16_its_gradient_summed_in_float32():
    # bias_gradients_summed_in_float32, the default under bf16 since 2026-12-07: each layer's
    # output is exactly Keras's own mixed_bfloat16 output, and its bias gradient is the float32
    # sum rounded once to bf16, where Keras's own (BiasAddGrad) loses the count.
    import tensorflow as tf

    from plumbing.precision import bias_gradients_summed_in_float32

    model, keras_own = article_model_under_bf16(), article_model_under_bf16()
    keras_own.set_weights(model.get_weights())
    bias_gradients_summed_in_float32(model)
    rng = np.random.default_rng(0)
    for part, name, positions_at_least in (("decoder", "deconv_1", 2000),
                                           ("decoder", "dense_unflatten", 10),
                                           ("encoder", "conv_2", 2000)):
        layer, plain = (getattr(m, part).get_layer(name) for m in (model, keras_own))
        plain.bias.assign(rng.normal(0, 0.1, plain.bias.shape))  # a bias that is not zero
        layer.bias.assign(plain.bias.value)
        x = rng.standard_normal((16,) + tuple(layer.input.shape[1:])).astype("float32")
        gradients, outputs = [], []
        for each in (layer, plain):
            with tf.GradientTape() as tape:
                output = each(x)
                loss = tf.reduce_sum(tf.cast(output, "float32"))
            gradients.append(tape.gradient(loss, each.bias).numpy())
            outputs.append(output.numpy())
        assert outputs[0].dtype == outputs[1].dtype == tf.bfloat16.as_numpy_dtype
        np.testing.assert_array_equal(outputs[0], outputs[1])  # Keras's own forward pass
        # The layers end in a ReLU: an all-ones gradient sums to the count of positive outputs.
        positive = np.sum(outputs[0].astype("float32") > 0, axis=tuple(range(x.ndim - 1)))
        assert positive.max() >= positions_at_least
        np.testing.assert_allclose(gradients[0], positive, rtol=2**-8)  # bf16's rounding, once
        if positions_at_least > 256:  # past what a bf16 accumulator can count
            counted = positive > 0
            assert np.max(np.abs(gradients[1] - positive)[counted] / positive[counted]) > 0.5
    # Applied a second time (a model set up twice), it leaves each layer as it is.
    replaced = model.decoder.get_layer("deconv_1").call
    bias_gradients_summed_in_float32(model)
    assert model.decoder.get_layer("deconv_1").call is replaced


def test_a_recorded_bias_method_is_checked_against_the_backend_and_policy():
    # A run that recorded the TensorFlow-and-bf16 bias method, resumed where it cannot run (another
    # backend, a float16 policy), is refused by train.py with this reason, not a traceback.
    from plumbing.precision import why_bias_method_cannot_run

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        half = build_cvae(2, (28, 28, 1), seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    method = "bf16_summed_in_float32"
    assert "under mixed_float16" in why_bias_method_cannot_run(half, method)
    assert why_bias_method_cannot_run(half, "float32") is None
    assert why_bias_method_cannot_run(build_cvae(2, (28, 28, 1), seed=0), method) is None
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert (why_bias_method_cannot_run(article_model_under_bf16(), method) is None) == (
        on_tensorflow)


def test_the_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    import io
    import platform

    from plumbing import precision

    # This machine: the words of /proc/cpuinfo's first flags line, read here independently.
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith("flags")]
    except OSError:
        lines = None
    flags = precision.cpu_flags()
    if not lines:
        assert flags is None  # off Linux, or a CPU (ARM) whose cpuinfo has no flags line
    else:
        assert flags == set(lines[0].split(":", 1)[1].split())
        if platform.machine() in ("x86_64", "AMD64", "i686"):
            assert {"fpu", "sse2"} <= flags  # every x86-64 CPU has both

    # Any cpuinfo: the first flags line's words, not a line that merely contains "flags".
    def cpuinfo(text):
        monkeypatch.setattr(precision, "open", lambda *args, **kwargs: io.StringIO(text),
                            raising=False)

    cpuinfo("processor\t: 0\nvmx flags\t: ept\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n"
            "flags\t\t: fpu\n")
    assert precision.cpu_flags() == {"fpu", "avx512f", "avx512_bf16", "amx_tile"}
    cpuinfo("processor\t: 0\nFeatures\t: fp asimd\n")  # an ARM CPU's cpuinfo
    assert precision.cpu_flags() is None

    def unreadable(*args, **kwargs):
        raise PermissionError("/proc/cpuinfo")

    monkeypatch.setattr(precision, "open", unreadable, raising=False)
    assert precision.cpu_flags() is None


def one_sgd_step(model, x):
    """The weights after one plain gradient step (SGD, rate 1) of fit on the batch x."""
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    history = model.fit(x, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return np.concatenate([keras.ops.convert_to_numpy(v).ravel()
                           for v in model.trainable_variables]), history.history


@pytest.mark.backend
def test_the_kl_warm_up_weights_the_kl_gradient_by_step_over_its_length():
    x = np.random.default_rng(0).random((16, *SHAPE)).astype("float32")
    start = small_model(kl_warmup_steps=1).get_weights()
    steps, logs = {}, {}
    # The first step has beta = 1 / kl_warmup_steps; the same weights and noise in each model.
    for beta, length in ((1.0, 1), (0.5, 2), (0.25, 4)):
        model = small_model(kl_warmup_steps=length)
        model.set_weights(start)
        steps[beta], logs[beta] = one_sgd_step(model, x)
        assert keras.ops.convert_to_numpy(model.kl_warmup_step) == 1
    # The update is -(grad reconstruction + beta * grad KL): affine in beta, and beta matters.
    np.testing.assert_allclose(steps[1.0] - steps[0.5], 2 * (steps[0.5] - steps[0.25]),
                               rtol=1e-3, atol=1e-5)
    assert np.abs(steps[1.0] - steps[0.5]).max() > 1e-3
    # What is reported is the negative ELBO itself, whatever beta is.
    for beta in (0.5, 0.25):
        for name in ("loss", "reconstruction_loss", "kl_loss"):
            np.testing.assert_allclose(logs[beta][name], logs[1.0][name], rtol=1e-6)
    np.testing.assert_allclose(logs[0.5]["loss"][0], logs[0.5]["reconstruction_loss"][0]
                               + logs[0.5]["kl_loss"][0], rtol=1e-5)


@pytest.mark.backend
def test_the_kl_warm_up_counts_every_step_and_ends_on_the_elbo():
    model = small_model(kl_warmup_steps=3)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    x = np.random.default_rng(1).random((40, *SHAPE)).astype("float32")
    model.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0)
    # Counted in the training state on every backend (on JAX, not frozen at its traced value).
    assert keras.ops.convert_to_numpy(model.kl_warmup_step) == 10
    # Past the warm-up the loss is the plain negative ELBO, gradient and all.
    kl = keras.ops.convert_to_tensor(np.float32(7.0))
    from plumbing.schedules import warmed_up_kl

    weighted = warmed_up_kl(kl, model.kl_warmup_step, model.kl_warmup_steps)
    assert keras.ops.convert_to_numpy(weighted) == 7.0
    assert model.count_params() == small_model().count_params() + 1
    assert len(small_model().weights) + 1 == len(model.weights)


def test_cooldown_share_sets_where_the_compiled_schedule_starts_its_decay():
    from plumbing.optimizer import make_optimizer
    from plumbing.training_run import run_steps

    config = read_train_config(["--epochs=10", "--batch_size=12", "--warmup_steps=5",
                                "--cooldown_share=0.7"])
    steps = run_steps(config, images_per_epoch=120)
    assert steps == {"total": 100, "warmup": 5, "kl_warmup": 0}
    optimizer = make_optimizer(
        config["optimizer"], config["learning_rate"], total_steps=steps["total"],
        warmup_steps=steps["warmup"], schedule=config["lr_schedule"],
        cooldown_share=config["cooldown_share"])
    schedule = optimizer._learning_rate  # the schedule itself; learning_rate is its value
    # 120 images in batches of 12: 100 steps, the peak held from step 5 to step 30.
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (20, 30, 31, 65)]
    assert rates[:2] == pytest.approx([1e-3, 1e-3])
    assert rates[2] < 1e-3 and rates[3] == pytest.approx((1 - np.sqrt(0.5)) * 1e-3, rel=1e-4)


def test_a_run_from_before_these_options_still_resumes(tmp_path):
    from plumbing import run_folder
    from plumbing.atomic_files import write_json
    from plumbing.errors import ConfigError

    def older_run(folder):
        """A folder holding the config.json of a run made before these options existed."""
        config = read_train_config([f"--out_dir={folder}"])
        folder.mkdir()
        write_json(str(folder / run_folder.CONFIG_FILE), {
            key: value for key, value in config.items() if key not in (
                "validation_images", "binarize", "ema_momentum", "weight_decay",
                "kl_warmup_steps", "cooldown_share")})
        return str(folder)

    # It trained without weight decay and cooled down over the last fifth: resumed with those
    # values, refused with the new defaults, which would change it halfway.
    same = older_run(tmp_path / "same")
    config = read_train_config([f"--out_dir={same}", "--weight_decay=0", "--cooldown_share=0.2"])
    assert run_folder.prepare_out_dir(same, config) is True
    other = older_run(tmp_path / "other")
    default = read_train_config([f"--out_dir={other}"])
    with pytest.raises(ConfigError, match="cooldown_share: 0.2 there, 0.4 now; weight_decay: "
                                          "0.0 there, 0.5 now.*Pass the values"):
        run_folder.prepare_out_dir(other, default)


def test_new_images_are_seen_as_a_binarized_run_saw_its_own():
    from data import as_the_run_sees

    grey = np.linspace(0.0, 1.0, 64, dtype="float32").reshape(1, *SHAPE)
    np.testing.assert_array_equal(as_the_run_sees(grey, {"binarize": "static"}),
                                  (grey > 0.5).astype("float32"))
    # Dynamic: the Bernoulli loss of a grey pixel is already the mean over its binary draws.
    assert as_the_run_sees(grey, {"binarize": "dynamic"}) is grey
    assert as_the_run_sees(grey, {}) is grey


def test_under_mixed_precision_the_loss_measures_the_float32_pixels():
    # The model does not cast its input: the reconstruction is scored against the pixels, not
    # against their bfloat16 rounding (up to 0.002 away), and a fit step runs.
    x = np.random.default_rng(0).random((8, *SHAPE)).astype("float32")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = small_model()
        seen = model(x, training=True)["image"]
        assert keras.backend.standardize_dtype(seen.dtype) == "float32"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(seen), x)
        start = model.get_weights()
        model.compile(optimizer=make_optimizer("rmsprop", 1e-4, total_steps=1, warmup_steps=0,
                                               fused=False))
        logs = {name: values[0] for name, values in
                model.fit(x, batch_size=8, epochs=1, verbose=0).history.items()}
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    # The step's loss is the negative ELBO of the starting weights, as float32 computes it (to
    # bfloat16's rounding of the decoded pixels and another draw of z: 1e-4 apart, measured):
    # neither scaled (a loss scale left in) nor summed in bfloat16 (its 64 pixel terms of about
    # 0.69 nats would round by a fraction of a nat).
    reference = small_model()
    reference.set_weights(start)
    reference.compile(optimizer=keras.optimizers.SGD(0.0))
    expected = reference.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["reconstruction_loss"] + logs["kl_loss"], rel=1e-5)
    for name in ("loss", "reconstruction_loss"):
        assert logs[name] == pytest.approx(expected[name], rel=2e-3), name
    # And the step moved the weights, to finite values.
    after = model.get_weights()
    assert all(np.isfinite(weights).all() for weights in after)
    assert any(not np.array_equal(a, b) for a, b in zip(start, after))
