"""Honest numbers of a trained model, in nats: each image's negative ELBO, the
importance-weighted log-likelihood, latent activity; and the encoding and decoding they need.
(Anomaly detection, its scorer and its metrics, is anomaly.py's.)

Everything runs in large batches through the encoder and decoder, by predict_on_batch: Keras
compiles it into a graph once, which runs about 20% faster than calling the models eagerly (oneDNN
then fuses each convolution with its bias and ReLU). The model math uses keras.ops, the bookkeeping
NumPy in float64.
"""

import math
import zlib

import numpy as np
from keras import ops, tree

from cvae import kl_per_dimension, kl_to_standard_normal, reparameterize
from plumbing.devices import is_replicated

EVAL_BATCH_SIZE = 500
LOG_2PI = math.log(2.0 * math.pi)
# Burda et al. (2015) count a latent unit as active when the variance over the data of its
# posterior mean exceeds 0.01. A unit whose posterior stays as wide as the prior passes that test
# while it carries next to nothing: its average KL bounds what it tells of the image (the mutual
# information of x and z_d), so an active unit must also carry ACTIVE_UNIT_MIN_KL nats.
ACTIVE_UNIT_THRESHOLD = 0.01
ACTIVE_UNIT_MIN_KL = 0.1
# Less KL than this in all is a collapsed posterior: the decoder ignores z.
COLLAPSED_KL = 1.0


def _with_labels(inputs, labels, start, stop):
    """A batch of a model's inputs: the array alone, or [array, labels] for a conditional one."""
    return inputs[start:stop] if labels is None else [inputs[start:stop], labels[start:stop]]


def _predict(model, part, inputs):
    """part (model's encoder or decoder) on one batch, as NumPy. A model being trained
    data-parallel is called directly, on one device: through its engine, predict_on_batch
    returns every row once per replica on TensorFlow, and refuses a batch that does not split
    evenly across the devices on JAX (see plumbing/devices.py)."""
    if is_replicated(model):
        return tree.map_structure(ops.convert_to_numpy, part(inputs, training=False))
    return part.predict_on_batch(inputs)


def encode(model, x, batch_size=EVAL_BATCH_SIZE, labels=None):
    """z_mean and z_log_var of every image, as NumPy arrays (N, latent_dim). labels: the class
    of every image, for a conditional model (the same for every function here)."""
    means, log_vars = [], []
    for start in range(0, len(x), batch_size):
        z_mean, z_log_var = _predict(model, model.encoder,
                                     _with_labels(x, labels, start, start + batch_size))
        means.append(z_mean)
        log_vars.append(z_log_var)
    return np.concatenate(means), np.concatenate(log_vars)


def decode(model, z, batch_size=EVAL_BATCH_SIZE, labels=None):
    """Bernoulli means of the images decoded from z (N, latent_dim), as a NumPy array."""
    z = np.asarray(z, dtype="float32")
    return np.concatenate([
        _predict(model, model.decoder, _with_labels(z, labels, start, start + batch_size))
        for start in range(0, len(z), batch_size)])


def reconstruct(model, x, labels=None):
    """Each image decoded from its posterior mean z_mean, the most likely code (as the article's
    cvae.predict showed them)."""
    z_mean, _ = encode(model, x, labels=labels)
    return decode(model, z_mean, labels=labels)


def sample_z(z_mean, z_log_var, epsilon):
    """cvae.reparameterize on NumPy arrays, in float32 (what decode() takes) on every backend:
    epsilon is standard normal noise that z_mean and z_log_var broadcast against."""
    return ops.convert_to_numpy(reparameterize(*(
        ops.convert_to_tensor(np.asarray(array, dtype="float32"))
        for array in (z_mean, z_log_var, epsilon))))


def straight_line(z_start, z_end, steps):
    """steps latent codes evenly spaced from z_start to z_end, both included: (steps, latent)."""
    fractions = np.linspace(0.0, 1.0, steps)[:, None]
    return ((1.0 - fractions) * z_start + fractions * z_end).astype("float32")


def negative_elbo_terms_from_encoding(model, x, z_mean, z_log_var, rng,
                                      batch_size=EVAL_BATCH_SIZE, labels=None, epsilon=None):
    """(reconstruction, kl) per image, each (N,), in nats, given the encoder's outputs.

    One z ~ q(z|x) per image, so reconstruction + kl is a single-sample, unbiased estimate of
    each image's negative ELBO; the KL term is exact. The standard normal noise of z comes from
    rng, or is given as epsilon (N, latent_dim).
    """
    if epsilon is None:
        epsilon = rng.standard_normal(z_mean.shape)
    decoded = decode(model, sample_z(z_mean, z_log_var, epsilon), batch_size, labels)
    reconstruction = np.concatenate([
        ops.convert_to_numpy(model.reconstruction_nats(x[start:start + batch_size],
                                                       decoded[start:start + batch_size]))
        for start in range(0, len(x), batch_size)])
    return reconstruction, ops.convert_to_numpy(kl_to_standard_normal(z_mean, z_log_var))


def negative_elbo_of_new_images(model, x, seed=0, labels=None):
    """(negative ELBO, z_mean, z_log_var) of new images, one row each: the single-sample estimate
    of negative_elbo_terms_from_encoding, as test_scores.npy holds for the test split, with each
    image's noise seeded by seed and the image's own pixels. A number then depends on the image
    alone, not on its file name nor on what else is scored with it, so score.py and the explorer
    give the same number for the same file, and rank it among the test split's."""
    x = np.asarray(x, dtype="float32")
    z_mean, z_log_var = encode(model, x, labels=labels)
    epsilon = np.stack([np.random.default_rng([seed, zlib.crc32(image.tobytes())])
                        .standard_normal(z_mean.shape[1]) for image in x])
    reconstruction, kl = negative_elbo_terms_from_encoding(model, x, z_mean, z_log_var, None,
                                                           labels=labels, epsilon=epsilon)
    return reconstruction + kl, z_mean, z_log_var


def bits_per_dim(nats_per_image, image_shape, likelihood="bernoulli"):
    """A per-image negative log-likelihood in nats as bits per dimension (pixel and channel),
    the unit image likelihoods are usually reported in: nats / (H * W * C * ln 2).

    The discretized likelihood gives the probability of the 8-bit values themselves, the
    number published tables report. The Gaussian's is a density of pixels scaled to [0, 1]: as
    the probability of 8-bit values (each a bin 1/256 wide, as for dequantized data), 8 bits per
    dimension are added. The Bernoulli's is that of the pixels as [0, 1] intensities (of binary
    images, for binarized MNIST), comparable only with other Bernoulli models.
    """
    bits = float(nats_per_image) / (math.prod(image_shape) * math.log(2.0))
    return bits + 8.0 if likelihood == "gaussian" else bits


def decoded_spread(model, x, draws, rng, labels=None):
    """Where the model is unsure of each image: the per-pixel standard deviation of the images
    decoded from `draws` samples z ~ q(z|x) (averaged over channels), shaped (N, height, width).
    Where the score comes from is the anomaly scorer's pixel_loss (anomaly.py)."""
    z_mean, z_log_var = encode(model, x, labels=labels)
    spreads = []
    for index, (mean, log_var) in enumerate(zip(z_mean, z_log_var)):
        z = sample_z(mean, log_var, rng.standard_normal((draws, len(mean))))
        same_label = None if labels is None else np.repeat(labels[index:index + 1], draws)
        decoded = decode(model, z, labels=same_label)  # (K, height, width, channels)
        spreads.append(decoded.std(axis=0).mean(axis=-1))
    return np.stack(spreads)


def mean_and_standard_error(values):
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def summarize_negative_elbo(reconstruction, kl, prefix="test_"):
    """Mean and standard error of the negative ELBO and of its two terms, as a flat dict."""
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    kl = np.asarray(kl, dtype=np.float64)
    summary = {}
    for name, values in (("negative_elbo", reconstruction + kl),
                         ("reconstruction", reconstruction), ("kl", kl)):
        mean, standard_error = mean_and_standard_error(values)
        summary[f"{prefix}{name}"] = mean
        summary[f"{prefix}{name}_stderr"] = standard_error
    return summary


def importance_log_weights(model, x, num_samples, seed=0, batch_size=EVAL_BATCH_SIZE,
                           labels=None):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K samples z_k ~ q(z|x): (N, K).

    Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", eq. 8:
    log p(x) >= E[log (1/K) sum_k w_k], a bound that tightens as K grows.
    """
    rng = np.random.default_rng(seed)
    z_mean, z_log_var = encode(model, x, batch_size, labels)
    images_per_chunk = max(1, batch_size // num_samples)
    log_weights = np.empty((len(x), num_samples))
    for start in range(0, len(x), images_per_chunk):
        stop = min(start + images_per_chunk, len(x))
        mean, log_var = z_mean[start:stop, None, :], z_log_var[start:stop, None, :]
        epsilon = rng.standard_normal((stop - start, num_samples, z_mean.shape[1]))
        z = sample_z(mean, log_var, epsilon)  # (images, K, latent_dim)
        decoded = decode(model, z.reshape(-1, z.shape[-1]), batch_size,
                         None if labels is None else np.repeat(labels[start:stop], num_samples))
        images = np.repeat(x[start:stop], num_samples, axis=0)
        log_p_x_given_z = -ops.convert_to_numpy(model.reconstruction_nats(
            images, decoded)).reshape(stop - start, num_samples)
        log_p_z = -0.5 * np.sum(np.square(z, dtype=np.float64) + LOG_2PI, axis=-1)
        log_q_z = -0.5 * np.sum(epsilon**2 + log_var + LOG_2PI, axis=-1)
        log_weights[start:stop] = log_p_x_given_z + log_p_z - log_q_z
    return log_weights


def importance_weighted_bound(log_weights, k):
    """Per-image log (1/k) sum_{j<=k} w_j from the first k columns of log_weights, in nats."""
    columns = np.asarray(log_weights[:, :k], dtype=np.float64)
    peak = columns.max(axis=1, keepdims=True)
    return (peak[:, 0] + np.log(np.mean(np.exp(columns - peak), axis=1)))


def latent_activity(z_mean, z_log_var):
    """Per-dimension variance of the posterior mean, active-unit count (variance and KL, see
    ACTIVE_UNIT_MIN_KL), per-dimension KL, and whether the posterior has collapsed."""
    activity = np.var(np.asarray(z_mean, dtype=np.float64), axis=0)
    mean_kl = np.mean(ops.convert_to_numpy(kl_per_dimension(z_mean, z_log_var)), axis=0)
    return {
        "latent_activity": activity.tolist(),
        "active_units": int(np.sum((activity > ACTIVE_UNIT_THRESHOLD)
                                   & (mean_kl > ACTIVE_UNIT_MIN_KL))),
        "kl_per_dimension": mean_kl.tolist(),
        "posterior_collapsed": bool(np.sum(mean_kl) < COLLAPSED_KL),
    }


def most_informative_dims(kl_per_dimension):
    """The two latent dimensions a 2-D figure shows: both when there are two (the one twice
    when there is one), else the two with the largest KL, the ones that carry the most."""
    if len(kl_per_dimension) <= 2:
        return [0, min(1, len(kl_per_dimension) - 1)]
    return [int(d) for d in np.argsort(kl_per_dimension)[::-1][:2]]
