import itertools
import json
import shutil

import numpy as np
import pytest

from anomaly import auroc, roc_curve
from conftest import folder_contents, run_script
from evaluate import EVALUATION_DEFAULTS, manifold_grid, scaled_to_run
from measures import importance_weighted_bound, latent_activity


def brute_force_auroc(scores, is_positive):
    positives, negatives = scores[is_positive], scores[~is_positive]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(positives, negatives)]
    return float(np.mean(wins))


def test_auroc_on_hand_made_examples():
    # Of the four (positive, negative) pairs, three are ordered right: 0.75.
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    # A tie between a positive and a negative counts one half.
    assert auroc([1.0, 1.0, 2.0], [True, False, True]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        auroc([1.0, 2.0], [True, True])


def test_auroc_matches_brute_force_and_the_roc_curve_area():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # rounded: many ties
    is_positive = rng.random(300) < 0.3
    scores[is_positive] += 0.5
    value = auroc(scores, is_positive)
    assert value == pytest.approx(brute_force_auroc(scores, is_positive), abs=1e-12)
    fpr, tpr = roc_curve(scores, is_positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # The trapezoid area under the curve is the AUROC (ties give the diagonal segments).
    assert np.trapezoid(tpr, fpr) == pytest.approx(value, abs=1e-12)


def test_importance_weighted_bound_is_a_log_mean_exp():
    log_weights = np.log(np.array([[1.0, 3.0, 2.0, 6.0], [5.0, 5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(importance_weighted_bound(log_weights, 1), np.log([1.0, 5.0]))
    np.testing.assert_allclose(importance_weighted_bound(log_weights, 2), np.log([2.0, 5.0]))
    np.testing.assert_allclose(importance_weighted_bound(log_weights, 4), np.log([3.0, 5.0]))
    # Large log-weights (log p(x) is about -100 nats for MNIST) must not underflow.
    np.testing.assert_allclose(importance_weighted_bound(log_weights - 1000.0, 4),
                               np.log([3.0, 5.0]) - 1000.0)


def test_latent_activity():
    z_mean = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0]])
    z_log_var = np.zeros_like(z_mean)
    result = latent_activity(z_mean, z_log_var)
    assert result["latent_activity"] == [0.0, 1.0]
    assert result["active_units"] == 1
    np.testing.assert_allclose(result["kl_per_dimension"], [0.0, 0.5])


def test_manifold_grid():
    quantiles, grid = manifold_grid(20, latent_dim=4, dims=[2, 0])
    assert grid.shape == (400, 4)
    np.testing.assert_allclose(quantiles, -quantiles[::-1], atol=1e-12)  # symmetric
    assert quantiles[0] == pytest.approx(-1.96, abs=0.01)  # the 2.5% quantile
    assert np.all(grid[:, [1, 3]] == 0.0)  # the other dimensions stay at the prior's mode
    assert grid[0, 2] == pytest.approx(quantiles[0]) and grid[0, 0] == pytest.approx(quantiles[-1])
    assert grid[19, 2] == pytest.approx(quantiles[-1]) and grid[399, 0] == pytest.approx(
        quantiles[0])


@pytest.mark.slow
@pytest.mark.backend
def test_evaluate_py_rebuilds_the_run(finished_run, tmp_path):
    out_dir, _, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(out_dir, run)
    (run / "manifold.png").unlink()
    result = run_script("evaluate.py", str(run), "--iwae_samples=16", "--manifold_size=5")
    assert result.returncode == 0, result.stderr[-2000:]
    # The same weights and evaluation seed draw the same figures (to a grey level of rounding);
    # the manifold, asked for as a 5x5 grid instead of 20x20, is a new picture of the same size.
    from PIL import Image

    def pixels(path):
        with Image.open(path) as png:
            assert png.format == "PNG", path
            return np.asarray(png.convert("RGB"), np.float64)

    figures = sorted(path.name for path in out_dir.glob("*.png"))
    assert "manifold.png" in figures and len(figures) >= 8
    for name in figures:
        new, old = pixels(run / name), pixels(out_dir / name)
        if name == "manifold.png":
            assert max(abs(len(new) - len(old)), abs(new.shape[1] - old.shape[1])) <= 10
            height, width = min(len(new), len(old)), min(new.shape[1], old.shape[1])
            assert np.abs(new[:height, :width] - old[:height, :width]).mean() > 0.5
        else:
            assert new.shape == old.shape and np.abs(new - old).mean() < 0.5, name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iwae"]["k"] == [1, 8, 16]
    original = json.loads((out_dir / "metrics.json").read_text())
    # The same weights and the same evaluation seed give the same numbers.
    assert metrics["test_negative_elbo"] == pytest.approx(original["test_negative_elbo"],
                                                          rel=1e-4)


@pytest.mark.slow
def test_evaluate_py_refuses_weights_of_another_architecture(finished_run, tmp_path):
    out_dir, _, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(out_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["latent_dim"] = 3
    (run / "config.json").write_text(json.dumps(config))
    before = folder_contents(run)
    result = run_script("evaluate.py", str(run))
    assert result.returncode == 2
    assert "do not fit the model" in result.stderr and "Traceback" not in result.stderr
    # A refusal leaves metrics.json and every figure as they were, byte for byte.
    assert folder_contents(run) == before


@pytest.mark.slow
def test_evaluate_py_on_a_folder_that_is_no_run(tmp_path):
    result = run_script("evaluate.py", str(tmp_path))
    assert result.returncode == 2 and "is not a run folder" in result.stderr


@pytest.mark.slow
def test_evaluate_py_refuses_bad_settings(finished_run):
    out_dir, _, _ = finished_run
    result = run_script("evaluate.py", str(out_dir), "--iwae_samples=0")
    assert result.returncode == 2 and "iwae_samples must be at least 1" in result.stderr


def test_the_evaluation_is_scaled_to_the_run():
    # The full default run: everything, and nothing to say.
    settings, monitored, note = scaled_to_run(60_000, 10, 10_000)
    assert settings == EVALUATION_DEFAULTS and monitored == 10_000 and note is None
    # The two-minute smoke run: 1,000 monitored test images and 100 for the IWAE estimate.
    settings, monitored, note = scaled_to_run(2_000, 1, 10_000)
    assert settings["iwae_images"] == 100 and monitored == 1_000
    assert "1,000 of the 10,000 test images" in note and "--iwae_images=1000" in note
    # In between, the estimate grows with the images trained.
    settings, _, _ = scaled_to_run(20_000, 10, 10_000)
    assert settings["iwae_images"] == 400
    # A validation split, when there is one, is what the per-epoch loss measures.
    _, monitored, note = scaled_to_run(2_000, 1, 10_000, (5_000, "validation"))
    assert monitored == 1_000 and "1,000 of the 5,000 validation images" in note


def test_the_paired_standard_error_is_that_of_the_per_image_differences():
    from benchmarks.paired_runs import paired_difference

    # Differences 1, 2, 3, 4: mean 2.5, sample variance 5/3, so a standard error of
    # sqrt(5/3 / 4); the runs' own means are 12.5 and 10.
    difference, standard_error, mean_a, mean_b = paired_difference([11, 12, 13, 14],
                                                                   [10, 10, 10, 10])
    assert difference == pytest.approx(2.5) and mean_a == 12.5 and mean_b == 10
    assert standard_error == pytest.approx(np.sqrt(5 / 3 / 4))


def test_paired_runs_compares_two_runs_image_by_image_and_refuses_other_test_images(
        finished_run, tmp_path):
    from benchmarks.paired_runs import CannotCompare, compare

    out_dir, _, _ = finished_run
    scores = np.load(out_dir / "test_scores.npy")
    shift = np.random.default_rng(0).normal(0.5, 2.0, size=scores.shape)
    other = tmp_path / "other"
    shutil.copytree(out_dir, other, ignore=shutil.ignore_patterns("*.h5", "*.keras", "*.png",
                                                                  "*.gif", "snapshots"))
    np.save(other / "test_scores.npy", scores - shift)
    lines = compare(str(out_dir), str(other))
    # A minus B is the shift; its standard error the shift's, not the spread between images.
    expected = f"{shift.mean():+.2f} ± {shift.std(ddof=1) / np.sqrt(len(shift)):.2f} nats"
    assert lines[-1] == (f"A - B, paired over {len(scores)} test images: {expected} "
                         f"(the same z draws)")
    assert f"test negative ELBO {scores.mean():.2f}" in lines[0]
    assert f"test negative ELBO {(scores - shift).mean():.2f}" in lines[1]

    def edited(file_name, **changes):
        content = json.loads((out_dir / file_name).read_text())
        (other / file_name).write_text(json.dumps({**content, **changes}))

    # MNIST's test split is its own, whatever the seed; dynamic binarization draws by the seed.
    edited("config.json", seed=7, data_path="elsewhere/mnist.npz")
    assert compare(str(out_dir), str(other))[-1].startswith("A - B")
    edited("config.json", seed=7, binarize="dynamic")
    with pytest.raises(CannotCompare, match="binarize None against 'dynamic'; seed 0 against 7"):
        compare(str(out_dir), str(other))
    edited("config.json", dataset="fashion_mnist")
    with pytest.raises(CannotCompare, match="dataset 'mnist' against 'fashion_mnist'"):
        compare(str(out_dir), str(other))
    edited("config.json")
    edited("metrics.json", conditional=True)
    with pytest.raises(CannotCompare, match="conditional False against True"):
        compare(str(out_dir), str(other))
    edited("metrics.json")
    np.save(other / "test_scores.npy", scores[:-1])
    with pytest.raises(CannotCompare, match=f"{len(scores)} against {len(scores) - 1} test images"):
        compare(str(out_dir), str(other))
    (other / "test_scores.npy").unlink()
    with pytest.raises(CannotCompare, match="has no test_scores.npy"):
        compare(str(out_dir), str(other))


def test_paired_runs_pairs_validation_scores_of_runs_that_held_out_the_same_images(
        finished_run, tmp_path):
    from benchmarks.paired_runs import CannotCompare, compare

    out_dir, _, _ = finished_run
    with pytest.raises(CannotCompare, match="trained without a validation split"):
        compare(str(out_dir), str(out_dir), split="validation")
    scores = np.random.default_rng(1).normal(100.0, 10.0, size=20)
    runs = {}
    for name, seed, shift, policy, split_layers, bias_method in (
            ("a", 0, 0.0, "mixed_bfloat16", ["decoder/dense_hidden"], "bf16_summed_in_float32"),
            ("b", 0, 1.5, "float32", None, None), ("c", 3, 0.0, "mixed_bfloat16", [], None)):
        run = runs[name] = tmp_path / name
        shutil.copytree(out_dir, run, ignore=shutil.ignore_patterns(
            "*.h5", "*.keras", "*.png", "*.gif", "snapshots"))
        config = json.loads((run / "config.json").read_text())
        config.update(validation_images=20, seed=seed, precision_used=policy,
                      float32_layers=split_layers, bias_method=bias_method)
        config["data"]["validation_images"] = 20
        (run / "config.json").write_text(json.dumps(config))
        np.save(run / "validation_scores.npy", scores + shift)
    a, b, c = (str(runs[name]) for name in "abc")
    lines = compare(a, b, split="validation")
    assert lines[-1] == ("A - B, paired over 20 validation images: -1.50 ± 0.00 nats (the same "
                         "z draws)")
    assert f"validation negative ELBO {scores.mean():.2f}" in lines[0]
    # The split of a 16-bit run is named, since two runs of one policy can differ in it.
    assert ("precision mixed_bfloat16 with decoder/dense_hidden in float32, biases "
            "bf16_summed_in_float32" in lines[0])
    assert "precision float32," in lines[1] and "in float32" not in lines[1]
    # A run from before bias_method was recorded added its biases in float32.
    assert ("precision mixed_bfloat16 with no layer in float32, biases float32"
            in compare(c, b)[0])
    # Another seed held out other training images; MNIST's test split is the same for both.
    with pytest.raises(CannotCompare, match="the same validation images .*seed 0 against 3"):
        compare(a, c, split="validation")
    assert compare(a, c)[-1].startswith("A - B, paired over")
    # So does a class left out of training before they were drawn (data.as_trained).
    config = json.loads((runs["b"] / "config.json").read_text())
    (runs["b"] / "config.json").write_text(json.dumps({**config, "holdout_class": 3}))
    with pytest.raises(CannotCompare, match="holdout_class None against 3"):
        compare(a, b, split="validation")
    # A run evaluated before validation_scores.npy was written is told how to write it.
    (runs["b"] / "validation_scores.npy").unlink()
    with pytest.raises(CannotCompare, match="evaluated before evaluate.py wrote that file"):
        compare(a, b, split="validation")
