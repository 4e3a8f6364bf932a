"""How an inspection run's score is chosen and kept, without a training: the baselines it is
reported beside, the synthetic defects it is chosen on, the choice itself, the smoothing the
scorer does inside the model, and the conformal threshold's promise."""

import numpy as np
import pytest
from scipy import ndimage

import anomaly
from anomaly_baselines import NearestNeighbour, PCAResidual, fit_baselines
from conftest import require_module
from cvae import build_cvae
from synthetic_defects import KINDS, draw_synthetic_defects


def images(count, shape=(16, 16, 1), seed=0):
    """Smooth random images in [0, 1]: low-frequency structure, like a photograph's."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((count, *shape)), (0, 2, 2, 0))
    return ((noise - noise.min()) / np.ptp(noise)).astype(np.float32)


# ---- the baselines -----------------------------------------------------------------------------
def test_the_pca_residual_is_what_the_top_components_leave_unexplained():
    rng = np.random.default_rng(0)
    # Training images on a 3-dimensional affine subspace of 64 dimensions, plus a little noise.
    basis = np.linalg.qr(rng.standard_normal((64, 3)))[0].T
    mean = rng.uniform(0.3, 0.7, 64)
    train = (mean + rng.standard_normal((200, 3)) @ basis * 0.1
             + 1e-4 * rng.standard_normal((200, 64))).reshape(200, 8, 8, 1)
    pca = PCAResidual.fit(train, k=3)
    # The components span the subspace (checked against the covariance's eigenvectors).
    values, vectors = np.linalg.eigh(np.cov(train.reshape(200, -1).T))
    top = vectors[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(pca.components @ top), np.eye(3), atol=1e-3)
    # An image in the subspace leaves nearly nothing; a spike off it is found where it is.
    inside = (mean + np.array([1.0, -2.0, 0.5]) @ basis * 0.1).reshape(1, 8, 8, 1)
    assert pca.maps(inside).max() < 1e-6
    spiked = inside.copy()
    spiked[0, 5, 2, 0] += 0.5
    residual = pca.maps(spiked)[0]
    assert np.unravel_index(residual.argmax(), residual.shape) == (5, 2)
    assert residual.sum() == pytest.approx(0.25 * (1 - np.sum((basis[:, 5 * 8 + 2]) ** 2)),
                                           rel=1e-3)
    # Fewer images than components: as many as the images allow.
    assert len(PCAResidual.fit(train[:5]).components) == 4


def test_the_nearest_neighbour_map_is_the_difference_to_the_closest_training_image():
    train = images(30)
    nn = NearestNeighbour.fit(train)
    assert np.all(nn.maps(train) == 0)
    changed = train[[7]].copy()
    changed[0, 3:5, 3:5] += 0.05  # still closest to image 7
    assert nn.nearest(changed)[0] == 7
    expected = np.zeros((16, 16))
    expected[3:5, 3:5] = 0.05 ** 2
    np.testing.assert_allclose(nn.maps(changed)[0], expected, atol=1e-9)
    assert set(fit_baselines(train)) == {"pca_residual_29", "nearest_neighbour"}


# ---- the synthetic defects ---------------------------------------------------------------------
def test_synthetic_defects_are_one_region_each_drawn_inside_it_only_and_reproducible():
    clean = images(12, shape=(28, 28, 1))
    defective, masks, kinds = draw_synthetic_defects(clean, seed=3)
    assert kinds == [KINDS[i % len(KINDS)] for i in range(12)]
    for image, original, mask in zip(defective, clean, masks):
        assert ndimage.label(mask, np.ones((3, 3)))[1] == 1  # one region (8-connected)
        assert 0.01 <= mask.mean() <= 0.1
        np.testing.assert_array_equal(image[~mask], original[~mask])  # nothing outside it
        assert np.abs(image[mask] - original[mask]).mean() > 0.1  # and it shows inside
    again = draw_synthetic_defects(clean, seed=3)
    np.testing.assert_array_equal(again[0], defective)
    assert not np.array_equal(draw_synthetic_defects(clean, seed=4)[1], masks)


# ---- the choice on the validation split --------------------------------------------------------
def test_the_scoring_chosen_is_the_candidate_with_the_best_validation_auroc():
    rng = np.random.default_rng(0)
    count, side = 40, 20
    masks = np.zeros((count, side, side), bool)
    for i in range(count):
        top, left = rng.integers(2, side - 6, size=2)
        masks[i, top:top + 4, left:left + 4] = True
    # "useful" sees the defects through noise; "useless" is noise alone. The totals see nothing.
    clean_maps = {"useful": rng.random((count, side, side)), "useless": rng.random((count, side,
                                                                                     side))}
    defective_maps = {"useful": rng.random((count, side, side)) + 1.5 * masks,
                      "useless": rng.random((count, side, side))}
    totals = rng.random(count), rng.random(count)
    scoring, table = anomaly.choose_scoring((totals[0], clean_maps),
                                            (totals[1], defective_maps), masks, base_sigma=1.0)
    assert scoring["pixel_map"] == "useful"
    assert scoring["image_score"] == "peak"  # the peak of the useful map, not the blind totals
    # The table is what it says: recomputed for the chosen candidate.
    smoothed = anomaly.smooth(np.concatenate([clean_maps["useful"], defective_maps["useful"]]),
                              scoring["smoothing_sigma"], mode="mirror")
    truth = np.concatenate([np.zeros_like(masks), masks])
    row = table[f"useful_sigma_{scoring['smoothing_sigma']:.3g}"]
    assert row["pixel_auroc"] == pytest.approx(anomaly.auroc(smoothed.ravel(), truth.ravel()))
    assert row["pixel_auroc"] == max(value["pixel_auroc"] for key, value in table.items()
                                     if key != "total_image_auroc")
    assert max(value["pixel_auroc"] for key, value in table.items()
               if key.startswith("useless")) < 0.6


# ---- the scorer applies it inside the model ----------------------------------------------------
@pytest.mark.backend
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_the_scorer_smooths_as_the_evaluation_does(sigma):
    maps = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    from keras import ops

    in_graph = ops.convert_to_numpy(anomaly.smoothed_in_graph(ops.convert_to_tensor(maps), sigma))
    np.testing.assert_allclose(in_graph, anomaly.smooth(maps, sigma, mode="mirror"), atol=1e-5)


@pytest.mark.backend
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_a_kept_scoring_is_what_the_scorer_computes(likelihood):
    model = build_cvae(2, (16, 16, 1), architecture="strided", seed=0, likelihood=likelihood)
    x = images(5)
    score, loss, excess, dissimilarity = anomaly.anomaly_scores(
        anomaly.build_candidate_scorer(model), x)
    plain_score, plain_map = anomaly.anomaly_scores(anomaly.build_anomaly_scorer(model), x)
    np.testing.assert_allclose(plain_score, score, rtol=1e-6)
    np.testing.assert_allclose(plain_map, loss, rtol=1e-6)
    if likelihood == "bernoulli":  # the loss less the decoder's entropy at its own mean
        assert np.all(excess < loss) and np.all(excess > loss - np.log(2) - 1e-6)
    maps = {"loss": loss, "excess_loss": excess, "dissimilarity": dissimilarity}
    for pixel_map in maps:
        for image_score in ("total", "peak"):
            scoring = {"pixel_map": pixel_map, "smoothing_sigma": 1.5,
                       "image_score": image_score}
            got_score, got_map = anomaly.anomaly_scores(
                anomaly.build_anomaly_scorer(model, scoring=scoring), x)
            want_score, want_map = anomaly.scored(scoring, score, maps)
            np.testing.assert_allclose(got_map, want_map, atol=1e-4)
            np.testing.assert_allclose(got_score, want_score, rtol=1e-5, atol=1e-4)


# ---- the threshold keeps its promise -----------------------------------------------------------
@pytest.mark.parametrize("held_out", [60, 180, 999])
def test_the_conformal_threshold_flags_the_share_it_promises(held_out):
    rng = np.random.default_rng(held_out)
    rates, inside = [], []
    for _ in range(2000):
        # Uniform scores: a threshold t flags a share 1 - t of new normal images, exactly.
        threshold, promised, (low, high) = anomaly.conformal_threshold(rng.random(held_out),
                                                                       rate=0.01)
        rates.append(1 - threshold)
        inside.append(low <= 1 - threshold <= high)
    k = max(1, round(0.01 * (held_out + 1)))
    assert promised == k / (held_out + 1)
    # On average over held-out draws the rule flags what it promises (to 4 standard errors),
    # and its own 90% interval holds this threshold's rate 90% of the time.
    assert np.mean(rates) == pytest.approx(promised, abs=4 * np.std(rates) / np.sqrt(2000))
    assert np.mean(inside) == pytest.approx(0.9, abs=0.03)


def test_the_dissimilarity_map_is_scikit_images_ssim():
    """1 - SSIM with a Gaussian window of 1.5 pixels, as skimage computes it (its
    gaussian_weights option, sample covariances off), at every pixel away from the border."""
    require_module("skimage", "pip install -r requirements-dev.txt")
    from skimage import metrics as skimage_metrics

    x, y = images(2, shape=(24, 24, 1), seed=1)
    from keras import ops

    got = ops.convert_to_numpy(anomaly.structural_dissimilarity(
        ops.convert_to_tensor(x[None]), ops.convert_to_tensor(y[None])))[0]
    _, ssim = skimage_metrics.structural_similarity(
        x[..., 0], y[..., 0], data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True)
    # float32 variances (E[x^2] - E[x]^2) against its float64: a few 1e-5 apart.
    np.testing.assert_allclose(got[5:-5, 5:-5], 1 - ssim[5:-5, 5:-5], atol=1e-4)
