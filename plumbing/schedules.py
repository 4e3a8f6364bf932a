"""The schedules Keras lacks: the warm-up/stable/decay learning rate (plumbing/optimizer.py
chooses between it and Keras's own schedules), and the KL warm-up of cvae.CVAE's loss.

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


def warmed_up_kl(kl, step_counter, warmup_steps):
    """The KL term with its gradient weighted by beta, rising linearly from 0 to 1 over the first
    warmup_steps training steps (Bowman et al. 2016, "Generating Sentences from a Continuous
    Space"; Sonderby et al. 2016, "Ladder Variational Autoencoders"), so the encoder can spread
    the classes apart before the prior pulls them in. Counts this step on step_counter.

    Its value stays the KL itself, so the loss that Keras reports, the history and the divergence
    check all see the negative ELBO, whatever beta is. The steps are counted in a variable of the
    model's rather than read from the optimizer, whose iteration count is not part of the loss's
    state on JAX (it would be traced as a constant).
    """
    step_counter.assign_add(1.0)
    beta = ops.minimum(ops.convert_to_tensor(step_counter) / warmup_steps, 1.0)
    return beta * kl + ops.stop_gradient((1.0 - beta) * kl)
