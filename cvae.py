"""The article's convolutional VAE in Keras 3, with the objective made a correct ELBO.

Read top to bottom: the loss, the reparameterization, the encoder, the decoder, and the model
that joins them and trains with compile()/fit(). Two architectures share everything:
- "article" follows the article's summary exactly: three stride-1 3x3 convolutions (32, 64, 64
  filters), Dense(128), the mean and log-variance heads, and the decoder mirrored with
  transposed convolutions; 13,044,613 parameters at latent_dim=2 on 28x28x1. Its Dense layers
  grow with the pixel count, so it suits small images only.
- "strided" follows the article's closing advice of more advanced layering: stride-2
  convolutions halve the resolution before the Dense layer, and stride-2 transposed
  convolutions double it back, so a 128x128x3 model stays near a million parameters.
The layer sizes, and whether a model can be built at all, come from the image shape alone
(plumbing/model_size.py). The math is keras.ops and keras.random only, so it runs on every
backend; what a data-parallel replica does differently sits behind plumbing/devices.py.

The objective is the negative evidence lower bound of Kingma & Welling (2013), "Auto-Encoding
Variational Bayes", per image, in nats:
    -ELBO(x) = E_q(z|x)[-log p(x|z)] + KL(q(z|x) || N(0, I))
with a diagonal Gaussian encoder q(z|x) = N(z_mean, exp(z_log_var)), whose KL to the prior has the
closed form of their Appendix B, summed over latent dimensions, and a decoder p(x|z) whose mean is
the decoder network's output. The article's p(x|z) is a Bernoulli per pixel (binary cross-entropy
summed over every pixel), which fits MNIST; for photographs, likelihoods.py has a calibrated
Gaussian and a discretized logistic.
"""

import math

import keras
import numpy as np
from keras import layers, ops

import likelihoods
from plumbing.devices import noise_of_this_replica, replicas_in_sync
from plumbing.model_size import (
    HIDDEN_UNITS,
    KERNEL_SIZE,
    encoder_filters,
    feature_map_shape,
    require_buildable,
)
from plumbing.schedules import warmed_up_kl

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")  # the last two: likelihoods.py
# Probabilities are clipped this far from 0 and 1 before the log, as Keras's own binary
# cross-entropy does; it bounds one pixel's loss at about 16 nats instead of infinity.
PROBABILITY_EPSILON = 1e-7


# ---- the loss -----------------------------------------------------------------------------------
def pixel_nats(x, x_decoded, likelihood="bernoulli", log_scale=None):
    """-log p(x_i|z) of every pixel and channel, shaped like x. x and x_decoded (the decoder's
    means) are (batch, *image_shape) in [0, 1]; log_scale: log sigma per channel, (channels,),
    for the likelihoods of likelihoods.py."""
    # The loss is always computed in float32, also when the layers run in a 16-bit policy.
    x = ops.cast(x, "float32")
    mean = ops.cast(x_decoded, "float32")
    if likelihood == "bernoulli":  # the article's: binary cross-entropy
        p = ops.clip(mean, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
        return -(x * ops.log(p) + (1.0 - x) * ops.log(1.0 - p))
    return likelihoods.grey_level_pixel_nats(x, mean, likelihood, log_scale)


def reconstruction_nats(x, x_decoded, likelihood="bernoulli", log_scale=None):
    """-log p(x|z): pixel_nats summed over every pixel of each image, shaped (batch,)."""
    pixel_loss = pixel_nats(x, x_decoded, likelihood, log_scale)
    # Sum over every axis but the batch: the image size is never written by hand.
    return ops.sum(ops.reshape(pixel_loss, (ops.shape(pixel_loss)[0], -1)), axis=1)


def kl_per_dimension(z_mean, z_log_var, summed=False):
    """KL(N(z_mean, exp(z_log_var)) || N(0, 1)) of every latent dimension, shaped (batch, latent),
    or with summed=True, summed over them, shaped (batch,):
    -1/2 (1 + log sigma^2 - mu^2 - sigma^2), Kingma & Welling (2013), Appendix B."""
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    bracket = 1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)
    # Summed, the factor comes after the sum, as the training loss has always computed it: the
    # same float32 arithmetic step by step (XLA fuses the two orders differently), so a seed
    # still trains the same weights.
    return -0.5 * (ops.sum(bracket, axis=1) if summed else bracket)


def kl_to_standard_normal(z_mean, z_log_var):
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)) per image, shaped (batch,): kl_per_dimension
    summed, not averaged, over the latent dimensions."""
    return kl_per_dimension(z_mean, z_log_var, summed=True)


def negative_elbo_terms(x, x_decoded, z_mean, z_log_var, likelihood="bernoulli", log_scale=None):
    """(reconstruction, kl): the two terms of each image's negative ELBO, in nats, each (batch,).

    x, x_decoded: (batch, *image_shape), pixel intensities and the decoder's means in [0, 1].
    z_mean, z_log_var: (batch, latent_dim), the encoder's Gaussian. likelihood, log_scale: see
    pixel_nats.
    """
    return (reconstruction_nats(x, x_decoded, likelihood, log_scale),
            kl_to_standard_normal(z_mean, z_log_var))


# ---- the reparameterization ---------------------------------------------------------------------
def reparameterize(z_mean, z_log_var, epsilon):
    """z = z_mean + exp(z_log_var / 2) * epsilon, epsilon ~ N(0, I): a sample of q(z|x) that
    gradients flow through (Kingma & Welling 2013, section 2.4). z_log_var is a log-variance, so
    the standard deviation is exp(z_log_var / 2); the article sampled with exp(z_log_var) while
    its KL treated the same tensor as a log-variance."""
    return z_mean + ops.exp(0.5 * z_log_var) * epsilon


class Sampling(layers.Layer):
    """z ~ q(z|x) by the reparameterization, with its own seeded noise."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = noise_of_this_replica(keras.random.normal, z_mean, self.seed_generator)
        return reparameterize(z_mean, z_log_var, epsilon)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def binarized(images, threshold):
    """Images made 0/1: a pixel is 1 where it exceeds threshold, 0.5 for binarize="static", or
    uniform noise for "dynamic" (each pixel then drawn from Bernoulli(pixel), Burda et al. 2015).
    Binarized MNIST is the field's likelihood benchmark; this is its one definition, used by the
    model in training, by data.py for the held-out images, and by the anomaly scorer."""
    return ops.cast(threshold < images, "float32")


# ---- the encoder and the decoder ----------------------------------------------------------------
def build_encoder(latent_dim, image_shape, architecture="article", num_classes=None):
    """x -> (z_mean, z_log_var): convolutions, then Dense(128) and the two Gaussian heads.

    "article": the article's three stride-1 convolutions. "strided": one stride-2 convolution per
    halving of the resolution. With num_classes, the conditional model of Sohn, Lee & Yan (2015):
    the inputs are [image, integer label], and the label, one-hot, joins the convolutional
    features before Dense(128), so the encoder is q(z|x, y).
    """
    require_buildable(image_shape, latent_dim, architecture)
    strides = 2 if architecture == "strided" else 1
    conv_name = "conv" if architecture == "article" else "conv_halve"
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
    """z -> the mean of every pixel, in [0, 1]: the encoder mirrored with transposed convolutions.

    With num_classes the inputs are [z, integer label], and the one-hot label joins z: p(x|z, y).
    """
    require_buildable(image_shape, latent_dim, architecture)
    strides = 2 if architecture == "strided" else 1
    deconv_name = "deconv" if architecture == "article" else "deconv_double"
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


# ---- the model ----------------------------------------------------------------------------------
class CVAE(keras.Model):
    """Encoder + sampling + decoder, trained with compile()/fit() on the negative ELBO.

    Calling the model returns a dict with the reconstruction and the encoder's Gaussian, so the
    loss sees z_mean and z_log_var of the same forward pass. A conditional model takes
    {"image": images, "label": integer labels} wherever the other takes images. To reconstruct
    from z_mean, as the article's cvae.predict did, use measures.reconstruct: it runs the
    functional encoder and decoder, whose predict works the same on every Keras backend (a
    predict_step override here would not: its signature differs on JAX).

    likelihood: one of LIKELIHOODS: the article's "bernoulli", or one of likelihoods.py.
    binarize: None, or "static" / "dynamic": every training image is made 0/1 as it is seen
    (binarized), and the loss measures the reconstruction of that binary image.
    kl_warmup_steps: 0, or the steps of a KL warm-up (plumbing/schedules.warmed_up_kl).
    """

    def __init__(self, encoder, decoder, seed=None, likelihood="bernoulli", binarize=None,
                 kl_warmup_steps=0, **kwargs):
        # autocast=False: the images stay float32 here under a mixed-precision policy, so the
        # loss measures the reconstruction against the pixels themselves, and binarizing
        # compares float32 pixels with float32 noise (the encoder casts its own input).
        super().__init__(autocast=False, **kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.sampling = Sampling(seed=seed, name="sampling")
        self.binarize = binarize
        if binarize == "dynamic":
            # Its own stream, far from the sampling noise's: PyTorch seeds each draw with the
            # sum of a generator's two state words, so seed + 1 would repeat its draws.
            self.binarization_noise = keras.random.SeedGenerator(
                None if seed is None else int(np.random.SeedSequence([seed, 3]).generate_state(
                    1)[0] % 2**31))
        self.likelihood = likelihood
        if likelihood != "bernoulli":  # the decoder's spread; a Bernoulli run has none, and
            # its weight files stay as they were
            likelihoods.add_calibrated_scale(self, channels=decoder.outputs[0].shape[-1])
        self.kl_warmup_steps = kl_warmup_steps
        if kl_warmup_steps:  # a run without the warm-up has no counter: its weight files stay
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

    def log_scale(self):
        """The calibrated log sigma per channel that evaluation uses (None for "bernoulli")."""
        if self.likelihood == "bernoulli":
            return None
        return likelihoods.running_log_scale(self)

    def pixel_nats(self, x, x_decoded):
        """pixel_nats under this model's likelihood and calibrated scale."""
        return pixel_nats(x, x_decoded, self.likelihood, self.log_scale())

    def reconstruction_nats(self, x, x_decoded):
        """reconstruction_nats under this model's likelihood and calibrated scale."""
        return reconstruction_nats(x, x_decoded, self.likelihood, self.log_scale())

    def call(self, x, training=False):
        images = x["image"] if self.conditional else x
        if training and self.binarize == "static":
            images = binarized(images, 0.5)
        elif training and self.binarize == "dynamic":
            images = binarized(images, noise_of_this_replica(keras.random.uniform, images,
                                                             self.binarization_noise))
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

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        log_scale = self.log_scale()
        if training and self.likelihood != "bernoulli":
            log_scale = likelihoods.calibrate(self, y_pred["image"], y_pred["reconstruction"])
        reconstruction, kl = negative_elbo_terms(
            y_pred["image"], y_pred["reconstruction"], y_pred["z_mean"], y_pred["z_log_var"],
            self.likelihood, log_scale)
        # Feeding the per-image values makes each tracker a mean over images, which is how Keras
        # weights its own `loss` tracker (by batch size): loss == reconstruction_loss + kl_loss
        # holds also when the last batch is smaller.
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        kl = ops.mean(kl)
        if training and self.kl_warmup_steps:
            kl = warmed_up_kl(kl, self.kl_warmup_step, self.kl_warmup_steps)
        # Data-parallel on TensorFlow, Keras sums the replicas' gradients: each replica returns
        # its share of the global mean (plumbing/devices.py).
        return (ops.mean(reconstruction) + kl) / replicas_in_sync()


def build_cvae(latent_dim, image_shape, architecture="article", seed=None, num_classes=None,
               likelihood="bernoulli", binarize=None, kl_warmup_steps=0):
    """The CVAE; its encoder and decoder are usable alone as .encoder and .decoder. With
    num_classes, the conditional model (see build_encoder); likelihood, binarize and
    kl_warmup_steps: see CVAE."""
    model = CVAE(build_encoder(latent_dim, image_shape, architecture, num_classes),
                 build_decoder(latent_dim, image_shape, architecture, num_classes), seed=seed,
                 likelihood=likelihood, binarize=binarize, kl_warmup_steps=kl_warmup_steps,
                 name="cvae")
    model.build((None,) + tuple(image_shape))
    return model


def wide_dense_kernels(model):
    """The kernels of the two Dense layers that meet the convolutional feature map, 50,176 x 128
    each in the article's model: 98% of its weights, and where it overfits (train.py's
    weight_decay applies to them alone)."""
    return [model.encoder.get_layer("dense_hidden").kernel,
            model.decoder.get_layer("dense_unflatten").kernel]
