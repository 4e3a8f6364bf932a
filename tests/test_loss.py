import keras
import numpy as np
import pytest

from cvae import PROBABILITY_EPSILON, build_cvae, negative_elbo_terms
from plumbing.arrays import MNIST_IMAGE_SHAPE

# The model and its loss must be the same on every Keras backend.
pytestmark = pytest.mark.backend


def numpy_negative_elbo(x, p, mu, log_var):
    p = np.clip(p, PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1).sum(axis=1)
    kl = 0.5 * (mu**2 + np.exp(log_var) - 1.0 - log_var).sum(axis=1)
    return bce, kl


def test_matches_numpy_on_hand_made_tensors():
    rng = np.random.default_rng(0)
    x = rng.random((4, 28, 28, 1)).astype("float32")
    p = rng.random((4, 28, 28, 1)).astype("float32")
    mu = rng.normal(size=(4, 3)).astype("float32")
    log_var = rng.normal(size=(4, 3)).astype("float32")
    reconstruction, kl = negative_elbo_terms(x, p, mu, log_var)
    expected_reconstruction, expected_kl = numpy_negative_elbo(x, p, mu, log_var)
    np.testing.assert_allclose(np.asarray(reconstruction), expected_reconstruction, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(kl), expected_kl, rtol=1e-5)


def test_known_values():
    # x = p = 1/2 everywhere: each pixel costs log 2 nats, so an image costs 784 log 2.
    half = np.full((1, 28, 28, 1), 0.5, "float32")
    zeros = np.zeros((1, 2), "float32")
    reconstruction, kl = negative_elbo_terms(half, half, zeros, zeros)
    np.testing.assert_allclose(np.asarray(reconstruction), [784 * np.log(2)], rtol=1e-6)
    # The encoder equal to the prior (mu = 0, log sigma^2 = 0) costs no KL at all.
    np.testing.assert_allclose(np.asarray(kl), [0.0], atol=1e-7)
    # KL is summed over latent dimensions: mu = 1 in each of 2 dimensions costs 2 * 1/2.
    _, kl = negative_elbo_terms(half, half, np.ones((1, 2), "float32"), zeros)
    np.testing.assert_allclose(np.asarray(kl), [1.0], rtol=1e-6)


def test_a_perfect_reconstruction_costs_almost_nothing():
    x = (np.random.default_rng(1).random((2, 28, 28, 1)) > 0.5).astype("float32")
    reconstruction, _ = negative_elbo_terms(x, x, np.zeros((2, 2)), np.zeros((2, 2)))
    assert np.all(np.asarray(reconstruction) < 784 * 2e-7)


def test_reported_loss_is_the_sum_of_its_terms():
    keras.utils.set_random_seed(0)
    model = build_cvae(latent_dim=2, image_shape=MNIST_IMAGE_SHAPE, seed=0)
    model.compile(optimizer="rmsprop")
    # 70 images in batches of 32: a smaller last batch must not break loss == rec + kl.
    x = np.random.default_rng(0).random((70, 28, 28, 1)).astype("float32")
    logs = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "reconstruction_loss", "kl_loss"}
    np.testing.assert_allclose(logs["loss"], logs["reconstruction_loss"] + logs["kl_loss"],
                               rtol=1e-5)
    history = model.fit(x, batch_size=32, epochs=1, verbose=0).history
    np.testing.assert_allclose(history["loss"][0],
                               history["reconstruction_loss"][0] + history["kl_loss"][0],
                               rtol=1e-5)
