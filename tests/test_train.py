"""train.py end to end, as a user runs it, and one learning check on real MNIST."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import (
    FINISHED_RUN_SETTINGS,
    folder_contents,
    numpy_negative_elbo,
    require_backend,
    run_script,
)


def run_train(*arguments):
    return run_script("train.py", *arguments)


# The fast tier's one run of train.py (finished_run, trained once for every module that uses it).
def test_two_epochs_on_a_small_file_write_the_whole_run(finished_run):
    out_dir, fake_mnist_path, result = finished_run
    assert "CVAE (article):" in result.stdout and "GFLOP per training image" in result.stdout
    assert "Test negative ELBO" in result.stdout

    config = json.loads((out_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 32 and config["train_subset"] == 100
    assert config["data_path"] == fake_mnist_path and config["latent_dim"] == 2
    assert config["optimizer"] == "rmsprop" and config["seed"] == 0
    assert {"keras", "tensorflow"} <= set(config["versions"])
    # precision=auto, the default: what this machine runs natively, said in the log and recorded.
    from plumbing.precision import resolve

    policy, why = resolve("auto")
    assert config["precision"] == "auto" and config["precision_used"] == policy
    assert f"Precision: {policy}" in result.stdout and why in result.stdout
    assert (config["float32_layers"] is None) == (policy == "float32")
    # bf16 on TensorFlow adds the biases in bf16, their gradients summed in float32; float16 (a
    # GPU) adds them in float32.
    assert config["bias_method"] == {"float32": None, "mixed_bfloat16": "bf16_summed_in_float32",
                                     "mixed_float16": "float32"}[policy]

    with open(out_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    row = {key: float(value) for key, value in rows[0].items()}
    assert set(row) == {"epoch", "loss", "reconstruction_loss", "kl_loss", "val_loss",
                        "val_reconstruction_loss", "val_kl_loss", "epoch_seconds"}

    # The evaluation's numbers, recomputed in NumPy from the saved model and the eval seed.
    metrics = json.loads((out_dir / "metrics.json").read_text())
    reconstruction, kl, z_mean = numpy_negative_elbo(out_dir, fake_mnist_path)
    assert metrics["test_reconstruction"] == pytest.approx(reconstruction.mean(), rel=1e-5)
    assert metrics["test_kl"] == pytest.approx(kl.mean(), rel=1e-4, abs=1e-5)
    scores = reconstruction + kl
    assert metrics["test_negative_elbo_stderr"] == pytest.approx(
        scores.std(ddof=1) / np.sqrt(len(scores)), rel=1e-4)
    np.testing.assert_allclose(np.load(out_dir / "test_scores.npy"), scores, rtol=1e-5)
    assert metrics["active_units"] == int(np.sum(np.var(z_mean, axis=0) > 0.01))

    with Image.open(out_dir / "reconstructions.png") as png:
        assert png.format == "PNG" and png.size[0] > 1000
    for figure in ("latent_space", "manifold", "samples", "interpolation", "learning_curves",
                   "anomalies", "score_histogram"):
        with Image.open(out_dir / f"{figure}.png") as png:
            assert png.format == "PNG" and min(png.size) > 200, figure
    assert not (out_dir / "roc.png").exists()  # only with a held-out digit
    # One snapshot per epoch, and the GIF made of them: one frame each, in order, the frames
    # different (the decoder changed between the two epochs).
    snapshots = []
    for name in ("epoch_001.png", "epoch_002.png"):
        with Image.open(out_dir / "snapshots" / name) as png:
            assert png.format == "PNG" and png.size[0] > 1000 and png.size[0] > 2 * png.size[1]
            snapshots.append(np.asarray(png.convert("RGB"), np.float64))
    assert sorted(os.listdir(out_dir / "snapshots")) == ["epoch_001.png", "epoch_002.png"]
    assert snapshots[0].std() > 10  # not a blank figure
    with Image.open(out_dir / "training.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 2
        frames = []
        for index in range(2):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB"), np.float64))
    for frame, snapshot in zip(frames, snapshots):
        assert frame.shape == snapshot.shape
        assert np.abs(frame - snapshot).mean() < 2  # the same picture, in the GIF's palette
    # Below the title, the reconstructions and the prior samples (the lower two of the three
    # rows) moved with the weights: on random digits, by a few grey levels nearly everywhere.
    lower = slice(snapshots[0].shape[0] // 3, None)
    assert np.mean(np.abs(snapshots[0][lower] - snapshots[1][lower]) > 0) > 0.3
    iwae = metrics["iwae"]
    assert iwae["images"] == 60 and iwae["k"] == [1, 8, 64]
    assert len(metrics["kl_per_dimension"]) == 2
    assert [epoch["epoch"] for epoch in metrics["per_epoch"]] == [0, 1]
    assert not (out_dir / "backup").exists()  # train.py removes it once the run is evaluated

    # The saved weights rebuild the same model.
    from data import load_mnist
    from saved_run import load_run

    _, model = load_run(str(out_dir))
    (_, _), (x_test, _) = load_mnist(fake_mnist_path)
    from measures import reconstruct

    reconstructions = reconstruct(model, x_test[:5])
    assert reconstructions.shape == (5, 28, 28, 1) and np.isfinite(reconstructions).all()
    leftovers = [name for name in os.listdir(out_dir) if ".tmp" in name]
    assert not leftovers
    # Every file the run wrote is one that --overwrite=True knows to delete.
    from plumbing.run_folder import RUN_FILES, RUN_FOLDERS

    assert set(os.listdir(out_dir)) - {".lock"} <= set(RUN_FILES) | set(RUN_FOLDERS)


# Refused before Keras loads: a fraction of a second each.
@pytest.mark.parametrize("arguments, message", [
    (["--epochs=0"], "epochs must be at least 1"),
    (["--learning_rate=-1"], "learning_rate must be positive"),
    (["--optimizer=adamw"], "optimizer must be one of"),
    (["--epoch=2"], "Unknown hyperparameter 'epoch'"),
    (["--batch_size=big"], "expected an integer"),
    (["--seed=-1"], "seed must be in"),
    (["--image_size=2"], "image_size must be None or 4 to 2048"),
    (["--channels=2"], "channels must be None, 1 (grey) or 3"),
    (["--test_fraction=1.5"], "test_fraction must be between 0 and 1"),
    (["--architecture=resnet"], "architecture must be article or strided"),
    (["--dataset=imagenet"], "mnist, fashion_mnist, cifar10"),
    (["--precision=float8"], "precision must be one of"),
    (["--binarize=yes"], "binarize must be None (grey pixels), static or dynamic"),
    (["--weight_decay=-1"], "weight_decay must be 0 or more"),
    (["--learning_rate=1", "--weight_decay=2"], "their product must be below 1"),
    (["--ema_momentum=1"], "ema_momentum must be None (no averaging) or between 0 and 1"),
    (["--cooldown_share=0"], "cooldown_share must be above 0 and at most 1"),
    (["--validation_images=0"], "validation_images must be None or at least 1"),
])
def test_bad_input_is_refused_in_one_message(tmp_path, arguments, message):
    result = run_train(*arguments, f"--out_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("arguments, messages", [
    (["--epochs=0"], ["epochs must be at least 1"]),
    (["--latent_dim=3"], ["latent_dim: 2 there, 3 now", "--overwrite=True"]),
    (["--batch_size=big"], ["expected an integer"]),
])
def test_a_refusal_leaves_the_run_in_out_dir_as_it_was(finished_run, tmp_path, arguments,
                                                       messages):
    import shutil

    out_dir, data_path, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(out_dir, run)
    before = folder_contents(run)
    # A bad value, and another hyperparameter without --overwrite=True: both refused.
    result = run_train(f"--data_path={data_path}", f"--out_dir={run}", *FINISHED_RUN_SETTINGS,
                       *arguments)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(message in result.stderr for message in messages), result.stderr[-2000:]
    # Every file as it was, byte for byte and untouched, and none added.
    assert folder_contents(run) == before


@pytest.mark.slow
def test_a_subset_larger_than_the_data_is_refused(tmp_path, fake_mnist_path):
    result = run_train(f"--data_path={fake_mnist_path}", "--train_subset=1000",
                       f"--out_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "more than the 120 training images" in result.stderr


@pytest.mark.slow
def test_short_training_on_real_mnist_learns(real_mnist_path):
    import keras

    from cvae import build_cvae
    from data import load_mnist
    from measures import (
        importance_log_weights,
        importance_weighted_bound,
        negative_elbo_of_new_images,
    )
    from plumbing.arrays import MNIST_IMAGE_SHAPE
    from plumbing.optimizer import make_optimizer

    (x_train, _), (x_test, _) = load_mnist(real_mnist_path)
    x_train, x_test = x_train[:3200], x_test[:1000]
    keras.utils.set_random_seed(0)
    model = build_cvae(latent_dim=2, image_shape=MNIST_IMAGE_SHAPE, seed=0)
    untrained = negative_elbo_of_new_images(model, x_test)[0].mean()
    model.compile(optimizer=make_optimizer("rmsprop", 1e-3, total_steps=50, warmup_steps=10))
    model.fit(x_train, batch_size=64, epochs=1, verbose=0)
    trained = negative_elbo_of_new_images(model, x_test)[0].mean()
    # Untrained: about 543 nats (every pixel near 1/2). 50 steps bring it near 200.
    assert untrained > 500
    assert trained < 0.55 * untrained, (untrained, trained)

    # The importance-weighted bound (Burda et al. 2015) is at least the ELBO, and rises with K.
    x = x_test[:200]
    elbo = -negative_elbo_of_new_images(model, x, seed=1)[0]
    log_weights = importance_log_weights(model, x, num_samples=64, seed=2)
    bounds = [importance_weighted_bound(log_weights, k).mean() for k in (1, 8, 64)]
    # K=1 is another single-sample estimate of the same ELBO.
    assert bounds[0] == pytest.approx(elbo.mean(), abs=4 * elbo.std() / np.sqrt(len(x)))
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] > elbo.mean()


def test_the_same_seed_gives_the_same_first_epoch(fake_mnist_path):
    import keras

    from cvae import build_cvae
    from data import load_mnist
    from plumbing.arrays import MNIST_IMAGE_SHAPE
    from plumbing.optimizer import make_optimizer

    (x_train, _), _ = load_mnist(fake_mnist_path)
    losses = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        model = build_cvae(latent_dim=2, image_shape=MNIST_IMAGE_SHAPE, seed=7)
        model.compile(optimizer=make_optimizer("rmsprop", 1e-3, total_steps=8, warmup_steps=2))
        losses.append(model.fit(x_train, batch_size=16, epochs=1, verbose=0).history["loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


@pytest.mark.slow
def test_holdout_class_is_left_out_and_scored(tmp_path, fake_mnist_path):
    out_dir = tmp_path / "run"
    # The strided architecture: what is tested does not depend on it, and it is 14x cheaper.
    result = run_train(f"--data_path={fake_mnist_path}", f"--out_dir={out_dir}", "--epochs=1",
                       "--architecture=strided", "--batch_size=32", "--warmup_steps=2",
                       "--holdout_class=3")
    assert result.returncode == 0, result.stderr[-3000:]
    # 120 fake images, 12 of each digit: the 12 threes are left out of training.
    assert ": 108 training and 60 test images" in result.stdout
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["holdout_class"] == "3"
    assert "AUROC for the held-out class 3" in result.stdout
    # The reported AUROC is that of the saved per-image scores.
    from anomaly import auroc
    from data import load_mnist

    _, (_, y_test) = load_mnist(fake_mnist_path)
    scores = np.load(out_dir / "test_scores.npy")
    assert metrics["auroc"] == pytest.approx(auroc(scores, y_test == 3), abs=1e-12)
    with Image.open(out_dir / "roc.png") as png:
        assert png.format == "PNG"


@pytest.mark.slow
def test_mnist_trains_and_scores_as_recorded(tmp_path, real_mnist_path):
    # A change that moves these numbers changes what a seed trains; say why in its commit.
    # Recorded when the cool-down grew from the last fifth to cooldown_share=0.4 of the steps
    # (392.2830 and 225.95 with the last fifth, 392.7487 and 232.78 with the cosine decay; before
    # that, the batch order keyed on (seed, epoch) without weight decay gave
    # 392.7520 and 232.79; tf.data's own shuffle had given 398.7208 and 235.44, Keras's
    # conversion of the arrays 391.1282 and 228.88), same command: 10 steps on the first 640
    # real MNIST training digits, then the whole evaluation.
    # Recorded in float32: the default precision=auto trains in bf16 on a CPU that has it.
    result = run_train("--precision=float32", f"--data_path={real_mnist_path}",
                       f"--out_dir={tmp_path / 'run'}", "--epochs=1", "--train_subset=640",
                       "--warmup_steps=5")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "history.csv") as f:
        row = {key: float(value) for key, value in next(csv.DictReader(f)).items()}
    assert row["loss"] == pytest.approx(393.2800, rel=1e-3)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_negative_elbo"] == pytest.approx(233.93, rel=2e-3)


@pytest.mark.slow
def test_the_readme_snippet_loads_the_exported_models_without_the_project(finished_run,
                                                                          tmp_path):
    import re
    import subprocess
    import sys

    from conftest import ROOT

    out_dir, _, _ = finished_run
    readme = open(os.path.join(ROOT, "README.md")).read()
    snippet = re.search(r"```python\n(# Load a trained run anywhere.*?)```", readme, re.S).group(1)
    z = np.random.default_rng(0).standard_normal((5, 2)).astype("float32")
    np.save(tmp_path / "z.npy", z)
    code = (snippet.replace("outputs/", f"{out_dir}/")
            + "assert not any('cvae' in name for name in sys.modules)\n"
            + "np.save('images.npy', decoder.predict(np.load('z.npy'), verbose=0))\n"
            + "print(images.shape, z_mean.shape)\n")
    # -I: an isolated interpreter, and the working folder is not the project's, so that nothing
    # of this project can be imported; load_model keeps safe mode on.
    result = subprocess.run([sys.executable, "-I", "-c", "import sys\n" + code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(16, 28, 28, 1) (16, 2)" in result.stdout
    from saved_run import load_run

    _, model = load_run(str(out_dir))
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"),
                               model.decoder.predict(z, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_tensorboard_logs_the_loss_terms_learning_rate_and_snapshots(tmp_path, fake_mnist_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out_dir = tmp_path / "run"
    # The strided architecture: what is logged does not depend on it, and it is 14x cheaper.
    result = run_train(f"--data_path={fake_mnist_path}", f"--out_dir={out_dir}", "--epochs=2",
                       "--architecture=strided", "--batch_size=32", "--warmup_steps=2",
                       "--tensorboard=True")
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = EventAccumulator(str(out_dir / "tensorboard" / "train")).Reload()
    tags = set(scalars.Tags()["scalars"]) | set(scalars.Tags()["tensors"])
    assert {"epoch_loss", "epoch_kl_loss", "epoch_reconstruction_loss",
            "epoch_learning_rate"} <= tags
    images = EventAccumulator(str(out_dir / "tensorboard" / "snapshots")).Reload()
    image_tags = set(images.Tags()["images"]) | set(images.Tags()["tensors"])
    assert any("reconstructions" in tag for tag in image_tags)


@pytest.mark.slow
@pytest.mark.backend
@pytest.mark.parametrize("backend", sorted({"tensorflow", "jax", "torch"}
                                           - {os.environ.get("KERAS_BACKEND", "tensorflow")}))
def test_the_exported_decoder_gives_the_same_images_on_other_backends(finished_run, tmp_path,
                                                                      backend):
    # Written on this backend, read on each other: over CI's three passes, every pair.
    import subprocess
    import sys

    require_backend(backend)
    out_dir, _, _ = finished_run
    z = np.random.default_rng(0).standard_normal((4, 2)).astype("float32")
    np.save(tmp_path / "z.npy", z)
    code = ("import keras, numpy as np\n"
            f"decoder = keras.saving.load_model({str(out_dir / 'decoder.keras')!r})\n"
            "np.save('images.npy', decoder.predict(np.load('z.npy'), verbose=0))\n")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, timeout=300,
                            capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-2000:]
    from saved_run import load_run

    _, model = load_run(str(out_dir))
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"),
                               model.decoder.predict(z, verbose=0), atol=1e-5)
