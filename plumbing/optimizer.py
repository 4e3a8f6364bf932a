"""The optimizer and its learning-rate schedule.

RMSprop at the article's 1e-3, reached by a linear warm-up from zero, held there, and decayed
over the last 40% of the run by default ("wsd", plumbing/schedules.py). Without the warm-up its
first, badly normalised steps make exp(z_log_var) overflow for some seeds; docs/warm-up.md derives
why and shows the measurement. Without a decay the last epochs jump by about 2 nats from epoch to
epoch. A cosine decay over the whole run also settles them, but spends most of the run below the
peak; holding the peak fits better in 10 epochs (docs/results.md, chosen on validation images).

The update is compiled with XLA (FusedUpdate): Keras runs RMSprop as about ten element-wise
kernels per variable, XLA fuses them into one loop per variable, which was 8-11% of a CPU training
step; docs/speed.md has the measurements. The arithmetic is the optimizer's own.
"""

# Keras is imported inside the functions, so that train.py can check an optimizer's name against
# these lists without waiting for TensorFlow to load.

# Keras optimizer classes by the names train.py accepts; rmsprop is the article's and our default.
OPTIMIZERS = {"rmsprop": "RMSprop", "adam": "Adam", "sgd": "SGD"}
LR_SCHEDULES = ("wsd", "cosine", "constant")
# Either decay ends at this fraction of the peak learning rate, not at zero, so the last steps
# still learn.
FINAL_LR_FRACTION = 0.01
# A short run (a small inspection set, say) would spend all its steps under the 500-step warm-up
# and never reach its peak rate. Its warm-up is cut to a fifth of its steps, but never below
# MIN_WARMUP_STEPS: RMSprop's running mean remembers about 10 steps, and 50 steps of warm-up
# kept five seeds from diverging (docs/warm-up.md).
WARMUP_SHARE = 5
MIN_WARMUP_STEPS = 50


def fitted_warmup(warmup_steps, total_steps):
    """The warm-up a run of total_steps uses: warmup_steps, cut to a fifth of the run when it
    is longer than that, but not below MIN_WARMUP_STEPS (nor above warmup_steps)."""
    return min(warmup_steps, max(MIN_WARMUP_STEPS, total_steps // WARMUP_SHARE))


def learning_rate_schedule(learning_rate, total_steps, warmup_steps=500, schedule="wsd",
                           cooldown_share=0.4):
    """Linear warm-up from 0 to learning_rate over warmup_steps, then cosine decay, constant, or
    wsd (constant, then a 1 - sqrt cool-down over the last cooldown_share of the steps)."""
    import keras

    # Taken as given; train.py fits it to a short run first (fitted_warmup).
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps - warmup_steps, 1),
            alpha=FINAL_LR_FRACTION,
        )
    if schedule == "constant":
        if warmup_steps == 0:
            return learning_rate
        # alpha=1 makes the "decay" a constant rate after the warm-up.
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0, warmup_target=learning_rate, warmup_steps=warmup_steps,
            decay_steps=1, alpha=1.0)
    if schedule == "wsd":
        from plumbing.schedules import WarmupStableDecay

        return WarmupStableDecay(learning_rate, total_steps, warmup_steps,
                                 cooldown_share=cooldown_share, final_fraction=FINAL_LR_FRACTION)
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}.")


class FusedUpdate:
    """Mix-in for a Keras optimizer: apply() runs as one XLA-compiled function (see the top).

    Only the known case is compiled: gradients for exactly the variables the optimizer was built
    on, which is what fit() passes on every step. Anything else (the first call that builds the
    optimizer, a different variable list) takes Keras's ordinary path.
    """

    def apply(self, grads, trainable_variables=None):
        import tensorflow as tf

        if not self.built or (trainable_variables is not None and not self._same_variables(
                trainable_variables)):
            return super().apply(grads, trainable_variables)
        if getattr(self, "_compiled_apply", None) is None:
            # The variables are captured rather than passed: tf.function cannot take Keras
            # variables as arguments, and they are the same objects on every step.
            self._compiled_apply = tf.function(
                lambda gradients: super(FusedUpdate, self).apply(gradients), jit_compile=True)
        return self._compiled_apply(list(grads))

    def _same_variables(self, trainable_variables):
        return [id(v) for v in trainable_variables] == [id(v) for v in self._trainable_variables]


def make_optimizer(name, learning_rate, total_steps, warmup_steps=500, schedule="wsd",
                   cooldown_share=0.4, fused=True, ema_momentum=None, weight_decay=0.0,
                   decayed=None, variables=None):
    """The named Keras optimizer, with its default settings but for the learning rate.

    fused=True (train.py's setting) compiles its update with XLA on the TensorFlow backend; the
    numbers it computes are the same up to float rounding order. On JAX the whole step is already
    one jitted function, and on PyTorch there is no XLA: both get Keras's plain optimizer, as
    fused=False does everywhere.

    ema_momentum: keep an exponential moving average of the weights (Polyak & Juditsky 1992),
    which Keras writes over the weights when fit() ends, so that the evaluation and every export
    use it. weight_decay: decoupled weight decay (Loshchilov & Hutter 2019), each step taking
    learning rate x weight_decay of each weight in `decayed` (a subset of `variables`, the model's
    trainable variables) and of none of the others; of every weight when decayed is None.
    """
    import keras

    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, not {name!r}.")
    settings = {"learning_rate": learning_rate_schedule(learning_rate, total_steps, warmup_steps,
                                                        schedule, cooldown_share)}
    if ema_momentum is not None:
        settings.update(use_ema=True, ema_momentum=ema_momentum)
    if weight_decay:
        settings["weight_decay"] = weight_decay
    keras_class = getattr(keras.optimizers, OPTIMIZERS[name])
    if fused and keras.backend.backend() == "tensorflow":
        # Named as Keras names the plain class ("rm_sprop"), so nothing downstream sees the
        # difference.
        settings["name"] = keras_class().name
        keras_class = type(f"Fused{keras_class.__name__}", (FusedUpdate, keras_class), {})
    optimizer = keras_class(**settings)
    if weight_decay and decayed is not None:
        if variables is None:
            raise ValueError("make_optimizer needs every trainable variable (variables) to "
                             "exclude those outside `decayed` from the weight decay.")
        decayed_ids = {id(variable) for variable in decayed}
        optimizer.exclude_from_weight_decay(
            var_list=[variable for variable in variables if id(variable) not in decayed_ids])
    return optimizer
