"""Train the article's convolutional VAE on MNIST and save what it learned.

    python train.py                                   # the article's experiment, MNIST via Keras
    python train.py --data_path=../shared/data/mnist.npz --epochs=1 --train_subset=2000

Any hyperparameter below can be overridden as --name=value. Everything the run writes goes into
out_dir: config.json, the weights, history.csv, metrics.json and the figures.
"""

import sys

_names_before_hyperparameters = set(globals())
# ----------------------------------------------------------------------------------------------
# data
data_path = None  # a local mnist.npz (keys x_train y_train x_test y_test); None = download via Keras
train_subset = None  # train on the first N training images only; None = all 60,000
# model
latent_dim = 2  # size of z; the article uses 2, which makes the latent space plottable
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
overwrite = False  # True: allow replacing a finished run of a different configuration in out_dir
# ----------------------------------------------------------------------------------------------
HYPERPARAMETERS = {name: value for name, value in globals().items()
                   if name not in _names_before_hyperparameters
                   and name != "_names_before_hyperparameters"}
# The type a value must have where the default is None.
TYPES_OF_NONE_DEFAULTS = {"data_path": str, "train_subset": int}


def read_config(argv):
    """The hyperparameters above with the command line's overrides, checked for range."""
    from configurator import parse_overrides, require

    config = parse_overrides(HYPERPARAMETERS, argv, TYPES_OF_NONE_DEFAULTS)
    require(config["epochs"] > 0, f"epochs must be at least 1, not {config['epochs']}.")
    require(config["batch_size"] > 0, f"batch_size must be at least 1, not {config['batch_size']}.")
    require(config["latent_dim"] > 0, f"latent_dim must be at least 1, not {config['latent_dim']}.")
    require(config["learning_rate"] > 0,
            f"learning_rate must be positive, not {config['learning_rate']}.")
    require(config["warmup_steps"] >= 0,
            f"warmup_steps must be 0 or more, not {config['warmup_steps']}.")
    require(config["train_subset"] is None or config["train_subset"] > 0,
            f"train_subset must be None or at least 1, not {config['train_subset']}.")
    from optimization import LR_SCHEDULES, OPTIMIZERS

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
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    import keras
    import numpy as np

    import run_files
    from callbacks import EpochSnapshots, EpochTimer
    from cvae import IMAGE_SHAPE, build_cvae
    from data import get_images_1_to_10, load_mnist
    from evaluation import per_image_negative_elbo, summarize_negative_elbo
    from optimization import make_optimizer
    from plotting import plot_reconstructions, save_gif

    out_dir = config["out_dir"]
    prepare_out_dir(out_dir, config)

    # data
    (x_train, y_train), (x_test, y_test) = load_mnist(config["data_path"])
    if config["train_subset"] is not None:
        from configurator import require

        require(config["train_subset"] <= len(x_train),
                f"train_subset={config['train_subset']} is more than the {len(x_train)} "
                f"training images.")
        x_train = x_train[: config["train_subset"]]
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images, {IMAGE_SHAPE}.")

    # model and optimizer
    keras.utils.set_random_seed(config["seed"])
    model = build_cvae(config["latent_dim"], IMAGE_SHAPE, seed=config["seed"])
    model.encoder.summary()
    model.decoder.summary()
    print(f"CVAE total parameters: {model.count_params():,}")
    steps_per_epoch = -(-len(x_train) // config["batch_size"])
    model.compile(optimizer=make_optimizer(
        config["optimizer"], config["learning_rate"], total_steps=config["epochs"] * steps_per_epoch,
        warmup_steps=config["warmup_steps"], schedule=config["lr_schedule"]))
    run_files.write_json(os.path.join(out_dir, run_files.CONFIG_FILE), {
        **config,
        "versions": {"keras": keras.__version__, "tensorflow": _tensorflow_version(),
                     "numpy": np.__version__, "python": sys.version.split()[0]},
    })

    # train; the test set is only monitored (val_* columns), never used to choose anything
    shown_x, shown_y = get_images_1_to_10(x_test, y_test, seed=config["seed"])
    callbacks = [
        # Resumes an interrupted run from its last completed epoch when the command is repeated.
        keras.callbacks.BackupAndRestore(os.path.join(out_dir, run_files.BACKUP_FOLDER)),
        EpochTimer(),
        EpochSnapshots(shown_x, config["latent_dim"],
                       os.path.join(out_dir, run_files.SNAPSHOT_FOLDER), seed=config["seed"]),
        keras.callbacks.CSVLogger(os.path.join(out_dir, run_files.HISTORY_FILE), append=True),
    ]
    history = model.fit(x_train, batch_size=config["batch_size"], epochs=config["epochs"],
                        validation_data=(x_test,), callbacks=callbacks, verbose=2
                        if not sys.stdout.isatty() else "auto")
    run_files.write_atomically(os.path.join(out_dir, run_files.WEIGHTS_FILE), model.save_weights)

    # evaluate on the test set
    reconstruction, kl = per_image_negative_elbo(model, x_test)
    metrics = summarize_negative_elbo(reconstruction, kl)
    epoch_seconds = history.history.get("epoch_seconds", [])
    metrics["seconds_per_epoch"] = float(np.mean(epoch_seconds)) if epoch_seconds else None
    run_files.write_json(os.path.join(out_dir, run_files.METRICS_FILE), metrics)
    print(f"Test negative ELBO: {metrics['test_negative_elbo']:.2f} "
          f"± {metrics['test_negative_elbo_stderr']:.2f} nats "
          f"(reconstruction {metrics['test_reconstruction']:.2f} + KL {metrics['test_kl']:.2f})")

    # figures
    figure = plot_reconstructions(
        shown_x, model.predict(shown_x, verbose=0), shown_y,
        os.path.join(out_dir, run_files.RECONSTRUCTIONS_FILE),
        title="Test digits (top) and their reconstructions from z_mean (bottom)")
    snapshot_folder = os.path.join(out_dir, run_files.SNAPSHOT_FOLDER)
    frames = sorted(os.path.join(snapshot_folder, name) for name in os.listdir(snapshot_folder))
    save_gif(frames, os.path.join(out_dir, "training.gif"))
    print(f"Saved {figure} and the rest of the run in {out_dir}/")
    return 0


def prepare_out_dir(out_dir, config):
    """Create out_dir, refusing to overwrite a finished run made with other hyperparameters."""
    import os

    import run_files
    from configurator import ConfigError

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"out_dir {out_dir!r} is a file; name a folder (it will be created).")
    old_config_path = os.path.join(out_dir, run_files.CONFIG_FILE)
    if os.path.exists(old_config_path) and not config["overwrite"]:
        old = run_files.read_json(old_config_path)
        old.pop("versions", None)
        changed = sorted(key for key in config
                         if key not in ("overwrite", "out_dir") and old.get(key) != config[key])
        if changed:
            raise ConfigError(
                f"{out_dir!r} already holds a run with different hyperparameters "
                f"({', '.join(f'{k}: {old.get(k)!r} -> {config[k]!r}' for k in changed)}). "
                f"Choose another --out_dir, or pass --overwrite=True to replace it."
            )
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = run_files.atomic_path(os.path.join(out_dir, "probe"))
        os.remove(probe)
    except OSError as error:
        raise ConfigError(f"Cannot write into out_dir {out_dir!r}: {error.strerror}. "
                          f"Choose a folder you can write to.") from None


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
