"""Train the article's convolutional VAE on MNIST, or on any images, and save what it learned.

    python train.py                                   # the article's experiment, MNIST via Keras
    python train.py --data_path=../shared/data/mnist.npz --epochs=1 --train_subset=2000
    python train.py --dataset=path/to/folder_of_images --architecture=strided

Any hyperparameter below can be overridden as --name=value. Everything the run writes goes into
out_dir: config.json, the weights, history.csv, metrics.json and the figures.

The modules that load Keras are imported inside the functions, so that a mistyped hyperparameter
is refused at once, without waiting for TensorFlow to load.
"""

import os
import sys

import numpy as np

import evaluate
from data import KERAS_DATASETS, require_same_data
from plumbing.batches import EpochShuffle
from plumbing.command_line import check_rules, parse_overrides, quiet_tensorflow, run_command
from plumbing.devices import DISTRIBUTIONS
from plumbing.errors import require
from plumbing.optimizer import LR_SCHEDULES, OPTIMIZERS
from plumbing.precision import PRECISIONS

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
validation_images = None  # hold out N training images (chosen by seed) to choose settings on
holdout_class = None  # a class name or index left out of training, to measure anomaly detection
binarize = None  # None: grey pixels | static: 0/1 at 0.5 | dynamic: 0/1 drawn anew each time seen
# model
architecture = "article"  # article: its stride-1 convolutions | strided: halving, for large images
latent_dim = 2  # size of z; the article uses 2, which makes the latent space plottable
conditional = False  # True: encoder and decoder also see the class (labelled data only)
precision = "float32"  # float32 | mixed_bfloat16 (CPUs with bf16) | mixed_float16 (GPUs) | auto
# optimizer
optimizer = "rmsprop"  # rmsprop (the article's) | adam | sgd
learning_rate = 1e-3  # peak learning rate, reached after the warm-up
warmup_steps = 500  # linear warm-up from 0; keeps RMSprop from diverging (see docs/warm-up.md)
lr_schedule = "wsd"  # wsd: the peak held, then decayed | cosine: decayed from the peak | constant
cooldown_share = 0.4  # wsd: the share of the steps spent decaying, at the end (docs/results.md)
ema_momentum = None  # e.g. 0.999: evaluate and save a moving average of the weights; None = off
weight_decay = 0.5  # decoupled, of the two wide Dense kernels only (docs/results.md: chosen on
#                    validation images); 0 = the article's plain RMSprop
kl_warmup_steps = 0  # N: the KL term's gradient weighted 0 to 1 over the first N steps; 0 = off
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
# What a run made before a hyperparameter existed did, where that is not None (resuming it).
BEFORE_IT_EXISTED = {"weight_decay": 0.0, "kl_warmup_steps": 0, "cooldown_share": 0.2}
# The type a value must have where the default is None.
TYPES_OF_NONE_DEFAULTS = {"data_path": str, "image_size": int, "channels": int, "stream": bool,
                          "train_subset": int, "validation_images": int, "holdout_class": str,
                          "binarize": str, "ema_momentum": float, "distribute": str,
                          "virtual_devices": int}
# What each hyperparameter may be: (name, test, what is allowed), checked before anything loads.
RULES = (
    ("image_size", lambda value: value is None or 4 <= value <= 2048,
     "None or 4 to 2048 pixels"),
    ("channels", lambda value: value in (None, 1, 3), "None, 1 (grey) or 3 (RGB)"),
    ("test_fraction", lambda value: 0 < value < 1, "between 0 and 1"),
    ("binarize", lambda value: value in (None, "static", "dynamic"),
     "None (grey pixels), static or dynamic"),
    ("architecture", lambda value: value in ("article", "strided"), "article or strided"),
    ("epochs", lambda value: value > 0, "at least 1"),
    ("batch_size", lambda value: value > 0, "at least 1"),
    ("latent_dim", lambda value: value > 0, "at least 1"),
    ("learning_rate", lambda value: value > 0, "positive"),
    ("warmup_steps", lambda value: value >= 0, "0 or more"),
    ("kl_warmup_steps", lambda value: value >= 0, "0 (off) or more"),
    ("train_subset", lambda value: value is None or value > 0, "None or at least 1"),
    ("validation_images", lambda value: value is None or value > 0, "None or at least 1"),
    ("ema_momentum", lambda value: value is None or 0 < value < 1,
     "None (no averaging) or between 0 and 1, such as 0.999"),
    ("weight_decay", lambda value: value >= 0, "0 or more"),
    ("seed", lambda value: 0 <= value < 2**32, "in 0 .. 2**32 - 1"),
    ("precision", lambda value: value in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("optimizer", lambda value: value in OPTIMIZERS,
     f"one of {', '.join(sorted(OPTIMIZERS))}"),
    ("lr_schedule", lambda value: value in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
    ("cooldown_share", lambda value: 0 < value <= 1, "above 0 and at most 1, such as 0.4"),
    ("distribute", lambda value: value in DISTRIBUTIONS, "None (one device) or data_parallel"),
    ("virtual_devices", lambda value: value is None or value >= 1, "None or at least 1"),
)


def read_config(argv):
    """The hyperparameters above with the command line's overrides, checked against RULES."""
    config = parse_overrides(HYPERPARAMETERS, argv, TYPES_OF_NONE_DEFAULTS)
    for key in ("data_path",) + (() if config["dataset"] in KERAS_DATASETS else ("dataset",)):
        if config[key] is not None:
            # Absolute, so that evaluate.py finds the data from any folder.
            config[key] = os.path.abspath(config[key])
    require(config["data_path"] is None or config["dataset"] in KERAS_DATASETS,
            f"data_path is the local copy of a named dataset ({', '.join(KERAS_DATASETS)}); "
            f"for your own .npz or folder, pass its path as --dataset instead.")
    check_rules(config, RULES)
    require(config["learning_rate"] * config["weight_decay"] < 1,
            f"weight_decay={config['weight_decay']} at learning_rate={config['learning_rate']} "
            f"would take more than the whole of each weight at every step; their product must be "
            f"below 1 (0.1 to 1 is a typical weight_decay at the default rate).")
    return config


def main(argv):
    config = read_config(argv)
    # Keras loads only now, so that a typo is refused without waiting for TensorFlow.
    quiet_tensorflow()
    import plotting
    from plumbing import devices, recording, run_folder, stopping
    from plumbing.atomic_files import write_json

    device_count, distributed = devices.start(config["distribute"], config["virtual_devices"])
    check_batches_split(device_count, config)
    # Several JAX processes: process 0 alone writes out_dir, and they take every decision that
    # depends on what it holds together (devices.agreed), or one would wait for the others.
    writes_the_run = devices.write_from_process_0()
    out_dir = config["out_dir"]
    if not devices.agreed(lambda: run_folder.prepare_out_dir(out_dir, config, BEFORE_IT_EXISTED),
                          "the check of out_dir (refuse, train, or nothing to do)"):
        return 0

    # data
    data = devices.agreed(lambda: checked_data(config, device_count),
                          "the checks of the data and of out_dir's run", code=lambda data: 0)

    # model and optimizer
    model, images_per_epoch = build_and_compile(config, data, device_count, distributed)
    write_json(os.path.join(out_dir, run_folder.CONFIG_FILE),
               {**config, "precision_used": model.dtype_policy.name, "versions": versions()})

    # train; val_* columns measure the validation split, or else only watch the test split
    shuffle = EpochShuffle(config["seed"])
    evaluation_settings, training_input, monitored_input = fit_inputs(
        data, config, device_count, images_per_epoch, shuffle)
    shown_x, _, shown_labels = data.shown_images(config["seed"])
    snapshots = plotting.EpochSnapshots(
        shown_x, shown_labels, config["latent_dim"],
        os.path.join(out_dir, run_folder.SNAPSHOT_FOLDER),
        os.path.join(out_dir, run_folder.GIF_FILE), seed=config["seed"])
    try:
        with distributed():
            # shuffle=False: the batches come in the order (seed, epoch) fixes (EpochShuffle).
            model.fit(training_input, epochs=config["epochs"], shuffle=False,
                      validation_data=monitored_input,
                      callbacks=recording.training_callbacks(out_dir, config, snapshots, shuffle),
                      verbose="auto" if sys.stdout.isatty() else 2)
    except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (stopping.PreemptionGuard)
        return stop_on_interrupt(model, config, snapshots, interruption)
    except stopping.TrainingDiverged as error:
        return stopping.report_divergence(error, out_dir)

    return save_and_evaluate(model, config, data, evaluation_settings, writes_the_run)


def save_and_evaluate(model, config, data, evaluation_settings, writes_the_run):
    """Save the trained model, then evaluate the float32 copy that was saved on every test
    image, on one device, and draw the figures; returns the exit code."""
    from plumbing import run_folder, stopping

    out_dir = config["out_dir"]
    try:
        model = run_folder.save_trained_model(model, config, out_dir)
        stopping.send_test_signal_at("evaluation")
        evaluate.evaluate_run(model, config, data, out_dir, evaluation_settings)
    except KeyboardInterrupt as interruption:
        return stopping.report_interrupted_evaluation(interruption, out_dir)
    stopping.kill_on_sigterm()
    run_folder.finish_run(out_dir)
    saved = f"{run_folder.RECONSTRUCTIONS_FILE}, metrics.json, figures"
    print(f"Saved the run in {out_dir}/: {saved}." if writes_the_run
          else f"Done; process 0 writes the run in {out_dir}/.")
    return 0


def stop_on_interrupt(model, config, snapshots, interruption):
    """Ctrl-C or SIGTERM during training: save the weights and a reconstruction figure, then
    say how to resume; returns the exit code."""
    from plumbing import run_folder, stopping

    run_folder.save_trained_model(model, config, config["out_dir"])
    snapshots.draw_reconstructions(
        os.path.join(config["out_dir"], run_folder.RECONSTRUCTIONS_FILE),
        title="Test images and their reconstructions (interrupted run)")
    return stopping.report_interrupted_training(interruption, config)


def build_and_compile(config, data, device_count, distributed):
    """(the model, compiled with its optimizer and schedule, the images an epoch trains on),
    built inside the data-parallel engine when there is one."""
    import keras

    from cvae import training_gflops_per_image, wide_dense_kernels
    from plumbing import devices, precision, run_folder
    from plumbing.optimizer import MIN_WARMUP_STEPS, fitted_warmup, make_optimizer

    policy, why = precision.resolve(config["precision"])
    if config["precision"] == "auto":
        print(f"Precision: {policy}, chosen by {why}.")
    keras.mixed_precision.set_dtype_policy(policy)
    keras.utils.set_random_seed(config["seed"])
    with distributed():  # a replicated model is built and compiled inside its engine
        model = run_folder.build_model(config, seed=config["seed"])
        model.encoder.summary()
        model.decoder.summary()
        # The encoder's and decoder's weights: the model's own count_params() would also count
        # a KL warm-up's step counter.
        print(f"CVAE ({config['architecture']}): "
              f"{model.encoder.count_params() + model.decoder.count_params():,} parameters, "
              f"{training_gflops_per_image(model):.3f} GFLOP per training image.")
        images_per_epoch = devices.images_per_epoch(data.num_train, config["batch_size"],
                                                    device_count)
        total_steps = config["epochs"] * -(-images_per_epoch // config["batch_size"])
        warmup_steps = fitted_warmup(config["warmup_steps"], total_steps)
        if warmup_steps < config["warmup_steps"]:
            print(f"A short run of {total_steps} steps: the warm-up is cut from warmup_steps="
                  f"{config['warmup_steps']} to {warmup_steps} (a fifth of the run, at least "
                  f"{MIN_WARMUP_STEPS})" + ("." if warmup_steps < total_steps else
                                            ", still the whole run: it never reaches its peak."))
        # Likewise the KL warm-up: a short run spends at least its second half on the ELBO's own
        # gradient.
        model.kl_warmup_steps = min(config["kl_warmup_steps"], total_steps // 2)
        if model.kl_warmup_steps < config["kl_warmup_steps"]:
            print(f"A short run of {total_steps} steps: the KL warm-up is cut from "
                  f"kl_warmup_steps={config['kl_warmup_steps']} to {model.kl_warmup_steps}.")
        # The XLA-compiled update cannot run inside tf.distribute's replicas (it would have to
        # sum their gradients inside a nested compiled function, which TensorFlow refuses).
        model.compile(optimizer=make_optimizer(
            config["optimizer"], config["learning_rate"], total_steps=total_steps,
            warmup_steps=warmup_steps, schedule=config["lr_schedule"],
            cooldown_share=config["cooldown_share"], fused=config["distribute"] is None,
            ema_momentum=config["ema_momentum"], weight_decay=config["weight_decay"],
            decayed=wide_dense_kernels(model),
            variables=model.trainable_variables))
    return model, images_per_epoch


def fit_inputs(data, config, device_count, images_per_epoch, shuffle):
    """(the evaluation's settings, the training batches, the per-epoch test batches), scaled to
    the run's size and split evenly across the devices."""
    from plumbing import devices

    batch_size, conditional = config["batch_size"], config["conditional"]
    training_input = devices.even_batches(
        data.training_input(batch_size, shuffle, conditional), device_count,
        data.num_train, batch_size)
    split = "test" if data.x_val is None else "validation"
    evaluation_settings, monitored, note = evaluate.scaled_to_run(
        data.num_train, config["epochs"], len(data.x_test),
        (len(data.monitored_images()[0]), split))
    if note:
        print(note.replace("OUT_DIR", config["out_dir"]))
    monitored = monitored_on_devices(device_count, data.num_train, images_per_epoch, monitored,
                                     config, split)
    monitored_input = devices.even_batches(
        data.monitored_input(monitored, batch_size, conditional), device_count, monitored,
        batch_size)
    return evaluation_settings, training_input, monitored_input


def checked_data(config, device_count):
    """The run's data (config["data"] then describes it), checked against the model, the
    devices and the run that out_dir may hold; with overwrite=True, that run is deleted only
    then, with every input checked."""
    from data import load_dataset_of_run
    from plumbing import run_folder

    data = training_images(load_dataset_of_run(config), config)
    config["data"] = data.summary()
    check_model_fits_data(data, config)
    check_batches_split(device_count, config, len(data.x_test), data.num_train,
                        None if data.x_val is None else len(data.x_val))
    if config["overwrite"]:
        run_folder.remove_run(config["out_dir"])
    return data


def check_model_fits_data(data, config):
    """Refuse, before anything is built, a model the data cannot train, or a resumed run whose
    data has changed since it started."""
    from cvae import architecture_problem
    from plumbing import run_folder
    from plumbing.atomic_files import read_json

    problem = architecture_problem(data.image_shape, config["latent_dim"], config["architecture"])
    require(problem is None, problem)
    require(not config["conditional"] or data.y_train is not None,
            f"conditional=True needs class labels, and {data.description} has none: give it "
            f"class subfolders (or y_train and y_test), or leave conditional as False.")
    config_path = os.path.join(config["out_dir"], run_folder.CONFIG_FILE)
    if not config["overwrite"] and os.path.exists(config_path):
        require_same_data(config["out_dir"], read_json(config_path).get(
            "data"), config["data"])


def training_images(data, config):
    """The data as the run trains on it (data.as_trained), and a line that says so."""
    from data import as_trained

    data = as_trained(data, config)
    classes = f"{len(data.class_names)} classes" if data.class_names else "no labels"
    validation = "" if data.x_val is None else f", {len(data.x_val)} validation"
    print(f"{data.description}: {data.num_train} training{validation} and {len(data.x_test)} "
          f"test images of shape {data.image_shape}, {classes}.")
    return data


def check_batches_split(devices, config, test_images=None, train_images=None,
                        validation_images=None):
    """Every batch must split evenly across the devices (see plumbing/devices.py), and an epoch
    and the per-epoch loss on the held-out images need at least one image per device."""
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
    require(validation_images is None or validation_images >= devices,
            f"The validation split has {validation_images} image(s), fewer than the {devices} "
            f"devices of distribute=data_parallel, which measure it after each epoch; hold out "
            f"more (validation_images) or use fewer devices.")


def monitored_on_devices(devices, num_train, images_per_epoch, monitored, config,
                         held_out="test"):
    """The number of held-out images (validation, else test) the per-epoch loss can use on
    devices devices (a multiple of their count); says what the even split changes, if
    anything."""
    if devices == 1:
        return monitored
    print(f"Data-parallel on {devices} devices: each batch of {config['batch_size']} images is "
          f"split into {devices} equal shares.")
    if images_per_epoch < num_train:
        print(f"The last batch of each epoch is cut to a multiple of {devices}: each epoch "
              f"trains on {images_per_epoch} of the {num_train} images, and the "
              f"{num_train - images_per_epoch} left out change from epoch to epoch.")
    if monitored % devices:
        print(f"The per-epoch {held_out} loss (val_*) is measured on the first "
              f"{monitored - monitored % devices} {held_out} images, a multiple of {devices}; "
              f"the final evaluation uses every test image.")
    return monitored - monitored % devices


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
    run_command(main)
