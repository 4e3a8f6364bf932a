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
from feature_memory import FEATURE_MAPS, feature_distance_maps, fit_feature_memory
from patches import average_patch_maps, cut_into_patches, patch_positions, patch_size_of
from plumbing.errors import RunError
from plumbing.run_folder import FEATURE_MEMORY_FILE

ANOMALY_DRAWS = 16  # K, the noise vectors of the deterministic score
DISTANCE_BUDGET = 2 ** 27  # float32 distances (512 MiB) a scorer's batch may hold at once
# The thresholds are chosen on the held-out normal images alone, never on the test labels: the
# image threshold by conformal_threshold, to flag FLAGGED_GOOD_RATE of good images, and the
# per-pixel one that PIXEL_PERCENTILE of their pixels stay under (one pixel in a thousand).
FLAGGED_GOOD_RATE = 0.01  # the share of good images the image threshold is meant to flag
PIXEL_PERCENTILE = 99.9
MAX_FPR = 0.3  # the AUPRO's bound, as MVTec AD defines it


# ---- the scorer ---------------------------------------------------------------------------------
def build_anomaly_scorer(model, draws=ANOMALY_DRAWS, seed=0, binarize=None, scoring=None,
                         image_shape=None, feature_memory=None):
    """images (and labels, for a conditional model) -> [anomaly_score (N,), pixel_loss (N, height,
    width)], deterministic, from a CVAE's encoder and decoder, under its likelihood.

    pixel_loss is each pixel's expected loss under q(z|x), -E_q[log p(x_i|z)] summed over the
    channels, estimated with `draws` noise vectors drawn once from seed and used for every image;
    anomaly_score is its sum plus the KL term: the negative ELBO in nats, with fixed draws instead
    of fresh ones. A functional model of the encoder, the decoder and keras.ops, so that the
    number the evaluation saw is the number score.py and the exported scorer.onnx give.
    binarize="static" (the run's setting) thresholds the images at 0.5 inside the model, as the
    run saw its own, so that the exported file needs no preprocessing only this project knows.

    scoring: what an inspection run chose on its validation defects (choose_scoring), or None
    for the above. With {"pixel_map", "smoothing_sigma", "image_score"}, pixel_loss is the map
    named (PIXEL_MAPS) smoothed by a Gaussian of smoothing_sigma pixels inside the model, and
    anomaly_score is the negative ELBO ("total") or that map's largest value ("peak").

    image_shape: the images' shape, when larger than the model's input (a model of patches,
    train.py's patch_size): each image is then scored patch by patch (patches.py), its maps are
    the patches' averaged where they overlap, and its negative ELBO is its patches' mean.

    feature_memory: the run's kept memory of encoder features (feature_memory.py), needed when
    the scoring's map is one of FEATURE_MAPS.
    """
    needed = None
    if scoring is not None and scoring["pixel_map"] in FEATURE_MAPS:
        if feature_memory is None:
            raise RunError(f"The run's anomaly scoring ({scoring['pixel_map']}) needs the memory "
                           f"of encoder features that evaluating it keeps in {FEATURE_MEMORY_FILE}"
                           f", and the run folder has none: evaluate the run again (python "
                           f"evaluate.py RUN_DIR) to fit and keep it.")
        needed = {scoring["pixel_map"]: feature_memory[scoring["pixel_map"]]}
    inputs, score, maps, patch_count = _scorer_graph(model, draws, seed, binarize, image_shape,
                                                     needed)
    pixel_map = maps["loss"]
    if scoring is not None:
        pixel_map = smoothed_in_graph(maps[scoring["pixel_map"]], scoring["smoothing_sigma"])
        if scoring["image_score"] == "peak":
            score = ops.max(pixel_map, axis=(1, 2))
    scorer = keras.Model(inputs, [score, pixel_map], name="anomaly_scorer")
    scorer.images_per_batch = images_per_batch(model, patch_count, needed)
    return scorer


def build_candidate_scorer(model, draws=ANOMALY_DRAWS, seed=0, image_shape=None,
                           feature_memory=None):
    """images (and labels) -> [negative ELBO (N,), one map per PIXEL_MAPS entry, unsmoothed]:
    everything choose_scoring compares, in one pass (image_shape as in build_anomaly_scorer).
    Without a feature_memory, the FEATURE_MAPS are left out; scorer.map_names names the maps."""
    inputs, score, maps, patch_count = _scorer_graph(model, draws, seed, None, image_shape,
                                                     feature_memory)
    names = [name for name in PIXEL_MAPS if name in maps]
    scorer = keras.Model(inputs, [score, *(maps[name] for name in names)],
                         name="candidate_scorer")
    scorer.images_per_batch = images_per_batch(model, patch_count, feature_memory)
    scorer.map_names = names
    return scorer


def images_per_batch(model, patch_count, feature_memory=None, most=32):
    """How many images anomaly_scores gives a scorer at once: `most`, fewer when each is cut
    into patches (K decodes of every patch), and fewer still when the distances of every
    location to every remembered feature vector would pass DISTANCE_BUDGET numbers."""
    images = max(1, most // patch_count)
    if feature_memory:
        height, width = model.encoder.inputs[0].shape[1:3]  # at most, for a strided layer
        distances = patch_count * height * width * sum(len(m) for m in feature_memory.values())
        images = max(1, min(images, DISTANCE_BUDGET // distances))
    return images


def _scorer_graph(model, draws, seed, binarize, image_shape=None, feature_memory=None):
    """(inputs, the negative ELBO with fixed draws, {name: (N, height, width) map}) as keras
    tensors, and the patches an image is cut into (1 for a whole-image model): the common part
    of the scorers above. The maps of feature_memory ({map name: memory}) join the CVAE's."""
    encoder, decoder = model.encoder, model.decoder
    model_shape = tuple(encoder.inputs[0].shape[1:])  # an image's, or a patch's
    image_shape = model_shape if image_shape is None else tuple(image_shape)
    patch_size = patch_size_of(model, image_shape)
    latent_dim = decoder.inputs[0].shape[-1]
    epsilon = np.random.default_rng(seed).standard_normal((draws, latent_dim)).astype("float32")
    given = keras.Input(image_shape, name="image")
    image = binarized(given, 0.5) if binarize == "static" else given
    patch_count = 1
    if patch_size is not None:  # a model of patches: score every patch, then reassemble
        patch_count = len(patch_positions(image_shape, patch_size))
        image = cut_into_patches(image, patch_size)  # (P * N, size, size, C)
    log_scale = model.log_scale()
    if log_scale is not None:
        # The calibrated scale as it is now, a constant of the scorer, entered as a node of its
        # graph: a tensor computed outside it would become an input of the exported ONNX file.
        log_scale = ops.mean(0.0 * given, axis=(0, 1, 2)) + ops.convert_to_numpy(log_scale)
    inputs = [given]
    labels = None
    if len(decoder.inputs) == 2:  # conditional: every draw is decoded in the image's class
        inputs.append(keras.Input(shape=(), dtype="int32", name="label"))
        labels = ops.tile(inputs[1], [patch_count])  # each patch in its image's class
    z_mean, z_log_var = encoder(image if labels is None else [image, labels])
    # N below is the number of images, or of patches (P * N) for a model of patches.
    z = reparameterize(z_mean[:, None, :], z_log_var[:, None, :], epsilon)  # (N, K, latent)
    z = ops.reshape(z, (-1, latent_dim))  # (N * K, latent), image (or patch) by image
    decoded = decoder(z if labels is None else [z, ops.repeat(labels, draws, axis=0)])
    decoded = ops.reshape(decoded, (-1, draws) + model_shape)  # (N, K, *model_shape)

    def expected_over_draws(nats):  # (N, K, h, w, c) -> (N, h, w): mean over K, sum over c
        return ops.sum(ops.mean(nats, axis=1), axis=-1)

    nats = pixel_nats(image[:, None], decoded, model.likelihood, log_scale)
    # What the decoder expects to lose at its own mean: for the Bernoulli its entropy, large
    # on a stroke's uncertain edge and 0 on sure background; for the others nearly constant.
    own = pixel_nats(decoded, decoded, model.likelihood, log_scale)
    maps = {"loss": expected_over_draws(nats), "excess_loss": expected_over_draws(nats - own),
            "dissimilarity": structural_dissimilarity(image, ops.mean(decoded, axis=1))}
    if feature_memory:
        maps.update(feature_distance_maps(image, encoder, feature_memory))
    score = ops.sum(maps["loss"], axis=(1, 2)) + kl_to_standard_normal(z_mean, z_log_var)
    if patch_count > 1:  # back to images: maps averaged where patches overlap, scores' mean
        maps = {name: average_patch_maps(value, image_shape) for name, value in maps.items()}
        score = ops.mean(ops.reshape(score, (patch_count, -1)), axis=0)
    return inputs if len(inputs) == 2 else given, score, maps, patch_count


SSIM_SIGMA = 1.5  # the Gaussian window of Wang et al.'s SSIM, in pixels
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # their constants, for values in [0, 1]


def structural_dissimilarity(x, y):
    """(N, height, width): 1 - SSIM(x, y) at each pixel, averaged over the channels, for images
    (N, height, width, channels) in [0, 1] (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13, with
    a Gaussian window; as an anomaly map: Bergmann et al. 2019, "Improving Unsupervised Defect
    Segmentation by Applying Structural Similarity to Autoencoders"). It compares local means,
    contrasts and structure instead of single pixels, so a blurry reconstruction of a texture
    costs less than a changed structure. Keras ops, so that it can be exported."""
    channels = x.shape[-1]

    def local_mean(images):  # (N, h, w, c) -> the same, each channel smoothed on its own
        planes = ops.reshape(ops.transpose(images, (0, 3, 1, 2)), (-1, *images.shape[1:3]))
        smoothed = smoothed_in_graph(planes, SSIM_SIGMA, truncate=3.5)  # scikit-image's
        return ops.transpose(ops.reshape(smoothed, (-1, channels, *images.shape[1:3])),
                             (0, 2, 3, 1))

    x, y = ops.cast(x, "float32"), ops.cast(y, "float32")
    mean_x, mean_y = local_mean(x), local_mean(y)
    variance_x = local_mean(x * x) - mean_x * mean_x
    variance_y = local_mean(y * y) - mean_y * mean_y
    covariance = local_mean(x * y) - mean_x * mean_y
    ssim = ((2 * mean_x * mean_y + SSIM_C1) * (2 * covariance + SSIM_C2)
            / ((mean_x * mean_x + mean_y * mean_y + SSIM_C1) * (variance_x + variance_y + SSIM_C2)))
    return ops.mean(1.0 - ssim, axis=-1)


def gaussian_kernel(sigma, truncate=4.0):
    """scipy.ndimage.gaussian_filter's 1-D kernel: radius int(truncate sigma + 0.5), normalized."""
    radius = int(truncate * sigma + 0.5)
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (weights / weights.sum()).astype("float32")


def smoothed_in_graph(maps, sigma, truncate=4.0):
    """(N, height, width) maps blurred by a Gaussian of sigma pixels with keras.ops, mirrored at
    the borders: smooth(maps, sigma, mode="mirror") as part of a model, so that the exported
    file smooths as the evaluation did. Two 1-D convolutions (the Gaussian is separable); ONNX
    pads by reflection ("reflect"), which is scipy's "mirror", not its default "reflect"."""
    kernel = gaussian_kernel(sigma, truncate)
    radius = len(kernel) // 2
    x = maps[..., None]
    x = ops.pad(x, [[0, 0], [radius, radius], [0, 0], [0, 0]], mode="reflect")
    x = ops.conv(x, kernel.reshape(-1, 1, 1, 1), padding="valid")
    x = ops.pad(x, [[0, 0], [0, 0], [radius, radius], [0, 0]], mode="reflect")
    x = ops.conv(x, kernel.reshape(1, -1, 1, 1), padding="valid")
    return x[..., 0]


def anomaly_scores(scorer, x, labels=None):
    """(anomaly_score (N,), pixel_loss (N, height, width)) of build_anomaly_scorer's scorer (and
    every further map of build_candidate_scorer's), in batches of the scorer's images_per_batch,
    so that K decodes of each image fit in memory. A short last batch is padded with copies of
    its first image (each image is scored on its own), so that every call has one shape and
    TensorFlow traces once."""
    batch_size = scorer.images_per_batch
    outputs = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        batch_labels = None if labels is None else labels[start:start + batch_size]
        count = len(batch)
        if count < batch_size and len(x) > batch_size:
            batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - count, axis=0)])
            if batch_labels is not None:
                batch_labels = np.concatenate(
                    [batch_labels, np.repeat(batch_labels[:1], batch_size - count)])
        results = scorer.predict_on_batch(batch if labels is None else [batch, batch_labels])
        outputs.append([np.asarray(result)[:count] for result in results])
    score, *maps = (np.concatenate(parts) for parts in zip(*outputs))
    return (score.astype(np.float64), *maps)


def smooth(maps, sigma, mode="reflect"):
    """Each (height, width) map blurred by a Gaussian of sigma pixels: a defect spans several
    pixels, noise one (scipy.ndimage's filter, axis 0 being the images). mode="mirror" is what
    the scorer's smoothed_in_graph does; "reflect", scipy's default, is what runs whose kept
    threshold predates it were scored with."""
    return ndimage.gaussian_filter(np.asarray(maps, dtype=np.float64), sigma=(0, sigma, sigma),
                                   mode=mode)


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


# ---- choosing the score on synthetic defects, and the threshold ----------------------------------
SIGMA_FACTORS = (0.5, 1.0, 2.0)  # the smoothings tried, times smoothing_sigma(image_shape)
# Each candidate map: (its label on a figure's axis, what it is, for the log and the threshold).
PIXEL_MAPS = {
    "loss": ("per-pixel loss (nats)", "the expected per-pixel loss, -E_q[log p(x_i|z)]"),
    "excess_loss": ("per-pixel excess loss (nats)",
                    "the expected per-pixel loss less the loss the decoder expects at its own "
                    "mean (for the Bernoulli: its entropy)"),
    "dissimilarity": ("per-pixel 1 - SSIM", "1 - SSIM between the image and its expected "
                                             "reconstruction (Bergmann et al. 2019)"),
    "feature_distance_1": ("distance of first-layer encoder features",
                           "the distance of the encoder's first convolution's features to the "
                           "nearest kept from normal images (feature_memory.py)"),
    "feature_distance_2": ("distance of second-layer encoder features",
                           "the same of its second convolution's features")}
IMAGE_SCORES = {"total": "sum (for the CVAE with its KL term: the negative ELBO)",
                "peak": "largest smoothed value"}


def choose_scoring(clean, defective, masks, base_sigma):
    """The scoring chosen on the validation split, never on test labels: clean = (totals (N,),
    {map name: (N, height, width)}) of held-out normal images, defective = the same of those
    images with synthetic defects (synthetic_defects.py), masks bool (N, height, width) where
    drawn.

    First the map and smoothing whose pixel AUROC (over both sets' pixels) is highest, then, for
    it, the image score (IMAGE_SCORES) whose image AUROC is highest; ties keep the first.
    Returns ({"pixel_map", "smoothing_sigma", "image_score"}, every candidate's AUROC)."""
    is_defect = np.r_[np.zeros(len(clean[0]), bool), np.ones(len(defective[0]), bool)]
    truth = np.concatenate([np.zeros_like(masks, dtype=bool), masks]).ravel()
    table, best = {"total_image_auroc": auroc(np.r_[clean[0], defective[0]], is_defect)}, None
    for name in clean[1]:
        maps = np.concatenate([clean[1][name], defective[1][name]])
        for factor in SIGMA_FACTORS:
            sigma = float(factor * base_sigma)
            smoothed = smooth(maps, sigma, mode="mirror")
            row = {"pixel_auroc": auroc(smoothed.ravel(), truth),
                   "peak_image_auroc": auroc(smoothed.max(axis=(1, 2)), is_defect)}
            table[f"{name}_sigma_{sigma:.3g}"] = row
            if best is None or row["pixel_auroc"] > best[2]["pixel_auroc"]:
                best = (name, sigma, row)
    name, sigma, row = best
    image_score = "peak" if row["peak_image_auroc"] > table["total_image_auroc"] else "total"
    return {"pixel_map": name, "smoothing_sigma": sigma, "image_score": image_score}, table


def chosen_aurocs(scoring, table):
    """{"pixel_auroc", "image_auroc"}: what the scoring choose_scoring chose reached on the
    synthetic defects (table: its every candidate's AUROC)."""
    row = table[f"{scoring['pixel_map']}_sigma_{scoring['smoothing_sigma']:.3g}"]
    image = (row["peak_image_auroc"] if scoring["image_score"] == "peak"
             else table["total_image_auroc"])
    return {"pixel_auroc": row["pixel_auroc"], "image_auroc": image}


def scored(scoring, totals, maps):
    """(image scores, smoothed map) of a detector's totals and raw maps ({name: maps}) under a
    scoring: what build_anomaly_scorer(model, scoring=scoring) computes inside the model."""
    smoothed = smooth(maps[scoring["pixel_map"]], scoring["smoothing_sigma"], mode="mirror")
    return (smoothed.max(axis=(1, 2)) if scoring["image_score"] == "peak" else
            np.asarray(totals, dtype=np.float64)), smoothed


def conformal_threshold(clean_scores, rate=FLAGGED_GOOD_RATE):
    """The image threshold from the scores of n held-out normal images: flag a score above the
    k-th largest of them, k = max(1, round(rate (n + 1))). For images exchangeable with the
    held-out ones, a good image is then flagged with probability k / (n + 1) exactly (ties
    aside), and this one threshold's own rate, which depends on the held-out draw, follows
    Beta(k, n + 1 - k) (split conformal prediction: Vovk et al. 2005; Angelopoulos & Bates
    2021, "A Gentle Introduction to Conformal Prediction", section 3.2). Returns (threshold,
    that probability, the Beta's central 90% interval)."""
    from scipy import stats

    scores = np.sort(np.asarray(clean_scores, dtype=np.float64))
    n = len(scores)
    k = max(1, int(round(rate * (n + 1))))
    interval = stats.beta(k, n + 1 - k).ppf([0.05, 0.95])
    return float(scores[n - k]), k / (n + 1), [float(interval[0]), float(interval[1])]


# ---- an inspection set --------------------------------------------------------------------------
def evaluate_inspection_set(model, data, run_dir):
    """Score an inspection set's held-out normal and test images with the CVAE and with the
    baselines, compute every metric, keep the threshold (anomaly_threshold.json) and draw
    anomaly_roc.png, anomaly_histograms.png, anomaly_overlays.png and anomaly_validation.png;
    returns metrics["anomaly"]."""
    from plumbing.atomic_files import write_atomically, write_json
    from plumbing.run_folder import ANOMALY_THRESHOLD_FILE

    feature_memory = fit_feature_memory(model, data.x_train,
                                        patch_size_of(model, data.image_shape))
    anomaly, maps = inspection_metrics(model, data, feature_memory)
    _draw_inspection_figures(data, maps, anomaly, run_dir)
    # The memory first: a kept threshold whose scoring needs it is never without it.
    write_atomically(os.path.join(run_dir, FEATURE_MEMORY_FILE),
                     lambda temporary: np.savez(temporary, **feature_memory))
    write_json(os.path.join(run_dir, ANOMALY_THRESHOLD_FILE), anomaly["threshold"])
    return anomaly


def inspection_metrics(model, data, feature_memory=None):
    """(metrics["anomaly"], the maps the figures draw) of an inspection set. For the CVAE and
    each baseline (anomaly_baselines.py) alike: the scoring chosen on the held-out normal images
    and their synthetic defects, then image- and pixel-level metrics on the test split, overall
    and per defect kind, and what the threshold flags. The CVAE's are at the top level, the
    baselines' under "baselines", the choice under "validation". data: whole images, also for a
    model of patches (which the scorer then scores patch by patch). feature_memory: that of
    fit_feature_memory, whose maps then join the CVAE's candidates."""
    from anomaly_baselines import fit_baselines
    from synthetic_defects import KINDS, draw_synthetic_defects

    synthetic, synthetic_masks, synthetic_kinds = draw_synthetic_defects(data.x_val)
    scorer = build_candidate_scorer(model, image_shape=data.image_shape,
                                    feature_memory=feature_memory)
    patch_size = patch_size_of(model, data.image_shape)  # its baselines are fitted on patches too

    def cvae(x):
        score, *maps = anomaly_scores(scorer, x)
        return score, dict(zip(scorer.map_names, maps))

    detectors = {"cvae": cvae}
    for name, baseline in fit_baselines(data.x_train, patch_size).items():
        detectors[name] = lambda x, baseline=baseline: _totals_and_maps(baseline.maps(x))
    base_sigma = smoothing_sigma(data.image_shape)
    results, validation, chosen, figure_maps = {}, {}, {}, {}
    for name, detector in detectors.items():
        clean, test = detector(data.x_val), detector(data.x_test)
        defective = detector(synthetic)
        scoring, validation[name] = choose_scoring(clean, defective, synthetic_masks, base_sigma)
        chosen[name] = chosen_aurocs(scoring, validation[name])
        results[name], figure_maps[name] = _test_metrics(data, scoring, clean, test)
        if name == "cvae":
            figure_maps["synthetic"] = (synthetic, scored(scoring, *defective), synthetic_masks,
                                        synthetic_kinds)
    anomaly = results.pop("cvae")
    anomaly["baselines"] = results
    anomaly["validation"] = {
        "images": len(data.x_val), "kinds": list(KINDS), "candidates": validation,
        "chosen": chosen,
        "how": "the held-out normal images, and the same images with one synthetic defect each "
               "(synthetic_defects.py), never the test split: the smoothing with the best pixel "
               "AUROC, then the image score with the best image AUROC"}
    draws = {"draws": ANOMALY_DRAWS, "seed": 0}
    anomaly["threshold"].update(draws)
    scoring = anomaly["scoring"]
    anomaly["threshold"]["score"] = (
        f"anomaly_score: the {IMAGE_SCORES[scoring['image_score']]} of pixel_loss; pixel_loss: "
        f"{PIXEL_MAPS[scoring['pixel_map']][1]}, {ANOMALY_DRAWS} fixed draws of z "
        f"(anomaly.build_anomaly_scorer), smoothed at sigma="
        f"{scoring['smoothing_sigma']:.3g} pixels")
    return anomaly, figure_maps


def _totals_and_maps(maps):
    return maps.sum(axis=(1, 2)), {"squared_residual": maps}


def _test_metrics(data, scoring, clean, test):
    """One detector's metrics["anomaly"] entry under its chosen scoring, and its smoothed maps
    and scores of the test images (for the figures)."""
    val_scores, val_maps = scored(scoring, *clean)
    test_scores, test_maps = scored(scoring, *test)
    is_defect = data.y_test > 0
    result = detection_metrics(test_scores, test_maps, is_defect, data.test_masks, data.has_mask)
    image_threshold, expected, interval = conformal_threshold(val_scores)
    flagged = test_scores > image_threshold
    result["per_defect"] = {}
    for label, kind in enumerate(data.class_names[1:], start=1):
        keep = (data.y_test == 0) | (data.y_test == label)  # the good images and this kind
        result["per_defect"][kind] = detection_metrics(
            test_scores[keep], test_maps[keep], is_defect[keep], data.test_masks[keep],
            data.has_mask[keep])
        result["per_defect"][kind]["flagged"] = float(np.mean(flagged[data.y_test == label]))
    good = int(np.sum(~is_defect))
    result.update(
        scoring=scoring,
        threshold={
            "scoring": scoring, "image_threshold": image_threshold,
            "pixel_threshold": float(np.percentile(val_maps, PIXEL_PERCENTILE)),
            "smoothing_sigma": scoring["smoothing_sigma"], "smoothed_in_scorer": True,
            "expected_flagged_good": expected, "flagged_good_interval_90": interval,
            "rule": f"above the anomaly score ranked {int(round(expected * (len(val_scores) + 1)))}"
                    f" from the top among the {len(val_scores)} held-out normal images (flags "
                    f"{100 * expected:.2f}% of good images on average); for pixels, the "
                    f"{PIXEL_PERCENTILE:g}th percentile of their smoothed per-pixel loss"},
        flagged_good=float(np.mean(flagged[~is_defect])), flagged_good_count=int(
            np.sum(flagged[~is_defect])), good_test_images=good,
        flagged_defective=float(np.mean(flagged[is_defect])),
        images_without_mask=int(np.sum(~data.has_mask)))
    return result, {"test": test_maps, "test_scores": test_scores, "val": val_maps}


def _draw_inspection_figures(data, maps, anomaly, run_dir):
    import plotting

    model_maps = maps["cvae"]
    scores, is_defect = model_maps["test_scores"], data.y_test > 0
    curves = {"all defects": (*roc_curve(scores, is_defect), anomaly["image_auroc"])}
    for label, kind in enumerate(data.class_names[1:], start=1):
        keep = (data.y_test == 0) | (data.y_test == label)
        curves[kind] = (*roc_curve(scores[keep], is_defect[keep]),
                        anomaly["per_defect"][kind]["image_auroc"])
    for name, result in anomaly["baselines"].items():
        curves[f"baseline {name}, all"] = (*roc_curve(maps[name]["test_scores"], is_defect),
                                           result["image_auroc"])
    plotting.plot_anomaly_rocs(curves, os.path.join(run_dir, "anomaly_roc.png"))
    threshold = anomaly["threshold"]
    scoring = anomaly["scoring"]
    map_name = PIXEL_MAPS[scoring["pixel_map"]][0]
    score_name = ("the negative ELBO (nats)" if scoring["image_score"] == "total" else
                  f"the {IMAGE_SCORES['peak']} of the {map_name}")
    plotting.plot_anomaly_histograms(
        scores[~is_defect], {kind: scores[data.y_test == label]
                             for label, kind in enumerate(data.class_names) if label > 0},
        threshold["image_threshold"], os.path.join(run_dir, "anomaly_histograms.png"),
        score_name)
    rows = []
    for label, kind in enumerate(data.class_names):
        chosen = np.flatnonzero(data.y_test == label)
        chosen = chosen[np.argsort(-scores[chosen], kind="mergesort")]
        # The highest-scored good images; of a defect, its three most and two least anomalous.
        chosen = chosen[:5] if label == 0 else np.r_[chosen[:3], chosen[-2:][::-1]][:len(chosen)]
        name = "good, highest" if label == 0 else f"{kind}: most, least"
        rows.append((name, data.x_test[chosen], model_maps["test"][chosen],
                     data.test_masks[chosen], scores[chosen]))
    plotting.plot_anomaly_overlays(rows, threshold["pixel_threshold"],
                                   os.path.join(run_dir, "anomaly_overlays.png"))
    # What the scoring was chosen on: the first five synthetic defects of each kind.
    images, (synthetic_scores, synthetic_maps), masks, kinds = maps["synthetic"]
    kinds = np.asarray(kinds)
    rows = [(f"synthetic {kind}", images[chosen], synthetic_maps[chosen], masks[chosen],
             synthetic_scores[chosen])
            for kind in dict.fromkeys(kinds) for chosen in [np.flatnonzero(kinds == kind)[:5]]]
    plotting.plot_anomaly_overlays(
        rows, threshold["pixel_threshold"], os.path.join(run_dir, "anomaly_validation.png"),
        title="Held-out normal images with synthetic defects, which chose the scoring")
