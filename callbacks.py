"""Callbacks for a run that survives crashes and reports honestly.

Only DivergenceGuard looks at every batch, and it does no more than read the loss Keras has
already computed; everything else runs once per epoch.
"""

import csv
import os
import time

import keras
import numpy as np

import run_files
from plotting import plot_training_snapshot


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, with crash-proof files and the epoch taken from the weights.

    Keras writes its backup weights in place, so a kill during the write leaves a broken file,
    and a kill between the weights and the epoch file leaves them disagreeing. Here the weights
    are written to a temporary file and renamed, and on restore the completed epoch is computed
    from the optimizer's step counter, which is saved inside the same weights file: the two can
    never disagree.
    """

    def __init__(self, backup_dir, steps_per_epoch):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=True)
        self.steps_per_epoch = steps_per_epoch
        self.restored_epoch = 0

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        run_files.write_atomically(self._weights_path, self.model.save_weights)
        run_files.write_json(self._training_metadata_path,
                             {"epoch": self._current_epoch, "batch": self._last_batch_seen})

    def _load_model(self):
        super()._load_model()
        if os.path.exists(self._weights_path):
            steps_done = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.restored_epoch = steps_done // self.steps_per_epoch
            self.model._initial_epoch = self.restored_epoch  # what Keras's own restore sets
            print(f"Resuming from the backup in {self.backup_dir}: {self.restored_epoch} "
                  f"epoch(s) already done ({steps_done} steps).", flush=True)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv, one row per epoch, rewritten atomically at each epoch's end.

    Rows from an earlier, interrupted attempt at the same epochs are replaced, so a resumed run
    ends with exactly one row per epoch, without gaps or repeats.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        rows = [row for row in read_history(self.path) if int(row["epoch"]) < epoch]
        rows.append({"epoch": epoch, **(logs or {})})
        columns = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})

        def write(temporary):
            with open(temporary, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

        run_files.write_atomically(self.path, write)


def read_history(path):
    """The rows of a history.csv as dicts of floats (epoch as int); [] if there is none."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed = {key: float(value) for key, value in row.items() if value not in ("", None)}
            parsed["epoch"] = int(parsed["epoch"])
            rows.append(parsed)
    return rows


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message names where and what to change."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops at the first batch whose loss is not finite, before that batch's weights are saved.

    Raising (rather than setting stop_training) skips on_train_end, so the backup of the last
    completed epoch is kept instead of being deleted as after a finished run.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingDiverged(
                f"The training loss became {float(loss)} in epoch {self.epoch + 1}, batch "
                f"{batch + 1}: training diverged. The usual cause is a learning rate too high "
                f"for the first steps: lower --learning_rate or raise --warmup_steps."
            )


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
