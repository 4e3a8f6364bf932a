"""A model of patches (train.py's patch_size): the cutting and reassembling of patches.py, the
data cut for training, the scorer that scores whole images patch by patch, and the baselines
fitted on the same patches."""

import numpy as np
import pytest
from keras import ops

import anomaly as anomaly_detection
from anomaly_baselines import PatchWise, PCAResidual, fit_baselines
from cvae import build_cvae
from data import ImageData
from patches import (
    average_patch_maps,
    cut_into_patches,
    patch_corners,
    patch_positions,
    patch_size_of,
    patches_of_each_image,
)
from plumbing.errors import ConfigError
from plumbing.train_config import read_config


@pytest.mark.parametrize("side, size, corners", [
    (64, 32, [0, 16, 32]),  # the stride lands on the far edge
    (28, 12, [0, 6, 12, 16]),  # it does not: one more patch, flush with the edge
    (28, 28, [0]),
    (9, 1, list(range(9))),
])
def test_patches_overlap_by_half_and_reach_the_far_edge(side, size, corners):
    assert patch_corners(side, size) == corners


def test_a_patch_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        patch_corners(16, 17)


def test_patches_are_cut_patch_by_patch_and_averaged_back_where_they_overlap():
    rng = np.random.default_rng(0)
    images = rng.random((3, 28, 20, 2)).astype("float32")
    cut = ops.convert_to_numpy(cut_into_patches(images, 12))
    positions = patch_positions((28, 20), 12)
    assert cut.shape == (len(positions) * 3, 12, 12, 2)
    top, left = positions[4]
    np.testing.assert_array_equal(cut[4 * 3 + 2], images[2, top:top + 12, left:left + 12])
    # Each patch's own pixels, averaged back: every pixel is its patches' common value.
    back = ops.convert_to_numpy(average_patch_maps(cut[..., 1], (28, 20)))
    np.testing.assert_allclose(back, images[..., 1], rtol=0, atol=1e-6)
    # Maps that differ from patch to patch: each pixel gets the mean over the patches over it.
    numbered = np.repeat(np.arange(len(positions), dtype="float32"), 3)[:, None, None]
    maps = np.broadcast_to(numbered, (len(cut), 12, 12))
    expected = np.zeros((28, 20)), np.zeros((28, 20))
    for index, (top, left) in enumerate(positions):
        expected[0][top:top + 12, left:left + 12] += index
        expected[1][top:top + 12, left:left + 12] += 1
    averaged = ops.convert_to_numpy(average_patch_maps(maps, (28, 20)))
    np.testing.assert_allclose(averaged, np.broadcast_to(expected[0] / expected[1], (3, 28, 20)),
                               rtol=1e-6)
    # The order of a split: image by image, each image's patches in cut order.
    by_image = patches_of_each_image(images, 12)
    np.testing.assert_array_equal(by_image[2 * len(positions) + 4], cut[4 * 3 + 2])


def small_inspection_data(seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, 24, 24), np.float32)
    masks[3:, 2:6, 2:6] = 1
    return ImageData(image_shape=(24, 24, 1), x_train=rng.random((10, 24, 24, 1), "float32"),
                     y_train=None, x_test=rng.random((6, 24, 24, 1), "float32"),
                     y_test=np.array([0, 0, 0, 1, 1, 1]), class_names=["good", "dent"],
                     description="a test set", x_val=rng.random((4, 24, 24, 1), "float32"),
                     test_masks=masks, has_mask=np.ones(6, bool))


def test_in_patches_cuts_every_split_and_keeps_the_whole_images():
    data = small_inspection_data()
    patched = data.in_patches(16)  # corners 0 and 8 on each side: 4 patches an image
    assert patched.image_shape == (16, 16, 1) and patched.whole is data
    assert (patched.num_train, len(patched.x_val), len(patched.x_test)) == (40, 16, 24)
    # Image by image; the defect (rows and columns 2-5) lies in the first patch only.
    assert patched.y_test.tolist() == [0, 0, 0, 0] * 3 + [1, 0, 0, 0] * 3
    np.testing.assert_array_equal(patched.x_test[5 * 4 + 3], data.x_test[5, 8:24, 8:24])
    assert not patched.inspection  # the evaluation scores data.whole, with its masks
    summary = patched.summary()
    assert summary["image_shape"] == [16, 16, 1] and summary["train_images"] == 40
    assert summary["patches_of"] == data.summary()


def test_in_patches_refuses_a_patch_larger_than_the_images_or_streamed_images():
    data = small_inspection_data()
    with pytest.raises(ConfigError, match="patch_size=32 is larger than the images"):
        data.in_patches(32)
    streamed = ImageData((24, 24, 1), None, None, data.x_test, None, None, "a folder",
                         train_files=["a.png"])
    with pytest.raises(ConfigError, match="streamed from disk"):
        streamed.in_patches(16)


def test_patch_size_below_8_is_refused_on_the_command_line():
    import train

    def config(*argv):
        return read_config(train.HYPERPARAMETERS, train.__annotations__, list(argv))

    assert config()["patch_size"] is None and config("--patch_size=8")["patch_size"] == 8
    with pytest.raises(ConfigError, match="patch_size must be None .* or at least 8 pixels, not 4"):
        config("--patch_size=4")


def test_the_scorer_of_a_model_of_patches_scores_each_patch_and_averages_them():
    data = small_inspection_data()
    model = build_cvae(4, (16, 16, 1), "strided", seed=0, likelihood="discretized_logistic")
    assert patch_size_of(model, (24, 24, 1)) == 16 and patch_size_of(model, (16, 16, 1)) is None
    x = data.x_test
    whole = anomaly_detection.build_candidate_scorer(model, image_shape=x.shape[1:])
    scores, *maps = whole.predict_on_batch(x)
    assert scores.shape == (6,) and all(m.shape == (6, 24, 24) for m in maps)
    # The same, by hand: the patch scorer on every patch, then the mean score and the maps
    # averaged where the patches overlap.
    patches = ops.convert_to_numpy(cut_into_patches(x, 16))
    patch_scores, *patch_maps = anomaly_detection.build_candidate_scorer(model).predict_on_batch(
        patches)
    np.testing.assert_allclose(scores, patch_scores.reshape(4, 6).mean(axis=0), rtol=1e-5)
    for got, per_patch in zip(maps, patch_maps):
        np.testing.assert_allclose(
            got, ops.convert_to_numpy(average_patch_maps(per_patch, (24, 24))), rtol=1e-5,
            atol=1e-5)
    # The kept scorer smooths that map and takes its peak, as for a whole-image model.
    scoring = {"pixel_map": "dissimilarity", "smoothing_sigma": 1.0, "image_score": "peak"}
    kept_scores, kept_maps = anomaly_detection.build_anomaly_scorer(
        model, scoring=scoring, image_shape=x.shape[1:]).predict_on_batch(x)
    expected_scores, expected_maps = anomaly_detection.scored(
        scoring, scores, dict(zip(anomaly_detection.PIXEL_MAPS, maps)))
    np.testing.assert_allclose(kept_maps, expected_maps, atol=1e-4)
    np.testing.assert_allclose(kept_scores, expected_scores, atol=1e-4)


def test_baselines_of_patches_are_fitted_on_the_patches_and_averaged_back():
    data = small_inspection_data()
    baselines = fit_baselines(data.x_train, patch_size=16)
    assert set(baselines) == {"pca_residual_9", "nearest_neighbour", "pca_residual_32_patches",
                              "nearest_neighbour_patches"}
    pca = baselines["pca_residual_32_patches"]
    assert isinstance(pca, PatchWise) and pca.size == 16
    patches = ops.convert_to_numpy(cut_into_patches(data.x_train, 16))
    np.testing.assert_allclose(pca.baseline.mean, PCAResidual.fit(patches).mean)
    by_hand = PCAResidual.fit(patches).maps(ops.convert_to_numpy(cut_into_patches(data.x_test,
                                                                                  16)))
    np.testing.assert_allclose(pca.maps(data.x_test),
                               ops.convert_to_numpy(average_patch_maps(by_hand, (24, 24))),
                               rtol=1e-6, atol=1e-9)
    # A training patch is its own nearest neighbour: a training image's map is 0.
    assert np.abs(baselines["nearest_neighbour_patches"].maps(data.x_train[:2])).max() == 0
