"""Train the article's convolutional VAE on MNIST, or on any images, and save what it learned.

    python train.py                                   # the article's experiment, MNIST via Keras
    python train.py --data_path=../shared/data/mnist.npz --epochs=1 --train_subset=2000
    python train.py --dataset=path/to/folder_of_images --architecture=strided

Any hyperparameter below can be overridden as --name=value. Everything the run writes goes into
out_dir: config.json, the weights, history.csv, metrics.json and the figures.
"""

import os
import signal
import sys

import numpy as np

_names_before_hyperparameters = set(globals())
# ----------------------------------------------------------------------------------------------
# data
dataset = "mnist"  # mnist | fashion_mnist | cifar10 (Keras), or the path of an .npz or image folder
data_path = None  # a named dataset's local copy (mnist.npz, ...); None = download via Keras
image_size = None  # resize every image to image_size x image_size; None = the data's own size
channels = None  # 1 (grey) or 3 (RGB); None = 1 if every image is grey, else 3
test_fraction = 0.1  # share of the images held out for testing when the data has no test split
stream = None  # read a folder's images from disk every epoch; None = if they do not fit in memory
train_subset = None  # train on the first N training images only; None = all
holdout_class = None  # a class name or index left out of training, to measure anomaly detection
# model
architecture = "article"  # article: its stride-1 convolutions | strided: halving, for large images
latent_dim = 2  # size of z; the article uses 2, which makes the latent space plottable
conditional = False  # True: encoder and decoder also see the class (labelled data only)
precision = "float32"  # float32 | mixed_bfloat16 (CPUs with bf16) | mixed_float16 (GPUs)
# optimizer
optimizer = "rmsprop"  # rmsprop (the article's) | adam | sgd
learning_rate = 1e-3  # peak learning rate, reached after the warm-up
warmup_steps = 500  # linear warm-up from 0; keeps RMSprop from diverging (see optimization.py)
lr_schedule = "cosine"  # cosine: decay to 1% of the peak by the last step | constant
epochs = 10  # passes over the training images
batch_size = 64  # images per step
seed = 0  # seeds weights, shuffling, the test split, sampling and the images in the figures
# devices
distribute = None  # None: one device | data_parallel: split each batch over every local device
virtual_devices = None  # split the CPU into N devices, to try data_parallel without accelerators
# output
out_dir = "outputs"  # everything the run writes goes here
tensorboard = False  # True: log the loss terms, learning rate and snapshots in out_dir/tensorboard
overwrite = False  # True: discard whatever run out_dir holds and train from scratch
# ----------------------------------------------------------------------------------------------
HYPERPARAMETERS = {name: value for name, value in globals().items()
                   if name not in _names_before_hyperparameters
                   and name != "_names_before_hyperparameters"}
# The type a value must have where the default is None.
TYPES_OF_NONE_DEFAULTS = {"data_path": str, "image_size": int, "channels": int, "stream": bool,
                          "train_subset": int, "holdout_class": str, "distribute": str,
                          "virtual_devices": int}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def read_config(argv):
    """The hyperparameters above with the command line's overrides, checked for range."""
    from configurator import parse_overrides, require
    from data import KERAS_DATASETS
    from distribution import DISTRIBUTIONS
    from optimization import LR_SCHEDULES, OPTIMIZERS  # plain lists; no Keras loaded yet

    config = parse_overrides(HYPERPARAMETERS, argv, TYPES_OF_NONE_DEFAULTS)
    for key in ("data_path",) + (() if config["dataset"] in KERAS_DATASETS else ("dataset",)):
        if config[key] is not None:
            # Absolute, so that evaluate.py finds the data from any folder.
            config[key] = os.path.abspath(config[key])
    require(config["data_path"] is None or config["dataset"] in KERAS_DATASETS,
            f"data_path is the local copy of a named dataset ({', '.join(KERAS_DATASETS)}); "
            f"for your own .npz or folder, pass its path as --dataset instead.")
    require(config["image_size"] is None or 4 <= config["image_size"] <= 2048,
            f"image_size must be None or 4 to 2048 pixels, not {config['image_size']}.")
    require(config["channels"] in (None, 1, 3),
            f"channels must be None, 1 (grey) or 3 (RGB), not {config['channels']}.")
    require(0 < config["test_fraction"] < 1,
            f"test_fraction must be between 0 and 1, not {config['test_fraction']}.")
    require(config["architecture"] in ("article", "strided"),
            f"architecture must be article or strided, not {config['architecture']!r}.")
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
    require(config["precision"] in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, not {config['precision']!r}.")
    require(config["optimizer"] in OPTIMIZERS,
            f"optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, not "
            f"{config['optimizer']!r}.")
    require(config["lr_schedule"] in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not "
            f"{config['lr_schedule']!r}.")
    require(config["distribute"] in DISTRIBUTIONS,
            f"distribute must be None (one device) or data_parallel, not "
            f"{config['distribute']!r}.")
    require(config["virtual_devices"] is None or config["virtual_devices"] >= 1,
            f"virtual_devices must be None or at least 1, not {config['virtual_devices']}.")
    return config


def main(argv):
    config = read_config(argv)

    # Imports after the arguments are checked, so that a typo is refused without waiting for
    # TensorFlow to load.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    import keras

    import distribution
    import run_files
    from callbacks import TrainingDiverged, training_callbacks
    from cvae import training_gflops_per_image
    from data import load_dataset_of_run
    from optimization import make_optimizer
    from report import evaluate_run, scaled_to_run

    devices, distributed = distribution.start(config["distribute"], config["virtual_devices"])
    check_batches_split(devices, config)
    out_dir = config["out_dir"]
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    if not run_files.prepare_out_dir(out_dir, config):
        return 0

    # data
    data = training_images(load_dataset_of_run(config), config)
    config["data"] = data.summary()
    check_model_fits_data(data, config)
    check_batches_split(devices, config, len(data.x_test), data.num_train)
    if config["overwrite"]:
        # Only now, with every input checked, is the old run deleted.
        run_files.remove_run(out_dir)

    # model and optimizer
    keras.mixed_precision.set_dtype_policy(config["precision"])
    keras.utils.set_random_seed(config["seed"])
    with distributed():  # a replicated model is built and compiled inside its engine
        model = run_files.build_model(config, seed=config["seed"])
        model.encoder.summary()
        model.decoder.summary()
        print(f"CVAE ({config['architecture']}): {model.count_params():,} parameters, "
              f"{training_gflops_per_image(model):.3f} GFLOP per training image.")
        images_per_epoch = distribution.images_per_epoch(data.num_train, config["batch_size"],
                                                         devices)
        steps_per_epoch = -(-images_per_epoch // config["batch_size"])
        # The XLA-compiled update cannot run inside tf.distribute's replicas (it would have to
        # sum their gradients inside a nested compiled function, which TensorFlow refuses).
        model.compile(optimizer=make_optimizer(
            config["optimizer"], config["learning_rate"],
            total_steps=config["epochs"] * steps_per_epoch, warmup_steps=config["warmup_steps"],
            schedule=config["lr_schedule"], fused=config["distribute"] is None))
    run_files.write_json(path(run_files.CONFIG_FILE), {**config, "versions": versions()})

    # train; the test set is only monitored (val_* columns), never used to choose anything
    conditional = config["conditional"]
    shown_x, _, shown_labels = data.shown_images(config["seed"])
    training_input = distribution.even_batches(
        data.training_input(config["batch_size"], config["seed"], conditional), devices,
        data.num_train, config["batch_size"])
    evaluation_settings, monitored, note = scaled_to_run(data.num_train, config["epochs"],
                                                         len(data.x_test))
    if note:
        print(note.replace("OUT_DIR", out_dir))
    monitored = monitored_on_devices(devices, data.num_train, images_per_epoch, monitored,
                                     config)
    monitored_input = distribution.even_batches(
        data.test_input(monitored, config["batch_size"], conditional), devices, monitored,
        config["batch_size"])
    try:
        with distributed():
            # shuffle=False: the batches come shuffled per epoch by seed (data.training_input).
            model.fit(training_input, epochs=config["epochs"], shuffle=False,
                      validation_data=monitored_input,
                      callbacks=training_callbacks(out_dir, shown_x, shown_labels, config),
                      verbose="auto" if sys.stdout.isatty() else 2)
    except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (callbacks.PreemptionGuard)
        return stop_on_interrupt(model, config, shown_x, shown_labels, interruption)
    except TrainingDiverged as error:
        return stop_on_divergence(error, out_dir)

    # save, then evaluate on the test set and draw the figures, on one device, every test image
    try:
        run_files.save_trained_model(model, config, out_dir)
        model = distribution.on_one_device(model, lambda: run_files.build_model(config))
        evaluate_run(model, config, data, out_dir, evaluation_settings)
    except KeyboardInterrupt as interruption:
        print(f"\n{stopped_by(interruption)} during the evaluation. Training is complete, and "
              f"its last epoch is backed up; run the same command again to evaluate, or "
              f"`python evaluate.py {out_dir}`.", file=sys.stderr)
        return exit_code(interruption)
    # From here on SIGTERM kills as it did before the guard (callbacks.PreemptionGuard): only
    # the mark of a finished run is left to write, and a run without it is evaluated again.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    run_files.finish_run(out_dir)
    print(f"Saved the run in {out_dir}/: {run_files.RECONSTRUCTIONS_FILE}, metrics.json, figures.")
    return 0


def check_model_fits_data(data, config):
    """Refuse, before anything is built, a model the data cannot train, or a resumed run whose
    data has changed since it started."""
    import run_files
    from configurator import require
    from cvae import architecture_problem

    problem = architecture_problem(data.image_shape, config["latent_dim"], config["architecture"])
    require(problem is None, problem)
    require(not config["conditional"] or data.y_train is not None,
            f"conditional=True needs class labels, and {data.description} has none: give it "
            f"class subfolders (or y_train and y_test), or leave conditional as False.")
    config_path = os.path.join(config["out_dir"], run_files.CONFIG_FILE)
    if not config["overwrite"] and os.path.exists(config_path):
        run_files.require_same_data(config["out_dir"], run_files.read_json(config_path).get(
            "data"), config["data"])


def training_images(data, config):
    """The data with holdout_class left out of training and train_subset applied."""
    from configurator import require

    if config["holdout_class"] is not None:
        # Anomaly-detection experiment: the model never sees this class in training.
        holdout = data.class_index(config["holdout_class"])
        data = data.select_train(data.y_train != holdout)
        require(data.num_train > 0, f"With holdout_class={config['holdout_class']!r} no "
                                    f"training images are left; hold out another class or none.")
        require(bool((data.y_test == holdout).any()),
                f"The test split holds no image of holdout_class={config['holdout_class']!r}, so "
                f"anomaly detection cannot be measured; hold out another class.")
    if config["train_subset"] is not None:
        require(config["train_subset"] <= data.num_train,
                f"train_subset={config['train_subset']} is more than the {data.num_train} "
                f"training images available.")
        data = data.select_train(np.arange(data.num_train) < config["train_subset"])
    classes = f"{len(data.class_names)} classes" if data.class_names else "no labels"
    print(f"{data.description}: {data.num_train} training and {len(data.x_test)} test images of "
          f"shape {data.image_shape}, {classes}.")
    return data


def check_batches_split(devices, config, test_images=None, train_images=None):
    """Every batch must split evenly across the devices (see distribution.py), and an epoch
    and the per-epoch test loss need at least one image per device."""
    from configurator import require

    require(config["batch_size"] % devices == 0,
            f"batch_size={config['batch_size']} does not split evenly across the {devices} "
            f"devices of distribute=data_parallel: make it a multiple of {devices} (it is the "
            f"global batch, shared by all devices).")
    require(test_images is None or test_images >= devices,
            f"The test split has {test_images} image(s), fewer than the {devices} devices of "
            f"distribute=data_parallel; use fewer devices or more test images.")
    require(train_images is None or train_images >= devices,
            f"Only {train_images} training image(s) for the {devices} devices of "
            f"distribute=data_parallel, which need one each; use fewer devices or more "
            f"training images.")


def monitored_on_devices(devices, num_train, images_per_epoch, monitored, config):
    """The number of test images the per-epoch test loss can use on devices devices (a multiple
    of their count); says what the even split changes, when it changes anything."""
    if devices == 1:
        return monitored
    print(f"Data-parallel on {devices} devices: each batch of {config['batch_size']} images is "
          f"split into {devices} equal shares.")
    if images_per_epoch < num_train:
        print(f"The last batch of each epoch is cut to a multiple of {devices}: each epoch "
              f"trains on {images_per_epoch} of the {num_train} images, and the "
              f"{num_train - images_per_epoch} left out change from epoch to epoch.")
    if monitored % devices:
        print(f"The per-epoch test loss (val_*) is measured on the first "
              f"{monitored - monitored % devices} test images, a multiple of {devices}; the "
              f"final evaluation uses every test image.")
    return monitored - monitored % devices


def stopped_by(interruption):
    from callbacks import Preempted

    return ("Stopped by SIGTERM (how a scheduler or a preemptible machine ends a job)"
            if isinstance(interruption, Preempted) else "Interrupted")


def exit_code(interruption):
    """130 for Ctrl-C and 143 for SIGTERM, the codes a shell gives a process killed by each."""
    from callbacks import Preempted

    return 143 if isinstance(interruption, Preempted) else 130


def stop_on_interrupt(model, config, shown_x, shown_labels, interruption):
    """Ctrl-C or SIGTERM during training: save the weights and a reconstruction figure, say how
    to resume."""
    import run_files
    from measures import reconstruct
    from plotting import plot_reconstructions

    path = lambda name: os.path.join(config["out_dir"], name)  # noqa: E731
    run_files.save_trained_model(model, config, config["out_dir"])
    labels = shown_labels if config["conditional"] else None
    plot_reconstructions(shown_x, reconstruct(model, shown_x, labels), None,
                         path(run_files.RECONSTRUCTIONS_FILE),
                         title="Test images and their reconstructions (interrupted run)")
    done = len(run_files.read_history(path(run_files.HISTORY_FILE)))
    again = ("the same command without --overwrite=True" if config["overwrite"]
             else "the same command")
    print(f"\n{stopped_by(interruption)}. The current weights are in "
          f"{path(run_files.WEIGHTS_FILE)} and the reconstructions in "
          f"{path(run_files.RECONSTRUCTIONS_FILE)}. {done} of {config['epochs']} epochs were "
          f"completed; run {again} again to resume from there (the partial epoch is "
          f"repeated).", file=sys.stderr)
    return exit_code(interruption)


def stop_on_divergence(error, out_dir):
    """The weights now hold NaNs: nothing is saved over the last good state, which stays in the
    backup folder (the end of the last completed epoch)."""
    import run_files

    backup = os.path.join(out_dir, run_files.BACKUP_FOLDER)
    kept = (f"The weights of the last completed epoch are kept in {backup}. "
            if os.path.exists(backup) else "No epoch was completed. ")
    print(f"error: {error} {kept}To start afresh with new settings, add --overwrite=True.",
          file=sys.stderr)
    return 3


def versions():
    import keras

    try:
        import tensorflow

        tensorflow_version = tensorflow.__version__
    except ImportError:
        tensorflow_version = None
    return {"keras": keras.__version__, "backend": keras.backend.backend(),
            "tensorflow": tensorflow_version, "numpy": np.__version__,
            "python": sys.version.split()[0]}


if __name__ == "__main__":
    from configurator import run_command

    run_command(main)
