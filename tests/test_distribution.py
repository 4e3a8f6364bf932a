"""distribute=data_parallel on two virtual CPU devices: the same numbers as one device, the loss
still reconstruction + KL, a preempted run resumes, and PyTorch is refused in one paragraph.

The device count is fixed when a backend starts, so everything that needs two devices runs in a
fresh process (train.py, or the script below). JAX's CPU convolutions are slow: the runs here use
the strided architecture and a few dozen images.
"""

import csv
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import (
    ROOT,
    fake_mnist_arrays,
    read_train_config,
    reserved_port,
    run_script,
    start_train,
)

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
needs_data_parallel = pytest.mark.skipif(
    BACKEND == "torch", reason="Keras 3.15 has no data-parallel engine for PyTorch; "
                               "test_torch_is_refused checks that train.py says so")

# One device and two, from the same initial weights and on the same fixed batches, one fit()
# per batch; prints, as JSON, the largest differences and the largest |loss - (rec + kl)|.
EQUALITY_SCRIPT = """
import json, sys
import keras, numpy as np
sys.path.insert(0, ROOT)
from plumbing import devices as distribution
devices, distributed = distribution.start("data_parallel", virtual_devices=2)
from plumbing.batches import in_memory_batches
from cvae import build_cvae
from plumbing.optimizer import make_optimizer

x = (np.load(MNIST)["x_train"][:STEPS * 32, :, :, None] / 255).astype("float32")
# Seeded, so that every run compares the same weights: with random ones, a gradient that is
# nearly zero can round to either sign on one device and two, and RMSprop's first, sign-sized
# steps then part that weight by about 1e-5 (seen once in CI).
keras.utils.set_random_seed(0)

def build(fused):
    model = build_cvae(2, (28, 28, 1), "strided", seed=0)
    model.compile(optimizer=make_optimizer("rmsprop", 1e-3, total_steps=STEPS, warmup_steps=2,
                                           fused=fused))
    return model

one = build(fused=True)  # as train.py builds it for one device
with distributed():
    two = build(fused=False)
two.set_weights(one.get_weights())
losses, gaps = [], []
for step in range(STEPS):
    batch = in_memory_batches(x[step * 32:(step + 1) * 32], 32)
    first = one.fit(batch, verbose=0).history
    with distributed():
        second = two.fit(batch, verbose=0).history
    losses.append((first["loss"][0], second["loss"][0]))
    gaps.append(abs(second["loss"][0] - second["reconstruction_loss"][0] - second["kl_loss"][0]))
print(json.dumps({
    "devices": devices, "losses": losses, "gap": max(gaps),
    "loss": max(abs(a - b) for a, b in losses),
    "weights": max(float(np.abs(a - b).max()) for a, b in zip(one.get_weights(),
                                                               two.get_weights()))}))
"""


def train_arguments(data_path, out_dir, *extra):
    return [f"--data_path={data_path}", f"--out_dir={out_dir}", "--architecture=strided",
            "--batch_size=16", "--warmup_steps=2", *extra]


def read_history(out_dir):
    with open(out_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_bad_distribute_values_are_refused_in_one_paragraph():
    from plumbing.errors import ConfigError

    with pytest.raises(ConfigError, match="distribute must be None .* or data_parallel"):
        read_train_config(["--distribute=model_parallel"])
    with pytest.raises(ConfigError, match="virtual_devices must be None or at least 1"):
        read_train_config(["--distribute=data_parallel", "--virtual_devices=0"])


@pytest.mark.backend
def test_the_last_batch_is_cut_to_a_multiple_of_the_devices():
    from plumbing import devices as distribution
    from plumbing.batches import EpochShuffle, in_memory_batches

    images = np.arange(37, dtype="float32")[:, None]
    assert distribution.images_per_epoch(37, 8, 2) == 36  # batches of 8, 8, 8, 8, 4
    assert distribution.images_per_epoch(37, 8, 4) == 36
    assert distribution.images_per_epoch(33, 8, 2) == 32  # the last image alone is dropped
    even = distribution.even_batches(in_memory_batches(images, 8, EpochShuffle(0)), 2, 37, 8)
    # A tf.data.Dataset on TensorFlow, a keras.utils.PyDataset on the other backends.
    batches = even if BACKEND == "tensorflow" else (even[i] for i in range(len(even)))
    seen = [np.asarray(batch).ravel() for batch in batches]
    assert [len(batch) for batch in seen] == [8, 8, 8, 8, 4]
    assert len(set(np.concatenate(seen).tolist())) == 36  # shuffled, none twice


@pytest.mark.backend
@pytest.mark.slow
@needs_data_parallel
def test_two_devices_give_the_losses_and_weights_of_one(real_mnist_path):
    steps = 3
    code = (EQUALITY_SCRIPT.replace("ROOT", repr(ROOT)).replace("MNIST", repr(real_mnist_path))
            .replace("STEPS", str(steps)))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(measured)  # the differences, for the record (pytest -s)
    assert measured["devices"] == 2
    # A loss near 540 nats per image: float32 sums in another order differ in the 7th digit. A
    # loss not divided by the replicas would be twice as large; noise not split by replica
    # would change the reconstruction term by tenths of a nat.
    assert measured["loss"] < 1e-3
    assert measured["gap"] < 1e-3
    # RMSprop's first steps are about lr * sign(gradient): a wrong gradient moves weights by
    # about 1e-3; rounding alone leaves them within 1e-5.
    assert measured["weights"] < 1e-5
    first_losses = [pair[0] for pair in measured["losses"]]
    assert first_losses[-1] < first_losses[0]  # it trained


@pytest.mark.backend
@pytest.mark.slow
@needs_data_parallel
def test_a_preempted_data_parallel_run_resumes_and_evaluates_on_one_device(tmp_path):
    data_path = tmp_path / "mnist.npz"
    np.savez(data_path, **fake_mnist_arrays(n_train=67, n_test=21))
    out_dir = tmp_path / "run"
    # Batches of 16, 16, 16, 16 and 3, cut to 2; of the 21 test images, 20 are monitored.
    arguments = train_arguments(data_path, out_dir, "--epochs=3", "--distribute=data_parallel",
                                "--virtual_devices=2")

    process = start_train(arguments, stop_at="SIGTERM@2.1")  # stopped in the second epoch
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    assert "Data-parallel on 2 devices" in stdout
    assert "each epoch trains on 66 of the 67 images" in stdout
    assert "measured on the first 20 test images" in stdout
    assert "Stopped by SIGTERM" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert (out_dir / "cvae.weights.h5").exists() and (out_dir / "reconstructions.png").exists()

    result = run_script("train.py", *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch(s) already done" in result.stdout
    history = read_history(out_dir)
    assert [int(row["epoch"]) for row in history] == [0, 1, 2]
    for row in history:
        for prefix in ("", "val_"):
            total = float(row[f"{prefix}reconstruction_loss"]) + float(row[f"{prefix}kl_loss"])
            assert float(row[f"{prefix}loss"]) == pytest.approx(total, rel=1e-6)
    # Replicated, the loss would be reported twice over: about 2 * 784 * ln 2 nats.
    assert float(history[0]["loss"]) < 784 * np.log(2) * 1.2
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["test_negative_elbo"] == pytest.approx(
        metrics["test_reconstruction"] + metrics["test_kl"], rel=1e-6)
    scores = np.load(out_dir / "test_scores.npy")
    assert scores.shape == (21,)  # every test image, although 21 does not split in two

    # The commands that use a run work on one device.
    result = run_script("evaluate.py", str(out_dir), "--iwae_images=5", "--iwae_samples=2")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@needs_data_parallel
# The batch size is checked before the run folder is made, the image count once the data is read.
@pytest.mark.parametrize("setting, message, checked_before_the_folder", [
    ("--batch_size=15", "batch_size=15 does not split evenly across the 2 devices", True),
    ("--train_subset=1", "Only 1 training image(s) for the 2 devices", False)])
def test_what_cannot_split_across_devices_is_refused(tmp_path, fake_mnist_path, setting,
                                                     message, checked_before_the_folder):
    result = run_script("train.py", *train_arguments(
        fake_mnist_path, tmp_path / "run", setting, "--distribute=data_parallel",
        "--virtual_devices=2"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "cvae.weights.h5").exists()
    if checked_before_the_folder:
        assert not (tmp_path / "run").exists()


@pytest.mark.backend
@pytest.mark.skipif(BACKEND != "torch", reason="the refusal is for PyTorch only")
def test_torch_is_refused(tmp_path, fake_mnist_path):
    result = run_script("train.py", *train_arguments(
        fake_mnist_path, tmp_path / "run", "--distribute=data_parallel"))
    assert result.returncode == 2
    assert "not supported on the torch backend" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="TF_CONFIG is TensorFlow's")
def test_tensorflow_across_hosts_is_refused(tmp_path, fake_mnist_path):
    config = {"cluster": {"worker": ["localhost:23456", "localhost:23457"]},
              "task": {"type": "worker", "index": 0}}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *train_arguments(
            fake_mnist_path, tmp_path / "run", "--distribute=data_parallel")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CONFIG": json.dumps(config)})
    assert result.returncode == 2
    assert "TF_CONFIG is set" in result.stderr and "MultiWorkerMirroredStrategy" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.backend
@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="training across processes is implemented on JAX "
                                             "only (TensorFlow's is refused, see above)")
def test_two_jax_processes_train_as_one_device_does(tmp_path):
    """Two processes joined as two hosts would be, with one out_dir between them, as a shared
    file system gives it: stopped by a SIGTERM to one of them in their second epoch (both stop at
    that batch) and started again, they
    resume from process 0's backup and train as one device does; process 0 writes one run's
    files, and process 1 writes nothing."""
    import h5py

    data_path = tmp_path / "mnist.npz"
    np.savez(data_path, **fake_mnist_arrays(n_train=64, n_test=20))
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    # SGD: RMSprop's first steps would turn float rounding in tiny gradients into whole steps.
    options = [f"--data_path={data_path}", "--architecture=strided", "--epochs=2",
               "--batch_size=32", "--warmup_steps=0", "--optimizer=sgd",
               "--lr_schedule=constant", "--learning_rate=1e-4", "--tensorboard=True"]
    job = [*options, f"--out_dir={shared}", "--distribute=data_parallel"]
    with reserved_port() as port:
        # Preempted on one host only: the other must stop at the same batch, not wait for it.
        processes = start_jax_job(tmp_path / "stopped", port, job, shared, (None, "SIGTERM@2.1"))
        result = run_script("train.py", *options, f"--out_dir={alone}")  # meanwhile
        stopped = finish_jax_job(processes, tmp_path / "stopped")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [process.returncode for process in stopped] == [143, 143], stopped[0].stderr[-3000:]
    for process in stopped:  # process 0 too, unsignalled, in epoch 2 (process 0's history)
        assert "Stopped by SIGTERM" in process.stderr
        assert "1 of 2 epochs were" in process.stderr
    with reserved_port() as port:
        resumed = finish_jax_job(start_jax_job(tmp_path / "resumed", port, job, shared),
                                 tmp_path / "resumed")
    for process in resumed:
        assert process.returncode == 0, process.stderr[-3000:]
        assert "Data-parallel on 2 devices" in process.stdout  # one CPU device each
        assert "1 epoch(s) already done" in process.stdout  # from process 0's backup
    assert "Process 1 of 2: process 0 writes the run folder" in resumed[1].stdout
    assert f"Saved the run in {shared}/" in resumed[0].stdout
    assert "Saved the run" not in resumed[1].stdout
    assert f"Done; process 0 writes the run in {shared}/" in resumed[1].stdout

    assert stopped[1].writes == resumed[1].writes == set()  # nothing opened, renamed, deleted
    # Every file there was put in place by process 0, TensorBoard's too (TensorFlow writes them
    # itself, in C++, unseen by the audit, and names them after the writer's process id).
    for path in files_under(shared):
        if ".tfevents." in path.name:
            # events.out.tfevents.<time>.<host>.<pid>.<count>.v2
            assert path.name.split(".")[-3] in (str(stopped[0].pid), str(resumed[0].pid))
        else:
            assert str(path) in stopped[0].writes | resumed[0].writes
    # One run's files, those of the one-device run, and no temporary left over.
    assert run_files(shared) == run_files(alone)

    def weights(run):
        arrays = []
        with h5py.File(run / "cvae.weights.h5") as f:
            f.visititems(lambda name, item: arrays.append(item[()])
                         if isinstance(item, h5py.Dataset) else None)
        return arrays

    assert [row["epoch"] for row in read_history(shared)] == ["0", "1"]
    for row, row_alone in zip(read_history(shared), read_history(alone)):
        assert float(row["loss"]) == pytest.approx(float(row_alone["loss"]), abs=1e-3)
    assert max(np.abs(a - b).max() for a, b in zip(weights(shared), weights(alone))) < 1e-6


# train.py, run as `python train.py ...` runs it, under an audit hook (PEP 578) that prints to
# stderr each file the process opens for writing, renames, deletes or makes under FOLDER. Every
# write of the project begins with such a call (atomic_files: mkstemp, then os.replace); only
# the C libraries' writes into that temporary (HDF5's, TensorFlow's) raise no audit event.
AUDITED_TRAIN = """
import os, runpy, sys
FOLDER = os.path.abspath(sys.argv[1])
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = {"os.rename": 1, "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "shutil.rmtree": 0,
           "os.truncate": 0, "os.chmod": 0, "os.link": 1, "os.symlink": 1}

def audit(event, args):
    if event == "open":
        path, mode, flags = args
        if not ((mode and any(c in mode for c in "wax+")) or (flags or 0) & WRITES):
            return
    elif event in CHANGES:
        path = args[CHANGES[event]]
    else:
        return
    if isinstance(path, (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(FOLDER + os.sep) or path == FOLDER:
            sys.stderr.write(f"audit: {event} {path}\\n")

sys.addaudithook(audit)
sys.path.insert(0, ROOT)
sys.argv = [os.path.join(ROOT, "train.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start_jax_job(logs, port, arguments, audited_folder, stop_at=(None, None)):
    """The two train.py processes of one JAX job, its coordinator at port, each audited for its
    writes under audited_folder; stop_at: the signal each process sends itself, and when
    (start_train), or None.
    Their stdout and stderr go to files in logs, not to pipes, which would stall a process that
    fills one while the test waits for another."""
    logs.mkdir()
    processes = []
    for index in (0, 1):
        with open(logs / f"process{index}.out", "w") as out, \
                open(logs / f"process{index}.err", "w") as err:
            processes.append(subprocess.Popen(
                [sys.executable, "-c", AUDITED_TRAIN.replace("ROOT", repr(ROOT)),
                 str(audited_folder), *arguments],
                cwd=ROOT, stdout=out, stderr=err, text=True,
                env={**os.environ, "CVAE_TEST_SIGNAL": stop_at[index] or "",
                     "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
                     "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                     "KERAS_DISTRIBUTION_PROCESS_ID": str(index)}))
    return processes


def finish_jax_job(processes, logs, timeout=600):
    """Wait until every process has ended, or one has failed (the other would wait for it in a
    collective until the coordinator gives up, minutes later); then, for each: pid, returncode,
    stdout, stderr, and the paths its audit saw it write (writes)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            if any(p.returncode not in (None, 0, 143) for p in processes):
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    finished = []
    for index, process in enumerate(processes):
        stderr = (logs / f"process{index}.err").read_text()
        finished.append(SimpleNamespace(
            pid=process.pid, returncode=process.returncode, stderr=stderr,
            stdout=(logs / f"process{index}.out").read_text(),
            writes={line.split(" ", 2)[2] for line in stderr.splitlines()
                    if line.startswith("audit: ")}))
    return finished


def files_under(folder):
    return [path for path in folder.rglob("*") if path.is_file()]


def run_files(folder):
    """The files of a run folder, relative to it, TensorBoard's logs by their folder alone."""
    return {str(path.parent.relative_to(folder) / "events") if ".tfevents." in path.name
            else str(path.relative_to(folder)) for path in files_under(folder)}
