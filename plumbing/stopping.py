"""How a run stops: at a loss that is no longer finite, at Ctrl-C, or at SIGTERM (how schedulers
and preemptible machines end a job), and what it says then.

Nothing here saves over the last good state: a diverged run keeps the backup of its last
completed epoch, and an interrupted one is saved by train.py before the message below tells how
to resume it.
"""

import os
import signal
import sys

import keras
import numpy as np

from plumbing import devices, run_folder


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

    In a JAX job of several processes, the signal reaches each host at its own time, or only
    one of them; a process that stopped alone would leave the others waiting in the next
    collective. So after each batch the processes share whether any of them has received it
    (one all-gather of a flag, devices.any_process), and all stop at the same batch. Ctrl-C is
    not shared: it must reach every process (as a scheduler's or a terminal's signal to the
    whole job does).
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
        # `or self.received` read afterwards: a signal handled during the all-gather counts.
        self.received = devices.any_process(self.received) or self.received
        self._stop_if_received()

    def on_train_end(self, logs=None):
        # Shared while the handler still only takes note, so that the processes stop together.
        self.received = devices.any_process(self.received) or self.received
        self.training = False
        self._stop_if_received()  # arrived after the last batch: stop before the evaluation


def stopped_by(interruption):
    return ("Stopped by SIGTERM (how a scheduler or a preemptible machine ends a job)"
            if isinstance(interruption, Preempted) else "Interrupted")


def exit_code(interruption):
    """130 for Ctrl-C and 143 for SIGTERM, the codes a shell gives a process killed by each."""
    return 143 if isinstance(interruption, Preempted) else 130


def report_interrupted_training(interruption, config):
    """After Ctrl-C or SIGTERM during training, once train.py has saved the weights and the
    reconstructions: say how far the run got and how to resume it; returns the exit code."""
    def path(name):
        return os.path.join(config["out_dir"], name)

    done = len(run_folder.read_history(path(run_folder.HISTORY_FILE)))
    again = ("the same command without --overwrite=True" if config["overwrite"]
             else "the same command")
    print(f"\n{stopped_by(interruption)}. The current weights are in "
          f"{path(run_folder.WEIGHTS_FILE)} and the reconstructions in "
          f"{path(run_folder.RECONSTRUCTIONS_FILE)}. {done} of {config['epochs']} epochs were "
          f"completed; run {again} again to resume from there (the partial epoch is "
          f"repeated).", file=sys.stderr)
    return exit_code(interruption)


def report_interrupted_evaluation(interruption, out_dir):
    print(f"\n{stopped_by(interruption)} during the evaluation. Training is complete, and "
          f"its last epoch is backed up; run the same command again to evaluate, or "
          f"`python evaluate.py {out_dir}`.", file=sys.stderr)
    return exit_code(interruption)


def report_divergence(error, out_dir):
    """The weights now hold NaNs: nothing is saved over the last good state, which stays in the
    backup folder (the end of the last completed epoch). Returns the exit code, 3."""
    backup = os.path.join(out_dir, run_folder.BACKUP_FOLDER)
    kept = (f"The weights of the last completed epoch are kept in {backup}. "
            if os.path.exists(backup) else "No epoch was completed. ")
    print(f"error: {error} {kept}To start afresh with new settings, add --overwrite=True.",
          file=sys.stderr)
    return 3


def kill_on_sigterm():
    """From here on SIGTERM kills as it did before PreemptionGuard: only the mark of a finished
    run is left to write, and a run without it is evaluated again."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---- stops at a known step, for the tests ----------------------------------------------------
# The tests stop a run at a step they name, not at a moment of the clock, so that they test the
# same thing on a fast GPU and a slow CPU: CVAE_TEST_SIGNAL="SIGKILL@2.3" makes the run send
# itself SIGKILL at the end of the third batch of its second epoch; "SIGTERM@evaluation", SIGTERM
# once the trained weights are saved, as the evaluation starts. Unset, nothing happens.
TEST_SIGNAL_VARIABLE = "CVAE_TEST_SIGNAL"


def _planned_test_signal():
    """(signal number, where) from $CVAE_TEST_SIGNAL: where is (epoch, batch), 1-based, or
    "evaluation"; None when it is unset. A malformed plan stops the run at once, saying so."""
    planned = os.environ.get(TEST_SIGNAL_VARIABLE)
    if not planned:
        return None
    name, _, where = planned.partition("@")
    try:
        number = getattr(signal, name)
        if where != "evaluation":
            where = tuple(int(part) for part in where.split("."))
            assert len(where) == 2
    except (AttributeError, ValueError, AssertionError):
        raise ValueError(f"{TEST_SIGNAL_VARIABLE}={planned!r}: give NAME@EPOCH.BATCH or "
                         f"NAME@evaluation, for example SIGKILL@2.3.") from None
    return number, where


def send_test_signal_at(where):
    """Send the planned signal if it is planned for `where`."""
    planned = _planned_test_signal()
    if planned is not None and planned[1] == where:
        os.kill(os.getpid(), planned[0])


class PlannedSignal(keras.callbacks.Callback):
    """Sends the run the signal $CVAE_TEST_SIGNAL plans, at the end of the batch it names."""

    def __init__(self):
        super().__init__()
        self.planned = _planned_test_signal()  # read once, and checked before training starts

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.planned is not None and self.planned[1] == (self.epoch, batch + 1):
            os.kill(os.getpid(), self.planned[0])
