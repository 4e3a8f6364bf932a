import keras
import numpy as np
import pytest
from keras import layers, ops

from cvae import build_cvae
from plumbing.arrays import MNIST_IMAGE_SHAPE
from plumbing.model_size import (
    ARCHITECTURES,
    MAX_PARAMETERS,
    architecture_problem,
    forward_flops_per_image,
    parameter_count,
    strided_halvings,
    training_gflops_per_image,
)

# The model and its loss must be the same on every Keras backend.
pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def model():
    return build_cvae(latent_dim=2, image_shape=MNIST_IMAGE_SHAPE, seed=0)


def test_parameter_count_matches_the_article(model):
    # The article's summary: Total params 13,044,613, all trainable.
    assert model.count_params() == 13_044_613
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 13_044_613


def layer_shapes(submodel):
    return {layer.name: tuple(layer.output.shape[1:]) for layer in submodel.layers}


def test_layer_output_shapes(model):
    encoder_shapes = layer_shapes(model.encoder)
    assert encoder_shapes["conv_1"] == (28, 28, 32)
    assert encoder_shapes["conv_2"] == (28, 28, 64)
    assert encoder_shapes["conv_3"] == (28, 28, 64)
    assert encoder_shapes["flatten"] == (50176,)
    assert encoder_shapes["dense_hidden"] == (128,)
    assert encoder_shapes["z_mean"] == (2,)
    assert encoder_shapes["z_log_var"] == (2,)
    decoder_shapes = layer_shapes(model.decoder)
    assert decoder_shapes["dense_unflatten"] == (50176,)
    assert decoder_shapes["reshape"] == (28, 28, 64)
    assert decoder_shapes["deconv_3"] == (28, 28, 32)
    assert decoder_shapes["pixel_probabilities"] == (28, 28, 1)


def test_forward_pass_encoder_and_decoder_alone(model):
    x = np.random.default_rng(0).random((3,) + MNIST_IMAGE_SHAPE).astype("float32")
    outputs = model(x)
    assert outputs["reconstruction"].shape == (3,) + MNIST_IMAGE_SHAPE
    assert outputs["z_mean"].shape == (3, 2) and outputs["z_log_var"].shape == (3, 2)
    z_mean, z_log_var = model.encoder(x)
    assert z_mean.shape == (3, 2) and z_log_var.shape == (3, 2)
    # convert_to_numpy: a PyTorch tensor that carries gradients refuses np.asarray.
    images = ops.convert_to_numpy(model.decoder(np.zeros((4, 2), "float32")))
    assert images.shape == (4,) + MNIST_IMAGE_SHAPE
    assert images.min() >= 0.0 and images.max() <= 1.0  # Bernoulli means
    # reconstruct() decodes z_mean: deterministic, unlike a call that samples z.
    from measures import reconstruct

    np.testing.assert_allclose(reconstruct(model, x), reconstruct(model, x))
    np.testing.assert_allclose(reconstruct(model, x), ops.convert_to_numpy(model.decoder(z_mean)),
                               atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_other_latent_sizes_and_image_shapes(architecture):
    model = build_cvae(latent_dim=5, image_shape=(16, 12, 3), architecture=architecture, seed=1)
    outputs = model(np.zeros((2, 16, 12, 3), "float32"))
    assert outputs["reconstruction"].shape == (2, 16, 12, 3)
    assert outputs["z_mean"].shape == (2, 5)


@pytest.mark.parametrize("image_shape, encoder_maps", [
    ((28, 28, 1), [(14, 14, 32), (7, 7, 64)]),
    ((32, 32, 3), [(16, 16, 32), (8, 8, 64), (4, 4, 64)]),
    ((64, 64, 3), [(32, 32, 32), (16, 16, 64), (8, 8, 64), (4, 4, 128)]),
])
def test_strided_shapes(image_shape, encoder_maps):
    model = build_cvae(latent_dim=2, image_shape=image_shape, architecture="strided", seed=0)
    encoder_shapes = layer_shapes(model.encoder)
    assert [encoder_shapes[f"conv_halve_{i}"] for i in range(1, len(encoder_maps) + 1)] == \
        encoder_maps
    assert f"conv_halve_{len(encoder_maps) + 1}" not in encoder_shapes
    assert encoder_shapes["flatten"] == (int(np.prod(encoder_maps[-1])),)
    assert encoder_shapes["z_mean"] == encoder_shapes["z_log_var"] == (2,)
    # The decoder climbs back through the same maps with the channels mirrored: each transposed
    # convolution outputs the map one step closer to the image.
    decoder_shapes = layer_shapes(model.decoder)
    assert decoder_shapes["reshape"] == encoder_maps[-1]
    climbed = [(h * 2, w * 2, c) for h, w, c in encoder_maps[::-1]]
    assert [decoder_shapes[f"deconv_double_{i}"] for i in range(1, len(encoder_maps) + 1)] == \
        climbed
    assert decoder_shapes["pixel_probabilities"] == image_shape
    images = model.decoder(np.zeros((2, 2), "float32"))
    assert images.shape == (2,) + image_shape


@pytest.mark.parametrize("image_shape, halvings", [
    ((28, 28, 1), 2), ((32, 32, 3), 3), ((64, 64, 3), 4), ((128, 128, 3), 5), ((512, 512, 3), 5),
    ((30, 18, 2), 1), ((8, 8, 1), 1), ((6, 6, 1), 0), ((7, 7, 1), 0), ((28, 27, 1), 0),
])
def test_strided_halvings(image_shape, halvings):
    assert strided_halvings(image_shape) == halvings


@pytest.mark.parametrize("image_shape, latent_dim, architecture", [
    ((16, 12, 3), 5, "article"),
    ((8, 8, 1), 2, "article"),
    ((28, 28, 1), 2, "strided"),
    ((16, 12, 3), 3, "strided"),
    ((30, 18, 2), 4, "strided"),  # one halving, then 15 x 9 is odd
    ((32, 32, 3), 2, "strided"),
    ((64, 64, 3), 8, "strided"),
])
def test_parameter_count_in_closed_form(image_shape, latent_dim, architecture):
    built = build_cvae(latent_dim, image_shape, architecture).count_params()
    assert parameter_count(image_shape, latent_dim, architecture) == built


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_too_small_images_are_refused(architecture):
    problem = architecture_problem((2, 2, 1), 2, architecture)
    assert "2x2x1" in problem and "too small" in problem and "--image_size" in problem
    with pytest.raises(ValueError, match="too small"):
        build_cvae(2, (2, 2, 1), architecture)


def test_strided_needs_even_sides():
    problem = architecture_problem((7, 7, 1), 2, "strided")
    assert "7x7x1" in problem and "even" in problem and "--image_size" in problem
    assert "--architecture=article" in problem
    assert architecture_problem((7, 7, 1), 2, "article") is None


def test_oversized_article_model_points_to_the_strided_one():
    shape = (128, 128, 3)
    article = parameter_count(shape, 2, "article")
    assert article > MAX_PARAMETERS  # so this test never builds it
    problem = architecture_problem(shape, 2, "article")
    assert f"{article:,}" in problem and "--architecture=strided" in problem
    assert f"{parameter_count(shape, 2, 'strided'):,}" in problem


@pytest.mark.parametrize("image_shape, architecture", [
    ((28, 28, 1), "article"), ((28, 28, 1), "strided"), ((7, 7, 1), "article"),
    ((64, 64, 3), "article"), ((64, 64, 3), "strided"), ((128, 128, 3), "strided"),
])
def test_buildable_models_have_no_problem(image_shape, architecture):
    assert architecture_problem(image_shape, 2, architecture) is None


@pytest.mark.parametrize("image_shape, count", [
    ((28, 28, 1), 881_477), ((32, 32, 3), 413_703), ((64, 64, 3), 935_175),
    ((128, 128, 3), 1_230_343)])
def test_the_strided_model_stays_near_a_million_parameters(image_shape, count):
    # The counts of the README's table, and of the models Keras builds (checked above).
    assert parameter_count(image_shape, 2, "strided") == count


def test_unknown_architecture_is_refused():
    assert "article, strided" in architecture_problem(MNIST_IMAGE_SHAPE, 2, "resnet")


def test_flops_of_a_tiny_model_by_hand():
    image = keras.Input((8, 6, 2))
    h = layers.Conv2D(4, 3, padding="same")(image)  # (8, 6, 4)
    h = layers.Conv2D(5, 3, strides=2, padding="same")(h)  # (4, 3, 5)
    h = layers.Conv2DTranspose(3, 3, strides=2, padding="same")(h)  # (8, 6, 3)
    h = layers.Dense(7)(layers.Flatten()(h))
    multiply_adds = (8 * 6 * 4 * 3 * 3 * 2  # every output pixel, 3x3x2 inputs per channel
                     + 4 * 3 * 5 * 3 * 3 * 4  # stride 2: only the 4 x 3 outputs it keeps
                     + 4 * 3 * 3 * 3 * 3 * 5  # per INPUT pixel: each is scattered through 3x3x3
                     + 8 * 6 * 3 * 7)
    tiny = keras.Model(image, h)
    assert forward_flops_per_image(tiny) == 2 * multiply_adds
    assert training_gflops_per_image(tiny) == pytest.approx(3 * 2 * multiply_adds / 1e9)


def test_flops_of_the_article_model(model):
    # The numbers the speed benchmark printed before the counter moved here.
    assert round(forward_flops_per_image(model) / 1e9, 3) == 0.258
    assert round(training_gflops_per_image(model), 3) == 0.773
