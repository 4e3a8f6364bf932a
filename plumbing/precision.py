"""precision="auto": the fastest floating-point policy that this hardware runs natively, and why.

- A GPU with tensor cores (compute capability 7.0 or more): mixed_float16.
- A CPU with native bfloat16 (AVX512_BF16 or AMX) on TensorFlow: mixed_bfloat16, with a few
  small layers in float32 (float32_where_16_bits_lose). JAX's and PyTorch's CPU kernels in bf16
  were not measured, so they keep float32.
- Anything else: float32.

What each choice cost and gained, seed by seed: docs/speed.md.
"""

import os

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The decoder's first Dense layer (cvae.build_decoder): it reads z (conditional: z and the class).
LAYERS_READING_Z = ("dense_hidden",)
TENSOR_CORE_CAPABILITY = (7, 0)


def resolve(precision, started_with=None):
    """(the Keras dtype policy to use, why), for a precision setting of PRECISIONS. started_with:
    the policy a resumed run recorded; "auto" keeps it, so that a run resumed on other hardware
    finishes as it started (the layers it keeps in float32 are recorded apart: float32_layers)."""
    if precision != "auto":
        return precision, "as set"
    if started_with is not None:
        return started_with, "precision=auto: as this run started"
    import keras

    backend = keras.backend.backend()
    capability = gpu_capability(backend)
    if capability is not None:
        if capability >= TENSOR_CORE_CAPABILITY:
            return "mixed_float16", (f"precision=auto: a GPU with tensor cores (compute "
                                     f"capability {capability[0]}.{capability[1]})")
        return "float32", (f"precision=auto: a GPU without tensor cores (compute capability "
                           f"{capability[0]}.{capability[1]})")
    flags = cpu_flags()
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in (flags or ())]
    if native and backend == "tensorflow":
        return "mixed_bfloat16", f"precision=auto: a CPU with native bf16 ({', '.join(native)})"
    if native:
        return "float32", (f"precision=auto: the CPU has native bf16 ({', '.join(native)}), but "
                           f"bf16 was measured faster only on TensorFlow, not on {backend}")
    if flags is None:
        return "float32", "precision=auto: the CPU's features could not be read (/proc/cpuinfo)"
    return "float32", "precision=auto: a CPU without native bf16 (no AVX512_BF16, no AMX)"


def cpu_flags():
    """The CPU's feature flags (lower case) from Linux's /proc/cpuinfo; None where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def gpu_capability(backend):
    """(major, minor) CUDA compute capability of the first GPU the backend sees; None without
    one (or where the backend does not say)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            capability = tf.config.experimental.get_device_details(gpus[0]).get(
                "compute_capability")
            return tuple(capability) if capability else None
    elif backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        if gpus and getattr(gpus[0], "compute_capability", None):
            return tuple(int(part) for part in str(gpus[0].compute_capability).split(".")[:2])
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_capability(0))
    return None


def float32_where_16_bits_lose(model, recorded_layers=None, recorded_bias_method=None):
    """Under a 16-bit policy, make the decoder's Dense layer that reads z (LAYERS_READING_Z)
    compute in float32 and every other layer's bias gradient sum in float32 (bias_method); the
    convolutions and the two wide Dense layers stay 16-bit. The encoder's mean and log-variance
    heads and the output layer are float32 under every policy already (cvae.py). Returns the
    bias method applied, for config.json; a float32 model is left as it is (None).
    recorded_layers, recorded_bias_method: a resumed run's float32_layers (below) and bias_method.
    Then exactly those of the encoder's and decoder's layers with weights compute in float32 and
    the rest under the model's policy, and the biases are treated as they were, so that the run
    finishes with the split it started with even if this code's or cvae.py's split has changed
    since. (Layers without weights, and the sampling layer, follow this code.)

    Why that layer: measured, not derived. With it in bf16 too (every Dense layer but the heads),
    the default run of seed 2 ended about half a nat worse than float32, twice; with it in
    float32 and the wide Dense layers in bf16, seeds 0, 1 and 2 ended at float32's level
    (docs/speed.md, "The default"). Scored on validation images instead, one run with it in bf16
    came out better than float32 (docs/speed.md, "The candidates on validation images"): single
    runs of one seed spread that far, so the evidence is weak both ways, and it stays float32
    because that costs no measurable speed. It holds (latent_dim + classes) x 128 weights. Its
    input is not float32 z: the sampling layer computes z under the global policy, so z arrives
    rounded to bf16 in every split tried; what float32 changes is this layer's own product and
    gradients.

    Why the biases: see bias_gradients_summed_in_float32.
    """
    if model.dtype_policy.compute_dtype == "float32":
        return None
    if recorded_layers is not None:
        for name, layer in layers_with_weights(model).items():
            layer.dtype_policy = "float32" if name in recorded_layers else model.dtype_policy
    else:
        for layer in model.decoder.layers:
            if layer.name in LAYERS_READING_Z and layer.compute_dtype != "float32":
                layer.dtype_policy = "float32"
    method = recorded_bias_method or bias_method(model, resumed=recorded_layers is not None)
    BIAS_METHODS[method](model)
    return method


def bias_method(model, resumed=False):
    """How a 16-bit model's biases keep their gradients summed in float32 (BIAS_METHODS):
    "bf16_summed_in_float32" for bf16 on TensorFlow (the faster, measured in docs/speed.md);
    "float32" for float16, for other backends (where reduce_sum's accumulation was not checked)
    and for a resumed run that recorded its float32_layers but no method (it started before the
    faster existed, with float32 biases). A run older still, which recorded neither, resumes
    with this code's split and method, as docs/speed.md says."""
    if not resumed and why_bias_method_cannot_run(model, "bf16_summed_in_float32") is None:
        return "bf16_summed_in_float32"
    return "float32"


def why_bias_method_cannot_run(model, method):
    """None if method (a BIAS_METHODS name, or None) can run on this backend and model's
    policy; else where it can run, for an error message. bias_gradients_summed_in_float32 is
    written with TensorFlow's ops for bf16's BiasAddGrad; on another backend, or for a run
    resumed under another policy, it would not run or would not be what was recorded."""
    import keras

    if method != "bf16_summed_in_float32" or model.dtype_policy.compute_dtype == "float32":
        return None  # a float32 model has no 16-bit biases to treat
    if keras.backend.backend() == "tensorflow" and model.dtype_policy.compute_dtype == "bfloat16":
        return None
    return (f"on TensorFlow under a bf16 policy (this is {keras.backend.backend()} under "
            f"{model.dtype_policy.name})")


def unknown_recorded_layers(model, recorded_layers):
    """The entries of a run's recorded float32_layers that name no layer with weights of this
    model's encoder or decoder (a renamed layer, a hand edit): applied, they would change
    nothing, and the run would resume with another split than it says."""
    if not isinstance(recorded_layers, list):
        return [repr(recorded_layers)]
    known = layers_with_weights(model)
    return [name for name in recorded_layers if name not in known]


def float32_layers(model):
    """The encoder's and decoder's layers with weights that compute in float32 under a 16-bit
    policy, as "encoder/z_mean", ...: what config.json records as float32_layers, and what the log
    lists. None for a float32 model, where there is no split to record."""
    if model.dtype_policy.compute_dtype == "float32":
        return None
    return [name for name, layer in layers_with_weights(model).items()
            if layer.compute_dtype == "float32"]


def layers_with_weights(model):
    """The encoder's and decoder's layers that hold weights, by "encoder/z_mean"-style names (a
    layer name alone is not unique: both parts have a dense_hidden), in the models' order."""
    return {f"{part.name}/{layer.name}": layer for part in (model.encoder, model.decoder)
            for layer in part.layers if layer.weights}


def biases_added_in_float32(model):
    """Make every layer of model's encoder and decoder that computes in a 16-bit float read its
    bias as float32, so that the bias is added, and its gradient summed, in float32: the bias
    method of mixed_float16, of bf16 off TensorFlow, of bf16 runs started before 2026-12-07 that
    recorded their float32_layers (bias_method), and of channels_first convolutions under
    bias_gradients_summed_in_float32. Why a bias gradient must not be summed in 16 bits: see
    bias_gradients_summed_in_float32.

    With the bias in float32 the layer's output is float32 too, and the next layer casts it back
    to 16 bits: two passes over each full-size activation in float32 that cost bf16 about an
    eighth of its speed on a CPU (docs/speed.md), which bias_gradients_summed_in_float32 avoids.

    Keras decides whether a weight is cast to the compute dtype when the weight is created
    (add_weight(autocast=...)), inside each built-in layer's build(); the flag it keeps is set
    here afterwards rather than by replacing the built-in layers with subclasses, so that the
    saved models stay plain Keras. A float32 model is left as it is.
    """
    for layer in layers_with_16_bit_biases(model):
        layer.bias._autocast = False


def bias_gradients_summed_in_float32(model):
    """TensorFlow, bf16: each 16-bit layer of model's encoder and decoder adds its bias in bf16,
    as Keras does, but its bias gradient is summed by a kernel that accumulates in float32.

    Why: a bias's gradient is the sum of the layer's output gradient over the batch and every
    pixel, tens of thousands of terms. Keras adds a bias with tf.nn.bias_add, whose gradient
    kernel (BiasAddGrad) accumulates a bf16 sum in bf16, which cannot count past 256: an all-ones
    gradient over 6,384 positions comes out as 512, and under Keras's mixed_bfloat16 the
    transposed convolutions' bias gradients came out wrong by more than their own size
    (benchmarks/bf16_error.py; docs/speed.md). tf.reduce_sum accumulates bf16 in float32 and
    rounds once, at the end. So the bias add here keeps bias_add's forward pass (bf16, which
    oneDNN fuses with the convolution) and replaces only its gradient, the sum, by reduce_sum's.
    The gradient then matches biases_added_in_float32's to bf16's rounding, without its float32
    activations.

    The replacement is made on each layer object (its call), not by subclassing: the saved model
    is a float32 copy built from cvae.py (saved_run.py), in which no layer is replaced. The
    replaced call sets the layer's bias aside while the built-in call runs, so a layer must not
    be called from two threads at once (Keras traces a layer once per replica, one at a time); a
    layer already replaced is left as it is, so applying this twice changes nothing. The sum runs
    over every axis but the last, channels_last's channel axis: a convolution with channels_first
    (a keras.json setting) adds its bias in float32 instead (biases_added_in_float32).
    """
    for layer in layers_with_16_bit_biases(model):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            layer.bias._autocast = False
        elif "call" not in vars(layer):
            layer.call = _call_with_float32_bias_gradient(layer, layer.call)


def _call_with_float32_bias_gradient(layer, built_in_call):
    """layer's call, its bias added by _add_bias_summing_gradient_in_float32. The layer's own
    call computes its product, with the bias and the activation set aside for the moment (Keras's
    convolutions check use_bias before adding the bias, its Dense layer checks bias)."""
    def call(inputs, *args, **kwargs):
        kept = {name: getattr(layer, name) for name in ("bias", "use_bias", "activation")}
        layer.bias, layer.use_bias, layer.activation = None, False, None
        try:
            outputs = built_in_call(inputs, *args, **kwargs)
        finally:
            for name, value in kept.items():
                setattr(layer, name, value)
        outputs = _add_bias_summing_gradient_in_float32(outputs, kept["bias"].value)
        activation = kept["activation"]
        return outputs if activation is None else activation(outputs)

    return call


def _add_bias_summing_gradient_in_float32(outputs, bias):
    """tf.nn.bias_add(outputs, bias) in outputs' dtype; the bias's gradient summed by
    tf.reduce_sum (float32 accumulation) instead of BiasAddGrad (see
    bias_gradients_summed_in_float32)."""
    import tensorflow as tf

    @tf.custom_gradient
    def add(outputs, bias):
        def gradient(upstream):
            summed = tf.reduce_sum(upstream, axis=list(range(len(upstream.shape) - 1)))
            return upstream, tf.cast(summed, bias.dtype)

        return tf.nn.bias_add(outputs, tf.cast(bias, outputs.dtype)), gradient

    return add(outputs, bias)


def layers_with_16_bit_biases(model):
    """The layers of model's encoder and decoder that have a bias and compute in 16 bits."""
    return [layer for part in (model.encoder, model.decoder) for layer in part.layers
            if getattr(layer, "bias", None) is not None and layer.compute_dtype != "float32"]


# A bias method's name, as config.json records it, and the function that applies it.
BIAS_METHODS = {"float32": biases_added_in_float32,
                "bf16_summed_in_float32": bias_gradients_summed_in_float32}
