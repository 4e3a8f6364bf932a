"""Step timing shared by the benchmarks (a module, not a script)."""

import time

import keras


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of every training step. It only reads a clock, so it costs nothing.

    Per-step times let the benchmark report the median step, which is immune to the pauses of a
    few seconds that this shared machine's host imposes every half-minute or so (the whole process
    sleeps, the CPU shows idle), and that would otherwise land in one variant's repetition.
    Every variant, the baseline included, runs with it. A per-batch callback makes Keras wait for
    each step's results before the next; on a CPU steps run synchronously anyway, on a GPU this
    hides the cost of the +guard variant's own per-batch check.
    """

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
