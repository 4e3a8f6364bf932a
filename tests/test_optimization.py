import numpy as np
import pytest

from plumbing.optimizer import (
    FINAL_LR_FRACTION,
    LR_SCHEDULES,
    OPTIMIZERS,
    learning_rate_schedule,
    make_optimizer,
)


def rates(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_warmup_then_cosine_decay():
    schedule = learning_rate_schedule(1e-3, total_steps=1000, warmup_steps=100, schedule="cosine")
    warmup = rates(schedule, [0, 50, 100])
    np.testing.assert_allclose(warmup, [0.0, 5e-4, 1e-3], rtol=1e-5, atol=1e-12)
    later = rates(schedule, range(100, 1001, 100))
    assert np.all(np.diff(later) < 0)  # decays monotonically after the peak
    assert later[-1] == pytest.approx(FINAL_LR_FRACTION * 1e-3, rel=1e-4)
    # Halfway through the decay a cosine is at the mean of its start and end.
    assert float(schedule(550)) == pytest.approx((1 + FINAL_LR_FRACTION) / 2 * 1e-3, rel=1e-4)


def test_warmup_then_constant():
    schedule = learning_rate_schedule(1e-3, total_steps=1000, warmup_steps=10,
                                      schedule="constant")
    np.testing.assert_allclose(rates(schedule, [0, 5, 10, 500, 1000]),
                               [0.0, 5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-5, atol=1e-12)
    assert learning_rate_schedule(1e-3, 1000, warmup_steps=0, schedule="constant") == 1e-3


@pytest.mark.backend  # written in keras.ops, so it must compute the same on every backend
@pytest.mark.parametrize("cooldown_share", [0.2, 0.4, 1.0])
def test_warmup_stable_then_a_square_root_cooldown(cooldown_share):
    schedule = learning_rate_schedule(1e-3, total_steps=1000, warmup_steps=100, schedule="wsd",
                                      cooldown_share=cooldown_share)
    np.testing.assert_allclose(rates(schedule, [0, 50, 100]), [0.0, 5e-4, 1e-3],
                               rtol=1e-5, atol=1e-12)
    # A cool-down asked to start before the warm-up ends starts when it ends.
    cooldown_start = max(100, round(1000 * (1 - cooldown_share)))
    # The peak is held from the end of the warm-up to the start of the cool-down.
    np.testing.assert_allclose(rates(schedule, range(100, cooldown_start + 1, 50)), 1e-3,
                               rtol=1e-6)
    cooldown = rates(schedule, range(cooldown_start, 1001, 20))
    assert np.all(np.diff(cooldown) < 0)
    # Halfway through the cool-down: 1 - sqrt(1/2) of the peak, not the half a line would give.
    assert float(schedule((cooldown_start + 1000) // 2)) == pytest.approx(
        (1 - np.sqrt(0.5)) * 1e-3, rel=1e-4)
    np.testing.assert_allclose(rates(schedule, [1000, 1500]), FINAL_LR_FRACTION * 1e-3,
                               rtol=1e-5)


def test_a_wsd_run_shorter_than_its_warmup_keeps_its_slow_start_as_cosine_does():
    schedule = learning_rate_schedule(1e-3, total_steps=10, warmup_steps=500, schedule="wsd")
    np.testing.assert_allclose(rates(schedule, [5, 9, 10]), [1e-5, 1.8e-5, 2e-5], rtol=1e-4)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate_schedule(1e-3, 100, schedule="linear")
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("adamw", 1e-3, 100)
    import keras

    assert isinstance(make_optimizer("rmsprop", 1e-3, 100), keras.optimizers.RMSprop)


def test_a_run_shorter_than_the_warmup_keeps_its_slow_start():
    schedule = learning_rate_schedule(1e-3, total_steps=10, warmup_steps=500, schedule="cosine")
    np.testing.assert_allclose(rates(schedule, [5, 10]), [1e-5, 2e-5], rtol=1e-4)


@pytest.mark.parametrize(
    "name, schedule", [(name, "cosine") for name in sorted(OPTIMIZERS)]
    + [("rmsprop", schedule) for schedule in LR_SCHEDULES if schedule != "cosine"])
def test_the_fused_update_computes_what_keras_computes(name, schedule):
    import keras

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(300, 7)).astype("float32"), rng.normal(size=(7,)).astype("float32")]
    gradients = [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(4)]
    results = {}
    for fused in (False, True):
        weights = [keras.Variable(w) for w in start]
        # Four steps: two of warm-up, then the peak, then (for wsd) the cool-down.
        optimizer = make_optimizer(name, 1e-2, total_steps=4, warmup_steps=2, fused=fused,
                                   schedule=schedule)
        for step_gradients in gradients:
            optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g)
                                           for g in step_gradients], weights))
        # The first call builds the optimizer on Keras's own path; later ones must be compiled.
        assert (getattr(optimizer, "_compiled_apply", None) is not None) == fused
        assert int(optimizer.iterations) == len(gradients)
        results[fused] = [w.numpy() for w in weights]
    moved = np.abs(results[False][0] - start[0]).max()
    assert moved > 1e-3  # the steps did something
    for plain, fused in zip(results[False], results[True]):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-7)


def test_fit_takes_the_fused_path_and_trains_the_model_as_keras_would():
    import keras

    from cvae import build_cvae
    from plumbing.arrays import MNIST_IMAGE_SHAPE

    images = np.random.default_rng(1).random((24, 28, 28, 1)).astype("float32")
    trained = {}
    for fused in (False, True):
        keras.utils.set_random_seed(0)
        model = build_cvae(2, MNIST_IMAGE_SHAPE, seed=0)
        optimizer = make_optimizer("rmsprop", 1e-3, total_steps=3, warmup_steps=1, fused=fused)
        model.compile(optimizer=optimizer)
        start = [w.numpy() for w in model.trainable_weights]
        model.fit(images, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert (getattr(optimizer, "_compiled_apply", None) is not None) == fused
        assert int(optimizer.iterations) == 3
        trained[fused] = [w.numpy() for w in model.trainable_weights]
    assert max(np.abs(a - b).max() for a, b in zip(trained[False], start)) > 1e-4
    for plain, fused in zip(trained[False], trained[True]):
        np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-5)
