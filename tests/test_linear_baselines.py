"""The baselines a VAE must beat (benchmarks/linear_baselines.py) and the real-photograph folders
they are measured on (benchmarks/photo_crops.py): PPCA's exact likelihood, its bits/dim on brick
crops, the nearest-neighbour anomaly score, and the inspection set's masks."""

import sys

import numpy as np
import pytest
from scipy import stats

from benchmarks.linear_baselines import (
    gaussian_log_likelihood,
    nearest_neighbour_scores,
    pca_residual_scores,
    ppca_bits_per_dim,
    ppca_parameters,
    principal_components,
)
from benchmarks.photo_crops import (
    DEFECTS,
    draw_defect,
    photograph,
    write_crop_folder,
    write_inspection_folder,
)
from conftest import require_module
from data import load_dataset


def need_photographs():
    require_module("skimage", "scikit-image carries the photographs: "
                              "pip install -r requirements-dev.txt")


@pytest.mark.parametrize("count", [4, 50])  # fewer images than dimensions (Gram path), more
def test_ppca_likelihood_is_the_exact_gaussian_one(count):
    rng = np.random.default_rng(count)
    dimensions, k = 6, 2
    mixing = rng.normal(size=(dimensions, dimensions)) * np.linspace(1, 0.1, dimensions)
    x_train = (rng.normal(size=(count, dimensions)) @ mixing.T).reshape(count, 2, 3, 1)
    x_test = (rng.normal(size=(7, dimensions)) @ mixing.T).reshape(7, 2, 3, 1)
    # Tipping & Bishop's maximum-likelihood model, built from numpy's own eigen-decomposition.
    flat = x_train.reshape(count, -1)
    values, vectors = np.linalg.eigh(np.cov(flat, rowvar=False, bias=True))
    values, vectors = values[::-1], vectors[:, ::-1]
    sigma2 = values[k:].mean()
    covariance = (vectors[:, :k] * (values[:k] - sigma2)) @ vectors[:, :k].T
    covariance += sigma2 * np.eye(dimensions)
    expected = stats.multivariate_normal(flat.mean(axis=0), covariance).logpdf(
        x_test.reshape(7, -1))

    mean, w, fitted_sigma2 = ppca_parameters(principal_components(x_train, k), k)
    assert fitted_sigma2 == pytest.approx(sigma2, rel=1e-9)
    np.testing.assert_allclose(gaussian_log_likelihood(x_test, mean, w, fitted_sigma2),
                               expected, rtol=0, atol=1e-6)
    bits, nats = ppca_bits_per_dim(x_train, x_test, k)
    assert nats == pytest.approx(-expected.mean(), abs=1e-6)
    assert bits == pytest.approx(-expected.mean() / (dimensions * np.log(2)) + 8, abs=1e-9)


def test_ppca_bits_per_dim_fall_as_components_are_added_on_brick(tmp_path):
    need_photographs()
    folder = write_crop_folder("brick", str(tmp_path / "brick"), size=32, train=300, test=100)
    data = load_dataset(folder)
    assert data.x_train.shape == (300, 32, 32, 1) and data.x_test.shape == (100, 32, 32, 1)
    np.testing.assert_allclose(data.x_train * 255, np.round(data.x_train * 255), atol=1e-4)
    spectrum = principal_components(data.x_train, 32)
    bits = [ppca_bits_per_dim(data.x_train, data.x_test, k, spectrum)[0]
            for k in (2, 4, 8, 16, 32)]
    assert np.all(np.diff(bits) < 0), bits
    assert 2 < bits[-1] < 8, bits  # better than uniform 8-bit noise, far from free


def test_nearest_neighbour_score_is_zero_on_training_images_and_positive_on_defects(tmp_path):
    need_photographs()
    folder = write_inspection_folder("gravel", str(tmp_path / "gravel"), train=60, good=5,
                                     per_defect=3)
    data = load_dataset(folder)
    on_training = nearest_neighbour_scores(data.x_train, data.x_train[:10])
    assert np.all(on_training.total == 0) and np.all(on_training.peak == 0)

    defective = data.y_test != 0
    assert np.all(nearest_neighbour_scores(data.x_train, data.x_test[defective]).total > 0)
    # A hole drawn on a training image: its neighbour is the image itself, so the squared
    # difference is the hole's, inside the mask and nowhere else.
    crop = np.round(data.x_train[3] * 255).astype(np.uint8)
    holed, mask = draw_defect(crop, "hole", np.random.default_rng(1), crop)
    scores = nearest_neighbour_scores(data.x_train, holed[None] / 255.0)
    assert scores.total[0] > 0 and scores.maps.shape == (1, 64, 64)
    assert np.all(mask[scores.maps[0] > 1e-9] == 255)  # float32 v/255 vs float64 v/255.0
    # The PCA residual is a score too: zero nowhere, but higher where the hole is.
    residual = pca_residual_scores(data.x_train, holed[None] / 255.0, k=16).maps[0]
    assert residual[mask > 0].mean() > residual[mask == 0].mean()


def test_inspection_folder_has_a_non_empty_mask_for_every_defect(tmp_path):
    need_photographs()
    folder = write_inspection_folder("brick", str(tmp_path / "brick"), train=40, good=6,
                                     per_defect=4, seed=2)
    data = load_dataset(folder)
    assert data.inspection and data.class_names == ["good", *sorted(DEFECTS)]
    assert data.x_test.shape == (6 + 4 * len(DEFECTS), 64, 64, 1)
    assert data.has_mask.all()
    areas = data.test_masks.sum(axis=(1, 2))
    assert np.all(areas[data.y_test == 0] == 0)
    for kind in DEFECTS:
        of_kind = data.y_test == data.class_names.index(kind)
        assert of_kind.sum() == 4 and np.all(areas[of_kind] > 0), kind
        for mask in data.test_masks[of_kind]:  # a few to ~20 pixels across, as on a real part
            rows, columns = np.nonzero(mask)
            extent = max(np.ptp(rows), np.ptp(columns)) + 1
            assert 2 <= extent <= 22, (kind, extent)
    assert photograph("brick").shape == (512, 512, 1)


def test_a_missing_scikit_image_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    with pytest.raises(ImportError, match="pip install -r requirements-dev.txt"):
        photograph("brick")
