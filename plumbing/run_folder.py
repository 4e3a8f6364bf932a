"""What a run folder holds, and how a run's model is built, saved and loaded from it.

Every file goes through atomic_files, so a crash never leaves a half-written one for a resumed
run or evaluate.py to read.
"""

import csv
import os
import shutil
import sys

import keras
import numpy as np

from cvae import build_cvae
from plumbing.arrays import MNIST_IMAGE_SHAPE
from plumbing.atomic_files import (
    atomic_path,
    read_json,
    remove_stale_temporaries,
    write_atomically,
    writing,
)
from plumbing.errors import ConfigError, RunError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "cvae.weights.h5"
# The encoder and decoder alone, as Keras files of built-in layers: they load with
# keras.saving.load_model in safe mode, without this project's code, on any Keras backend.
ENCODER_FILE = "encoder.keras"
DECODER_FILE = "decoder.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
RECONSTRUCTIONS_FILE = "reconstructions.png"
SNAPSHOT_FOLDER = "snapshots"
BACKUP_FOLDER = "backup"  # Keras BackupAndRestore's state, present only while a run is unfinished
GIF_FILE = "training.gif"
SCORES_FILE = "test_scores.npy"
EXPLORER_CACHE_FILE = "explorer_cache.npz"  # explore.py's test-split latents, its only write
ANOMALY_THRESHOLD_FILE = "anomaly_threshold.json"  # an inspection run's threshold (evaluate.py)
SCORER_FILE = "scorer.onnx"  # export.py's anomaly scorer
FIGURE_FILES = ("latent_space.png", "manifold.png", "samples.png", "interpolation.png",
                "learning_curves.png", "anomalies.png", "score_histogram.png", "roc.png",
                "anomaly_roc.png", "anomaly_histograms.png", "anomaly_overlays.png")
# Everything a run writes, so that --overwrite=True can clear an old run and nothing else.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, ENCODER_FILE, DECODER_FILE, HISTORY_FILE, METRICS_FILE,
             RECONSTRUCTIONS_FILE, GIF_FILE, SCORES_FILE, EXPLORER_CACHE_FILE,
             ANOMALY_THRESHOLD_FILE, SCORER_FILE, "scores.csv",
             "conditional_accuracy.json") + FIGURE_FILES
GENERATED_FOLDER = "generated"  # what sample.py writes by default
TENSORBOARD_FOLDER = "tensorboard"  # with tensorboard=True
RUN_FOLDERS = (SNAPSHOT_FOLDER, BACKUP_FOLDER, GENERATED_FOLDER, TENSORBOARD_FOLDER)


def remove_run(folder):
    """Delete every file and folder a run writes in `folder`, and nothing else (nothing in a
    process that does not write: atomic_files.stop_writing)."""
    if not writing():
        return
    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


def finish_run(folder):
    """Mark a run finished: until its backup is removed, running train.py again resumes it."""
    if not writing():
        return
    shutil.rmtree(os.path.join(folder, BACKUP_FOLDER), ignore_errors=True)


def lock_run_folder(folder):
    """Hold an exclusive lock on folder/.lock for the life of the process; False if another
    process holds it. Two runs writing into one folder would corrupt each other's backups."""
    import fcntl

    handle = open(os.path.join(folder, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _held_locks.append(handle)  # closing the file would release the lock
    return True


_held_locks = []


def read_history(path):
    """The rows of a history.csv as dicts of floats (epoch as int); [] if there is none."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed = {key: float(value) for key, value in row.items() if value not in ("", None)}
            parsed["epoch"] = int(parsed["epoch"])
            rows.append(parsed)
    return rows


def training_complete(folder, epochs):
    """True when all `epochs` epochs are in the history and no backup is left to resume."""
    return (not os.path.isdir(os.path.join(folder, BACKUP_FOLDER))
            and len(read_history(os.path.join(folder, HISTORY_FILE))) >= epochs)


# ---- a run's model: built from config.json, saved and loaded as weights only -------------------
def image_shape_of(config):
    """The image shape a run was trained on (runs made before other datasets were MNIST's)."""
    return tuple(config.get("data", {}).get("image_shape", MNIST_IMAGE_SHAPE))


def build_model(config, seed=None):
    """A fresh CVAE of the architecture, latent size and image shape that config describes."""
    num_classes = None
    if config.get("conditional"):
        num_classes = len(config["data"]["class_names"])
    return build_cvae(int(config["latent_dim"]), image_shape_of(config),
                      config.get("architecture", "article"), seed=seed, num_classes=num_classes,
                      binarize=config.get("binarize"),
                      kl_warmup_steps=config.get("kl_warmup_steps", 0))


def save_trained_model(model, config, run_dir):
    """Write the weights (no optimizer state) and the portable encoder and decoder, atomically;
    returns the float32, one-device copy of the model that was saved, the model the evaluation
    measures (so that metrics.json describes the files, as `evaluate.py` would)."""
    # A fresh, uncompiled float32 copy holds just the model's variables: half the size, loadable
    # into a model built from config.json, and exported without a 16-bit policy baked in. Built
    # outside any data-parallel engine, it takes a batch of any size.
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        bare = build_model(config)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    bare.set_weights(model.get_weights())
    write_atomically(os.path.join(run_dir, WEIGHTS_FILE), bare.save_weights)
    write_atomically(os.path.join(run_dir, ENCODER_FILE), bare.encoder.save)
    write_atomically(os.path.join(run_dir, DECODER_FILE), bare.decoder.save)
    return bare


def load_run(run_dir):
    """(config, model) rebuilt from a run folder's config.json and weights.

    This is how any code uses a trained run: the model is built from config.json and the
    weights, an HDF5 file of arrays (loading it runs no code), are loaded into it.
    """
    config_path = os.path.join(run_dir, CONFIG_FILE)
    weights_path = os.path.join(run_dir, WEIGHTS_FILE)
    if not os.path.isfile(config_path):
        raise RunError(f"{config_path!r} does not exist: {run_dir!r} is not a run folder. Give "
                       f"the out_dir of a run of train.py.")
    try:
        config = read_json(config_path)
        assert int(config["latent_dim"]) > 0 and len(image_shape_of(config)) == 3
        assert not config.get("conditional") or len(config["data"]["class_names"]) > 0
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise RunError(f"{config_path!r} is not a valid run configuration ({error}). It may have "
                       f"been edited by hand; train again or restore it.") from None
    if not os.path.isfile(weights_path):
        raise RunError(f"{weights_path!r} does not exist: the run in {run_dir!r} has not "
                       f"finished. Run train.py with the same out_dir again to finish (resume) it.")
    model = build_model(config)
    try:
        model.load_weights(weights_path)
    except Exception as error:  # h5py and Keras raise many kinds for a bad or foreign file
        raise RunError(
            f"The weights in {weights_path!r} do not fit the model that {config_path!r} "
            f"describes, or the file is damaged: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}") from None
    if not training_complete(run_dir, config.get("epochs", 0)):
        done = len(read_history(os.path.join(run_dir, HISTORY_FILE)))
        print(f"warning: the run in {run_dir!r} is unfinished ({done} of {config.get('epochs')} "
              f"epochs): these are the numbers of an interrupted model. Run train.py with the "
              f"same out_dir again to finish it.", file=sys.stderr)
    return config, model


def read_test_scores(run_dir):
    """The run's test-split scores (test_scores.npy), which a new image's score is ranked in."""
    path = os.path.join(run_dir, SCORES_FILE)
    if not os.path.isfile(path):
        raise RunError(f"{path!r} is missing: the run has no test-split scores to compare with. "
                       f"Run `python evaluate.py {run_dir}`.")
    return np.load(path, allow_pickle=False)


def anomaly_rule(run_dir, test_scores, percentile, threshold=None):
    """What `anomalous` means for a run's images, in score.py and the explorer alike: the
    deterministic anomaly_score above `threshold` when one is given, or above the threshold kept
    with an inspection run (anomaly_threshold.json); else the negative ELBO above the
    percentile-th of the run's test scores. A dict: column, threshold, why, and the kept pixel
    threshold and smoothing (None without a kept threshold)."""
    path = os.path.join(run_dir, ANOMALY_THRESHOLD_FILE)
    kept = read_json(path) if os.path.isfile(path) else None
    rule = {"pixel_threshold": None if kept is None else kept["pixel_threshold"],
            "smoothing_sigma": None if kept is None else kept["smoothing_sigma"]}
    if threshold is not None:
        return {**rule, "column": "anomaly_score", "threshold": threshold,
                "why": "the --threshold given"}
    if kept is not None:
        return {**rule, "column": "anomaly_score", "threshold": kept["image_threshold"],
                "why": f"the threshold kept with the run ({kept['rule']})"}
    return {**rule, "column": "negative_elbo_nats",
            "threshold": float(np.percentile(test_scores, percentile)),
            "why": f"the {percentile:g}th percentile of the run's test scores"}


# ---- the run folder of train.py ----------------------------------------------------------------
def prepare_out_dir(out_dir, config, before_it_existed=None):
    """Make out_dir ready and lock it; False when it already holds this very run, finished.

    A run made with other hyperparameters is refused unless overwrite=True (train.py deletes it
    once the data is checked); an unfinished one with the same hyperparameters is resumed. A
    hyperparameter that the run's config.json lacks (one added to the project since) counts as
    the value that gives what the project did before it (before_it_existed, else None). A
    process that does not write (atomic_files.stop_writing) only reads the folder, if it sees one.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"out_dir {out_dir!r} is a file, not a folder. Name a folder (it is "
                          f"created if missing) with --out_dir=...")
    if writing():
        _make_and_lock(out_dir)
    config_path = os.path.join(out_dir, CONFIG_FILE)
    if not config["overwrite"] and os.path.exists(config_path):
        try:
            old = read_json(config_path)
            assert isinstance(old, dict)
        except (ValueError, AssertionError):
            raise ConfigError(f"{config_path!r} is not a run configuration, so the run in "
                              f"{out_dir!r} cannot be checked. Choose another --out_dir, or pass "
                              f"--overwrite=True to replace it.") from None
        # The devices may change between attempts: the numbers do not depend on them.
        old = {**(before_it_existed or {}), **old}
        changed = sorted(key for key in config if key not in (
            "overwrite", "out_dir", "distribute", "virtual_devices")
                         and old.get(key) != config[key])
        if changed:
            raise ConfigError(
                f"{out_dir!r} already holds a run with other hyperparameters "
                f"({'; '.join(f'{k}: {old.get(k)!r} there, {config[k]!r} now' for k in changed)})."
                f" Pass the values it was made with to resume it, choose another --out_dir, or "
                f"pass --overwrite=True to replace that run.")
        finished = training_complete(out_dir, config["epochs"])
        if finished and os.path.exists(os.path.join(out_dir, METRICS_FILE)):
            print(f"{out_dir!r} already holds this run, finished. Nothing to do: look at its "
                  f"figures, run `python evaluate.py {out_dir}` to evaluate it again, or pass "
                  f"--overwrite=True to train it again from scratch.")
            return False
    for folder in (out_dir, os.path.join(out_dir, BACKUP_FOLDER),
                   os.path.join(out_dir, SNAPSHOT_FOLDER)):
        remove_stale_temporaries(folder)
    return True


def _make_and_lock(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        os.remove(atomic_path(os.path.join(out_dir, "write-test")))
    except OSError as error:
        raise ConfigError(f"Cannot write into out_dir {out_dir!r}: {error.strerror}. Choose a "
                          f"folder you can write to with --out_dir=...") from None
    if not lock_run_folder(out_dir):
        raise ConfigError(f"Another train.py is running in {out_dir!r}. Wait for it to end, or "
                          f"choose another --out_dir.")
