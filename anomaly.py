"""Anomaly detection with a trained CVAE: the scorer, the metrics that judge it, and the
evaluation of an inspection set (good and defective test images, with masks of the defects).

The one anomaly score is the scorer's `anomaly_score`: an image's negative ELBO in nats, with
ANOMALY_DRAWS noise vectors drawn once and shared by every image, so that one image always gets
one number. Its per-pixel part, `pixel_loss`, is the map that the figures, score.py's masks and
explanations, the explorer and the exported scorer.onnx all show. The evaluation's per-image
negative ELBO (test_scores.npy, one fresh draw per image) is the likelihood estimate of
measures.py, not an anomaly score.
"""

import os

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from cvae import binarized, kl_to_standard_normal, pixel_nats, reparameterize

ANOMALY_DRAWS = 16  # K, the noise vectors of the deterministic score
# The threshold is chosen on the held-out normal images alone, never on the test labels: the
# anomaly score that ANOMALY_PERCENTILE of them stay under, and the per-pixel score that
# PIXEL_PERCENTILE of their pixels stay under (one false-positive pixel in a thousand).
ANOMALY_PERCENTILE = 99.0
PIXEL_PERCENTILE = 99.9
MAX_FPR = 0.3  # the AUPRO's bound, as MVTec AD defines it


# ---- the scorer ---------------------------------------------------------------------------------
def build_anomaly_scorer(model, draws=ANOMALY_DRAWS, seed=0, binarize=None):
    """images (and labels, for a conditional model) -> [anomaly_score (N,), pixel_loss (N, height,
    width)], deterministic, from a CVAE's encoder and decoder, under its likelihood.

    pixel_loss is each pixel's expected loss under q(z|x), -E_q[log p(x_i|z)] summed over the
    channels, estimated with `draws` noise vectors drawn once from seed and used for every image;
    anomaly_score is its sum plus the KL term: the negative ELBO in nats, with fixed draws instead
    of fresh ones. A functional model of the encoder, the decoder and keras.ops, so that the
    number the evaluation saw is the number score.py and the exported scorer.onnx give.
    binarize="static" (the run's setting) thresholds the images at 0.5 inside the model, as the
    run saw its own, so that the exported file needs no preprocessing only this project knows.
    """
    encoder, decoder = model.encoder, model.decoder
    image_shape = tuple(encoder.inputs[0].shape[1:])
    latent_dim = decoder.inputs[0].shape[-1]
    epsilon = np.random.default_rng(seed).standard_normal((draws, latent_dim)).astype("float32")
    given = keras.Input(image_shape, name="image")
    image = binarized(given, 0.5) if binarize == "static" else given
    log_scale = model.log_scale()
    if log_scale is not None:
        # The calibrated scale as it is now, a constant of the scorer, entered as a node of its
        # graph: a tensor computed outside it would become an input of the exported ONNX file.
        log_scale = ops.mean(0.0 * given, axis=(0, 1, 2)) + ops.convert_to_numpy(log_scale)
    inputs = [given]
    if len(decoder.inputs) == 2:  # conditional: every draw is decoded in the image's class
        inputs.append(keras.Input(shape=(), dtype="int32", name="label"))
    z_mean, z_log_var = encoder([image, inputs[1]] if len(inputs) == 2 else image)
    z = reparameterize(z_mean[:, None, :], z_log_var[:, None, :], epsilon)  # (N, K, latent)
    z = ops.reshape(z, (-1, latent_dim))  # (N * K, latent), image by image
    decoded = decoder([z, ops.repeat(inputs[1], draws, axis=0)] if len(inputs) == 2 else z)
    decoded = ops.reshape(decoded, (-1, draws) + image_shape)  # (N, K, *image_shape)
    pixel_loss = ops.sum(ops.mean(pixel_nats(image[:, None], decoded, model.likelihood,
                                             log_scale), axis=1), axis=-1)
    score = ops.sum(pixel_loss, axis=(1, 2)) + kl_to_standard_normal(z_mean, z_log_var)
    return keras.Model(inputs if len(inputs) == 2 else given, [score, pixel_loss],
                       name="anomaly_scorer")


def anomaly_scores(scorer, x, labels=None, batch_size=32):
    """(anomaly_score (N,), pixel_loss (N, height, width)) of build_anomaly_scorer's scorer;
    batches of 32 images, so that K decodes of each fit in memory."""
    scores, maps = [], []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        score, pixel_loss = scorer.predict_on_batch(
            batch if labels is None else [batch, labels[start:start + batch_size]])
        scores.append(score)
        maps.append(pixel_loss)
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


def smooth(maps, sigma):
    """Each (height, width) map blurred by a Gaussian of sigma pixels: a defect spans several
    pixels, noise one (scipy.ndimage's filter, axis 0 being the images)."""
    return ndimage.gaussian_filter(np.asarray(maps, dtype=np.float64), sigma=(0, sigma, sigma))


def smoothing_sigma(image_shape):
    """The pixel maps' Gaussian blur: one pixel at 28x28, in proportion above (a defect spans
    several pixels; the noise of a single one should not decide)."""
    return max(1.0, min(image_shape[:2]) / 28)


# ---- the metrics --------------------------------------------------------------------------------
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


def _ranked(scores, is_positive):
    """(true positives, flagged count, threshold) at every distinct threshold, the highest first:
    flagging the scores >= threshold flags `flagged` images, `true positives` of them positive."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], np.asarray(is_positive, dtype=bool)[order]
    # The last index of each run of equal scores: a threshold admits whole runs only.
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    return np.cumsum(is_positive)[ends], ends + 1, scores[ends]


def roc_curve(scores, is_positive):
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    true_positives, flagged, _ = _ranked(scores, is_positive)
    positives = int(np.sum(is_positive))
    tpr = np.r_[0.0, true_positives / max(positives, 1)]
    fpr = np.r_[0.0, (flagged - true_positives) / max(np.size(scores) - positives, 1)]
    return fpr, tpr


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


def aupro(maps, masks, max_fpr=MAX_FPR, thresholds=300):
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


def detection_metrics(scores, maps, is_defect, masks, has_mask):
    """Image AUROC, AUPR, the F1-optimal threshold (an oracle's, for comparison), and pixel
    AUROC and AUPRO on the images that have masks."""
    f1, f1_threshold = f1_max(scores, is_defect)
    result = {"image_auroc": auroc(scores, is_defect),
              "image_aupr": average_precision(scores, is_defect),
              "image_f1_max": f1, "image_f1_threshold": f1_threshold}
    masked = np.asarray(has_mask, dtype=bool)
    if np.any(masks[masked]):
        result["pixel_auroc"] = auroc(maps[masked].ravel(), masks[masked].ravel() > 0)
        result["pixel_aupro"] = aupro(maps[masked], masks[masked], MAX_FPR)
    return result


# ---- an inspection set --------------------------------------------------------------------------
def evaluate_inspection_set(model, data, run_dir):
    """Score an inspection set's held-out normal and test images, compute every metric, keep the
    threshold (anomaly_threshold.json) and draw anomaly_roc.png, anomaly_histograms.png and
    anomaly_overlays.png; returns metrics["anomaly"]."""
    from plumbing.atomic_files import write_json
    from plumbing.run_folder import ANOMALY_THRESHOLD_FILE

    anomaly, maps = inspection_metrics(model, data)
    _draw_inspection_figures(data, maps, anomaly, run_dir)
    write_json(os.path.join(run_dir, ANOMALY_THRESHOLD_FILE), anomaly["threshold"])
    return anomaly


def inspection_metrics(model, data):
    """(metrics["anomaly"], the smoothed pixel maps of the validation and test images) of an
    inspection set: image- and pixel-level metrics, overall and per defect kind, the threshold
    chosen on the held-out normal images, and what it flags."""
    scorer = build_anomaly_scorer(model)
    sigma = smoothing_sigma(data.image_shape)
    val_scores, val_maps = anomaly_scores(scorer, data.x_val)
    test_scores, test_maps = anomaly_scores(scorer, data.x_test)
    val_maps, test_maps = smooth(val_maps, sigma), smooth(test_maps, sigma)
    threshold = {
        "score": f"anomaly_score: the negative ELBO in nats with {ANOMALY_DRAWS} fixed draws "
                 f"(anomaly.build_anomaly_scorer), the same for every image",
        "image_threshold": float(np.percentile(val_scores, ANOMALY_PERCENTILE)),
        "pixel_threshold": float(np.percentile(val_maps, PIXEL_PERCENTILE)),
        "rule": f"the {ANOMALY_PERCENTILE:g}th percentile of the anomaly scores of the "
                f"{len(val_scores)} held-out normal images; for pixels, the "
                f"{PIXEL_PERCENTILE:g}th percentile of their smoothed per-pixel loss",
        "smoothing_sigma": sigma, "draws": ANOMALY_DRAWS, "seed": 0}
    is_defect = data.y_test > 0
    anomaly = detection_metrics(test_scores, test_maps, is_defect, data.test_masks,
                                data.has_mask)
    anomaly["per_defect"] = {}
    for label, kind in enumerate(data.class_names[1:], start=1):
        keep = (data.y_test == 0) | (data.y_test == label)  # the good images and this kind
        anomaly["per_defect"][kind] = detection_metrics(
            test_scores[keep], test_maps[keep], is_defect[keep], data.test_masks[keep],
            data.has_mask[keep])
    flagged = test_scores > threshold["image_threshold"]
    anomaly.update(threshold=threshold, flagged_good=float(np.mean(flagged[~is_defect])),
                   flagged_defective=float(np.mean(flagged[is_defect])),
                   images_without_mask=int(np.sum(~data.has_mask)))
    alternative = test_maps.max(axis=(1, 2))
    anomaly["alternative"] = {
        "score": f"the largest value of the per-pixel loss smoothed at sigma={sigma:g}",
        "image_auroc": auroc(alternative, is_defect),
        "image_aupr": average_precision(alternative, is_defect)}
    return anomaly, {"test": test_maps, "test_scores": test_scores, "val": val_maps}


def _draw_inspection_figures(data, maps, anomaly, run_dir):
    import plotting

    scores, is_defect = maps["test_scores"], data.y_test > 0
    curves = {"all defects": (*roc_curve(scores, is_defect), anomaly["image_auroc"])}
    for label, kind in enumerate(data.class_names[1:], start=1):
        keep = (data.y_test == 0) | (data.y_test == label)
        curves[kind] = (*roc_curve(scores[keep], is_defect[keep]),
                        anomaly["per_defect"][kind]["image_auroc"])
    plotting.plot_anomaly_rocs(curves, os.path.join(run_dir, "anomaly_roc.png"))
    threshold = anomaly["threshold"]
    plotting.plot_anomaly_histograms(
        scores[~is_defect], {kind: scores[data.y_test == label]
                             for label, kind in enumerate(data.class_names) if label > 0},
        threshold["image_threshold"], os.path.join(run_dir, "anomaly_histograms.png"))
    rows = []
    for label, kind in enumerate(data.class_names):
        chosen = np.flatnonzero(data.y_test == label)
        chosen = chosen[np.argsort(-scores[chosen], kind="mergesort")]
        # The highest-scored good images; of a defect, its three most and two least anomalous.
        chosen = chosen[:5] if label == 0 else np.r_[chosen[:3], chosen[-2:][::-1]][:len(chosen)]
        name = "good, highest" if label == 0 else f"{kind}: most, least"
        rows.append((name, data.x_test[chosen], maps["test"][chosen],
                     data.test_masks[chosen], scores[chosen]))
    plotting.plot_anomaly_overlays(rows, threshold["pixel_threshold"],
                                   os.path.join(run_dir, "anomaly_overlays.png"))
