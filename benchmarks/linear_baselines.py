"""The simple models a VAE must beat on a folder of images: probabilistic PCA's likelihood, and
the PCA-residual and nearest-neighbour anomaly scores.

    python benchmarks/linear_baselines.py /tmp/photos/brick --k=2,4,8,16,32

For each folder (any that data.load_dataset reads, e.g. benchmarks/photo_crops.py's), prints
PPCA's test bits per dimension for each k, fitted on the training images (an inspection set's:
train/good/ less its held-out share, and measured on test/good/). For an inspection set it also
prints the image and pixel AUROC of the anomaly baselines. Numpy and scipy only: no Keras.

bits/dim is of 8-bit data: -log2 p(x) / D + 8, where p is the continuous density of the pixels
scaled to [0, 1] (see ppca_bits_per_dim), the number that PixelCNN, Real NVP and the VAE papers
report on 8-bit images; lower is better.
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import load_dataset  # noqa: E402

BINS = 256  # an 8-bit pixel's values; data scaled to [0, 1] -> bins of width 1 / BINS
DISTANCE_CHUNK = 256  # images whose distances to every training image are computed at once


def _flat(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


# ---- probabilistic PCA ---------------------------------------------------------------------------
@dataclasses.dataclass
class Spectrum:
    """The training images' principal components: mean (D,), the top eigenvalues (largest
    first) of their covariance (the maximum-likelihood one, divided by N) and components
    (k_max, D), orthonormal rows; total_variance is the covariance's trace, the sum of all D
    eigenvalues."""
    mean: np.ndarray
    eigenvalues: np.ndarray
    components: np.ndarray
    total_variance: float
    dimensions: int


def principal_components(x_train, k_max):
    """The Spectrum of x_train (N, ...) up to k_max components, from the eigen-decomposition of
    the smaller of the N x N Gram matrix and the D x D covariance (exact either way)."""
    x = _flat(x_train)
    count, dimensions = x.shape
    if not 0 < k_max < min(count, dimensions):
        raise ValueError(f"k={k_max} components need more than {k_max} training images and "
                         f"dimensions ({count} images of {dimensions} dimensions).")
    mean = x.mean(axis=0)
    centred = x - mean
    if count < dimensions:
        values, vectors = np.linalg.eigh(centred @ centred.T / count)
        values, vectors = values[::-1][:k_max], vectors[:, ::-1][:, :k_max]
        components = (centred.T @ vectors / np.sqrt(np.maximum(values, 1e-300) * count)).T
    else:
        values, vectors = np.linalg.eigh(centred.T @ centred / count)
        values, components = values[::-1][:k_max], vectors[:, ::-1][:, :k_max].T
    total = float(np.einsum("ij,ij->", centred, centred) / count)
    return Spectrum(mean, np.maximum(values, 0.0), components, total, dimensions)


def ppca_parameters(spectrum, k):
    """Tipping & Bishop's (1999) closed-form maximum-likelihood PPCA with k components:
    (mean, W (D, k), sigma2). sigma2 is the mean of the D - k discarded eigenvalues (including
    the zero ones when there are fewer images than dimensions), and W = U_k (L_k - sigma2)^1/2,
    U_k the top k eigenvectors, L_k their eigenvalues (the rotation R taken as the identity)."""
    if k > len(spectrum.eigenvalues):
        raise ValueError(f"k={k} but the spectrum has only {len(spectrum.eigenvalues)} "
                         f"components; compute principal_components with k_max >= {k}.")
    kept = spectrum.eigenvalues[:k]
    sigma2 = (spectrum.total_variance - kept.sum()) / (spectrum.dimensions - k)
    if not sigma2 > 0:
        raise ValueError(f"With k={k} the training images leave no variance outside the "
                         f"components (sigma^2 = {sigma2:g}); use fewer components.")
    w = spectrum.components[:k].T * np.sqrt(np.maximum(kept - sigma2, 0.0))
    return spectrum.mean, w, sigma2


def gaussian_log_likelihood(x, mean, w, sigma2):
    """log N(x; mean, W W^T + sigma2 I) in nats for each row of x (N, D), in O(N D k): the
    Woodbury identity, C^-1 = (I - W M^-1 W^T) / sigma2 with M = W^T W + sigma2 I (k x k), and
    the matrix determinant lemma, log|C| = (D - k) log sigma2 + log|M|."""
    r = _flat(x) - mean
    dimensions, k = w.shape
    m = w.T @ w + sigma2 * np.eye(k)
    cholesky = np.linalg.cholesky(m)
    projected = np.linalg.solve(cholesky, w.T @ r.T)  # L^-1 W^T r, so |.|^2 = r^T W M^-1 W^T r
    mahalanobis = (np.einsum("ij,ij->i", r, r) - np.einsum("ij,ij->j", projected, projected)
                   ) / sigma2
    log_det = (dimensions - k) * np.log(sigma2) + 2 * np.log(np.diag(cholesky)).sum()
    return -0.5 * (dimensions * np.log(2 * np.pi) + log_det + mahalanobis)


def ppca_bits_per_dim(x_train, x_test, k, spectrum=None):
    """(bits per dimension, nats per image) of the test images under probabilistic PCA with k
    components fitted on the training images (both float (N, ...) in [0, 1]); spectrum: the
    training images' principal_components, computed once for several k.

    nats per image: the mean over test images of -log p(x), p the model's continuous density
    of pixels scaled to [0, 1], computed exactly (gaussian_log_likelihood).
    bits per dimension: that in bits, per dimension, plus 8: an 8-bit pixel's bin has width
    1/256 on the [0, 1] scale, so the probability of a pixel vector is about p(x) (1/256)^D
    (exact in expectation for uniformly dequantized pixels, (v + u) / 256, by Theis et al.'s
    2016 bound), and -log2 P = -log2 p(x) + 8 D. Data that load_dataset scales as v / 255 have
    bins 1/255 wide: the exact constant is log2(255) = 7.9944, 0.0056 bits/dim less, below
    anything these comparisons resolve; 8 is the literature's convention. The approximation
    holds while the density varies little within a bin: PPCA's noise sigma (printed by the
    command, in grey levels) should be well above one grey level."""
    if spectrum is None:
        spectrum = principal_components(x_train, k)
    nats = -gaussian_log_likelihood(x_test, *ppca_parameters(spectrum, k))
    nats_per_image = float(nats.mean())
    bits_per_dim = nats_per_image / (spectrum.dimensions * np.log(2)) + np.log2(BINS)
    return bits_per_dim, nats_per_image


# ---- anomaly-detection baselines -----------------------------------------------------------------
@dataclasses.dataclass
class AnomalyScores:
    """total: each image's residual summed over its pixels; peak: the largest value of its map
    smoothed by a Gaussian of sigma max(1, side / 28), as anomaly.py scores a model's map; maps:
    (N, height, width) float64, the squared residual summed over the channels; smoothed: the
    maps so smoothed (what anomaly.py's pixel metrics measure)."""
    total: np.ndarray
    peak: np.ndarray
    maps: np.ndarray
    smoothed: np.ndarray


def smoothing_sigma(image_shape):
    """anomaly.py's: a defect spans several pixels, a lone bright pixel is noise."""
    return max(1.0, min(image_shape[:2]) / 28)


def _scores(squared_residual):
    """AnomalyScores of a float (N, height, width, channels) squared residual."""
    maps = squared_residual.sum(axis=-1)
    sigma = smoothing_sigma(maps.shape[1:])
    smoothed = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))
    return AnomalyScores(maps.sum(axis=(1, 2)), smoothed.max(axis=(1, 2)), maps, smoothed)


def pca_residual_scores(x_train, x, k=32, spectrum=None):
    """AnomalyScores of the images x (N, height, width, channels) from their squared residual
    after projection onto the top k principal components of the training images (around their
    mean): what a linear model of normal images cannot explain."""
    if spectrum is None:
        spectrum = principal_components(x_train, k)
    centred = _flat(x) - spectrum.mean
    basis = spectrum.components[:k]
    residual = centred - (centred @ basis.T) @ basis
    return _scores((residual ** 2).reshape(np.shape(x)))


def nearest_neighbours(x_train, x):
    """The index of each image's nearest training image by L2 distance."""
    train = _flat(x_train)
    train_norms = np.einsum("ij,ij->i", train, train)
    flat = _flat(x)
    nearest = np.empty(len(flat), dtype=np.int64)
    for start in range(0, len(flat), DISTANCE_CHUNK):
        chunk = flat[start:start + DISTANCE_CHUNK]
        distances = train_norms[None, :] - 2 * chunk @ train.T  # + |x|^2, the same in a row
        nearest[start:start + len(chunk)] = distances.argmin(axis=1)
    return nearest


def nearest_neighbour_scores(x_train, x):
    """AnomalyScores of the images x from their squared difference to their nearest training
    image (L2): a memory of normal images, no model at all. A training image scores 0."""
    x = np.asarray(x, dtype=np.float64)
    neighbours = np.asarray(x_train, dtype=np.float64)[nearest_neighbours(x_train, x)]
    return _scores((x - neighbours) ** 2)


def auroc(scores, is_positive):
    """The area under the ROC curve: the chance that a positive outscores a negative (ties
    count half), from the Mann-Whitney U statistic."""
    is_positive = np.asarray(is_positive, dtype=bool)
    positives, negatives = is_positive.sum(), (~is_positive).sum()
    ranks = stats.rankdata(scores)
    return float((ranks[is_positive].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


# ---- the command ---------------------------------------------------------------------------------
def describe_folder(folder, ks):
    """PPCA's bits/dim for each k on the folder (its good test images for an inspection set),
    and the anomaly baselines' AUROC for an inspection set; returns the printed lines."""
    started = time.perf_counter()
    data = load_dataset(folder)
    x_test = data.x_test[data.y_test == 0] if data.inspection else data.x_test
    lines = [f"{folder}: {len(data.x_train)} training and {len(x_test)} "
             f"{'good test' if data.inspection else 'test'} images of "
             f"{'x'.join(map(str, data.image_shape))} (D = {np.prod(data.image_shape)})",
             "| k | bits/dim | nats/image | sigma (grey levels) |", "| --- | --- | --- | --- |"]
    spectrum = principal_components(data.x_train, max(ks))
    for k in ks:
        bits, nats = ppca_bits_per_dim(data.x_train, x_test, k, spectrum)
        sigma = np.sqrt(ppca_parameters(spectrum, k)[2]) * 255
        lines.append(f"| {k} | {bits:.4f} | {nats:.1f} | {sigma:.2f} |")
    if data.inspection:
        is_defect = data.y_test != 0
        has_mask = data.has_mask
        lines += ["| anomaly baseline | image AUROC (total) | image AUROC (peak) | "
                  "pixel AUROC (smoothed map) |",
                  "| --- | --- | --- | --- |"]
        k = min(32, max(ks))
        for name, scores in (
                (f"PCA residual, k={k}", pca_residual_scores(data.x_train, data.x_test, k,
                                                             spectrum)),
                ("nearest neighbour", nearest_neighbour_scores(data.x_train, data.x_test))):
            pixels = auroc(scores.smoothed[has_mask].ravel(),
                           data.test_masks[has_mask].ravel() > 0)
            lines.append(f"| {name} | {auroc(scores.total, is_defect):.4f} | "
                         f"{auroc(scores.peak, is_defect):.4f} | {pixels:.4f} |")
    lines.append(f"({time.perf_counter() - started:.1f} s)")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="folders of images that data.load_dataset reads")
    parser.add_argument("--k", default="2,4,8,16,32", help="PPCA's numbers of components")
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.k.split(",")})
    started = time.perf_counter()
    for folder in args.folders:
        print("\n".join(describe_folder(folder, ks)), flush=True)
        print()
    print(f"Total wall time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
