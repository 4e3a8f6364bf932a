"""What a run folder holds: its files, whether its training is finished, its history, its
scores and anomaly threshold, and the check of out_dir before train.py writes into it. (The
model a run holds is built, saved and loaded by saved_run.py.)

Every file goes through atomic_files, so a crash never leaves a half-written one for a resumed
run or evaluate.py to read.
"""

import csv
import os
import shutil

import numpy as np

from plumbing.arrays import MNIST_IMAGE_SHAPE
from plumbing.atomic_files import (
    atomic_path,
    read_json,
    remove_stale_temporaries,
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
VALIDATION_SCORES_FILE = "validation_scores.npy"  # with a validation split: each image's -ELBO
EXPLORER_CACHE_FILE = "explorer_cache.npz"  # explore.py's test-split latents, its only write
ANOMALY_THRESHOLD_FILE = "anomaly_threshold.json"  # an inspection run's threshold (evaluate.py)
SCORER_FILE = "scorer.onnx"  # export.py's anomaly scorer
FEATURE_MEMORY_FILE = "feature_memory.npz"  # an inspection run's kept encoder features
FIGURE_FILES = ("latent_space.png", "manifold.png", "samples.png", "interpolation.png",
                "learning_curves.png", "anomalies.png", "score_histogram.png", "roc.png",
                "anomaly_roc.png", "anomaly_histograms.png", "anomaly_overlays.png")
# Everything a run writes, so that --overwrite=True can clear an old run and nothing else.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, ENCODER_FILE, DECODER_FILE, HISTORY_FILE, METRICS_FILE,
             RECONSTRUCTIONS_FILE, GIF_FILE, SCORES_FILE, VALIDATION_SCORES_FILE,
             EXPLORER_CACHE_FILE, ANOMALY_THRESHOLD_FILE, FEATURE_MEMORY_FILE, SCORER_FILE,
             "scores.csv", "conditional_accuracy.json") + FIGURE_FILES
GENERATED_FOLDER = "generated"  # what sample.py writes by default
TENSORBOARD_FOLDER = "tensorboard"  # with tensorboard=True
RUN_FOLDERS = (SNAPSHOT_FOLDER, BACKUP_FOLDER, GENERATED_FOLDER, TENSORBOARD_FOLDER)
# What a run's config.json means by a setting it does not record, where that is not None: what
# the project did before the setting existed (runs made before other datasets were MNIST's, with
# the default test split and seed; no weight decay, no KL warm-up, ...). Read when a run is
# resumed (prepare_out_dir) and when its data is loaded again (recorded_setting).
BEFORE_IT_EXISTED = {"dataset": "mnist", "test_fraction": 0.1, "seed": 0, "weight_decay": 0.0,
                     "kl_warmup_steps": 0, "cooldown_share": 0.2, "likelihood": "bernoulli"}


def recorded_setting(config, name):
    """A setting of a run's config.json, or what a run that did not record it used."""
    return config.get(name, BEFORE_IT_EXISTED.get(name))


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


# ---- what a run's config.json says --------------------------------------------------------------
def image_shape_of(config):
    """The shape of the model's input: the images a run was trained on, or their patches (runs
    made before other datasets were MNIST's)."""
    return tuple(config.get("data", {}).get("image_shape", MNIST_IMAGE_SHAPE))


def require_whole_image_model(config, needs, instead):
    """Refuse, in one paragraph, what needs a model of whole images (`needs`, a clause) on a run
    whose model sees patches of them (train.py's patch_size); `instead`: what to do."""
    if config.get("patch_size") is not None:
        raise ConfigError(f"{needs}, and this run's model sees {config['patch_size']}x"
                          f"{config['patch_size']} patches of its images (patch_size): "
                          f"{instead}, or use a run trained without patch_size.")


def scored_image_shape(config):
    """The shape of the images a run scores: those it was trained on, even when its model saw
    them in patches (train.py's patch_size; the scorer then cuts them itself)."""
    whole = config.get("data", {}).get("patches_of")
    return image_shape_of(config) if whole is None else tuple(whole["image_shape"])


def read_test_scores(run_dir):
    """The run's test-split scores (test_scores.npy), which a new image's score is ranked in."""
    path = os.path.join(run_dir, SCORES_FILE)
    if not os.path.isfile(path):
        raise RunError(f"{path!r} is missing: the run has no test-split scores to compare with. "
                       f"Run `python evaluate.py {run_dir}`.")
    return np.load(path, allow_pickle=False)


def kept_threshold(run_dir):
    """The threshold an inspection run kept (anomaly_threshold.json), or None."""
    path = os.path.join(run_dir, ANOMALY_THRESHOLD_FILE)
    return read_json(path) if os.path.isfile(path) else None


def kept_feature_memory(run_dir):
    """{map name: (M, C) array}, the memory of encoder features an inspection run kept beside
    its threshold (anomaly.evaluate_inspection_set, feature_memory.py), or None."""
    path = os.path.join(run_dir, FEATURE_MEMORY_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as kept:
        return {name: kept[name] for name in kept.files}


def anomaly_rule(run_dir, test_scores, percentile, threshold=None):
    """What `anomalous` means for a run's images, in score.py and the explorer alike: the
    deterministic anomaly_score above `threshold` when one is given, or above the threshold kept
    with an inspection run (anomaly_threshold.json); else the negative ELBO above the
    percentile-th of the run's test scores. A dict: column, threshold, why, and the kept pixel
    threshold and smoothing (None without a kept threshold), and the kept scoring that the
    scorer is built with (anomaly.build_anomaly_scorer; None for the plain negative ELBO: no
    kept threshold, or one kept before the scoring was chosen on synthetic defects) with the
    kept memory of encoder features that some scorings need (None without one)."""
    kept = kept_threshold(run_dir)
    rule = {"pixel_threshold": None if kept is None else kept["pixel_threshold"],
            "smoothing_sigma": None if kept is None else kept["smoothing_sigma"],
            "scoring": None if kept is None else kept.get("scoring"),
            "feature_memory": None if kept is None else kept_feature_memory(run_dir)}
    # A kept peak score is a smoothed map's largest value, not a negative ELBO in nats.
    peak = rule["scoring"] is not None and rule["scoring"]["image_score"] == "peak"
    rule["unit"] = "" if peak else " nats"
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
def prepare_out_dir(out_dir, config):
    """Make out_dir ready and lock it; False when it already holds this very run, finished.

    A run made with other hyperparameters is refused unless overwrite=True (train.py deletes it
    once the data is checked); an unfinished one with the same hyperparameters is resumed. A
    hyperparameter that the run's config.json lacks (one added to the project since) counts as
    the value that gives what the project did before it (BEFORE_IT_EXISTED, else None). A
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
        old = {**BEFORE_IT_EXISTED, **old}
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


def require_same_data(run_dir, old_data, new_data):
    """Refuse to resume or evaluate a run whose data has changed since it was trained (images
    added to a folder would move between the splits; another size would not fit the model)."""
    changed = [f"{key}: {old_data[key]!r} then, {new_data[key]!r} now" for key in new_data
               if key in (old_data or {}) and old_data[key] != new_data[key]]
    if changed:
        raise ConfigError(
            f"The data of the run in {run_dir!r} has changed since it was trained "
            f"({'; '.join(changed)}). Restore the data, or train a new run in another --out_dir "
            f"(or with --overwrite=True).")
