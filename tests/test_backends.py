"""What must work on every Keras backend, end to end. CI runs these with KERAS_BACKEND=jax and
=torch as well as on TensorFlow: `KERAS_BACKEND=jax python -m pytest -q -m backend --runslow`.
A run killed and resumed on each backend: test_exact_resume.py; a decoder written on one backend
and read on the others: test_train.py."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import numpy_negative_elbo, run_script

pytestmark = [pytest.mark.backend, pytest.mark.slow]
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def test_a_run_on_this_backend_is_evaluated_sampled_and_scored(finished_run, tmp_path):
    out_dir, data_path, _ = finished_run
    config = json.loads((out_dir / "config.json").read_text())
    assert config["versions"]["backend"] == BACKEND
    metrics = json.loads((out_dir / "metrics.json").read_text())
    reconstruction, kl, _ = numpy_negative_elbo(out_dir, data_path)
    assert metrics["test_negative_elbo"] == pytest.approx(np.mean(reconstruction + kl), rel=1e-5)

    sampled = run_script("sample.py", str(out_dir), "--n=4", "--save_each=True",
                         f"--out_dir={tmp_path / 'gen'}")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    # Each saved image is the decoder's, on this backend, for the draws that seed 0 gives.
    from saved_run import load_run

    _, model = load_run(str(out_dir))
    z = np.random.default_rng(0).standard_normal((4, 2)).astype("float32")
    expected = np.round(model.decoder.predict(z, verbose=0)[..., 0] * 255)
    saved = np.stack([np.asarray(Image.open(tmp_path / "gen" / f"sample_{i:04d}.png"))
                      for i in range(4)])
    assert np.abs(saved - expected).max() <= 1  # a value at .5 may round either way
    with Image.open(tmp_path / "gen" / "samples.png") as grid:
        assert grid.format == "PNG"

    scored = run_script("score.py", str(out_dir), data_path, f"--out={tmp_path / 's.csv'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    with open(tmp_path / "s.csv") as f:
        scores = np.array([float(row["negative_elbo_nats"]) for row in csv.DictReader(f)])
    # The 60 test images, one draw each (score.py's own noise): their mean is the evaluation's.
    assert scores.shape == (60,)
    assert scores.mean() == pytest.approx(metrics["test_negative_elbo"], rel=1e-3)
