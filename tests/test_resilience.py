"""A run survives Ctrl-C and SIGTERM, refuses to clobber other runs, stops on divergence, and
resumes with the bf16/float32 split it started with. (A run killed with kill -9 and resumed:
test_exact_resume.py, which checks the resumed run is the uninterrupted one.) The runs use the
strided architecture: the machinery under test does not depend on the architecture, and it is
14x cheaper than the article's."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import fake_mnist_arrays, folder_contents, run_script, start_train


def read_epochs(out_dir):
    path = out_dir / "history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def three_epoch_run(tmp_path):
    """(out_dir, train.py's arguments) of a run of 3 epochs of 15 steps on made-up digits: long
    enough to be stopped in its second epoch."""
    data_path = tmp_path / "mnist.npz"
    np.savez(data_path, **fake_mnist_arrays(n_train=480, n_test=60))
    out_dir = tmp_path / "run"
    return out_dir, [f"--data_path={data_path}", f"--out_dir={out_dir}",
                     "--architecture=strided", "--epochs=3", "--batch_size=32",
                     "--warmup_steps=5"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_then_the_same_command_resumes_and_finishes(tmp_path):
    out_dir, arguments = three_epoch_run(tmp_path)

    # 1. Ctrl-C during the second epoch stops the run cleanly
    process = start_train(arguments, stop_at="SIGINT@2.3")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and not (out_dir / "metrics.json").exists()
    assert read_epochs(out_dir) == [0]
    assert (out_dir / "cvae.weights.h5").exists() and (out_dir / "reconstructions.png").exists()

    # 2. the same command resumes after epoch 1 and finishes the run
    result = run_script("train.py", *arguments)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming" in result.stdout and "1 epoch(s) already done" in result.stdout
    assert read_epochs(out_dir) == [0, 1, 2]  # no gaps, no repeats
    assert not (out_dir / "backup").exists()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert len(metrics["per_epoch"]) == 3
    assert not [name for name in os.listdir(out_dir) if ".tmp" in name]

    # 3. once finished, the same command has nothing to do and changes nothing
    before = folder_contents(out_dir)
    result = run_script("train.py", *arguments)
    assert result.returncode == 0 and "Nothing to do" in result.stdout
    assert folder_contents(out_dir) == before


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_with_its_own_exit_code_and_the_run_resumes(tmp_path):
    out_dir, arguments = three_epoch_run(tmp_path)

    # 1. a scheduler preempts the run during its second epoch
    process = start_train(arguments, stop_at="SIGTERM@2.3")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    done = len(read_epochs(out_dir))
    assert done == 1 and "1 of 3 epochs were completed" in stderr
    assert "Stopped by SIGTERM" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and not (out_dir / "metrics.json").exists()
    assert (out_dir / "cvae.weights.h5").exists() and (out_dir / "reconstructions.png").exists()

    # 2. the same command resumes after epoch 1; SIGTERM during its evaluation stops that
    process = start_train(arguments, stop_at="SIGTERM@evaluation")
    stdout, stderr = process.communicate(timeout=300)
    assert f"{done} epoch(s) already done" in stdout
    assert process.returncode == 143, stderr[-2000:]
    assert "Stopped by SIGTERM (how a scheduler" in stderr and "during the evaluation" in stderr
    assert "Traceback" not in stderr and not (out_dir / "metrics.json").exists()

    # 3. and once more, the evaluation
    result = run_script("train.py", *arguments)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 epoch(s) already done" in result.stdout and "Epoch 3/3" not in result.stdout
    assert read_epochs(out_dir) == [0, 1, 2] and (out_dir / "metrics.json").exists()


# A run of other hyperparameters is not overwritten: test_train.py's
# test_a_refusal_leaves_the_run_in_out_dir_as_it_was.
def test_out_dir_that_is_a_file_is_refused(tmp_path, fake_mnist_path):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    result = run_script("train.py", f"--data_path={fake_mnist_path}", f"--out_dir={target}")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr
    assert target.read_text() == "not a folder"


@pytest.mark.slow
def test_divergence_stops_with_a_message_and_saves_no_nan_weights(tmp_path, fake_mnist_path):
    out_dir = tmp_path / "run"
    result = run_script("train.py", f"--data_path={fake_mnist_path}", f"--out_dir={out_dir}",
                        "--architecture=strided", "--epochs=2", "--batch_size=16",
                        "--warmup_steps=0",
                        "--learning_rate=1e6", "--lr_schedule=constant",
                        "--weight_decay=0")  # at this rate any decay is refused before training
    assert result.returncode == 3, result.stderr[-2000:]
    assert "training diverged" in result.stderr and "epoch 1, batch" in result.stderr
    assert "--learning_rate" in result.stderr and "Traceback" not in result.stderr
    assert not (out_dir / "cvae.weights.h5").exists()


def test_two_runs_in_one_folder_are_refused(tmp_path, fake_mnist_path):
    from plumbing import run_folder

    out_dir = tmp_path / "run"
    out_dir.mkdir()
    assert run_folder.lock_run_folder(str(out_dir))  # as a running train.py holds it
    result = run_script("train.py", f"--data_path={fake_mnist_path}", f"--out_dir={out_dir}")
    assert result.returncode == 2 and "Another train.py is running" in result.stderr


def test_overwrite_with_bad_data_deletes_nothing(finished_run, tmp_path):
    import shutil

    out_dir, _, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(out_dir, run)
    before = folder_contents(run)
    result = run_script("train.py", f"--out_dir={run}", "--overwrite=True",
                        f"--data_path={tmp_path / 'missing.npz'}")
    assert result.returncode == 2 and "does not exist" in result.stderr
    # Every file of the run as it was, byte for byte and untouched, and none added.
    assert folder_contents(run) == before


@pytest.mark.slow
def test_a_resumed_bf16_run_keeps_the_float32_layers_its_config_recorded(tmp_path):
    # The split between bf16 and float32 layers is recorded in config.json, so that a run started
    # under another version's split (here one more float32 Dense layer, a step toward 2026-12-05's
    # default, which had all five) finishes with it; a record naming a layer the model lacks is
    # refused. mixed_bfloat16 runs on any CPU, emulated where it is not native.
    out_dir, arguments = three_epoch_run(tmp_path)
    arguments.append("--precision=mixed_bfloat16")
    process = start_train(arguments, stop_at="SIGKILL@2.1")
    _, stderr = process.communicate(timeout=300)
    assert read_epochs(out_dir) == [0], stderr[-2000:]
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    assert "decoder/dense_hidden" in config["float32_layers"]
    assert "decoder/dense_unflatten" not in config["float32_layers"]
    import keras

    assert config["bias_method"] == ("bf16_summed_in_float32"
                                     if keras.backend.backend() == "tensorflow" else "float32")

    # A record this model cannot follow (a renamed layer): one paragraph, the run left as it was.
    config_path.write_text(json.dumps({**config, "float32_layers": ["decoder/dense_hiden"]}))
    result = run_script("train.py", *arguments)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert ("records float32_layers that this model does not have (decoder/dense_hiden)"
            in " ".join(result.stderr.split())), result.stderr[-2000:]
    assert read_epochs(out_dir) == [0]

    # Likewise a bias method this code does not know, or a value that is no name at all.
    for recorded in ("bf16", []):
        config_path.write_text(json.dumps({**config, "bias_method": recorded}))
        result = run_script("train.py", *arguments)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"records bias_method={recorded!r}, which this code does not know" in " ".join(
            result.stderr.split()), result.stderr[-2000:]
        assert read_epochs(out_dir) == [0]

    # A run started before bias_method was recorded added its biases in float32: it resumes so.
    older_split = sorted(config["float32_layers"] + ["decoder/dense_unflatten"])
    older = {key: value for key, value in config.items() if key != "bias_method"}
    config_path.write_text(json.dumps({**older, "float32_layers": older_split}))
    result = run_script("train.py", *arguments)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 epoch(s) already done" in result.stdout
    logged = next(line for line in result.stdout.splitlines() if line.startswith("Precision:"))
    assert "decoder/dense_unflatten" in logged and "every bias" in logged, logged
    resumed = json.loads(config_path.read_text())
    assert sorted(resumed["float32_layers"]) == older_split
    assert resumed["bias_method"] == "float32"
