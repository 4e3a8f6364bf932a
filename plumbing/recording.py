"""What a run records as it trains: a crash-proof backup to resume from, the history, the time
of each epoch, and TensorBoard's logs; training_callbacks puts them, the per-epoch figure and the
guards of stopping.py in the order they must run.

Everything is written through atomic_files, so a kill at any moment leaves every file whole.
"""

import csv
import os
import time

import keras

from plumbing import run_folder
from plumbing.atomic_files import (
    private_folder,
    read_json,
    write_atomically,
    write_json,
    writing,
)
from plumbing.devices import agreed
from plumbing.stopping import DivergenceGuard, PlannedSignal, PreemptionGuard


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

    In a JAX job of several processes, process 0 alone writes the backup, and every process
    resumes from it (out_dir must then be one folder that they share): they agree on its epoch
    before any loads it (devices.agreed).
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)

    def _save_model(self):
        if writing():
            os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch_{self._current_epoch:04d}.weights.h5"
        # Also in a process that does not write: saving makes variables, which is a collective
        # in a job of several JAX processes (atomic_files).
        write_atomically(os.path.join(self.backup_dir, name), self.model.save_weights)
        write_json(self._training_metadata_path,
                             {"epoch": self._current_epoch, "weights": name})
        if not writing():  # the previous epoch's file is process 0's
            return
        for old in os.listdir(self.backup_dir):
            if old.startswith("epoch_") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def _read_metadata(self):
        if not os.path.exists(self._training_metadata_path):
            return None
        return read_json(self._training_metadata_path)

    def _load_model(self):
        metadata = agreed(self._read_metadata, "the epoch to resume from (out_dir's backup)",
                          code=lambda metadata: metadata["epoch"] if metadata else 0)
        if metadata is None:
            return
        if not self.model.optimizer.built:
            # The optimizer's variables must exist before its saved state can be loaded.
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self.model._initial_epoch = metadata["epoch"]  # what Keras's own restore sets
        print(f"Resuming from the backup in {self.backup_dir}: {metadata['epoch']} epoch(s) "
              f"already done.", flush=True)


class KeyedRandomness(keras.callbacks.Callback):
    """Keys each epoch's randomness on (seed, epoch) as it begins: the batch order (the run's
    EpochShuffle) and the model's noise (the state of every keras.random.SeedGenerator in it).

    Keras saves no SeedGenerator state with the weights, so a resumed run would otherwise draw
    the first epoch's noise again. Each generator keeps its seed and starts epoch e at the count
    e * NOISE_DRAWS_PER_EPOCH; an epoch draws once per batch (and once per validation batch),
    far fewer. With the optimizer state that the backup restores, a run resumed at epoch k
    then trains exactly as the uninterrupted run did.
    """

    NOISE_DRAWS_PER_EPOCH = 2**20

    def __init__(self, shuffle):
        super().__init__()
        self.shuffle = shuffle

    def on_epoch_begin(self, epoch, logs=None):
        self.shuffle.epoch = epoch
        for variable in self.model.variables:
            if variable.path.endswith("seed_generator_state"):
                state = keras.ops.convert_to_numpy(variable.value)
                # Wrapped into 31 bits: PyTorch keeps the state as int32.
                state[1] = (epoch * self.NOISE_DRAWS_PER_EPOCH) % 2**31
                variable.assign(state)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv, one row per epoch, rewritten atomically at each epoch's end.

    Rows from an earlier, interrupted attempt at the same epochs are replaced, so a resumed run
    ends with exactly one row per epoch, without gaps or repeats.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        rows = [row for row in run_folder.read_history(self.path) if int(row["epoch"]) < epoch]
        rows.append({"epoch": epoch, **(logs or {})})
        columns = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})

        def write(temporary):
            with open(temporary, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

        write_atomically(self.path, write)


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` (training plus validation time) to each epoch's logs and history."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


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




def training_callbacks(out_dir, config, snapshots, shuffle):
    """train.py's callbacks, in the order they must run at each epoch's end. snapshots: the
    callback that draws each epoch's figure into out_dir/snapshots (plotting.EpochSnapshots);
    shuffle: the training batches' EpochShuffle."""
    def path(name):
        return os.path.join(out_dir, name)

    tensorboard = []
    if config["tensorboard"]:
        # Loss terms and the learning rate per epoch (Keras's callback), then the snapshots.
        # Keras writes its logs itself: a process that does not write the run folder logs into
        # its private folder, to make the same calls as process 0 (atomic_files), and leaves
        # the snapshots, pictures only, to process 0.
        logs = path(run_folder.TENSORBOARD_FOLDER) if writing() else private_folder()
        tensorboard = [keras.callbacks.TensorBoard(logs, write_graph=False)]
        if writing():
            tensorboard.append(TensorBoardSnapshots(path(run_folder.SNAPSHOT_FOLDER), logs))
    return [
        KeyedRandomness(shuffle),  # at each epoch's beginning; nothing at its end
        DivergenceGuard(),
        EpochTimer(),
        snapshots,
        *tensorboard,
        # The history is written before the backup: a crash between the two makes the resumed
        # run repeat (and replace) an epoch's row, never skip one.
        HistoryCSV(path(run_folder.HISTORY_FILE)),
        # Resumes an interrupted run from its last completed epoch when the command is repeated.
        AtomicBackupAndRestore(path(run_folder.BACKUP_FOLDER)),
        # The tests' planned stops (nothing unless $CVAE_TEST_SIGNAL plans one), just before the
        # guard that turns a SIGTERM into a stop at the end of the same batch.
        PlannedSignal(),
        # Last: when it stops the run, every other callback has seen the batch, and has closed
        # what it writes at the end of training (TensorBoard's files).
        PreemptionGuard(),
    ]
