"""Callbacks that run once per epoch (never per batch, to keep the training loop fast)."""

import os
import time

import keras
import numpy as np

from plotting import plot_training_snapshot


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` (training plus validation time) to each epoch's logs and history."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class EpochSnapshots(keras.callbacks.Callback):
    """Saves snapshots/epoch_NNN.png: the same test digits and the same prior draws every epoch."""

    def __init__(self, originals, latent_dim, folder, seed=0):
        super().__init__()
        self.originals = originals
        self.folder = folder
        # Fixed draws from the prior, so successive frames show the decoder change, not z.
        self.z = np.random.default_rng(seed).standard_normal(
            (len(originals), latent_dim)).astype("float32")

    def on_epoch_end(self, epoch, logs=None):
        reconstructions = self.model.predict_on_batch(self.originals)
        samples = keras.ops.convert_to_numpy(self.model.decoder(self.z, training=False))
        plot_training_snapshot(self.originals, reconstructions, samples, epoch + 1,
                               os.path.join(self.folder, f"epoch_{epoch + 1:03d}.png"))
