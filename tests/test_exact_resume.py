"""A run killed after each epoch in turn, and resumed each time, is the run that was never
interrupted: the same history and the same final weights, on every backend, on one device and
data-parallel. The batch order and the noise are keyed on (seed, epoch) (batches.EpochShuffle,
recording.KeyedRandomness); the weights and the optimizer's state come back from the backup.
The runs use the strided architecture: the machinery under test does not depend on the
architecture, and it is 14x cheaper than the article's.
"""

import csv
import os
import signal

import h5py
import keras
import numpy as np
import pytest

from conftest import backed_up_epochs, fake_mnist_arrays, run_script, start_train

pytestmark = [pytest.mark.slow, pytest.mark.backend]

# Keras 3.15 has no data-parallel engine for PyTorch (plumbing/devices.py).
DISTRIBUTIONS = [[]] + ([] if keras.backend.backend() == "torch" else
                        [["--distribute=data_parallel", "--virtual_devices=2"]])


def history(out_dir):
    """history.csv's rows without the wall-clock column, as written (exact decimal text)."""
    with open(out_dir / "history.csv") as f:
        return [{key: value for key, value in row.items() if key != "epoch_seconds"}
                for row in csv.DictReader(f)]


def weights(out_dir):
    """Every array of the final weights file, by its path in the file."""
    arrays = {}
    with h5py.File(out_dir / "cvae.weights.h5") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=["one_device", "data_parallel"][
    :len(DISTRIBUTIONS)])
def test_a_run_killed_after_each_epoch_and_resumed_is_the_uninterrupted_run(tmp_path,
                                                                           distribution):
    data_path = tmp_path / "mnist.npz"
    np.savez(data_path, **fake_mnist_arrays(n_train=256, n_test=64))
    # The optimizer's whole state takes part: RMSprop's averages, the weights' moving average,
    # the weight decay and the schedule's step count; and the KL warm-up's step count, its 12
    # steps running into epoch 2.
    common = [f"--data_path={data_path}", "--architecture=strided", "--epochs=3",
              "--batch_size=32", "--warmup_steps=5", "--ema_momentum=0.9", "--weight_decay=0.5",
              "--kl_warmup_steps=12", *distribution]
    uninterrupted = tmp_path / "uninterrupted"
    result = run_script("train.py", *common, f"--out_dir={uninterrupted}")
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = tmp_path / "resumed"
    arguments = [*common, f"--out_dir={resumed}"]
    # Killed in the first batch of epochs 2 and 3: each restart resumes from the epoch before.
    for epoch in (2, 3):
        process = start_train(arguments, stop_at=f"SIGKILL@{epoch}.1")
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == -signal.SIGKILL, stderr[-3000:]
        # Killed without warning: what the backup and history.csv hold is every epoch done.
        assert backed_up_epochs(resumed) == epoch - 1
        assert [int(row["epoch"]) for row in history(resumed)] == list(range(epoch - 1))
        assert not (resumed / "metrics.json").exists()
    result = run_script("train.py", *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 epoch(s) already done" in result.stdout
    # Finished: the backup removed, and no temporary file of a write the kills cut short.
    assert not (resumed / "backup").exists()
    assert not [name for name in os.listdir(resumed) if ".tmp" in name]

    assert history(resumed) == history(uninterrupted)
    expected, got = weights(uninterrupted), weights(resumed)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
