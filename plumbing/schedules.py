"""The warm-up/stable/decay learning rate, which Keras does not have (plumbing/optimizer.py
chooses between it and Keras's own schedules).

Written in keras.ops, so that it runs on every backend and inside the XLA-compiled update.
"""

import keras
from keras import ops


class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up from 0 to learning_rate, the peak held, then a cool-down over the last
    cooldown_share of the steps along 1 - sqrt of the progress through it (Hägele et al. 2024,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", found it the best
    of the cool-down shapes they tried), floored at final_fraction of the peak."""

    def __init__(self, learning_rate, total_steps, warmup_steps, cooldown_share,
                 final_fraction):
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.cooldown_share = cooldown_share
        self.final_fraction = final_fraction
        # Never before the warm-up ends, and at least one step long.
        self.cooldown_start = min(max(warmup_steps, round(total_steps * (1 - cooldown_share))),
                                  total_steps - 1)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warming = step / max(self.warmup_steps, 1)
        cooled = ops.sqrt(ops.clip((step - self.cooldown_start)
                                   / (self.total_steps - self.cooldown_start), 0.0, 1.0))
        fraction = ops.where(step < self.warmup_steps, warming,
                             ops.maximum(1.0 - cooled, self.final_fraction))
        return self.learning_rate * fraction

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "cooldown_share": self.cooldown_share,
                "final_fraction": self.final_fraction}
