"""The article's convolutional VAE in Keras 3, with the objective made a correct ELBO.

Two architectures share the losses, the sampling and the CVAE class:
- "article" follows the article's summary exactly (three stride-1 convolutions; 13,044,613
  parameters at latent_dim=2 on 28x28x1). Its Dense layers grow with the pixel count, so it
  suits small images only.
- "strided" follows the article's closing advice of more advanced layering: stride-2
  convolutions halve the resolution before the Dense layer, and stride-2 transposed
  convolutions double it back, so a 128x128x3 model stays near a million parameters.
The model math is written with keras.ops / keras.random only, so that it does not depend on
TensorFlow; the one backend-specific corner is how a data-parallel replica finds its share of a
batch (at the end). This module imports nothing else of the project.

The objective is the negative evidence lower bound of Kingma & Welling (2013), "Auto-Encoding
Variational Bayes", per image, in nats:
    -ELBO(x) = E_q(z|x)[-log p(x|z)] + KL(q(z|x) || N(0, I))
with a Bernoulli decoder p(x|z) (binary cross-entropy summed over every pixel) and a diagonal
Gaussian encoder q(z|x) = N(z_mean, exp(z_log_var)), whose KL to the prior has the closed form of
their Appendix B, summed over latent dimensions.
"""

import math

import keras
import numpy as np
from keras import layers, ops

ARCHITECTURES = ("article", "strided")
KERNEL_SIZE = 3
HIDDEN_UNITS = 128
ARTICLE_FILTERS = (32, 64, 64)
# One entry per halving; the strided encoder uses the first k for k halvings.
STRIDED_FILTERS = (32, 64, 64, 128, 128)
# The smallest side a feature map may have: a 3x3 kernel on anything smaller sees mostly padding.
MIN_SIDE = 4
# Refused beyond this: the article's two Dense layers hold 2 * 128 * 64 weights per pixel, so a
# 512x512 model would need 17 GB for its float32 weights alone.
MAX_ARTICLE_PARAMETERS = 100_000_000
# Layer names of the convolutions in the encoder and the transposed ones in the decoder.
_CONV_NAMES = {"article": ("conv", "deconv"), "strided": ("conv_halve", "deconv_double")}

# Probabilities are clipped this far from 0 and 1 before the log, as Keras's own binary
# cross-entropy does; it bounds one pixel's loss at about 16 nats instead of infinity.
PROBABILITY_EPSILON = 1e-7


def pixel_nats(x, x_decoded):
    """-log p(x_i|z) of every pixel and channel under independent Bernoulli pixels (binary
    cross-entropy), shaped like x. x and x_decoded are (batch, *image_shape) in [0, 1]."""
    # The loss is always computed in float32, also when the layers run in a 16-bit policy.
    x = ops.cast(x, "float32")
    p = ops.clip(ops.cast(x_decoded, "float32"), PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    return -(x * ops.log(p) + (1.0 - x) * ops.log(1.0 - p))


def reconstruction_nats(x, x_decoded):
    """-log p(x|z): pixel_nats summed over every pixel of each image, shaped (batch,)."""
    pixel_bce = pixel_nats(x, x_decoded)
    # Sum over every axis but the batch: the image size is never written by hand.
    return ops.sum(ops.reshape(pixel_bce, (ops.shape(pixel_bce)[0], -1)), axis=1)


def kl_per_dimension(z_mean, z_log_var):
    """KL(N(z_mean, exp(z_log_var)) || N(0, 1)) of every latent dimension, shaped (batch, latent):
    -1/2 (1 + log sigma^2 - mu^2 - sigma^2), Kingma & Welling (2013), Appendix B."""
    return -0.5 * _kl_bracket(z_mean, z_log_var)


def kl_to_standard_normal(z_mean, z_log_var):
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)) per image, shaped (batch,): kl_per_dimension
    summed, not averaged, over the latent dimensions."""
    # The factor after the sum, as the training loss has always computed it: the same value,
    # and the same float32 arithmetic step by step, so a seed still trains the same weights.
    return -0.5 * ops.sum(_kl_bracket(z_mean, z_log_var), axis=1)


def _kl_bracket(z_mean, z_log_var):
    """1 + log sigma^2 - mu^2 - sigma^2 per dimension, in float32 (the KL is -1/2 of it)."""
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    return 1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)


def negative_elbo_terms(x, x_decoded, z_mean, z_log_var):
    """Per-image reconstruction loss and KL term, both in nats, each shaped (batch,).

    x, x_decoded: (batch, *image_shape), pixel intensities and Bernoulli means in [0, 1].
    z_mean, z_log_var: (batch, latent_dim), the encoder's Gaussian.
    """
    return reconstruction_nats(x, x_decoded), kl_to_standard_normal(z_mean, z_log_var)


class Sampling(layers.Layer):
    """Reparameterization trick: z = z_mean + exp(z_log_var / 2) * epsilon, epsilon ~ N(0, I).

    z_log_var is a log-variance, so the standard deviation is exp(z_log_var / 2); the article
    sampled with exp(z_log_var) while its KL treated the same tensor as a log-variance.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        # Under tf.distribute each replica holds a share of the batch but the same seed state:
        # drawing the whole batch's noise and keeping its own rows gives every image the noise
        # it would have on one device, instead of the same noise on every replica.
        offset, batch = replica_slice(ops.shape(z_mean)[0])
        epsilon = keras.random.normal((batch, ops.shape(z_mean)[1]), dtype=z_mean.dtype,
                                      seed=self.seed_generator)
        epsilon = ops.slice(epsilon, (offset, 0), ops.shape(z_mean))
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


# ---- architecture sizes, computed from the image shape without building anything ----------------
def strided_halvings(image_shape):
    """How many stride-2 stages the strided model has: halve while both sides are even and the
    halved sides stay >= MIN_SIDE, at most once per entry of STRIDED_FILTERS (28 -> 2, 32 -> 3,
    64 -> 4, 128 -> 5)."""
    height, width = image_shape[:2]
    count = 0
    while (count < len(STRIDED_FILTERS) and height % 2 == 0 and width % 2 == 0
           and min(height, width) // 2 >= MIN_SIDE):
        height, width, count = height // 2, width // 2, count + 1
    return count


def encoder_filters(image_shape, architecture):
    """Filters of the encoder's convolutions, first to last; the decoder mirrors them."""
    if architecture == "article":
        return ARTICLE_FILTERS
    return STRIDED_FILTERS[: strided_halvings(image_shape)]


def feature_map_shape(image_shape, architecture):
    """(height, width, channels) of the encoder's last convolution, which the decoder's
    dense_unflatten layer rebuilds."""
    height, width = image_shape[:2]
    scale = 2 ** strided_halvings(image_shape) if architecture == "strided" else 1
    return (height // scale, width // scale, encoder_filters(image_shape, architecture)[-1])


def parameter_count(image_shape, latent_dim, architecture, num_classes=None):
    """The model's count_params(), in closed form from the layer shapes."""
    def conv(in_channels, out_channels):  # kernel and bias; the same for a transposed one
        return KERNEL_SIZE * KERNEL_SIZE * in_channels * out_channels + out_channels

    def dense(units_in, units_out):
        return units_in * units_out + units_out

    channels = image_shape[-1]
    filters = encoder_filters(image_shape, architecture)
    features = math.prod(feature_map_shape(image_shape, architecture))
    encoder = (sum(conv(c_in, c_out) for c_in, c_out in zip((channels,) + filters, filters))
               + dense(features + (num_classes or 0), HIDDEN_UNITS)
               + 2 * dense(HIDDEN_UNITS, latent_dim))
    mirrored = filters[::-1]  # the reshaped map has filters[-1] channels, as mirrored[0]
    decoder = (dense(latent_dim + (num_classes or 0), HIDDEN_UNITS) + dense(HIDDEN_UNITS, features)
               + sum(conv(c_in, c_out) for c_in, c_out in zip(mirrored[:1] + mirrored, mirrored))
               + conv(filters[0], channels))
    return encoder + decoder


def architecture_problem(image_shape, latent_dim, architecture):
    """None when this model can be built; else one paragraph saying what is wrong and what to do.

    Nothing is built, so asking about an image size that would need gigabytes costs nothing.
    """
    height, width, channels = image_shape
    shape = f"{height}x{width}x{channels}"
    if architecture not in ARCHITECTURES:
        return (f"Unknown architecture {architecture!r}; pass --architecture= with one of "
                f"{', '.join(ARCHITECTURES)}.")
    if min(height, width) < MIN_SIDE:
        return (f"{shape} images are too small for either architecture: both need at least "
                f"{MIN_SIDE} pixels on a side, since a 3x3 convolution on a smaller image sees "
                f"mostly padding. Pass a larger --image_size to resize the images.")
    if architecture == "strided" and strided_halvings(image_shape) == 0:
        return (f"The strided architecture halves the resolution with stride-2 convolutions, and "
                f"{shape} images cannot be halved even once: that needs both sides even and at "
                f"least {2 * MIN_SIDE} pixels. Pass an --image_size with even sides of at least "
                f"{2 * MIN_SIDE} (for example 28, 32 or 64), or --architecture=article.")
    count = parameter_count(image_shape, latent_dim, architecture)
    if count <= MAX_ARTICLE_PARAMETERS:
        return None
    if architecture == "article":
        strided = parameter_count(image_shape, latent_dim, "strided")
        fix = ("pass --architecture=strided, which halves the resolution before its Dense layer "
               f"and has {strided:,} parameters for the same shape (or a smaller --image_size)")
        if strided_halvings(image_shape) == 0 or strided > MAX_ARTICLE_PARAMETERS:
            fix = "pass a smaller --image_size"
        return (f"An article model for {shape} images would have {count:,} parameters, more than "
                f"the limit of {MAX_ARTICLE_PARAMETERS:,}: its Dense layers grow with the pixel "
                f"count. To train on images this size, {fix}.")
    # The limit guards the strided model too: sides that halve only once or twice leave a large
    # map before its Dense layer.
    return (f"A strided model for {shape} images would have {count:,} parameters, more than the "
            f"limit of {MAX_ARTICLE_PARAMETERS:,}: these sides halve only "
            f"{strided_halvings(image_shape)} time(s) before its Dense layer. Pass a smaller "
            f"--image_size, or one whose sides divide by 32 (such as 128 or 256) so that they "
            f"halve five times.")


def _require_buildable(image_shape, latent_dim, architecture):
    problem = architecture_problem(image_shape, latent_dim, architecture)
    if problem is not None:
        raise ValueError(problem)


# ---- the models ---------------------------------------------------------------------------------
def build_encoder(latent_dim, image_shape, architecture="article", num_classes=None):
    """x -> (z_mean, z_log_var): convolutions, then Dense(128) and the two Gaussian heads.

    "article": the article's three stride-1 convolutions. "strided": one stride-2 convolution per
    halving of the resolution (see strided_halvings). With num_classes, the conditional model of
    Sohn, Lee & Yan (2015): the inputs are [image, integer label], and the label, one-hot, joins
    the convolutional features before Dense(128), so the encoder is q(z|x, y).
    """
    _require_buildable(image_shape, latent_dim, architecture)
    strides = 2 if architecture == "strided" else 1
    conv_name = _CONV_NAMES[architecture][0]
    image = keras.Input(shape=image_shape, name="image")
    h = image
    for i, filters in enumerate(encoder_filters(image_shape, architecture), start=1):
        h = layers.Conv2D(filters, KERNEL_SIZE, strides=strides, padding="same",
                          activation="relu", name=f"{conv_name}_{i}")(h)
    h = layers.Flatten(name="flatten")(h)  # (batch, height * width * channels of the last map)
    inputs = image
    if num_classes:
        label = keras.Input(shape=(), dtype="int32", name="label")
        h = layers.Concatenate(name="features_and_class")([h, _one_hot(label, num_classes)])
        inputs = [image, label]
    h = layers.Dense(HIDDEN_UNITS, activation="relu", name="dense_hidden")(h)
    # Heads in float32: exp(z_log_var) enters the KL and the sampling, and must not overflow a
    # 16-bit float when a mixed-precision policy is in use.
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(h)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(h)
    return keras.Model(inputs, [z_mean, z_log_var], name="encoder")


def build_decoder(latent_dim, image_shape, architecture="article", num_classes=None):
    """z -> Bernoulli means of every pixel: the encoder mirrored with transposed convolutions.

    With num_classes the inputs are [z, integer label], and the one-hot label joins z: p(x|z, y).
    """
    _require_buildable(image_shape, latent_dim, architecture)
    strides = 2 if architecture == "strided" else 1
    deconv_name = _CONV_NAMES[architecture][1]
    feature_shape = feature_map_shape(image_shape, architecture)
    z = keras.Input(shape=(latent_dim,), name="z")
    h, inputs = z, z
    if num_classes:
        label = keras.Input(shape=(), dtype="int32", name="label")
        h = layers.Concatenate(name="z_and_class")([z, _one_hot(label, num_classes)])
        inputs = [z, label]
    h = layers.Dense(HIDDEN_UNITS, activation="relu", name="dense_hidden")(h)
    h = layers.Dense(math.prod(feature_shape), activation="relu", name="dense_unflatten")(h)
    h = layers.Reshape(feature_shape, name="reshape")(h)  # (batch, encoder's last map shape)
    for i, filters in enumerate(encoder_filters(image_shape, architecture)[::-1], start=1):
        h = layers.Conv2DTranspose(filters, KERNEL_SIZE, strides=strides, padding="same",
                                   activation="relu", name=f"{deconv_name}_{i}")(h)
    # (batch, *image_shape)
    x_decoded = layers.Conv2D(image_shape[-1], KERNEL_SIZE, padding="same", activation="sigmoid",
                              name="pixel_probabilities", dtype="float32")(h)
    return keras.Model(inputs, x_decoded, name="decoder")


def _one_hot(label, num_classes):
    # A built-in layer, so that the exported encoder and decoder load without this project.
    return layers.CategoryEncoding(num_classes, output_mode="one_hot", name="one_hot")(label)


class CVAE(keras.Model):
    """Encoder + sampling + decoder, trained with compile()/fit() on the negative ELBO.

    Calling the model returns a dict with the reconstruction and the encoder's Gaussian, so the
    loss sees z_mean and z_log_var of the same forward pass. A conditional model takes
    {"image": images, "label": integer labels} wherever the other takes images. To reconstruct
    from z_mean, as the article's cvae.predict did, use measures.reconstruct: it runs the
    functional encoder and decoder, whose predict works the same on every Keras backend (a
    predict_step override here would not: its signature differs on JAX).
    """

    def __init__(self, encoder, decoder, seed=None, binarize=None, kl_warmup_steps=0, **kwargs):
        # autocast=False: the images stay float32 here under a mixed-precision policy, so the
        # loss measures the reconstruction against the pixels themselves, and binarizing
        # compares float32 pixels with float32 noise (the encoder casts its own input).
        super().__init__(autocast=False, **kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.sampling = Sampling(seed=seed, name="sampling")
        # Binarized MNIST, the field's benchmark: in training, every image is made 0/1 as it is
        # seen, thresholded at 0.5 ("static") or drawn pixel by pixel from Bernoulli(pixel)
        # ("dynamic", Burda et al. 2015), and the loss measures the reconstruction of that
        # binary image. The held-out images are binarized once (data.binarized).
        self.binarize = binarize
        if binarize == "dynamic":
            # Its own stream, far from the sampling noise's: PyTorch seeds each draw with the
            # sum of a generator's two state words, so seed + 1 would repeat its draws.
            self.binarization_noise = keras.random.SeedGenerator(
                None if seed is None else int(np.random.SeedSequence([seed, 3]).generate_state(
                    1)[0] % 2**31))
        # KL warm-up (Bowman et al. 2016, "Generating Sentences from a Continuous Space"; Sonderby
        # et al. 2016, "Ladder Variational Autoencoders"): the KL term's gradient is weighted by
        # beta, rising linearly from 0 to 1 over the first kl_warmup_steps training steps, so the
        # encoder can spread the classes apart before the prior pulls them in. Its steps are
        # counted here rather than read from the optimizer, whose iteration count is not part of
        # the loss's state on JAX (it would be traced as a constant). A run without the warm-up
        # has no counter, so its weight files are as before.
        self.kl_warmup_steps = kl_warmup_steps
        if kl_warmup_steps:
            self.kl_warmup_step = self.add_weight(
                shape=(), initializer="zeros", dtype="float32", trainable=False,
                aggregation="only_first_replica", name="kl_warmup_step")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    def build(self, input_shape):
        # The encoder and decoder are functional models, built when they were made; the sampling
        # layer has no weights. Nothing is left to create.
        self.built = True

    @property
    def conditional(self):
        return len(self.decoder.inputs) == 2

    def call(self, x, training=False):
        images = x["image"] if self.conditional else x
        if training and self.binarize:
            images = self.binarized(images)
        if self.conditional:
            z_mean, z_log_var = self.encoder([images, x["label"]], training=training)
        else:
            z_mean, z_log_var = self.encoder(images, training=training)
        z = self.sampling([z_mean, z_log_var])
        z = [z, x["label"]] if self.conditional else z
        return {
            "reconstruction": self.decoder(z, training=training),
            "z_mean": z_mean,
            "z_log_var": z_log_var,
            "image": images,  # what the reconstruction is measured against
        }

    def binarized(self, images):
        """The training images as 0/1 pixels (see binarize in __init__)."""
        if self.binarize == "static":
            return ops.cast(images > 0.5, images.dtype)
        # As in Sampling: the noise of the whole global batch, this replica's rows of it.
        offset, batch = replica_slice(ops.shape(images)[0])
        uniform = keras.random.uniform((batch, *ops.shape(images)[1:]), dtype=images.dtype,
                                       seed=self.binarization_noise)
        uniform = ops.slice(uniform, (offset, 0, 0, 0), ops.shape(images))
        return ops.cast(uniform < images, images.dtype)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        reconstruction, kl = negative_elbo_terms(
            y_pred["image"], y_pred["reconstruction"], y_pred["z_mean"], y_pred["z_log_var"])
        # Feeding the per-image values makes each tracker a mean over images, which is how Keras
        # weights its own `loss` tracker (by batch size): loss == reconstruction_loss + kl_loss
        # holds also when the last batch is smaller.
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        # Under tf.distribute, Keras sums the replicas' gradients and reports the loss times the
        # replica count, expecting each replica's share of the global mean (its built-in losses
        # divide likewise); the trackers above need no such care, as they sum across replicas.
        return (ops.mean(reconstruction) + self._warmed_up(ops.mean(kl), training)
                ) / replicas_in_sync()

    def _warmed_up(self, kl, training):
        """The KL term with its gradient weighted by the warm-up's beta (see __init__) in
        training; its value stays the KL itself, so the loss that Keras reports, the history and
        the divergence check all see the negative ELBO, whatever beta is."""
        if not (training and self.kl_warmup_steps):
            return kl
        self.kl_warmup_step.assign_add(1.0)
        beta = ops.minimum(ops.convert_to_tensor(self.kl_warmup_step) / self.kl_warmup_steps,
                           1.0)
        return beta * kl + ops.stop_gradient((1.0 - beta) * kl)


def build_cvae(latent_dim, image_shape, architecture="article", seed=None, num_classes=None,
               binarize=None, kl_warmup_steps=0):
    """The CVAE; its encoder and decoder are usable alone as .encoder and .decoder. With
    num_classes, the conditional model (see build_encoder); binarize: None, "static" or
    "dynamic"; kl_warmup_steps: 0, or the steps of the KL warm-up (both: see CVAE)."""
    model = CVAE(build_encoder(latent_dim, image_shape, architecture, num_classes),
                 build_decoder(latent_dim, image_shape, architecture, num_classes), seed=seed,
                 binarize=binarize, kl_warmup_steps=kl_warmup_steps, name="cvae")
    model.build((None,) + tuple(image_shape))
    return model


# ---- the anomaly scorer: the same model in the evaluation, score.py and the ONNX export ----------
ANOMALY_DRAWS = 16  # K, the noise vectors of the deterministic score


def build_anomaly_scorer(encoder, decoder, draws=ANOMALY_DRAWS, seed=0, binarize=None):
    """images (and labels, for a conditional model) -> [anomaly_score (N,), pixel_loss (N, height,
    width)], deterministic.

    pixel_loss is each pixel's expected loss under q(z|x), -E_q[log p(x_i|z)] summed over the
    channels, estimated with `draws` noise vectors drawn once from seed and used for every image;
    anomaly_score is its sum plus the KL term: the negative ELBO in nats, with fixed draws instead
    of fresh ones, so that one image always gets one score. A functional model of the encoder,
    the decoder and keras.ops, so that the number the evaluation saw is the number score.py and
    the exported scorer.onnx give. binarize="static" (the run's setting) thresholds the images
    at 0.5 inside the model, as the run saw its own, so that the exported file needs no
    preprocessing that only this project knows.
    """
    image_shape = tuple(encoder.inputs[0].shape[1:])
    latent_dim = decoder.inputs[0].shape[-1]
    epsilon = np.random.default_rng(seed).standard_normal((draws, latent_dim)).astype("float32")
    given = keras.Input(image_shape, name="image")
    image = ops.cast(given > 0.5, given.dtype) if binarize == "static" else given
    inputs = [given]
    if len(decoder.inputs) == 2:  # conditional: every draw is decoded in the image's class
        inputs.append(keras.Input(shape=(), dtype="int32", name="label"))
    z_mean, z_log_var = encoder([image, inputs[1]] if len(inputs) == 2 else image)
    z = z_mean[:, None, :] + ops.exp(0.5 * z_log_var)[:, None, :] * epsilon  # (N, K, latent)
    z = ops.reshape(z, (-1, latent_dim))  # (N * K, latent), image by image
    decoded = decoder([z, ops.repeat(inputs[1], draws, axis=0)] if len(inputs) == 2 else z)
    decoded = ops.reshape(decoded, (-1, draws) + image_shape)  # (N, K, *image_shape)
    pixel_loss = ops.sum(ops.mean(pixel_nats(image[:, None], decoded), axis=1), axis=-1)
    score = ops.sum(pixel_loss, axis=(1, 2)) + kl_to_standard_normal(z_mean, z_log_var)
    return keras.Model(inputs if len(inputs) == 2 else given, [score, pixel_loss],
                       name="anomaly_scorer")


# ---- compute per image --------------------------------------------------------------------------
def wide_dense_kernels(model):
    """The kernels of the two Dense layers that meet the convolutional feature map, 50,176 x 128
    each in the article's model: 98% of its weights, and where it overfits (train.py's
    weight_decay applies to them alone)."""
    return [model.encoder.get_layer("dense_hidden").kernel,
            model.decoder.get_layer("dense_unflatten").kernel]


def forward_flops_per_image(model):
    """FLOPs (2 per multiply-add) of one image's forward pass through every Conv2D,
    Conv2DTranspose and Dense layer of model, nested models included, from the layer shapes."""
    return 2 * _multiply_adds_per_image(model)


def _multiply_adds_per_image(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _multiply_adds_per_image(layer)
        elif isinstance(layer, layers.Conv2DTranspose):
            # A transposed convolution scatters every input pixel through its whole kernel, so its
            # work is per input pixel: equal to the output's pixel count at stride 1, a quarter
            # of it at stride 2 (counting output pixels would overstate it 4x).
            height, width, in_channels = layer.input.shape[1:]
            k_h, k_w = layer.kernel_size
            total += height * width * k_h * k_w * in_channels * layer.filters
        elif isinstance(layer, layers.Conv2D):
            # A convolution computes only the outputs it keeps: a stride-2 one does its kernel
            # work at the halved output resolution.
            height, width, out_channels = layer.output.shape[1:]
            k_h, k_w = layer.kernel_size
            total += height * width * out_channels * k_h * k_w * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            positions = math.prod(layer.input.shape[1:-1])  # 1 after a Flatten
            total += positions * layer.input.shape[-1] * layer.units
    return total


def training_gflops_per_image(model):
    """GFLOPs of one image's training step: 3x the forward pass.

    The backward pass computes, per layer, the gradient with respect to its input and with
    respect to its weights, each a product as large as the forward one (Kaplan et al. 2020,
    "Scaling Laws for Neural Language Models", section 2.1).
    """
    return 3 * forward_flops_per_image(model) / 1e9


# ---- data-parallel replicas: the one backend-specific corner of the model -----------------------
def replicas_in_sync():
    """How many TensorFlow replicas each compute one share of the batch right now (1 outside a
    tf.distribute strategy, and always 1 on JAX, whose training step sees the whole batch)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf  # only on the TensorFlow backend, which has it

    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_slice(local_batch):
    """(offset, global batch) of this replica's share of the batch, assuming the even split
    that plumbing/devices.py guarantees; (0, local_batch) wherever the step sees the whole
    batch."""
    replicas = replicas_in_sync()
    if replicas == 1:
        return 0, local_batch
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # the whole batch, as when Keras builds the model on a sample of it
        return 0, local_batch
    return context.replica_id_in_sync_group * local_batch, replicas * local_batch


def is_replicated(model):
    """True when the model's predictions would go through a data-parallel engine (see
    measures._predict for why that matters)."""
    if keras.backend.backend() == "jax":
        return keras.distribution.distribution() is not None
    if keras.backend.backend() == "tensorflow":
        return model.distribute_strategy.num_replicas_in_sync > 1
    return False
