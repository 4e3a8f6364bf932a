"""Train the article's convolutional VAE on MNIST and save what it learned.

    python train.py                                   # the article's experiment, MNIST via Keras
    python train.py --data_path=../shared/data/mnist.npz --epochs=1 --train_subset=2000

Any hyperparameter below can be overridden as --name=value. Everything the run writes goes into
out_dir: config.json, the weights, history.csv, metrics.json and the figures.
"""

import os
import sys

_names_before_hyperparameters = set(globals())
# ----------------------------------------------------------------------------------------------
# data
data_path = None  # a local mnist.npz (keys x_train y_train x_test y_test); None = download via Keras
train_subset = None  # train on the first N training images only; None = all 60,000
holdout_digit = None  # 0-9: leave this digit out of training, to measure anomaly detection
# model
latent_dim = 2  # size of z; the article uses 2, which makes the latent space plottable
precision = "float32"  # float32 | mixed_bfloat16 (CPUs with bf16) | mixed_float16 (GPUs)
# optimizer
optimizer = "rmsprop"  # rmsprop (the article's) | adam | sgd
learning_rate = 1e-3  # peak learning rate, reached after the warm-up
warmup_steps = 500  # linear warm-up from 0; keeps RMSprop's first steps from diverging (see optimization.py)
lr_schedule = "cosine"  # cosine: decay to 1% of the peak by the last step | constant
epochs = 10  # passes over the training images
batch_size = 64  # images per step
seed = 0  # seeds weights, shuffling, sampling and the digits shown in the figures
# output
out_dir = "outputs"  # everything the run writes goes here
overwrite = False  # True: discard whatever run out_dir holds and train from scratch
# ----------------------------------------------------------------------------------------------
HYPERPARAMETERS = {name: value for name, value in globals().items()
                   if name not in _names_before_hyperparameters
                   and name != "_names_before_hyperparameters"}
# The type a value must have where the default is None.
TYPES_OF_NONE_DEFAULTS = {"data_path": str, "train_subset": int, "holdout_digit": int}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def read_config(argv):
    """The hyperparameters above with the command line's overrides, checked for range."""
    from configurator import parse_overrides, require

    config = parse_overrides(HYPERPARAMETERS, argv, TYPES_OF_NONE_DEFAULTS)
    if config["data_path"] is not None:
        # Absolute, so that evaluate.py finds the data from any folder.
        config["data_path"] = os.path.abspath(config["data_path"])
    require(config["epochs"] > 0, f"epochs must be at least 1, not {config['epochs']}.")
    require(config["batch_size"] > 0, f"batch_size must be at least 1, not {config['batch_size']}.")
    require(config["latent_dim"] > 0, f"latent_dim must be at least 1, not {config['latent_dim']}.")
    require(config["learning_rate"] > 0,
            f"learning_rate must be positive, not {config['learning_rate']}.")
    require(config["warmup_steps"] >= 0,
            f"warmup_steps must be 0 or more, not {config['warmup_steps']}.")
    require(config["train_subset"] is None or config["train_subset"] > 0,
            f"train_subset must be None or at least 1, not {config['train_subset']}.")
    require(0 <= config["seed"] < 2**32, f"seed must be in 0 .. 2**32 - 1, not {config['seed']}.")
    require(config["holdout_digit"] is None or 0 <= config["holdout_digit"] <= 9,
            f"holdout_digit must be None or a digit 0-9, not {config['holdout_digit']}.")
    require(config["precision"] in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, not {config['precision']!r}.")
    from optimization import LR_SCHEDULES, OPTIMIZERS  # plain lists; no Keras loaded yet

    require(config["optimizer"] in OPTIMIZERS,
            f"optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, not "
            f"{config['optimizer']!r}.")
    require(config["lr_schedule"] in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not "
            f"{config['lr_schedule']!r}.")
    return config


def main(argv):
    config = read_config(argv)

    # Imports after the arguments are checked, so that a typo is refused without waiting for
    # TensorFlow to load.
    import shutil

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    import keras
    import numpy as np

    import run_files
    from callbacks import (AtomicBackupAndRestore, DivergenceGuard, EpochSnapshots, EpochTimer,
                           HistoryCSV, TrainingDiverged)
    from configurator import require
    from cvae import IMAGE_SHAPE, build_cvae
    from data import get_images_1_to_10, load_mnist
    from evaluate import evaluate_run
    from optimization import make_optimizer
    from plotting import plot_reconstructions, save_gif

    out_dir = config["out_dir"]
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    if not prepare_out_dir(out_dir, config):
        return 0

    # data
    (x_train, y_train), (x_test, y_test) = load_mnist(config["data_path"])
    if config["holdout_digit"] is not None:
        # Anomaly-detection experiment: the model never sees this digit in training.
        x_train = x_train[y_train != config["holdout_digit"]]
        require(len(x_train) > 0, f"With holdout_digit={config['holdout_digit']} no training "
                                  f"images are left; hold out another digit or none.")
        require(np.any(y_test == config["holdout_digit"]),
                f"The test set holds no image of holdout_digit={config['holdout_digit']}, so "
                f"anomaly detection cannot be measured; hold out another digit.")
    if config["train_subset"] is not None:
        require(config["train_subset"] <= len(x_train),
                f"train_subset={config['train_subset']} is more than the {len(x_train)} "
                f"training images available.")
        x_train = x_train[: config["train_subset"]]
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images of shape {IMAGE_SHAPE}.")
    if config["overwrite"]:
        # Only now, with every input checked, is the old run deleted.
        run_files.remove_run(out_dir)

    # model and optimizer
    keras.mixed_precision.set_dtype_policy(config["precision"])
    keras.utils.set_random_seed(config["seed"])
    model = build_cvae(config["latent_dim"], IMAGE_SHAPE, seed=config["seed"])
    model.encoder.summary()
    model.decoder.summary()
    print(f"CVAE total parameters: {model.count_params():,}")
    steps_per_epoch = -(-len(x_train) // config["batch_size"])
    model.compile(optimizer=make_optimizer(
        config["optimizer"], config["learning_rate"], total_steps=config["epochs"] * steps_per_epoch,
        warmup_steps=config["warmup_steps"], schedule=config["lr_schedule"]))
    run_files.write_json(path(run_files.CONFIG_FILE), {
        **config,
        "versions": {"keras": keras.__version__, "tensorflow": _tensorflow_version(),
                     "numpy": np.__version__, "python": sys.version.split()[0]},
    })

    # train; the test set is only monitored (val_* columns), never used to choose anything
    shown_x, shown_y = get_images_1_to_10(x_test, y_test, seed=config["seed"])
    callbacks = [
        DivergenceGuard(),
        EpochTimer(),
        EpochSnapshots(shown_x, config["latent_dim"], path(run_files.SNAPSHOT_FOLDER),
                       seed=config["seed"]),
        # The history is written before the backup: a crash between the two makes the resumed
        # run repeat (and replace) an epoch's row, never skip one.
        HistoryCSV(path(run_files.HISTORY_FILE)),
        # Resumes an interrupted run from its last completed epoch when the command is repeated.
        AtomicBackupAndRestore(path(run_files.BACKUP_FOLDER)),
    ]
    try:
        model.fit(x_train, batch_size=config["batch_size"], epochs=config["epochs"],
                  validation_data=(x_test,), callbacks=callbacks,
                  verbose="auto" if sys.stdout.isatty() else 2)
    except KeyboardInterrupt:
        save_weights(model, config, path(run_files.WEIGHTS_FILE))
        plot_reconstructions(shown_x, model.predict(shown_x, verbose=0), shown_y,
                             path(run_files.RECONSTRUCTIONS_FILE),
                             title="Test digits and their reconstructions (interrupted run)")
        done = len(run_files.read_history(path(run_files.HISTORY_FILE)))
        again = ("the same command without --overwrite=True" if config["overwrite"]
                 else "the same command")
        print(f"\nInterrupted. The current weights are in {path(run_files.WEIGHTS_FILE)} and the "
              f"reconstructions in {path(run_files.RECONSTRUCTIONS_FILE)}. {done} of "
              f"{config['epochs']} epochs were completed; run {again} again to resume from "
              f"there (the partial epoch is repeated).", file=sys.stderr)
        return 130
    except TrainingDiverged as error:
        # The weights now hold NaNs: nothing is saved over the last good state, which stays in
        # the backup folder (the end of the last completed epoch).
        kept = (f"The weights of the last completed epoch are kept in "
                f"{path(run_files.BACKUP_FOLDER)}. " if os.path.exists(
                    path(run_files.BACKUP_FOLDER)) else "No epoch was completed. ")
        print(f"error: {error} {kept}To start afresh with new settings, add --overwrite=True.",
              file=sys.stderr)
        return 3
    save_weights(model, config, path(run_files.WEIGHTS_FILE))

    # evaluate on the test set, then the figures
    try:
        evaluate_run(model, config, x_test, y_test, out_dir)
    except KeyboardInterrupt:
        print(f"\nInterrupted during the evaluation. Training is complete and saved; run the "
              f"same command again to evaluate, or `python evaluate.py {out_dir}`.",
              file=sys.stderr)
        return 130
    frames = sorted(name for name in os.listdir(path(run_files.SNAPSHOT_FOLDER))
                    if name.startswith("epoch_") and name.endswith(".png"))
    save_gif([os.path.join(path(run_files.SNAPSHOT_FOLDER), name) for name in frames],
             path(run_files.GIF_FILE))
    # Only now is the run finished: until here, running the command again resumes it.
    shutil.rmtree(path(run_files.BACKUP_FOLDER), ignore_errors=True)
    print(f"Saved the run in {out_dir}/: {run_files.RECONSTRUCTIONS_FILE}, metrics.json, figures.")
    return 0


def save_weights(model, config, weights_path):
    """Save the model's weights alone (no optimizer state), atomically."""
    import run_files
    from cvae import IMAGE_SHAPE, build_cvae

    # A fresh, uncompiled copy holds just the model's variables: half the size, and loadable
    # into a model built from config.json without a word about missing optimizer variables.
    bare = build_cvae(config["latent_dim"], IMAGE_SHAPE)
    bare.set_weights(model.get_weights())
    run_files.write_atomically(weights_path, bare.save_weights)


def prepare_out_dir(out_dir, config):
    """Make out_dir ready and lock it; False when it already holds this very run, finished.

    A run made with other hyperparameters is refused unless overwrite=True (main() deletes it
    once the data is checked); an unfinished one with the same hyperparameters is resumed.
    """
    import run_files
    from configurator import ConfigError

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"out_dir {out_dir!r} is a file, not a folder. Name a folder (it is "
                          f"created if missing) with --out_dir=...")
    try:
        os.makedirs(out_dir, exist_ok=True)
        os.remove(run_files.atomic_path(os.path.join(out_dir, "write-test")))
    except OSError as error:
        raise ConfigError(f"Cannot write into out_dir {out_dir!r}: {error.strerror}. Choose a "
                          f"folder you can write to with --out_dir=...") from None
    if not run_files.lock_run_folder(out_dir):
        raise ConfigError(f"Another train.py is running in {out_dir!r}. Wait for it to end, or "
                          f"choose another --out_dir.")
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    if not config["overwrite"] and os.path.exists(path(run_files.CONFIG_FILE)):
        try:
            old = run_files.read_json(path(run_files.CONFIG_FILE))
            assert isinstance(old, dict)
        except (ValueError, AssertionError):
            raise ConfigError(f"{path(run_files.CONFIG_FILE)!r} is not a run configuration, so "
                              f"the run in {out_dir!r} cannot be checked. Choose another "
                              f"--out_dir, or pass --overwrite=True to replace it.") from None
        changed = sorted(key for key in config if key not in ("overwrite", "out_dir")
                         and old.get(key) != config[key])
        if changed:
            raise ConfigError(
                f"{out_dir!r} already holds a run with other hyperparameters "
                f"({'; '.join(f'{k}: {old.get(k)!r} there, {config[k]!r} now' for k in changed)})."
                f" Choose another --out_dir, or pass --overwrite=True to replace that run."
            )
        if (os.path.exists(path(run_files.METRICS_FILE))
                and run_files.training_complete(out_dir, config["epochs"])):
            print(f"{out_dir!r} already holds this run, finished. Nothing to do: look at its "
                  f"figures, run `python evaluate.py {out_dir}` to evaluate it again, or pass "
                  f"--overwrite=True to train it again from scratch.")
            return False
    for folder in (out_dir, path(run_files.BACKUP_FOLDER), path(run_files.SNAPSHOT_FOLDER)):
        run_files.remove_stale_temporaries(folder)
    return True


def _tensorflow_version():
    try:
        import tensorflow

        return tensorflow.__version__
    except ImportError:
        return None


def run_from_command_line():
    from configurator import ConfigError
    from data import DataError

    try:
        return main(sys.argv[1:])
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_from_command_line())
