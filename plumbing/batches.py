"""Every pipeline that feeds fit() and evaluate(), on every Keras backend: batches of images held
in memory, and batches decoded from image files on disk for a folder too large to hold.

In memory, on TensorFlow, they come from a tf.data pipeline built here, with tf.data's autotuning
turned off, instead of from Keras's own conversion of NumPy arrays, which leaves it on. With
TensorFlow 2.21, destroying an autotuned iterator waits for its tuning thread to finish its current
sleep, and those sleeps double from 10 ms up to 60 s. Keras makes a new iterator for every epoch and
every validation, so each of them could end in an idle wait of up to a minute. Measured in
docs/speed.md: a 60-step fit() lasted exactly 20.5 s instead of 11.5 s in about half the runs, and a
150-step one 41.0 s instead of 28.5 s. With tuning off, none did. The pipeline has nothing to tune
anyway: it gathers a batch from one array and prefetches two.

JAX and PyTorch do not use tf.data for arrays, so there the batches are a keras.utils.PyDataset
that slices the arrays, which works the same on both.
"""

import math

import numpy as np

from plumbing.image_files import prepare_file

PREFETCHED_BATCHES = 2  # enough to hide the gather behind the step; more only uses memory


def in_memory_batches(inputs, batch_size, shuffle_seed=None):
    """inputs (an image array, or a conditional model's {"image": ..., "label": ...} of arrays)
    in batches of batch_size, the last one smaller; shuffled again every epoch when shuffle_seed
    is given, in an order that the seed fixes. fit() and evaluate() take it without batch_size."""
    import keras  # here, not at the top: data.py imports this module before Keras must load

    if keras.backend.backend() == "tensorflow":
        return _tf_data_batches(inputs, batch_size, shuffle_seed)
    return _array_batches(inputs, batch_size, shuffle_seed)


def _tf_data_batches(inputs, batch_size, shuffle_seed):
    import tensorflow as tf

    arrays = tf.nest.map_structure(tf.constant, inputs)  # one copy, as Keras's own adapter makes
    count = len(tf.nest.flatten(inputs)[0])
    # Shuffling indices, not images, keeps the shuffle buffer small whatever the images' size.
    indices = tf.data.Dataset.range(count)
    if shuffle_seed is not None:
        indices = indices.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda chosen: tf.nest.map_structure(lambda array: tf.gather(array, chosen), arrays))
    options = tf.data.Options()
    options.autotune.enabled = False  # the cause of the idle waits: see the module docstring
    return batches.prefetch(PREFETCHED_BATCHES).with_options(options)


def _array_batches(inputs, batch_size, shuffle_seed):
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.count = len(inputs["image"] if isinstance(inputs, dict) else inputs)
            self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
            self.on_epoch_end()

        def __len__(self):
            return math.ceil(self.count / batch_size)

        def __getitem__(self, index):
            chosen = self.order[index * batch_size:(index + 1) * batch_size]
            if isinstance(inputs, dict):
                return {name: array[chosen] for name, array in inputs.items()}
            return inputs[chosen]

        def on_epoch_end(self):
            self.order = (np.arange(self.count) if self.rng is None
                          else self.rng.permutation(self.count))

    return ArrayBatches()


# ---- streamed from disk ------------------------------------------------------------------------
def streamed_input(paths, image_size, channels, batch_size, seed, labels=None):
    """A keras.utils.PyDataset that decodes each training batch from disk, shuffled per epoch;
    with labels, each batch is {"image": images, "label": labels}, a conditional model's input.

    Keras's own dataset class rather than a tf.data pipeline: it runs on every Keras backend, and
    its worker threads decode the next batches while the current one trains.
    """
    import keras

    class ImageFileBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=2, max_queue_size=8)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(paths))

        def __len__(self):
            return math.ceil(len(paths) / batch_size)

        def __getitem__(self, index):
            chosen = self.order[index * batch_size:(index + 1) * batch_size]
            images = np.stack([prepare_file(paths[i], image_size, channels) for i in chosen])
            if labels is None:
                return images
            return {"image": images, "label": labels[chosen].astype("int32")}

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(paths))

    return ImageFileBatches()
