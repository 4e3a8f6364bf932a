"""The sampling and the terms of the evaluation's estimates, each against its formula in NumPy
and SciPy, on a small untrained model."""

import numpy as np
import pytest
from scipy import stats

import measures
from conftest import fake_mnist_arrays
from cvae import Sampling, build_cvae


@pytest.fixture(scope="module")
def model_and_images():
    model = build_cvae(2, (28, 28, 1), seed=0)
    x = fake_mnist_arrays(n_train=8, n_test=6)["x_test"][..., None].astype("float32") / 255
    return model, x


def numpy_reconstruction(x, p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    x = x.astype(np.float64)
    return -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))


def test_the_sampling_layer_draws_with_the_standard_deviation_exp_half_log_var():
    z_mean = np.array([[0.5, -2.0]] * 20_000, "float32")
    z_log_var = np.array([[np.log(0.25), np.log(4.0)]] * 20_000, "float32")  # sigma 0.5 and 2
    z = np.asarray(Sampling(seed=3)([z_mean, z_log_var]))
    np.testing.assert_allclose(z.mean(axis=0), [0.5, -2.0], atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0], rtol=0.03)


def test_negative_elbo_terms_from_encoding_match_numpy(model_and_images):
    model, x = model_and_images
    z_mean, z_log_var = measures.encode(model, x)
    epsilon = np.random.default_rng(4).standard_normal(z_mean.shape)
    reconstruction, kl = measures.negative_elbo_terms_from_encoding(
        model, x, z_mean, z_log_var, None, epsilon=epsilon)
    z = (z_mean + np.exp(0.5 * z_log_var.astype(np.float64)) * epsilon).astype("float32")
    expected = numpy_reconstruction(x, model.decoder.predict(z, verbose=0))
    np.testing.assert_allclose(reconstruction, expected, rtol=1e-5)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2 per dimension.
    sigma = np.exp(0.5 * z_log_var.astype(np.float64))
    expected_kl = np.sum(-np.log(sigma) + (sigma**2 + z_mean.astype(np.float64)**2) / 2 - 0.5,
                         axis=1)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-4, atol=1e-6)


def test_importance_weights_are_log_p_x_given_z_plus_log_p_z_minus_log_q(model_and_images):
    model, x = model_and_images
    k = 5
    log_weights = measures.importance_log_weights(model, x, k, seed=7)
    # The same draws: one chunk of (images, K, latent) from the seed's generator.
    z_mean, z_log_var = (a.astype(np.float64) for a in measures.encode(model, x))
    epsilon = np.random.default_rng(7).standard_normal((len(x), k, 2))
    sigma = np.exp(0.5 * z_log_var)[:, None, :]
    z = z_mean[:, None, :] + sigma * epsilon
    decoded = model.decoder.predict(z.reshape(-1, 2).astype("float32"), verbose=0)
    log_p_x = -numpy_reconstruction(np.repeat(x, k, axis=0), decoded).reshape(len(x), k)
    log_p_z = stats.norm.logpdf(z).sum(axis=-1)
    log_q_z = stats.norm.logpdf(z, loc=z_mean[:, None, :], scale=sigma).sum(axis=-1)
    np.testing.assert_allclose(log_weights, log_p_x + log_p_z - log_q_z, rtol=1e-5)


def test_the_importance_weighted_bound_is_at_least_the_elbo_on_the_same_images(
        model_and_images):
    model, x = model_and_images
    log_weights = measures.importance_log_weights(model, x, 16, seed=1)
    elbo = log_weights.mean(axis=1)  # the same draws, averaged: a 16-sample ELBO estimate
    for k in (4, 16):
        bound = measures.importance_weighted_bound(log_weights, k)
        assert np.all(bound >= log_weights[:, :k].mean(axis=1) - 1e-9)
    assert np.mean(measures.importance_weighted_bound(log_weights, 16)) > np.mean(elbo)
