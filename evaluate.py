"""Evaluate a trained run on its test split: compute every number, then draw every figure, then
write test_scores.npy (validation_scores.npy too, with a validation split) and metrics.json into
the run folder.

    python evaluate.py                 # the run in outputs/
    python evaluate.py RUN_DIR --iwae_samples=256 --iwae_images=2000

train.py calls evaluate_run() at its end, and this command calls it on a finished run, rebuilt
from RUN_DIR/config.json and its weights (plumbing/run_folder.py) with its test split loaded
again from the same source and settings, so both write the same files. Importing this module
runs nothing and loads no Keras: measures, plotting and the run folder are imported inside the
functions, once the command line has been checked.
"""

import os
import statistics
import sys
import time

import numpy as np

from plumbing.command_line import (
    check_rules,
    parse_overrides,
    quiet_tensorflow,
    run_command,
    split_run_dir,
)

# How much evaluation to do; the defaults keep a full evaluation to a couple of minutes on two
# CPU cores. evaluate.py takes them as --name=value.
EVALUATION_DEFAULTS = {
    "iwae_samples": 64,  # K, importance samples per image for the log-likelihood estimate
    "iwae_images": 1000,  # test images for that estimate (it costs K decoder passes per image)
    "manifold_size": 20,  # the manifold figure is a manifold_size x manifold_size grid
    "eval_seed": 0,  # seeds the z samples of the evaluation
}
INTERPOLATION_STEPS = 10
# A short run gets a smaller evaluation, so that its first pictures come in a couple of minutes:
# the importance-weighted estimate uses one test image per this many images trained (at least
# MIN_IWAE_IMAGES), and the per-epoch test loss at least MIN_MONITOR_IMAGES test images and at
# most a sixth of an epoch's images. The full default run (600,000 images trained) gets the full
# evaluation. The final negative ELBO always uses every test image.
IMAGES_TRAINED_PER_IWAE_IMAGE = 500
MIN_IWAE_IMAGES = 100
MIN_MONITOR_IMAGES = 1000
# What each evaluation setting may be: (name, test, what is allowed).
EVALUATION_RULES = (
    ("iwae_samples", lambda value: value >= 1, "at least 1"),
    ("iwae_images", lambda value: value >= 1, "at least 1"),
    ("manifold_size", lambda value: value >= 1, "at least 1"),
    ("eval_seed", lambda value: 0 <= value < 2**32, "in 0 .. 2**32 - 1"),
)


def main(argv):
    run_dir, argv = split_run_dir(argv, "python evaluate.py RUN_DIR", default="outputs")
    settings = parse_overrides(EVALUATION_DEFAULTS, argv, {}, source=__file__)
    check_rules(settings, EVALUATION_RULES)
    quiet_tensorflow()
    from data import load_dataset_of_run
    from saved_run import load_run

    config, model = load_run(run_dir)
    data = load_dataset_of_run(config, run_dir)
    evaluate_run(model, config, data, run_dir, settings)
    print(f"Figures and metrics.json written to {run_dir}/")
    return 0


def evaluate_run(model, config, data, run_dir, settings=None):
    """Compute every number of a trained model on data's test split, then draw every figure,
    then write test_scores.npy (and validation_scores.npy, with a validation split) and
    metrics.json; returns the metrics."""
    from plumbing import run_folder
    from plumbing.atomic_files import write_json

    settings = {**EVALUATION_DEFAULTS, **(settings or {})}
    started = time.perf_counter()
    # One generator, drawn in a fixed order (each test image's z, then the prior samples of the
    # figures), so that a seed always gives the same numbers and figures.
    rng = np.random.default_rng(settings["eval_seed"])
    metrics, scores, z_mean = test_metrics(model, config, data, settings, rng)
    if data.x_val is not None:
        validation, validation_scores = validation_metrics(model, data, settings)
        metrics.update(validation)
    metrics.update(training_record(os.path.join(run_dir, run_folder.HISTORY_FILE)))
    figures = figure_images(model, config, data, z_mean, metrics, settings, rng)
    draw_figures(figures, data, z_mean, scores, metrics, history=metrics["per_epoch"],
                 run_dir=run_dir)
    inspected = data if data.whole is None else data.whole  # scored whole, patch by patch
    if inspected.inspection:  # good and defective test images, with masks (anomaly.py)
        import anomaly

        metrics["anomaly"] = anomaly.evaluate_inspection_set(model, inspected, run_dir)
    write_image_scores(os.path.join(run_dir, run_folder.SCORES_FILE), scores, data.whole,
                       "x_test")
    if data.x_val is not None:
        # Each validation image's score too, so that two runs' settings can be compared image
        # by image on the split they are chosen on (benchmarks/paired_runs.py --split=validation).
        write_image_scores(os.path.join(run_dir, run_folder.VALIDATION_SCORES_FILE),
                           validation_scores, data.whole, "x_val")
    metrics["eval_seed"] = settings["eval_seed"]  # which z draws test_scores.npy used
    metrics["evaluation_seconds"] = time.perf_counter() - started
    write_json(os.path.join(run_dir, run_folder.METRICS_FILE), metrics)
    print_metrics(metrics)
    return metrics


def write_image_scores(path, scores, whole, split):
    """Save one score per image of split ("x_test", "x_val") as float32 .npy: a patch model's
    scores (whole: the unpatched data) become each image's patches' mean, as score.py's."""
    from plumbing.atomic_files import write_atomically

    if whole is not None:
        scores = scores.reshape(len(getattr(whole, split)), -1).mean(axis=1)
    write_atomically(path, lambda temporary: np.save(temporary, scores.astype("float32")))


# ---- the numbers ---------------------------------------------------------------------------------
def test_metrics(model, config, data, settings, rng):
    """(metrics, each test image's negative ELBO, each one's z_mean)."""
    import measures

    x_test, y_test = data.x_test, data.y_test
    # A conditional model is given each image's class: it scores -log p(x|y), not -log p(x).
    labels = y_test if model.conditional else None
    # The negative ELBO of every test image: encode once, one z sample, decode once.
    z_mean, z_log_var = measures.encode(model, x_test, labels=labels)
    reconstruction, kl = measures.negative_elbo_terms_from_encoding(
        model, x_test, z_mean, z_log_var, rng, labels=labels)
    scores = reconstruction + kl
    metrics = measures.summarize_negative_elbo(reconstruction, kl)
    metrics["likelihood"] = model.likelihood
    metrics["test_bits_per_dim"] = measures.bits_per_dim(metrics["test_negative_elbo"],
                                                         data.image_shape, model.likelihood)
    metrics["iwae"] = importance_weighted_estimates(model, x_test, scores, settings, labels)
    metrics.update(measures.latent_activity(z_mean, z_log_var))
    metrics["conditional"] = bool(model.conditional)  # the scores are then -log p(x|y)
    if config.get("holdout_class") is not None:
        # Anomaly detection: how well the score tells the held-out class from the others.
        import anomaly

        holdout = data.class_index(config["holdout_class"])
        metrics["holdout_class"] = data.caption(holdout)
        metrics["auroc"] = anomaly.auroc(scores, y_test == holdout)
    return metrics, scores, z_mean


def validation_metrics(model, data, settings):
    """(metrics, each validation image's negative ELBO): the negative ELBO (± standard error) of
    the validation split, the number that settings are chosen on; its own noise (eval_seed's
    second stream, drawn in the order of the validation images), so the test numbers stay as
    they are."""
    import measures

    labels = data.y_val if model.conditional else None
    z_mean, z_log_var = measures.encode(model, data.x_val, labels=labels)
    reconstruction, kl = measures.negative_elbo_terms_from_encoding(
        model, data.x_val, z_mean, z_log_var, np.random.default_rng([settings["eval_seed"], 0, 1]),
        labels=labels)
    metrics = measures.summarize_negative_elbo(reconstruction, kl, prefix="validation_")
    metrics["validation_bits_per_dim"] = measures.bits_per_dim(
        metrics["validation_negative_elbo"], data.image_shape, model.likelihood)
    return metrics, reconstruction + kl


def scaled_to_run(images_per_epoch, epochs, test_images, monitored_split=None):
    """(evaluation settings, per-epoch monitoring images, note) for a run of this size; the note
    says what was scaled down and how to ask for the full evaluation (None when nothing was).
    monitored_split: (its size, its name), the images the per-epoch loss measures; None: the
    test images."""
    settings = dict(EVALUATION_DEFAULTS)
    settings["iwae_images"] = min(settings["iwae_images"], max(
        MIN_IWAE_IMAGES, images_per_epoch * epochs // IMAGES_TRAINED_PER_IWAE_IMAGE))
    monitored_images, split = monitored_split or (test_images, "test")
    monitor = min(monitored_images, max(MIN_MONITOR_IMAGES, images_per_epoch // 6))
    scaled = []
    if monitor < monitored_images:
        scaled.append(f"the per-epoch {split} loss (val_*) is measured on the first {monitor:,} "
                      f"of the {monitored_images:,} {split} images")
    if settings["iwae_images"] < min(EVALUATION_DEFAULTS["iwae_images"], test_images):
        scaled.append(f"the importance-weighted estimate uses {settings['iwae_images']:,} test "
                      f"images instead of {EVALUATION_DEFAULTS['iwae_images']:,}")
    note = None
    if scaled:
        note = (f"A short run gets a short evaluation: {'; '.join(scaled)}. The final negative "
                f"ELBO uses every test image. For the full evaluation afterwards, run "
                f"`python evaluate.py OUT_DIR --iwae_images={EVALUATION_DEFAULTS['iwae_images']}`.")
    return settings, monitor, note


def importance_weighted_estimates(model, x_test, scores, settings, labels=None):
    """log p(x) bounds at several K on the first iwae_images test images (Burda et al. 2015)."""
    import measures

    n_iwae = min(settings["iwae_images"], len(x_test))
    log_weights = measures.importance_log_weights(
        model, x_test[:n_iwae], settings["iwae_samples"], seed=settings["eval_seed"],
        labels=None if labels is None else labels[:n_iwae])
    ks = sorted({1, *[k for k in (8, 64, 256, 1024) if k < settings["iwae_samples"]],
                 settings["iwae_samples"]})
    iwae = {"images": n_iwae, "k": ks, "log_likelihood": [], "stderr": []}
    for k in ks:
        mean, stderr = measures.mean_and_standard_error(
            measures.importance_weighted_bound(log_weights, k))
        iwae["log_likelihood"].append(mean)
        iwae["stderr"].append(stderr)
    iwae["elbo_same_images"] = -float(np.mean(scores[:n_iwae]))
    return iwae


def training_record(history_path):
    """The run's history (per_epoch) and its mean epoch time, for metrics.json."""
    from plumbing.run_folder import read_history

    history = read_history(history_path)
    seconds = [row["epoch_seconds"] for row in history if "epoch_seconds" in row]
    return {"seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
            "per_epoch": history}


# ---- the figures ---------------------------------------------------------------------------------
def figure_images(model, config, data, z_mean, metrics, settings, rng):
    """Every image the figures show, decoded in a few batched calls: a dict of arrays."""
    import measures
    from plumbing.run_folder import recorded_setting

    latent_dim = z_mean.shape[1]
    dims = measures.most_informative_dims(metrics["kl_per_dimension"])
    conditional = model.conditional
    shown_x, shown_captions, shown_labels = data.shown_images(seed=recorded_setting(config, "seed"))
    shown_labels = shown_labels if conditional else None
    shown_mean, _ = measures.encode(model, shown_x, labels=shown_labels)
    quantiles, grid = manifold_grid(settings["manifold_size"], latent_dim, dims)
    # A conditional model draws the manifold of the first class, and ten samples of each of the
    # first ten classes, one class per row.
    manifold = measures.decode(model, grid, labels=np.zeros(len(grid), "int32")
                               if conditional else None)
    sample_labels = (np.arange(100) // 10) % len(data.class_names) if conditional else None
    samples = measures.decode(model, rng.standard_normal((100, latent_dim)).astype("float32"),
                              labels=sample_labels)
    figures = {"dims": dims, "shown_x": shown_x, "shown_captions": shown_captions,
               "reconstructions": measures.decode(model, shown_mean, labels=shown_labels),
               "manifold": manifold, "quantiles": quantiles, "samples": samples,
               "pairs": [(a, a + 1) for a in range(0, len(shown_x) - 1, 2)]}
    figures["interpolations"] = None
    if figures["pairs"]:  # a test split of one class shows one image: nothing to join
        figures["interpolations"] = interpolations(model, shown_mean, shown_labels,
                                                   figures["pairs"], data.image_shape)
    return figures


def interpolations(model, shown_mean, shown_labels, pairs, image_shape):
    """The straight line between the codes of each pair of shown images, decoded:
    (pairs, INTERPOLATION_STEPS, *image_shape). A conditional path keeps its start's class."""
    import measures

    path_z = np.concatenate([measures.straight_line(shown_mean[a], shown_mean[b],
                                                    INTERPOLATION_STEPS) for a, b in pairs])
    path_labels = None if shown_labels is None else np.repeat(
        shown_labels[[a for a, _ in pairs]], INTERPOLATION_STEPS)
    return measures.decode(model, path_z, labels=path_labels).reshape(
        (len(pairs), INTERPOLATION_STEPS) + tuple(image_shape))


def draw_figures(figures, data, z_mean, scores, metrics, history, run_dir):
    """Draw every figure of the evaluation from arrays already computed."""
    import plotting
    from plumbing.run_folder import RECONSTRUCTIONS_FILE

    def path(name):
        return os.path.join(run_dir, name)

    dims, captions, conditional = figures["dims"], figures["shown_captions"], metrics["conditional"]
    kind = "Test images" if captions is None else "One test image per class"
    plotting.plot_reconstructions(
        figures["shown_x"], figures["reconstructions"], captions, path(RECONSTRUCTIONS_FILE),
        title=f"{kind} (top) and its reconstruction from z_mean (bottom)")
    dims_note = ("" if z_mean.shape[1] <= 2 else
                 f" (dimensions {dims[0]} and {dims[1]}: the two with the largest KL)")
    plotting.plot_latent_space(z_mean, data.y_test, data.class_names, dims,
                               path("latent_space.png"),
                               f"Posterior means of the {len(z_mean)} test images{dims_note}")
    plotting.plot_manifold(figures["manifold"], figures["quantiles"], dims, path("manifold.png"))
    plotting.plot_image_grid(figures["samples"], 10, 10, path("samples.png"),
                             f"100 images decoded from z ~ N(0, I) ({metrics['likelihood']} "
                             f"means, not draws)" + (
                                 ", one class per row: " + ", ".join(data.class_names[:10])
                                 if conditional else ""))
    if figures["interpolations"] is not None:
        names = captions or [f"image {i + 1}" for i in range(len(figures["shown_x"]))]
        plotting.plot_interpolations(figures["interpolations"],
                                     [f"{names[a]} to {names[b]}" for a, b in figures["pairs"]],
                                     path("interpolation.png"))
    if history:
        plotting.plot_learning_curves(history, path("learning_curves.png"),
                                      "test" if data.x_val is None else "validation")
    test_captions = None if data.y_test is None else [data.caption(y) for y in data.y_test]
    plotting.plot_typical_and_atypical(data.x_test, scores, test_captions, path("anomalies.png"))
    is_held_out = None
    if "holdout_class" in metrics:
        is_held_out = data.y_test == data.class_names.index(metrics["holdout_class"])
    plotting.plot_score_histogram(scores, is_held_out, path("score_histogram.png"),
                                  metrics.get("holdout_class"))
    if is_held_out is not None:
        from anomaly import roc_curve

        fpr, tpr = roc_curve(scores, is_held_out)
        plotting.plot_roc(fpr, tpr, metrics["auroc"], metrics["holdout_class"], path("roc.png"))


def manifold_grid(n, latent_dim, dims):
    """Normal quantiles at evenly spaced probabilities, and the n*n latent codes of the grid.

    As in Kingma & Welling's figure 4, the prior's probability mass, not z itself, is spaced
    evenly. Row-major; the top row has the highest z[dims[1]], as on a plot's y axis; the other
    latent dimensions stay at 0, the prior's mode.
    """
    quantiles = np.array([statistics.NormalDist().inv_cdf(p)
                          for p in np.linspace(0.5 / n, 1 - 0.5 / n, n)])
    grid = np.zeros((n, n, latent_dim), "float32")
    grid[:, :, dims[0]] = quantiles[None, :]
    grid[:, :, dims[1]] = quantiles[::-1, None]
    return quantiles, grid.reshape(n * n, latent_dim)


def print_metrics(metrics):
    print(f"Test negative ELBO: {metrics['test_negative_elbo']:.2f} "
          f"± {metrics['test_negative_elbo_stderr']:.2f} nats "
          f"(reconstruction {metrics['test_reconstruction']:.2f} + KL {metrics['test_kl']:.2f}), "
          f"{metrics['test_bits_per_dim']:.4f} bits per dimension "
          f"({metrics.get('likelihood', 'bernoulli')} likelihood)")
    if "validation_negative_elbo" in metrics:
        print(f"Validation negative ELBO: {metrics['validation_negative_elbo']:.2f} "
              f"± {metrics['validation_negative_elbo_stderr']:.2f} nats, "
              f"{metrics['validation_bits_per_dim']:.4f} bits per dimension")
    iwae = metrics["iwae"]
    print(f"On the first {iwae['images']} test images: ELBO {iwae['elbo_same_images']:.2f}; "
          f"importance-weighted log p(x{'|y' if metrics.get('conditional') else ''}) "
          f"estimate: " + ", ".join(
              f"K={k}: {value:.2f} ± {se:.2f}"
              for k, value, se in zip(iwae["k"], iwae["log_likelihood"], iwae["stderr"])))
    print(f"Active latent units: {metrics['active_units']} of "
          f"{len(metrics['kl_per_dimension'])}; KL per dimension: "
          + ", ".join(f"{value:.2f}" for value in metrics["kl_per_dimension"]))
    if metrics.get("posterior_collapsed"):
        likelihood = metrics.get("likelihood", "bernoulli")
        to_try = "more epochs or training images, a larger --latent_dim, or --kl_warmup_steps"
        if likelihood == "bernoulli":
            to_try = (f"{to_try}; for grey-level images such as photographs, "
                      f"--likelihood=discretized_logistic (a Bernoulli barely rewards their "
                      f"detail)")
        print(f"warning: the posterior has collapsed: {sum(metrics['kl_per_dimension']):.2f} "
              f"nats of KL in all, so the decoder makes every image from next to nothing of its "
              f"code, and the reconstructions are near one average image. Try {to_try}; "
              f"docs/likelihoods.md says what was measured.", file=sys.stderr)
    if "auroc" in metrics:
        print(f"AUROC for the held-out class {metrics['holdout_class']}: {metrics['auroc']:.3f}")
    if "anomaly" in metrics:
        print_anomaly_metrics(metrics["anomaly"])


def print_anomaly_metrics(anomaly):
    """The inspection set's result, the CVAE beside the baselines on the same images, and what
    the kept threshold flags against what it promises."""
    def pixel(result):
        return (f", pixel AUROC {result['pixel_auroc']:.3f}, AUPRO {result['pixel_aupro']:.3f}"
                if "pixel_auroc" in result else "")

    scoring, threshold = anomaly["scoring"], anomaly["threshold"]
    print(f"Defects: image AUROC {anomaly['image_auroc']:.3f}, AUPR "
          f"{anomaly['image_aupr']:.3f}{pixel(anomaly)} (pixel map: {scoring['pixel_map']}, "
          f"smoothed at sigma={scoring['smoothing_sigma']:.3g}; image score: its "
          f"{scoring['image_score']}; chosen on synthetic defects drawn on the held-out images).")
    for name, result in anomaly["baselines"].items():
        print(f"  baseline {name}: image AUROC {result['image_auroc']:.3f}{pixel(result)} "
              f"(its {result['scoring']['image_score']}, chosen the same way)")
    chosen = anomaly["validation"]["chosen"]["cvae"]
    print(f"On the synthetic defects it was chosen on (no test label used): pixel AUROC "
          f"{chosen['pixel_auroc']:.3f}, image AUROC {chosen['image_auroc']:.3f}. Compare runs "
          f"by these to choose their settings, such as latent_dim and epochs "
          f"(docs/anomaly-detection.md).")
    low, high = threshold["flagged_good_interval_90"]
    print(f"At the threshold kept with the run ({threshold['image_threshold']:.4g}, chosen on "
          f"the held-out normal images to flag {100 * threshold['expected_flagged_good']:.1f}% "
          f"of good images, this one between {100 * low:.1f}% and {100 * high:.1f}% with 90% "
          f"probability) {100 * anomaly['flagged_defective']:.1f}% of the defective and "
          f"{100 * anomaly['flagged_good']:.1f}% ({anomaly['flagged_good_count']} of "
          f"{anomaly['good_test_images']}) of the good test images are flagged.")


if __name__ == "__main__":
    run_command(main)
