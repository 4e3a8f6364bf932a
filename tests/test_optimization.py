import numpy as np
import pytest

from optimization import FINAL_LR_FRACTION, learning_rate_schedule, make_optimizer


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


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate_schedule(1e-3, 100, schedule="linear")
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("adamw", 1e-3, 100)
    assert type(make_optimizer("rmsprop", 1e-3, 100)).__name__ == "RMSprop"


def test_a_run_shorter_than_the_warmup_keeps_its_slow_start():
    schedule = learning_rate_schedule(1e-3, total_steps=10, warmup_steps=500, schedule="cosine")
    np.testing.assert_allclose(rates(schedule, [5, 10]), [1e-5, 2e-5], rtol=1e-4)
