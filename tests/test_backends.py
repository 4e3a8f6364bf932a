"""What must work on every Keras backend. CI runs these with KERAS_BACKEND=jax and =torch as well
as on TensorFlow: `KERAS_BACKEND=jax python -m pytest -q -m backend`."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, fake_mnist_arrays, numpy_negative_elbo, run_script, start_train

pytestmark = [pytest.mark.backend, pytest.mark.slow]
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SHORT = ["--batch_size=16", "--warmup_steps=2"]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, **fake_mnist_arrays(n_train=96, n_test=40))
    return str(path)


def test_kill_resume_evaluate_sample_score_on_this_backend(data_path, tmp_path):
    out_dir = tmp_path / "run"
    arguments = [f"--data_path={data_path}", f"--out_dir={out_dir}", "--epochs=2", *SHORT]
    process = start_train(arguments, stop_at="SIGKILL@2.2")  # killed in its second epoch
    process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL
    resumed = run_script("train.py", *arguments)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 epoch(s) already done" in resumed.stdout
    config = json.loads((out_dir / "config.json").read_text())
    assert config["versions"]["backend"] == BACKEND
    metrics = json.loads((out_dir / "metrics.json").read_text())
    reconstruction, kl, _ = numpy_negative_elbo(out_dir, data_path)
    assert metrics["test_negative_elbo"] == pytest.approx(np.mean(reconstruction + kl), rel=1e-5)

    sampled = run_script("sample.py", str(out_dir), "--n=4", f"--out_dir={tmp_path / 'gen'}")
    assert sampled.returncode == 0 and (tmp_path / "gen" / "samples.png").exists()
    scored = run_script("score.py", str(out_dir), data_path, f"--out={tmp_path / 's.csv'}")
    assert scored.returncode == 0, scored.stderr[-2000:]


@pytest.mark.parametrize("writer", sorted({"tensorflow", "jax", "torch"} - {BACKEND}))
def test_a_decoder_written_on_another_backend_loads_on_this_one(writer, data_path, tmp_path):
    out_dir = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--data_path={data_path}",
         f"--out_dir={out_dir}", "--epochs=1", *SHORT], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": writer})
    assert trained.returncode == 0, trained.stderr[-2000:]
    import keras

    from plumbing.run_folder import load_run

    decoder = keras.saving.load_model(str(out_dir / "decoder.keras"))
    _, model = load_run(str(out_dir))
    z = np.random.default_rng(0).standard_normal((3, 2)).astype("float32")
    np.testing.assert_allclose(decoder.predict(z, verbose=0), model.decoder.predict(z, verbose=0),
                               atol=1e-6)
