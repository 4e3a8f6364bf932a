"""A memory of the encoder's local features on normal images, and each pixel's distance to it:
the anomaly maps that find small local defects (issue 31, docs/anomaly-detection.md).

The idea is PatchCore's (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly
Detection"): keep a representative set of the feature vectors that normal images produce at
every location, and call a location anomalous as far as its own feature vector is from the
nearest kept one. PatchCore takes its features from a network pretrained on ImageNet; here they
are the CVAE encoder's own first and second convolutions, which see a 3x3 and a 5x5 (or, strided,
a 3x3 and a 7x7) neighbourhood of the image. Measured on the inspection sets, an untrained
encoder's features do nearly as well (docs/anomaly-detection.md): the strength is the
nearest-neighbour memory of local descriptors, not what the VAE learned, and the docs say so.

The memory is chosen greedily (k-center: each new member the vector farthest from those kept),
as PatchCore's coreset does, so that rare normal structures (a stroke's end, a brick's corner)
are kept as well as the background that most locations show. fit_feature_memory works in NumPy
once, after training; feature_distance_maps is keras.ops, so that the anomaly scorer computes
the maps inside its own graph, and the exported scorer.onnx with it (the memory a constant).
"""

import keras
import numpy as np
from keras import ops

# The maps offered to anomaly.choose_scoring, each from one of the encoder's first convolutions.
FEATURE_MAPS = {"feature_distance_1": 0, "feature_distance_2": 1}
# Vectors kept per layer. More is better and slower (the distances per image grow with it):
# on the grass crops, 1,024 / 4,096 / 16,384 reached a validation pixel AUROC of 0.89 / 0.92 /
# 0.95 (docs/anomaly-detection.md, "Local features and a memory").
MEMORY_SIZE = 16384
POOL_SIZE = 50_000  # random training vectors the memory is chosen among (greedy is O(pool * M))
POOL_IMAGES = 2_000  # training images whose features make the pool, at most


def feature_layers(encoder):
    """The names of the encoder's convolutions whose outputs FEATURE_MAPS use, in order."""
    convolutions = [layer.name for layer in encoder.layers
                    if isinstance(layer, keras.layers.Conv2D)]
    return convolutions[:len(FEATURE_MAPS)]


def feature_extractor(encoder):
    """image -> {map name: the output of its layer}, for the FEATURE_MAPS whose layer the encoder
    has (a strided encoder of small patches may have one convolution only): a view of the
    encoder, sharing its weights. The convolutions see the image alone (a conditional encoder
    adds its label after them). Named outputs, because Keras hands a one-element list back as
    the bare element."""
    layers = feature_layers(encoder)
    return keras.Model(encoder.inputs[0], {name: encoder.get_layer(layers[index]).output
                                           for name, index in FEATURE_MAPS.items()
                                           if index < len(layers)},
                       name="encoder_features")


def greedy_coreset(vectors, size, rng):
    """Indices of `size` rows of vectors (n, C) chosen by greedy k-center: start at a random
    row, then add the row farthest from every row already chosen (Gonzalez 1985; PatchCore's
    coreset subsampling). The largest distance from any row to its nearest chosen row is then
    within twice the best any `size` rows achieve."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) <= size:
        return np.arange(len(vectors))
    chosen = np.empty(size, dtype=np.int64)
    chosen[0] = rng.integers(len(vectors))
    nearest = np.full(len(vectors), np.inf, dtype=np.float32)  # squared distance to the kept
    for i in range(1, size):
        difference = vectors - vectors[chosen[i - 1]]
        nearest = np.minimum(nearest, np.einsum("ij,ij->i", difference, difference))
        chosen[i] = int(np.argmax(nearest))
    return chosen


def fit_feature_memory(model, x_train, patch_size=None, size=MEMORY_SIZE, seed=0):
    """{map name: (M, C) float32 memory} of the FEATURE_MAPS the encoder has (feature_extractor)
    from the normal training images (of their patches, for a model of patches): a random pool
    of POOL_SIZE locations' feature vectors, from at most POOL_IMAGES images, reduced to
    M = size by greedy_coreset."""
    from patches import patches_of_each_image

    rng = np.random.default_rng(seed)
    x = np.asarray(x_train, dtype=np.float32)
    if patch_size is not None:
        x = patches_of_each_image(x, patch_size)
    if len(x) > POOL_IMAGES:
        x = x[np.sort(rng.choice(len(x), POOL_IMAGES, replace=False))]
    features = feature_extractor(model.encoder).predict(x, batch_size=64, verbose=0)
    memory = {}
    for name in [name for name in FEATURE_MAPS if name in features]:  # a fixed order of draws
        vectors = np.asarray(features[name], dtype=np.float32)
        vectors = vectors.reshape(-1, vectors.shape[-1])  # (images * height * width, channels)
        if len(vectors) > POOL_SIZE:
            vectors = vectors[rng.choice(len(vectors), POOL_SIZE, replace=False)]
        memory[name] = vectors[greedy_coreset(vectors, size, rng)]
    return memory


def feature_distance_maps(image, encoder, memory):
    """{map name: (N, height, width)} for each map of the memory ({map name: (M, C)}, all of
    fit_feature_memory's or some): at each pixel, the Euclidean distance of the encoder's
    feature vector there to its nearest in the memory, for images (N, height, width, channels)
    as keras tensors. A strided layer's coarser map is resized to the image bilinearly."""
    features = feature_extractor(encoder)(image)
    height, width = image.shape[1:3]
    maps = {}
    for name, bank in memory.items():
        bank = np.asarray(bank, dtype=np.float32)  # (M, C), a constant of the graph
        local = ops.cast(features[name], "float32")  # (N, h, w, C)
        rows, columns, channels = local.shape[1:]
        flat = ops.reshape(local, (-1, rows * columns, channels))
        # |f - m|^2 = |f|^2 - 2 f.m + |m|^2, its minimum over the memory's vectors m.
        # (KerasTensors lead: a NumPy array on the left would try to convert them.)
        cross = ops.matmul(flat, bank.T)  # (N, h * w, M)
        squared = ops.sum(flat * flat, axis=-1) + ops.min(
            cross * -2.0 + np.einsum("ij,ij->i", bank, bank), axis=-1)
        distance = ops.reshape(ops.sqrt(ops.maximum(squared, 0.0)), (-1, rows, columns, 1))
        if (rows, columns) != (height, width):
            distance = ops.image.resize(distance, (height, width), interpolation="bilinear")
        maps[name] = distance[..., 0]
    return maps
