"""The article's convolutional VAE in Keras 3, with the objective made a correct ELBO.

Layers follow the article's summary exactly (13,044,613 parameters at latent_dim=2). The model
math is written with keras.ops / keras.random only, so that it does not depend on TensorFlow.

The objective is the negative evidence lower bound of Kingma & Welling (2013), "Auto-Encoding
Variational Bayes", per image, in nats:
    -ELBO(x) = E_q(z|x)[-log p(x|z)] + KL(q(z|x) || N(0, I))
with a Bernoulli decoder p(x|z) (binary cross-entropy summed over every pixel) and a diagonal
Gaussian encoder q(z|x) = N(z_mean, exp(z_log_var)), whose KL to the prior has the closed form of
their Appendix B, summed over latent dimensions.
"""

import keras
from keras import layers, ops

IMAGE_SHAPE = (28, 28, 1)

# Probabilities are clipped this far from 0 and 1 before the log, as Keras's own binary
# cross-entropy does; it bounds one pixel's loss at about 16 nats instead of infinity.
PROBABILITY_EPSILON = 1e-7


def reconstruction_nats(x, x_decoded):
    """-log p(x|z) under independent Bernoulli pixels: binary cross-entropy summed over every
    pixel of each image, shaped (batch,). x and x_decoded are (batch, *image_shape) in [0, 1]."""
    # The loss is always computed in float32, also when the layers run in a 16-bit policy.
    x = ops.cast(x, "float32")
    p = ops.clip(ops.cast(x_decoded, "float32"), PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    pixel_bce = -(x * ops.log(p) + (1.0 - x) * ops.log(1.0 - p))
    # Sum over every axis but the batch: the image size is never written by hand.
    return ops.sum(ops.reshape(pixel_bce, (ops.shape(pixel_bce)[0], -1)), axis=1)


def kl_to_standard_normal(z_mean, z_log_var):
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)) per image, shaped (batch,).

    Per dimension -1/2 (1 + log sigma^2 - mu^2 - sigma^2): Kingma & Welling (2013), Appendix B.
    Summed, not averaged, over the latent dimensions.
    """
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)


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
        epsilon = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype,
                                      seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_encoder(latent_dim=2, image_shape=IMAGE_SHAPE):
    """x -> (z_mean, z_log_var): the article's three stride-1 convolutions and Dense(128)."""
    image = keras.Input(shape=image_shape, name="image")
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_1")(image)
    h = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_2")(h)
    h = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_3")(h)
    h = layers.Flatten(name="flatten")(h)  # (batch, 28 * 28 * 64 = 50176)
    h = layers.Dense(128, activation="relu", name="dense_hidden")(h)
    # Heads in float32: exp(z_log_var) enters the KL and the sampling, and must not overflow a
    # 16-bit float when a mixed-precision policy is in use.
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(h)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(h)
    return keras.Model(image, [z_mean, z_log_var], name="encoder")


def build_decoder(latent_dim=2, image_shape=IMAGE_SHAPE):
    """z -> Bernoulli means of every pixel: the encoder mirrored with transposed convolutions."""
    height, width, channels = image_shape
    z = keras.Input(shape=(latent_dim,), name="z")
    h = layers.Dense(128, activation="relu", name="dense_hidden")(z)
    h = layers.Dense(height * width * 64, activation="relu", name="dense_unflatten")(h)
    h = layers.Reshape((height, width, 64), name="reshape")(h)  # (batch, 28, 28, 64)
    h = layers.Conv2DTranspose(64, 3, padding="same", activation="relu", name="deconv_1")(h)
    h = layers.Conv2DTranspose(64, 3, padding="same", activation="relu", name="deconv_2")(h)
    h = layers.Conv2DTranspose(32, 3, padding="same", activation="relu", name="deconv_3")(h)
    x_decoded = layers.Conv2D(channels, 3, padding="same", activation="sigmoid",
                              name="pixel_probabilities", dtype="float32")(h)
    return keras.Model(z, x_decoded, name="decoder")


class CVAE(keras.Model):
    """Encoder + sampling + decoder, trained with compile()/fit() on the negative ELBO.

    Calling the model returns a dict with the reconstruction and the encoder's Gaussian, so the
    loss sees z_mean and z_log_var of the same forward pass; predict() returns reconstructions
    decoded from z_mean (the most likely code), as the article's cvae.predict did.
    """

    def __init__(self, encoder, decoder, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.sampling = Sampling(seed=seed, name="sampling")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    def build(self, input_shape):
        # The encoder and decoder are functional models, built when they were made; the sampling
        # layer has no weights. Nothing is left to create.
        self.built = True

    def call(self, x, training=False):
        z_mean, z_log_var = self.encoder(x, training=training)
        z = self.sampling([z_mean, z_log_var])
        return {
            "reconstruction": self.decoder(z, training=training),
            "z_mean": z_mean,
            "z_log_var": z_log_var,
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        reconstruction, kl = negative_elbo_terms(
            x, y_pred["reconstruction"], y_pred["z_mean"], y_pred["z_log_var"])
        # Feeding the per-image values makes each tracker a mean over images, which is how Keras
        # weights its own `loss` tracker (by batch size): loss == reconstruction_loss + kl_loss
        # holds also when the last batch is smaller.
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return ops.mean(reconstruction) + ops.mean(kl)

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        z_mean, _ = self.encoder(x, training=False)
        return self.decoder(z_mean, training=False)


def build_cvae(latent_dim=2, image_shape=IMAGE_SHAPE, seed=None):
    """The article's CVAE; its encoder and decoder are usable alone as .encoder and .decoder."""
    model = CVAE(build_encoder(latent_dim, image_shape), build_decoder(latent_dim, image_shape),
                 seed=seed, name="cvae")
    model.build((None,) + tuple(image_shape))
    return model
