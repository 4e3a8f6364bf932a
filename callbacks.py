"""Callbacks for a run that survives crashes and reports honestly.

Only DivergenceGuard looks at every batch, and it does no more than read the loss Keras has
already computed; everything else runs once per epoch.
"""

import csv
import os
import signal
import time

import keras
import numpy as np

import measures
import run_files
from plotting import plot_training_snapshot, save_gif


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, made crash-proof.

    Keras writes its backup weights in place, so a kill during the write leaves a broken file,
    and a kill between the weights and its epoch file leaves the two disagreeing. Here each
    epoch's weights (with the optimizer state) go to a new file, written to a temporary name and
    renamed; only then is the small metadata file that names it replaced, atomically, and only
    then is the previous epoch's file deleted. Whenever a kill lands, the metadata names a
    complete file of the epoch it states. The backup is kept after training (Keras would delete
    it in on_train_end): train.py removes it once the run's evaluation is written, so a crash
    during evaluation resumes at the evaluation instead of retraining.
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch_{self._current_epoch:04d}.weights.h5"
        run_files.write_atomically(os.path.join(self.backup_dir, name), self.model.save_weights)
        run_files.write_json(self._training_metadata_path,
                             {"epoch": self._current_epoch, "weights": name})
        for old in os.listdir(self.backup_dir):
            if old.startswith("epoch_") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def _load_model(self):
        if not os.path.exists(self._training_metadata_path):
            return
        metadata = run_files.read_json(self._training_metadata_path)
        if not self.model.optimizer.built:
            # The optimizer's variables must exist before its saved state can be loaded.
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self.model._initial_epoch = metadata["epoch"]  # what Keras's own restore sets
        print(f"Resuming from the backup in {self.backup_dir}: {metadata['epoch']} epoch(s) "
              f"already done.", flush=True)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv, one row per epoch, rewritten atomically at each epoch's end.

    Rows from an earlier, interrupted attempt at the same epochs are replaced, so a resumed run
    ends with exactly one row per epoch, without gaps or repeats.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        rows = [row for row in run_files.read_history(self.path) if int(row["epoch"]) < epoch]
        rows.append({"epoch": epoch, **(logs or {})})
        columns = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})

        def write(temporary):
            with open(temporary, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

        run_files.write_atomically(self.path, write)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message names where and what to change."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops at the first batch whose loss is not finite, before that batch's weights are saved.

    Raising (rather than setting stop_training) ends fit() before the backup callback of the
    same epoch runs, so weights with NaNs are never saved over the last good backup.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check((logs or {}).get("loss"), f"batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        # A batch's loss is computed before its update: the last update of the epoch shows up
        # only in the validation loss. Checked before the backup callback saves the weights.
        self._check((logs or {}).get("val_loss"), "the test-set evaluation at its end")

    def _check(self, loss, where):
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingDiverged(
                f"The loss became {float(loss)} in epoch {self.epoch + 1}, {where}: training "
                f"diverged. The usual cause is a learning rate too high for the first steps: "
                f"lower --learning_rate or raise --warmup_steps."
            )


class Preempted(KeyboardInterrupt):
    """SIGTERM arrived: how cluster schedulers and preemptible machines stop a job, a little
    before they kill it. A KeyboardInterrupt, so that it takes Ctrl-C's way out of train.py."""


class PreemptionGuard(keras.callbacks.Callback):
    """From its creation on, SIGTERM stops the run as Ctrl-C does, by raising Preempted; a second
    SIGTERM kills the process at once, as a second Ctrl-C aborts.

    During fit() the signal handler only takes note, and the end of the current batch raises
    (so an epoch whose validation it interrupts is still backed up before the next batch):
    an exception raised by the handler itself surfaces wherever the main thread happens to be,
    and inside some library calls it is swallowed (JAX's copy of a loss to NumPy was measured
    to swallow it, and training went on). Outside fit() the handler raises at once.
    """

    def __init__(self):
        super().__init__()
        self.received = False
        self.training = False
        signal.signal(signal.SIGTERM, self._take_note)

    def _take_note(self, signal_number, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.received = True
        if not self.training:
            raise Preempted()

    def _stop_if_received(self):
        if self.received:
            self.training = False
            raise Preempted()

    def on_train_begin(self, logs=None):
        self.training = True

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_received()

    def on_train_end(self, logs=None):
        self.training = False
        self._stop_if_received()  # arrived after the last batch: stop before the evaluation


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` (training plus validation time) to each epoch's logs and history."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class EpochSnapshots(keras.callbacks.Callback):
    """Saves snapshots/epoch_NNN.png, the same test images and the same prior draws every epoch,
    and stitches every frame so far into training.gif, so that even an interrupted run has it.

    originals: the images drawn; labels: their classes (None without labels), which a
    conditional model is given, and in which it decodes the prior draws too.
    """

    def __init__(self, originals, labels, latent_dim, folder, gif_path, seed=0):
        super().__init__()
        self.originals = originals
        self.labels = labels
        self.folder = folder
        self.gif_path = gif_path
        # Fixed draws from the prior, so successive frames show the decoder change, not z.
        self.z = np.random.default_rng(seed).standard_normal(
            (len(originals), latent_dim)).astype("float32")

    def on_epoch_end(self, epoch, logs=None):
        labels = self.labels if self.model.conditional else None
        reconstructions = measures.reconstruct(self.model, self.originals, labels)
        samples = measures.decode(self.model, self.z, labels=labels)
        plot_training_snapshot(self.originals, reconstructions, samples, epoch + 1,
                               os.path.join(self.folder, f"epoch_{epoch + 1:03d}.png"))
        frames = sorted(name for name in os.listdir(self.folder)
                        if name.startswith("epoch_") and name.endswith(".png"))
        save_gif([os.path.join(self.folder, name) for name in frames], self.gif_path)


class TensorBoardSnapshots(keras.callbacks.Callback):
    """Adds each epoch's snapshot figure to TensorBoard's images tab.

    Keras's TensorBoard callback logs scalars only; images need TensorFlow's summary writer, so
    this is the one place that asks for TensorFlow whatever the Keras backend (TensorBoard itself
    comes with it).
    """

    def __init__(self, snapshot_folder, log_dir):
        super().__init__()
        self.snapshot_folder = snapshot_folder
        self.log_dir = log_dir

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        path = os.path.join(self.snapshot_folder, f"epoch_{epoch + 1:03d}.png")
        with open(path, "rb") as f:
            image = tf.io.decode_png(f.read(), channels=3)[None]
        with tf.summary.create_file_writer(os.path.join(self.log_dir, "snapshots")).as_default():
            tf.summary.image("test images, reconstructions and prior samples", image,
                             step=epoch + 1)


def training_callbacks(out_dir, shown_x, shown_labels, config):
    """train.py's callbacks, in the order they must run at each epoch's end."""
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    tensorboard = []
    if config["tensorboard"]:
        # Loss terms and the learning rate per epoch (Keras's callback), then the snapshots.
        tensorboard = [
            keras.callbacks.TensorBoard(path(run_files.TENSORBOARD_FOLDER), write_graph=False),
            TensorBoardSnapshots(path(run_files.SNAPSHOT_FOLDER),
                                 path(run_files.TENSORBOARD_FOLDER))]
    return [
        DivergenceGuard(),
        EpochTimer(),
        EpochSnapshots(shown_x, shown_labels, config["latent_dim"], path(run_files.SNAPSHOT_FOLDER),
                       path(run_files.GIF_FILE), seed=config["seed"]),
        *tensorboard,
        # The history is written before the backup: a crash between the two makes the resumed
        # run repeat (and replace) an epoch's row, never skip one.
        HistoryCSV(path(run_files.HISTORY_FILE)),
        # Resumes an interrupted run from its last completed epoch when the command is repeated.
        AtomicBackupAndRestore(path(run_files.BACKUP_FOLDER)),
        # Last: when it stops the run, every other callback has seen the batch, and has closed
        # what it writes at the end of training (TensorBoard's files).
        PreemptionGuard(),
    ]
