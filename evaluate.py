"""Evaluate a finished run again, without retraining: metrics.json and every figure.

    python evaluate.py                 # the run in outputs/
    python evaluate.py RUN_DIR --iwae_samples=256 --iwae_images=2000

The model is rebuilt from RUN_DIR/config.json and its weights are loaded from
RUN_DIR/cvae.weights.h5 (an HDF5 file of arrays: loading it runs no code). train.py calls
evaluate_run() at its end, so both write the same files.
"""

import os
import statistics
import sys
import time

# How much evaluation to do; the defaults keep a full evaluation to a couple of minutes on two
# CPU cores. Override them as --name=value after the run folder.
EVALUATION_DEFAULTS = {
    "iwae_samples": 64,  # K, importance samples per image for the log-likelihood estimate
    "iwae_images": 1000,  # test images for that estimate (it costs K decoder passes per image)
    "manifold_size": 20,  # the manifold figure is a manifold_size x manifold_size grid
    "eval_seed": 0,  # seeds the z samples of the evaluation
}


class RunError(Exception):
    """A run folder cannot be evaluated; the message says why and what to do."""


def load_run(run_dir):
    """(config, model) rebuilt from a run folder's config.json and weights."""
    import run_files
    from cvae import IMAGE_SHAPE, build_cvae

    config_path = os.path.join(run_dir, run_files.CONFIG_FILE)
    weights_path = os.path.join(run_dir, run_files.WEIGHTS_FILE)
    if not os.path.isfile(config_path):
        raise RunError(f"{config_path!r} does not exist: {run_dir!r} is not a run folder. Give "
                       f"the out_dir of a run of train.py.")
    try:
        config = run_files.read_json(config_path)
        latent_dim = int(config["latent_dim"])
        assert latent_dim > 0
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise RunError(f"{config_path!r} is not a valid run configuration ({error}). It may have "
                       f"been edited by hand; train again or restore it.") from None
    if not os.path.isfile(weights_path):
        raise RunError(f"{weights_path!r} does not exist: the run in {run_dir!r} has not finished. "
                       f"Run train.py with the same out_dir again to finish (resume) it.")
    model = build_cvae(latent_dim, IMAGE_SHAPE)
    try:
        model.load_weights(weights_path)
    except Exception as error:  # h5py and Keras raise many kinds for a bad or foreign file
        raise RunError(
            f"The weights in {weights_path!r} do not fit the model that {config_path!r} "
            f"describes (latent_dim={latent_dim}), or the file is damaged: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        ) from None
    if not run_files.training_complete(run_dir, config.get("epochs", 0)):
        done = len(run_files.read_history(os.path.join(run_dir, run_files.HISTORY_FILE)))
        print(f"warning: the run in {run_dir!r} is unfinished ({done} of {config.get('epochs')} "
              f"epochs): these are the numbers of an interrupted model. Run train.py with the "
              f"same out_dir again to finish it.", file=sys.stderr)
    return config, model


def check_settings(settings):
    from configurator import require

    for name in ("iwae_samples", "iwae_images", "manifold_size"):
        require(settings[name] >= 1, f"{name} must be at least 1, not {settings[name]}.")
    require(0 <= settings["eval_seed"] < 2**32,
            f"eval_seed must be in 0 .. 2**32 - 1, not {settings['eval_seed']}.")


def evaluate_run(model, config, x_test, y_test, run_dir, settings=None):
    """Compute every metric and draw every figure of a trained model into run_dir."""
    import numpy as np

    import evaluation
    import plotting
    import run_files
    from data import get_images_1_to_10

    settings = {**EVALUATION_DEFAULTS, **(settings or {})}
    started = time.perf_counter()
    rng = np.random.default_rng(settings["eval_seed"])
    path = lambda name: os.path.join(run_dir, name)  # noqa: E731

    # The negative ELBO of every test image: encode once, one z sample, decode once.
    z_mean, z_log_var = evaluation.encode(model, x_test)
    reconstruction, kl = evaluation.elbo_from_encoding(model, x_test, z_mean, z_log_var, rng)
    scores = reconstruction + kl
    metrics = evaluation.summarize_negative_elbo(reconstruction, kl)

    # Importance-weighted log-likelihood on the first iwae_images test images.
    n_iwae = min(settings["iwae_images"], len(x_test))
    log_weights = evaluation.importance_log_weights(model, x_test[:n_iwae],
                                                    settings["iwae_samples"],
                                                    seed=settings["eval_seed"])
    ks = sorted({1, *[k for k in (8, 64, 256, 1024) if k < settings["iwae_samples"]],
                 settings["iwae_samples"]})
    iwae = {"images": n_iwae, "k": ks, "log_likelihood": [], "stderr": []}
    for k in ks:
        mean, stderr = evaluation.mean_and_standard_error(
            evaluation.importance_weighted_bound(log_weights, k))
        iwae["log_likelihood"].append(mean)
        iwae["stderr"].append(stderr)
    iwae["elbo_same_images"] = -float(np.mean(scores[:n_iwae]))
    metrics["iwae"] = iwae
    metrics.update(evaluation.latent_activity(z_mean, z_log_var))

    # Anomaly detection: how well the score tells the held-out digit from the others.
    holdout = config.get("holdout_digit")
    if holdout is not None:
        is_held_out = y_test == holdout
        metrics["holdout_digit"] = holdout
        metrics["auroc"] = evaluation.auroc(scores, is_held_out)
        fpr, tpr = evaluation.roc_curve(scores, is_held_out)
        plotting.plot_roc(fpr, tpr, metrics["auroc"], holdout, path("roc.png"))

    history = run_files.read_history(path(run_files.HISTORY_FILE))
    seconds = [row["epoch_seconds"] for row in history if "epoch_seconds" in row]
    metrics["seconds_per_epoch"] = float(np.mean(seconds)) if seconds else None
    metrics["per_epoch"] = history

    # Figures. For latent_dim > 2 the two dimensions with the largest KL are shown.
    latent_dim = z_mean.shape[1]
    if latent_dim <= 2:
        dims = [0, min(1, latent_dim - 1)]
    else:
        dims = [int(d) for d in np.argsort(metrics["kl_per_dimension"])[::-1][:2]]
    shown_x, shown_y = get_images_1_to_10(x_test, y_test, seed=config.get("seed", 0))
    plotting.plot_reconstructions(
        shown_x, model.predict(shown_x, verbose=0), shown_y, path(run_files.RECONSTRUCTIONS_FILE),
        title="Test digits (top) and their reconstructions from z_mean (bottom)")
    dims_note = ("" if latent_dim <= 2 else
                 f" (dimensions {dims[0]} and {dims[1]}: the two with the largest KL)")
    plotting.plot_latent_space(z_mean, y_test, dims, path("latent_space.png"),
                               f"Posterior means of the {len(x_test)} test images{dims_note}")
    quantiles, grid = manifold_grid(settings["manifold_size"], latent_dim, dims)
    plotting.plot_manifold(evaluation.decode(model, grid), quantiles, dims, path("manifold.png"))
    prior_z = rng.standard_normal((100, latent_dim)).astype("float32")
    plotting.plot_image_grid(evaluation.decode(model, prior_z), 10, 10, path("samples.png"),
                             "100 images decoded from z ~ N(0, I) (Bernoulli means)")
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    shown_mean, _ = evaluation.encode(model, shown_x)
    steps = np.linspace(0.0, 1.0, 10)[:, None]
    path_z = np.concatenate([(1 - steps) * shown_mean[a] + steps * shown_mean[b]
                             for a, b in pairs]).astype("float32")
    interpolated = evaluation.decode(model, path_z).reshape((len(pairs), 10) + x_test.shape[1:])
    plotting.plot_interpolations(interpolated, pairs, path("interpolation.png"))
    if history:
        plotting.plot_learning_curves(history, path("learning_curves.png"))
    plotting.plot_typical_and_atypical(x_test, scores, y_test, path("anomalies.png"))
    plotting.plot_score_histogram(scores, y_test, path("score_histogram.png"), holdout)
    run_files.write_atomically(path(run_files.SCORES_FILE),
                               lambda temporary: np.save(temporary, scores.astype("float32")))

    metrics["evaluation_seconds"] = time.perf_counter() - started
    run_files.write_json(path(run_files.METRICS_FILE), metrics)
    print_metrics(metrics)
    return metrics


def manifold_grid(n, latent_dim, dims):
    """Normal quantiles at evenly spaced probabilities, and the n*n latent codes of the grid.

    As in Kingma & Welling's figure 4, the prior's probability mass, not z itself, is spaced
    evenly. Row-major; the top row has the highest z[dims[1]], as on a plot's y axis; the other
    latent dimensions stay at 0, the prior's mode.
    """
    import numpy as np

    quantiles = np.array([statistics.NormalDist().inv_cdf(p)
                          for p in np.linspace(0.5 / n, 1 - 0.5 / n, n)])
    grid = np.zeros((n, n, latent_dim), "float32")
    grid[:, :, dims[0]] = quantiles[None, :]
    grid[:, :, dims[1]] = quantiles[::-1, None]
    return quantiles, grid.reshape(n * n, latent_dim)


def print_metrics(metrics):
    print(f"Test negative ELBO: {metrics['test_negative_elbo']:.2f} "
          f"± {metrics['test_negative_elbo_stderr']:.2f} nats "
          f"(reconstruction {metrics['test_reconstruction']:.2f} + KL {metrics['test_kl']:.2f})")
    iwae = metrics["iwae"]
    print(f"On the first {iwae['images']} test images: ELBO {iwae['elbo_same_images']:.2f}; "
          f"importance-weighted log p(x) estimate: " + ", ".join(
              f"K={k}: {value:.2f} ± {se:.2f}"
              for k, value, se in zip(iwae["k"], iwae["log_likelihood"], iwae["stderr"])))
    print(f"Active latent units: {metrics['active_units']} of "
          f"{len(metrics['kl_per_dimension'])}; KL per dimension: "
          + ", ".join(f"{value:.2f}" for value in metrics["kl_per_dimension"]))
    if "auroc" in metrics:
        print(f"AUROC for the held-out digit {metrics['holdout_digit']}: {metrics['auroc']:.3f}")


def main(argv):
    from configurator import parse_overrides

    run_dir = "outputs"
    if argv and not argv[0].startswith("--"):
        run_dir, argv = argv[0], argv[1:]
    settings = parse_overrides(EVALUATION_DEFAULTS, argv, {})
    check_settings(settings)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from data import load_mnist

    config, model = load_run(run_dir)
    _, (x_test, y_test) = load_mnist(config.get("data_path"))
    evaluate_run(model, config, x_test, y_test, run_dir, settings)
    print(f"Figures and metrics.json written to {run_dir}/")
    return 0


if __name__ == "__main__":
    from configurator import ConfigError
    from data import DataError

    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, DataError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
