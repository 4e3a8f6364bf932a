"""The decoder likelihoods for grey-level images, beside the article's Bernoulli (in cvae.py).

The article's binary cross-entropy fits MNIST, whose pixels are nearly 0 or 1. On photographs a
mid-grey pixel costs about ln 2 under it however well it is reconstructed, and the posterior
collapses (docs/likelihoods.md). Two likelihoods fit grey levels; both read the decoder's output
as each pixel's mean, and both need a spread sigma per channel:
- "gaussian": N(x; mean, sigma^2) per pixel, with sigma calibrated to the reconstruction error
  (Rybkin, Daniilidis & Levine 2021, "Simple and Effective VAE Training with Calibrated
  Decoders"): in training, the sigma that maximizes the batch's likelihood (the root of its mean
  squared error); for evaluation, the running average of those.
- "discretized_logistic": the probability of each 8-bit value, the mass of a logistic with the
  same calibrated spread over the value's bin (Salimans et al. 2017, "PixelCNN++", eq. 2), so that
  bits per dimension compare with published tables.

The running average lives in two of the model's own weights (add_calibrated_scale), so that the
weight files of runs saved before this module existed load unchanged.
"""

import math

from keras import ops

LOG_2PI = math.log(2.0 * math.pi)
BIN = 1.0 / 255.0  # the distance between two 8-bit values, as pixels in [0, 1]
# The smallest calibrated sigma: the spread of an 8-bit value's rounding, BIN / sqrt(12). A
# Gaussian narrower than the bin it stands for would put unbounded density on exact values.
MIN_LOG_SCALE = math.log(BIN / math.sqrt(12.0))
# The running average of the calibrated log-sigma that evaluation uses: over about 100 steps.
SCALE_MOMENTUM = 0.99


def grey_level_pixel_nats(x, mean, likelihood, log_scale):
    """-log p(x_i|z) of every pixel and channel under "gaussian" or "discretized_logistic",
    shaped like x. x, mean: float32, (batch, *image_shape) in [0, 1]; log_scale: log sigma per
    channel, (channels,)."""
    log_scale = ops.cast(log_scale, "float32")
    if likelihood == "gaussian":
        return 0.5 * LOG_2PI + log_scale + 0.5 * ops.square((x - mean) * ops.exp(-log_scale))
    # A logistic with standard deviation sigma has scale sigma * sqrt(3) / pi; its mass over the
    # bin of x, the whole tail beyond the first and the last value (PixelCNN++, eq. 2).
    log_s = log_scale + math.log(math.sqrt(3.0) / math.pi)
    inverse_s = ops.exp(-log_s)
    upper, lower = (x - mean + 0.5 * BIN) * inverse_s, (x - mean - 0.5 * BIN) * inverse_s
    log_below_upper = upper - ops.softplus(upper)  # log sigmoid(upper)
    log_above_lower = -ops.softplus(lower)  # log (1 - sigmoid(lower))
    mass = ops.sigmoid(upper) - ops.sigmoid(lower)
    # Where the bin's mass underflows float32, the density at its centre times its width.
    centre = (x - mean) * inverse_s
    log_density_times_bin = centre - log_s - 2.0 * ops.softplus(centre) + math.log(BIN)
    log_mass = ops.where(mass > 1e-5, ops.log(ops.maximum(mass, 1e-12)), log_density_times_bin)
    return -ops.where(x < 0.5 * BIN, log_below_upper,
                      ops.where(x > 1.0 - 0.5 * BIN, log_above_lower, log_mass))


def calibrated_log_scale(x, x_decoded):
    """log sigma per channel, (channels,), that maximizes the Gaussian likelihood of the batch x
    given the decoder's means: half the log of the mean squared error (Rybkin et al. 2021),
    floored at MIN_LOG_SCALE."""
    error = ops.square(ops.cast(x, "float32") - ops.cast(x_decoded, "float32"))
    mean_squared = ops.mean(ops.reshape(error, (-1, ops.shape(error)[-1])), axis=0)
    return ops.maximum(0.5 * ops.log(ops.maximum(mean_squared, 1e-30)), MIN_LOG_SCALE)


def add_calibrated_scale(model, channels):
    """Give model the running average of the calibrated log-sigma, as a sum and the weight it
    has summed, so that it is an average from the first step (not biased towards its start)."""
    model.log_scale_sum = model.add_weight(
        shape=(channels,), initializer="zeros", dtype="float32", trainable=False,
        aggregation="only_first_replica", name="log_scale_sum")
    model.log_scale_weight = model.add_weight(
        shape=(), initializer="zeros", dtype="float32", trainable=False,
        aggregation="only_first_replica", name="log_scale_weight")


def running_log_scale(model):
    """The log sigma per channel that evaluation uses: model's running average."""
    return (ops.convert_to_tensor(model.log_scale_sum)
            / ops.maximum(ops.convert_to_tensor(model.log_scale_weight), 1e-12))


def calibrate(model, x, x_decoded):
    """The log sigma this training batch's reconstructions call for (no gradient flows through
    it), folded into model's running average."""
    log_scale = ops.stop_gradient(calibrated_log_scale(x, x_decoded))
    model.log_scale_sum.assign(SCALE_MOMENTUM * model.log_scale_sum + log_scale)
    model.log_scale_weight.assign(SCALE_MOMENTUM * model.log_scale_weight + 1.0)
    return log_scale
