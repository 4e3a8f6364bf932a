"""The memory of encoder features (feature_memory.py): the coreset keeps rare vectors, the maps
are each location's distance to its nearest kept vector, the scorer and its ONNX file compute
them as NumPy does."""

import numpy as np
import pytest

import anomaly
import feature_memory
from conftest import require_module
from cvae import build_cvae


def images(count, shape=(16, 16, 1), seed=0):
    return np.random.default_rng(seed).random((count, *shape)).astype(np.float32)


def test_the_greedy_coreset_keeps_the_rare_vectors_and_covers_the_rest():
    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 0.01, (5000, 3))  # the background most locations show
    rare = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])  # a stroke's end, say
    vectors = np.concatenate([common, rare])
    chosen = feature_memory.greedy_coreset(vectors, 4, np.random.default_rng(1))
    assert sorted(chosen[chosen >= 5000]) == [5000, 5001, 5002]  # all three rare ones kept
    # A random choice of 4 would keep none of them, almost surely; and with more members, every
    # vector is within twice the best covering radius: here that of the greedy choice itself.
    chosen = feature_memory.greedy_coreset(vectors, 64, np.random.default_rng(1))
    distances = np.linalg.norm(vectors[:, None] - vectors[chosen][None], axis=-1).min(axis=1)
    assert distances.max() < 0.05 and len(set(chosen)) == 64
    assert len(feature_memory.greedy_coreset(vectors[:10], 64, rng)) == 10  # all, when few


def numpy_distance_maps(model, x, memory):
    """The same maps without keras.ops: every location's feature vector, brute force against
    every kept vector, bilinearly resized (scipy's zoom matches only at equal size, so the
    coarser maps are compared through their own resize below)."""
    features = feature_memory.feature_extractor(model.encoder).predict_on_batch(x)
    maps = {}
    for name in memory:
        local = np.asarray(features[name], dtype=np.float64)
        differences = local[..., None, :] - memory[name].astype(np.float64)  # (N, h, w, M, C)
        maps[name] = np.sqrt((differences ** 2).sum(axis=-1).min(axis=-1))  # (N, h, w)
    return maps


def test_an_encoder_with_one_convolution_gets_the_one_map_it_has():
    from keras import ops

    # 8x8 images: the strided encoder halves once, so it has no second convolution. (Keras hands
    # a one-output model's result back bare; the memory must still be of layers, not images.)
    model = build_cvae(2, (8, 8, 1), architecture="strided", seed=0)
    memory = feature_memory.fit_feature_memory(model, images(6, (8, 8, 1)), size=20)
    assert list(memory) == ["feature_distance_1"]
    assert memory["feature_distance_1"].shape == (20, model.encoder.layers[1].filters)
    scorer = anomaly.build_candidate_scorer(model, feature_memory=memory)
    assert "feature_distance_1" in scorer.map_names
    assert "feature_distance_2" not in scorer.map_names
    x = images(2, (8, 8, 1), seed=1)
    _, *maps = anomaly.anomaly_scores(scorer, x)
    got = dict(zip(scorer.map_names, maps))["feature_distance_1"]
    want = numpy_distance_maps(model, x, memory)["feature_distance_1"]  # 4x4, resized below
    resized = ops.convert_to_numpy(ops.image.resize(want[..., None].astype("float32"), (8, 8),
                                                    interpolation="bilinear"))[..., 0]
    np.testing.assert_allclose(got, resized, atol=2e-3, rtol=1e-3)


@pytest.mark.backend
@pytest.mark.parametrize("architecture", ["article", "strided"])
def test_the_scorer_maps_each_location_to_its_distance_from_the_memory(architecture):
    from keras import ops

    model = build_cvae(2, (16, 16, 1), architecture=architecture, seed=0)
    memory = feature_memory.fit_feature_memory(model, images(6), size=50)
    assert set(memory) == set(feature_memory.FEATURE_MAPS)
    assert all(len(kept) == 50 for kept in memory.values())
    x = images(3, seed=1)
    scorer = anomaly.build_candidate_scorer(model, feature_memory=memory)
    assert scorer.map_names == list(anomaly.PIXEL_MAPS)
    _, *maps = anomaly.anomaly_scores(scorer, x)
    got = dict(zip(scorer.map_names, maps))
    want = numpy_distance_maps(model, x, memory)
    for name, expected in want.items():
        if expected.shape[1:] != x.shape[1:3]:  # a strided layer's map, brought to the image
            expected = ops.convert_to_numpy(ops.image.resize(
                expected[..., None].astype(np.float32), x.shape[1:3], interpolation="bilinear"))
            expected = expected[..., 0]
        np.testing.assert_allclose(got[name], expected, atol=2e-3, rtol=1e-3)
    # Without a memory the scorer offers the CVAE's own maps only.
    assert anomaly.build_candidate_scorer(model).map_names == ["loss", "excess_loss",
                                                               "dissimilarity"]


def test_a_training_image_kept_whole_is_at_distance_zero_and_a_defect_is_not():
    model = build_cvae(2, (16, 16, 1), seed=0)
    x = images(2)
    memory = feature_memory.fit_feature_memory(model, x, size=10_000)  # every vector kept
    scoring = {"pixel_map": "feature_distance_1", "smoothing_sigma": 1.0, "image_score": "peak"}
    scorer = anomaly.build_anomaly_scorer(model, scoring=scoring, feature_memory=memory)
    defective = x.copy()
    defective[:, 4:8, 4:8] = 1.0  # a bright square no training image has there
    (clean_scores, clean_maps), (scores, maps) = (anomaly.anomaly_scores(scorer, images)
                                                  for images in (x, defective))
    assert np.all(clean_maps < 1e-2)
    assert np.all(scores > 10 * clean_scores)
    assert np.all(maps[:, 4:8, 4:8].mean(axis=(1, 2)) > 5 * maps[:, 12:, 12:].mean(axis=(1, 2)))


def test_a_scoring_that_needs_the_memory_says_so_without_it():
    from plumbing.errors import RunError

    model = build_cvae(2, (16, 16, 1), seed=0)
    scoring = {"pixel_map": "feature_distance_2", "smoothing_sigma": 1.0, "image_score": "peak"}
    with pytest.raises(RunError, match="feature_memory.npz.*evaluate the run again"):
        anomaly.build_anomaly_scorer(model, scoring=scoring)


@pytest.mark.slow
def test_the_onnx_file_computes_the_feature_maps_as_keras_does(tmp_path):
    require_module("onnxruntime", "pip install -r requirements.txt")
    import onnxruntime

    model = build_cvae(2, (16, 16, 1), architecture="strided", seed=0)
    memory = feature_memory.fit_feature_memory(model, images(6), size=50)
    x = images(4, seed=2)
    for name in feature_memory.FEATURE_MAPS:
        scoring = {"pixel_map": name, "smoothing_sigma": 1.0, "image_score": "peak"}
        scorer = anomaly.build_anomaly_scorer(model, scoring=scoring, feature_memory=memory)
        scores, maps = scorer.predict_on_batch(x)
        path = str(tmp_path / f"{name}.onnx")
        scorer.export(path, format="onnx", verbose=False)
        session = onnxruntime.InferenceSession(path)
        onnx_scores, onnx_maps = session.run(None, {session.get_inputs()[0].name: x})
        np.testing.assert_allclose(onnx_maps, maps, atol=1e-3)
        np.testing.assert_allclose(onnx_scores, scores, atol=1e-3)
