"""Honest test-set numbers, in nats: ELBO, importance-weighted log-likelihood, latent activity,
anomaly-detection AUROC.

Everything runs in large batches through the encoder and decoder, by predict_on_batch: Keras
compiles it into a graph once, which runs about 20% faster than calling the models eagerly (oneDNN
then fuses each convolution with its bias and ReLU). The model math uses keras.ops, the bookkeeping
NumPy in float64.
"""

import math
import zlib

import numpy as np
from keras import ops, tree
from scipy import ndimage

from cvae import (
    is_replicated,
    kl_per_dimension,
    kl_to_standard_normal,
    pixel_nats,
    reconstruction_nats,
)

EVAL_BATCH_SIZE = 500
LOG_2PI = math.log(2.0 * math.pi)
# Burda et al. (2015) count a latent unit as active when the variance over the data of its
# posterior mean exceeds 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01


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
    """The reparameterization in NumPy, cvae.Sampling's formula: z = z_mean + exp(z_log_var / 2)
    * epsilon, where epsilon is standard normal noise that z_mean and z_log_var broadcast
    against. In epsilon's precision (float64 from NumPy's generators); decode() takes float32."""
    return z_mean + np.exp(0.5 * z_log_var) * epsilon


def straight_line(z_start, z_end, steps):
    """steps latent codes evenly spaced from z_start to z_end, both included: (steps, latent)."""
    fractions = np.linspace(0.0, 1.0, steps)[:, None]
    return ((1.0 - fractions) * z_start + fractions * z_end).astype("float32")


def elbo_from_encoding(model, x, z_mean, z_log_var, rng, batch_size=EVAL_BATCH_SIZE, labels=None,
                       epsilon=None):
    """(reconstruction, kl) per image, each (N,), in nats, given the encoder's outputs.

    One z ~ q(z|x) per image, so reconstruction + kl is a single-sample, unbiased estimate of
    each image's negative ELBO; the KL term is exact. The standard normal noise of z comes from
    rng, or is given as epsilon (N, latent_dim).
    """
    if epsilon is None:
        epsilon = rng.standard_normal(z_mean.shape)
    decoded = decode(model, sample_z(z_mean, z_log_var, epsilon), batch_size, labels)
    reconstruction = np.concatenate([
        ops.convert_to_numpy(reconstruction_nats(x[start:start + batch_size],
                                                 decoded[start:start + batch_size]))
        for start in range(0, len(x), batch_size)])
    return reconstruction, ops.convert_to_numpy(kl_to_standard_normal(z_mean, z_log_var))


def per_image_negative_elbo(model, x, seed=0, batch_size=EVAL_BATCH_SIZE, labels=None):
    """(reconstruction, kl) per image, each (N,), in nats: see elbo_from_encoding."""
    z_mean, z_log_var = encode(model, x, batch_size, labels)
    return elbo_from_encoding(model, x, z_mean, z_log_var, np.random.default_rng(seed),
                              batch_size, labels)


def score_images(model, x, seed=0, labels=None):
    """(negative ELBO, z_mean, z_log_var) of new images, one row each: the single-sample estimate
    of elbo_from_encoding, with each image's noise seeded by seed and the image's own pixels. A
    score then depends on the image alone, not on its file name nor on what else is scored with
    it, so score.py and the explorer give the same number for the same file."""
    x = np.asarray(x, dtype="float32")
    z_mean, z_log_var = encode(model, x, labels=labels)
    epsilon = np.stack([np.random.default_rng([seed, zlib.crc32(image.tobytes())])
                        .standard_normal(z_mean.shape[1]) for image in x])
    reconstruction, kl = elbo_from_encoding(model, x, z_mean, z_log_var, None, labels=labels,
                                            epsilon=epsilon)
    return reconstruction + kl, z_mean, z_log_var


def bits_per_dim(nats_per_image, image_shape):
    """A per-image negative log-likelihood in nats as bits per dimension (pixel and channel),
    the unit image likelihoods are usually reported in: nats / (H * W * C * ln 2)."""
    return float(nats_per_image) / (math.prod(image_shape) * math.log(2.0))


def pixel_maps(model, x, num_samples, rng, labels=None):
    """Where each image's score comes from, and where the model is unsure, per pixel.

    For K samples z_k ~ q(z|x) of each image: the per-pixel reconstruction loss averaged over the
    samples (nats, summed over channels; its sum over pixels is the reconstruction term of the
    score), and the per-pixel standard deviation of the K decoded images (averaged over
    channels). Returns both, each shaped (N, height, width).
    """
    z_mean, z_log_var = encode(model, x, labels=labels)
    loss_maps, spreads = [], []
    for index, (image, mean, log_var) in enumerate(zip(x, z_mean, z_log_var)):
        z = sample_z(mean, log_var, rng.standard_normal((num_samples, len(mean))))
        same_label = None if labels is None else np.repeat(labels[index:index + 1], num_samples)
        decoded = decode(model, z, labels=same_label)  # (K, height, width, channels)
        pixel_loss = ops.convert_to_numpy(pixel_nats(np.broadcast_to(image, decoded.shape),
                                                     decoded))
        loss_maps.append(pixel_loss.mean(axis=0).sum(axis=-1))
        spreads.append(decoded.std(axis=0).mean(axis=-1))
    return np.stack(loss_maps), np.stack(spreads)


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
        log_p_x_given_z = -ops.convert_to_numpy(reconstruction_nats(images, decoded)).reshape(
            stop - start, num_samples)
        log_p_z = -0.5 * np.sum(z**2 + LOG_2PI, axis=-1)
        log_q_z = -0.5 * np.sum(epsilon**2 + log_var + LOG_2PI, axis=-1)
        log_weights[start:stop] = log_p_x_given_z + log_p_z - log_q_z
    return log_weights


def importance_weighted_bound(log_weights, k):
    """Per-image log (1/k) sum_{j<=k} w_j from the first k columns of log_weights, in nats."""
    columns = np.asarray(log_weights[:, :k], dtype=np.float64)
    peak = columns.max(axis=1, keepdims=True)
    return (peak[:, 0] + np.log(np.mean(np.exp(columns - peak), axis=1)))


def latent_activity(z_mean, z_log_var):
    """Per-dimension variance of the posterior mean, active-unit count, and per-dimension KL."""
    activity = np.var(np.asarray(z_mean, dtype=np.float64), axis=0)
    mean_kl = np.mean(ops.convert_to_numpy(kl_per_dimension(z_mean, z_log_var)), axis=0)
    return {
        "latent_activity": activity.tolist(),
        "active_units": int(np.sum(activity > ACTIVE_UNIT_THRESHOLD)),
        "kl_per_dimension": mean_kl.tolist(),
    }


def most_informative_dims(kl_per_dimension):
    """The two latent dimensions a 2-D figure shows: both when there are two (the one twice
    when there is one), else the two with the largest KL, the ones that carry the most."""
    if len(kl_per_dimension) <= 2:
        return [0, min(1, len(kl_per_dimension) - 1)]
    return [int(d) for d in np.argsort(kl_per_dimension)[::-1][:2]]


def auroc(scores, is_positive):
    """Area under the ROC curve: the chance that a random positive outscores a random negative
    (ties count one half), from the Mann-Whitney U statistic with average ranks for ties."""
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    n_positive, n_negative = int(is_positive.sum()), int((~is_positive).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError("AUROC needs at least one positive and one negative example.")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Every member of a run of tied scores gets the run's average rank (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    u = ranks[is_positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u / (n_positive * n_negative))


def roc_curve(scores, is_positive):
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    # The last index of each run of equal scores: a threshold admits whole runs only.
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(is_positive)[ends]
    false_positives = (ends + 1) - true_positives
    tpr = np.r_[0.0, true_positives / max(is_positive.sum(), 1)]
    fpr = np.r_[0.0, false_positives / max((~is_positive).sum(), 1)]
    return fpr, tpr


# ---- anomaly detection on labelled defects ------------------------------------------------------
def anomaly_scores(scorer, x, labels=None, batch_size=32):
    """(anomaly_score (N,), pixel_loss (N, height, width)) of cvae.build_anomaly_scorer's
    scorer; batches of 32 images, so that K decodes of each fit in memory."""
    scores, maps = [], []
    for start in range(0, len(x), batch_size):
        score, pixel_loss = scorer.predict_on_batch(_with_labels(x, labels, start,
                                                                 start + batch_size))
        scores.append(score)
        maps.append(pixel_loss)
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


def smooth(maps, sigma):
    """Each (height, width) map blurred by a Gaussian of sigma pixels: a defect spans several
    pixels, noise one (scipy.ndimage's filter, axis 0 being the images)."""
    return ndimage.gaussian_filter(np.asarray(maps, dtype=np.float64), sigma=(0, sigma, sigma))


def _ranked(scores, is_positive):
    """(true positives, flagged count, threshold) at every distinct threshold, the highest first:
    flagging the scores >= threshold flags `flagged` images, `true positives` of them positive."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], np.asarray(is_positive, dtype=bool)[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    return np.cumsum(is_positive)[ends], ends + 1, scores[ends]


def average_precision(scores, is_positive):
    """Area under the precision-recall curve, as the sum over thresholds of precision times the
    gain in recall (the step-wise definition, without interpolation)."""
    true_positives, flagged, _ = _ranked(scores, is_positive)
    recall = true_positives / max(int(np.sum(is_positive)), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * true_positives / flagged))


def f1_max(scores, is_positive):
    """(the best F1 over every threshold, that threshold): the images scoring at or above it
    are flagged. An oracle's choice, made with the labels."""
    true_positives, flagged, thresholds = _ranked(scores, is_positive)
    f1 = 2 * true_positives / (flagged + int(np.sum(is_positive)))
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def aupro(maps, masks, max_fpr=0.3, thresholds=300):
    """Area under the per-region-overlap curve up to a false-positive rate of max_fpr, divided
    by max_fpr (Bergmann et al. 2021, "The MVTec Anomaly Detection Dataset", section 4.2).

    At each threshold, PRO is the mean over every connected defect region of the masks of the
    share of its pixels above the threshold, and the false-positive rate the share of defect-free
    pixels above it. maps and masks: (N, height, width), masks non-zero where defective.
    """
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks) > 0
    regions = []
    for mask, pixel_map in zip(masks, maps):
        labelled, count = ndimage.label(mask)
        regions += [np.sort(pixel_map[labelled == region]) for region in range(1, count + 1)]
    normal = np.sort(maps[~masks])
    if not regions or not len(normal):
        raise ValueError("AUPRO needs at least one defect region and one defect-free pixel.")
    # Thresholds at evenly spaced false-positive rates from 0 to max_fpr.
    rates = np.linspace(0.0, max_fpr, thresholds)
    levels = np.quantile(normal, 1.0 - rates)
    # And the next distinct value below the last: tied pixels can keep every quantile's rate
    # short of max_fpr, and the curve must then be interpolated towards a point beyond it.
    below = normal[normal < levels[-1]]
    if below.size:
        levels = np.r_[levels, below[-1]]
    fpr = 1.0 - np.searchsorted(normal, levels, side="right") / len(normal)
    pro = np.mean([1.0 - np.searchsorted(region, levels, side="right") / len(region)
                   for region in regions], axis=0)
    # The curve ends exactly at max_fpr: ties among the defect-free pixels can leave the last
    # threshold's rate a little short of it, or past it.
    pro_at_max = np.interp(max_fpr, fpr, pro)
    keep = fpr < max_fpr
    return float(np.trapezoid(np.r_[pro[keep], pro_at_max], np.r_[fpr[keep], max_fpr]) / max_fpr)
