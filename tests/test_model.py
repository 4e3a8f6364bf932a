import numpy as np
import pytest

from cvae import IMAGE_SHAPE, build_cvae


@pytest.fixture(scope="module")
def model():
    return build_cvae(latent_dim=2, image_shape=IMAGE_SHAPE, seed=0)


def test_parameter_count_matches_the_article(model):
    # The article's summary: Total params 13,044,613, all trainable.
    assert model.count_params() == 13_044_613
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 13_044_613


def test_layer_output_shapes(model):
    encoder_shapes = {layer.name: layer.output.shape for layer in model.encoder.layers}
    assert encoder_shapes["conv_1"] == (None, 28, 28, 32)
    assert encoder_shapes["conv_2"] == (None, 28, 28, 64)
    assert encoder_shapes["conv_3"] == (None, 28, 28, 64)
    assert encoder_shapes["flatten"] == (None, 50176)
    assert encoder_shapes["dense_hidden"] == (None, 128)
    assert encoder_shapes["z_mean"] == (None, 2)
    assert encoder_shapes["z_log_var"] == (None, 2)
    decoder_shapes = {layer.name: layer.output.shape for layer in model.decoder.layers}
    assert decoder_shapes["dense_unflatten"] == (None, 50176)
    assert decoder_shapes["reshape"] == (None, 28, 28, 64)
    assert decoder_shapes["deconv_3"] == (None, 28, 28, 32)
    assert decoder_shapes["pixel_probabilities"] == (None, 28, 28, 1)


def test_forward_pass_encoder_and_decoder_alone(model):
    x = np.random.default_rng(0).random((3,) + IMAGE_SHAPE).astype("float32")
    outputs = model(x)
    assert outputs["reconstruction"].shape == (3,) + IMAGE_SHAPE
    assert outputs["z_mean"].shape == (3, 2) and outputs["z_log_var"].shape == (3, 2)
    z_mean, z_log_var = model.encoder(x)
    assert z_mean.shape == (3, 2)
    images = np.asarray(model.decoder(np.zeros((4, 2), "float32")))
    assert images.shape == (4,) + IMAGE_SHAPE
    assert images.min() >= 0.0 and images.max() <= 1.0  # Bernoulli means
    # predict() decodes z_mean: deterministic, unlike a call that samples z.
    np.testing.assert_allclose(model.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(model.predict(x, verbose=0), np.asarray(model.decoder(z_mean)),
                               atol=1e-6)


def test_other_latent_sizes_and_image_shapes():
    model = build_cvae(latent_dim=5, image_shape=(16, 12, 1), seed=1)
    outputs = model(np.zeros((2, 16, 12, 1), "float32"))
    assert outputs["reconstruction"].shape == (2, 16, 12, 1)
    assert outputs["z_mean"].shape == (2, 5)
