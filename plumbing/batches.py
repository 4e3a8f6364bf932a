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

Every pipeline takes its order from an EpochShuffle: a permutation keyed on (seed, epoch) alone,
computed in NumPy. A run resumed at epoch k then sees the orders an uninterrupted run saw, on
every backend and in every pipeline; a shuffle that draws each epoch's order from the previous
one (tf.data's reshuffle, a generator's next permutation) starts again from the first order after
a restart, and shifts by one under MirroredStrategy, whose model building opens an extra iterator.
"""

import math

import numpy as np

from plumbing.image_files import prepare_file

PREFETCHED_BATCHES = 2  # enough to hide the gather behind the step; more only uses memory


class EpochShuffle:
    """The order of the training images in each epoch: a permutation that (seed, epoch) alone
    fixes. recording.KeyedRandomness sets `epoch` as each epoch begins, before Keras asks the
    pipeline for that epoch's first batch."""

    def __init__(self, seed, epoch=0):
        self.seed, self.epoch = seed, epoch
        self._cached = (None, None, None)

    def order(self, count):
        """The epoch's order of `count` images (int64), the same on every backend."""
        if self._cached[:2] != (self.epoch, count):
            order = np.random.default_rng([self.seed, self.epoch]).permutation(count)
            self._cached = (self.epoch, count, order)
        return self._cached[2]


def in_memory_batches(inputs, batch_size, shuffle=None):
    """inputs (an image array, or a conditional model's {"image": ..., "label": ...} of arrays)
    in batches of batch_size, the last one smaller; in each epoch's EpochShuffle order when
    shuffle is given, else in order. fit() and evaluate() take it without batch_size."""
    import keras  # here, not at the top: data.py imports this module before Keras must load

    if keras.backend.backend() == "tensorflow":
        return _tf_data_batches(inputs, batch_size, shuffle)
    return _array_batches(inputs, batch_size, shuffle)


def _tf_data_batches(inputs, batch_size, shuffle):
    import tensorflow as tf

    arrays = tf.nest.map_structure(tf.constant, inputs)  # one copy, as Keras's own adapter makes
    count = len(tf.nest.flatten(inputs)[0])
    # Ordering indices, not images, keeps the pipeline small whatever the images' size.
    indices = tf.data.Dataset.range(count)
    if shuffle is not None:
        # The order is asked for when an iterator starts, which Keras does at each epoch's
        # start: after KeyedRandomness has set the epoch.
        indices = tf.data.Dataset.from_tensors(0).map(lambda _: tf.ensure_shape(
            tf.numpy_function(lambda: shuffle.order(count), [], tf.int64, stateful=True),
            [count])).unbatch()
    batches = indices.batch(batch_size).map(
        lambda chosen: tf.nest.map_structure(lambda array: tf.gather(array, chosen), arrays))
    options = tf.data.Options()
    options.autotune.enabled = False  # the cause of the idle waits: see the module docstring
    return batches.prefetch(PREFETCHED_BATCHES).with_options(options)


def _array_batches(inputs, batch_size, shuffle):
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.count = len(inputs["image"] if isinstance(inputs, dict) else inputs)

        def __len__(self):
            return math.ceil(self.count / batch_size)

        def __getitem__(self, index):
            order = np.arange(self.count) if shuffle is None else shuffle.order(self.count)
            chosen = order[index * batch_size:(index + 1) * batch_size]
            if isinstance(inputs, dict):
                return {name: array[chosen] for name, array in inputs.items()}
            return inputs[chosen]

    return ArrayBatches()


# ---- streamed from disk ------------------------------------------------------------------------
def streamed_input(paths, image_size, channels, batch_size, shuffle, labels=None):
    """A keras.utils.PyDataset that decodes each training batch from disk, in each epoch's
    EpochShuffle order; with labels, each batch is {"image": images, "label": labels}, a
    conditional model's input.

    Keras's own dataset class rather than a tf.data pipeline: it runs on every Keras backend, and
    its worker threads decode the next batches while the current one trains.
    """
    import keras

    class ImageFileBatches(keras.utils.PyDataset):
        def __init__(self):
            # The worker threads start with each epoch (Keras's adapter starts them after the
            # epoch's callbacks), so they read the epoch's order, not the previous one.
            super().__init__(workers=2, max_queue_size=8)

        def __len__(self):
            return math.ceil(len(paths) / batch_size)

        def __getitem__(self, index):
            chosen = shuffle.order(len(paths))[index * batch_size:(index + 1) * batch_size]
            images = np.stack([prepare_file(paths[i], image_size, channels) for i in chosen])
            if labels is None:
                return images
            return {"image": images, "label": labels[chosen].astype("int32")}

    return ImageFileBatches()
