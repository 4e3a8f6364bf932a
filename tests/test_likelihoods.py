"""The decoder likelihoods (cvae.py's Bernoulli, likelihoods.py's grey-level ones) against their
formulas, computed independently with NumPy and SciPy, and the choice that likelihood="auto"
makes."""

import math

import keras
import numpy as np
import pytest
from scipy import stats

from cvae import build_cvae, pixel_nats
from likelihoods import BIN, MIN_LOG_SCALE, calibrated_log_scale

pytestmark = pytest.mark.backend
SHAPE = (8, 8, 1)


def eight_bit(rng, shape):
    return (rng.integers(0, 256, size=shape) / 255.0).astype("float32")


def test_the_gaussian_is_the_normal_density_with_one_sigma_per_channel():
    rng = np.random.default_rng(0)
    x, mean = eight_bit(rng, (2, 4, 4, 3)), rng.random((2, 4, 4, 3)).astype("float32")
    log_scale = np.log([0.05, 0.1, 0.2]).astype("float32")
    nats = keras.ops.convert_to_numpy(pixel_nats(x, mean, "gaussian", log_scale))
    expected = -stats.norm.logpdf(x, loc=mean, scale=np.exp(log_scale))
    np.testing.assert_allclose(nats, expected, rtol=1e-5, atol=1e-5)


def test_the_discretized_logistic_gives_each_8_bit_value_its_bin_of_the_logistic():
    """Every value's probability is the logistic's mass over its bin (the tails at 0 and 1), so
    the 256 probabilities of one pixel sum to 1, whatever the mean and the scale."""
    values = np.arange(256, dtype="float32") / 255.0
    for mean, sigma in ((0.3, 0.05), (0.0, 0.01), (0.97, 0.2), (0.5, 1e-3)):
        x = values.reshape(256, 1, 1, 1)
        nats = keras.ops.convert_to_numpy(pixel_nats(
            x, np.full_like(x, mean), "discretized_logistic",
            np.array([np.log(sigma)], "float32")))
        probabilities = np.exp(-nats.ravel().astype(np.float64))
        assert probabilities.sum() == pytest.approx(1.0, abs=2e-3), (mean, sigma)
        s = sigma * math.sqrt(3) / math.pi
        cdf = stats.logistic(loc=mean, scale=s).cdf
        interior = (values > 0) & (values < 1) & (probabilities > 1e-4)
        expected = cdf(values + BIN / 2) - cdf(values - BIN / 2)
        np.testing.assert_allclose(probabilities[interior], expected[interior], rtol=2e-3)
        assert probabilities[0] == pytest.approx(cdf(BIN / 2), rel=2e-3, abs=1e-6)


def test_the_calibrated_sigma_is_the_root_mean_squared_error_per_channel():
    rng = np.random.default_rng(1)
    x, mean = rng.random((5, 4, 4, 2)).astype("float32"), rng.random((5, 4, 4, 2))
    log_scale = keras.ops.convert_to_numpy(calibrated_log_scale(x, mean.astype("float32")))
    rmse = np.sqrt(np.mean((x - mean) ** 2, axis=(0, 1, 2)))
    np.testing.assert_allclose(log_scale, np.log(rmse), rtol=1e-5)
    # A perfect reconstruction is floored at an 8-bit value's rounding, not at zero.
    floored = calibrated_log_scale(x, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(floored), [MIN_LOG_SCALE] * 2)
    # and at that sigma the calibrated sigma maximizes the Gaussian likelihood of the batch.
    best = float(np.log(rmse[0]))
    nats = [float(np.sum(keras.ops.convert_to_numpy(pixel_nats(
        x[..., :1], mean[..., :1].astype("float32"), "gaussian",
        np.array([best + delta], "float32"))))) for delta in (-0.05, 0.0, 0.05)]
    assert nats[1] < nats[0] and nats[1] < nats[2]


@pytest.mark.parametrize("likelihood", ["gaussian", "discretized_logistic"])
def test_training_calibrates_the_scale_that_evaluation_uses(likelihood):
    model = build_cvae(2, SHAPE, seed=0, likelihood=likelihood)
    # Two weights more than the Bernoulli model: the running average of log sigma, and its weight.
    assert len(model.weights) == len(build_cvae(2, SHAPE, seed=0).weights) + 2
    x = eight_bit(np.random.default_rng(2), (64, *SHAPE))
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    history = model.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0)
    log_scale = keras.ops.convert_to_numpy(model.log_scale())
    # Uniform 8-bit noise around an untrained decoder's means: an error near 0.3 to 0.5.
    assert np.log(0.2) < log_scale[0] < np.log(0.6)
    # The loss is the negative ELBO under that likelihood, as the reported terms say.
    logs = history.history
    assert logs["loss"][0] == pytest.approx(logs["reconstruction_loss"][0] + logs["kl_loss"][0],
                                            rel=1e-5)


def test_auto_keeps_the_bernoulli_for_mnist_like_images_and_fits_grey_levels_otherwise():
    from data import ImageData, fitting_likelihood

    rng = np.random.default_rng(3)
    binary_like = (rng.random((50, *SHAPE)) > 0.7).astype("float32")
    grey = rng.random((50, *SHAPE)).astype("float32")

    def data(x):
        return ImageData(SHAPE, x, None, x[:5], None, None, "test images")

    assert fitting_likelihood(data(binary_like), {"dataset": "folder"})[0] == "bernoulli"
    assert fitting_likelihood(data(grey), {"dataset": "folder"})[0] == "discretized_logistic"
    assert fitting_likelihood(data(grey), {"dataset": "mnist"})[0] == "bernoulli"
    assert fitting_likelihood(data(grey), {"dataset": "folder", "binarize": "static"})[0] == \
        "bernoulli"


def test_a_unit_whose_posterior_stays_the_prior_is_neither_active_nor_hides_a_collapse():
    from measures import latent_activity

    rng = np.random.default_rng(4)
    # Dimension 0 spreads its means a little (variance 0.04 > Burda's 0.01) with sigma = 1: it
    # carries about 0.02 nats. Dimension 1 carries a digit's worth (means spread 1, sigma 0.1).
    z_mean = np.stack([0.2 * rng.standard_normal(2000), rng.standard_normal(2000)], axis=1)
    z_log_var = np.stack([np.zeros(2000), np.full(2000, np.log(0.01))], axis=1)
    activity = latent_activity(z_mean.astype("float32"), z_log_var.astype("float32"))
    assert activity["latent_activity"][0] > 0.01  # Burda's test alone would count it
    assert activity["kl_per_dimension"][0] < 0.1 and activity["kl_per_dimension"][1] > 1.0
    assert activity["active_units"] == 1 and not activity["posterior_collapsed"]
    collapsed = latent_activity(z_mean[:, :1].astype("float32"), z_log_var[:, :1].astype("float32"))
    assert collapsed["active_units"] == 0 and collapsed["posterior_collapsed"]


def test_a_run_saved_before_likelihoods_existed_loads_as_the_bernoulli_it_was(tmp_path):
    import json

    from saved_run import load_run

    trained = build_cvae(2, SHAPE, seed=0)
    trained.save_weights(str(tmp_path / "cvae.weights.h5"))
    # config.json as runs wrote it before: no likelihood, no likelihood_used.
    (tmp_path / "config.json").write_text(json.dumps(
        {"latent_dim": 2, "epochs": 0, "data": {"image_shape": list(SHAPE)}}))
    _, model = load_run(str(tmp_path))
    assert model.likelihood == "bernoulli" and model.log_scale() is None
    x = np.random.default_rng(5).random((3, *SHAPE)).astype("float32")
    np.testing.assert_array_equal(model.decoder.predict(np.zeros((1, 2)), verbose=0),
                                  trained.decoder.predict(np.zeros((1, 2)), verbose=0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.reconstruction_nats(x, x)),
                               keras.ops.convert_to_numpy(trained.reconstruction_nats(x, x)))


def test_the_models_own_weights_keep_the_names_and_order_saved_runs_have():
    # cvae.weights.h5 keeps the model's own variables by position: runs saved before the
    # grey-level likelihoods moved to likelihoods.py load only while these stay as they were.
    def own(model):
        return [weight.path for weight in model.weights if weight.path.startswith("cvae/")]

    grey = build_cvae(2, SHAPE, "strided", likelihood="gaussian", kl_warmup_steps=10)
    assert own(grey) == ["cvae/log_scale_sum", "cvae/log_scale_weight", "cvae/kl_warmup_step"]
    assert own(build_cvae(2, SHAPE, "strided")) == []  # a Bernoulli run has no scale
