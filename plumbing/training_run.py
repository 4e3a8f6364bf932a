"""train.py's run around its recipe: the devices, the run folder, the checks of the data against
the model and the devices, the length of the run, and how it ends (finished, interrupted,
diverged, or interrupted while it evaluates), so that train.py reads as the recipe alone.

Several JAX processes: process 0 alone writes out_dir, and they take every decision that depends
on what it holds together (agreed), or one would wait for the others forever.
"""

import contextlib
import os
import sys

import numpy as np

from plumbing import devices, precision, run_folder, stopping
from plumbing.atomic_files import read_json, write_json
from plumbing.errors import require
from plumbing.model_size import architecture_problem, training_gflops_per_image
from plumbing.optimizer import MIN_WARMUP_STEPS, fitted_warmup

# The length of an inspection run that found defects far better than 10 epochs (260-290 steps)
# on the digit and brick sets, and little worse than 100: 30 epochs, 780-870 optimizer steps
# (docs/anomaly-detection.md). On grass it did worse than 10 epochs, hence advice, not a default:
# a run shorter than SHORT_INSPECTION_STEPS is told how many epochs make INSPECTION_STEPS.
INSPECTION_STEPS, SHORT_INSPECTION_STEPS = 850, 700
# An inspection set of images this large or larger, trained whole, is told of patch_size: a model
# of patches half their side was measured on 64x64 texture crops (docs/anomaly-detection.md).
TEXTURE_HINT_SIDE = 64


class TrainingRun:
    """One run of train.py. save_model(model, config, out_dir) -> the saved float32 model
    (saved_run.save_trained_model), which an interrupted run also saves."""

    def __init__(self, config, save_model):
        self.config, self.out_dir, self.save_model = config, config["out_dir"], save_model
        self.device_count, self.distributed = devices.start(config["distribute"],
                                                            config["virtual_devices"])
        check_batches_split(self.device_count, config)
        self.writes_the_run = devices.write_from_process_0()
        self.already_finished = not self.agreed(
            lambda: run_folder.prepare_out_dir(self.out_dir, config),
            "the check of out_dir (refuse, train, or nothing to do)")
        self.exit_code = None
        self.precision_why = None  # set_precision's reason for the policy

    def agreed(self, decide, what):
        """decide()'s outcome, the same in every process (devices.agreed)."""
        return devices.agreed(decide, what, code=lambda outcome: int(bool(outcome)))

    def path(self, name):
        return os.path.join(self.out_dir, name)

    # ---- before training ---------------------------------------------------------------------
    def describe_and_check(self, data):
        """Say what the run trains on, record it in the config, and refuse what cannot train:
        a model the data cannot feed, batches that do not split across the devices, or a resumed
        run whose data has changed since it started. With overwrite=True, the run out_dir held
        is deleted only now, with every input checked."""
        config = self.config
        classes = f"{len(data.class_names)} classes" if data.class_names else "no labels"
        validation = "" if data.x_val is None else f", {len(data.x_val)} validation"
        print(f"{data.description}: {data.num_train} training{validation} and "
              f"{len(data.x_test)} test images of shape {data.image_shape}, {classes}.")
        config["data"] = data.summary()
        problem = architecture_problem(data.image_shape, config["latent_dim"],
                                       config["architecture"])
        if problem is not None and data.whole is not None:
            problem += (f" (The model's images here are the {data.image_shape[0]}x"
                        f"{data.image_shape[1]} patches of patch_size: choose another "
                        f"--patch_size, such as a multiple of 8, rather than an --image_size.)")
        require(problem is None, problem)
        require(not config["conditional"] or data.y_train is not None,
                f"conditional=True needs class labels, and {data.description} has none: give it "
                f"class subfolders (or y_train and y_test), or leave conditional as False.")
        config_path = self.path(run_folder.CONFIG_FILE)
        if not config["overwrite"] and os.path.exists(config_path):
            run_folder.require_same_data(self.out_dir, read_json(config_path).get("data"),
                                         config["data"])
        check_batches_split(self.device_count, config, len(data.x_test), data.num_train,
                            None if data.x_val is None else len(data.x_val))
        if config["overwrite"]:
            run_folder.remove_run(self.out_dir)

    def recorded(self, name):
        """What the run being resumed recorded as name in its config.json (precision_used, ...);
        None for a new run, or one started before name was recorded."""
        config_path = self.path(run_folder.CONFIG_FILE)
        if self.config["overwrite"] or not os.path.exists(config_path):
            return None
        return read_json(config_path).get(name)

    def set_precision(self):
        """Keras's dtype policy for the run: the config's precision, "auto" resolved to what
        this hardware runs fast, a resumed run's as it started; split_precision says which and
        why, once the model is built."""
        import keras

        policy, self.precision_why = precision.resolve(self.config["precision"],
                                                       self.recorded("precision_used"))
        keras.mixed_precision.set_dtype_policy(policy)

    def split_precision(self, model):
        """Keep in float32 the few layers that lose under a 16-bit policy, and sum the bias
        gradients in float32 (the split and bias method a resumed run recorded, else
        precision.float32_where_16_bits_lose's), and say which and why. Returns (their names,
        the bias method), for config.json (None, None under float32)."""
        recorded = self.recorded("float32_layers")
        unknown = (precision.unknown_recorded_layers(model, recorded)
                   if recorded is not None else [])
        require(not unknown, f"{self.path(run_folder.CONFIG_FILE)!r} records float32_layers "
                             f"that this model does not have ({', '.join(unknown)}), so the run "
                             f"cannot resume with the bf16/float32 split it started with. Restore "
                             f"the list it was written with, or pass --overwrite=True to train "
                             f"it again from scratch.")
        recorded_method = self.recorded("bias_method")
        require(recorded_method is None or (isinstance(recorded_method, str)
                                            and recorded_method in precision.BIAS_METHODS),
                f"{self.path(run_folder.CONFIG_FILE)!r} records bias_method="
                f"{recorded_method!r}, which this code does not know (it knows "
                f"{', '.join(precision.BIAS_METHODS)}), so the run cannot resume as it started. "
                f"Restore the value it was written with, or pass --overwrite=True to train it "
                f"again from scratch.")
        unfit = precision.why_bias_method_cannot_run(model, recorded_method)
        require(unfit is None,
                f"{self.path(run_folder.CONFIG_FILE)!r} records bias_method="
                f"{recorded_method!r}, which runs only {unfit}, so the run cannot resume as it "
                f"started here. Resume it with KERAS_BACKEND=tensorflow and the precision it "
                f"recorded ({self.recorded('precision_used')}), or pass --overwrite=True to "
                f"train it again from scratch.")
        method = precision.float32_where_16_bits_lose(model, recorded, recorded_method)
        float32_names = precision.float32_layers(model)
        kept = ""
        if float32_names is not None:
            biases = ("each bias added in bf16 and its gradient summed in float32"
                      if method == "bf16_summed_in_float32" else "every bias in float32")
            layers = f"in float32: {', '.join(float32_names)}; " if float32_names else ""
            kept = f"; {layers}{biases} (plumbing/precision.py says why)"
        why = self.precision_why
        chosen = f"chosen by {why}" if self.config["precision"] == "auto" else why
        print(f"Precision: {model.dtype_policy.name}{kept}, {chosen}.")
        return float32_names, method

    def describe_model(self, model):
        """Print the encoder's and decoder's layers, their parameter count and the cost of a
        training image."""
        model.encoder.summary()
        model.decoder.summary()
        # The encoder's and decoder's weights: the model's own count_params() would also count
        # a KL warm-up's step counter.
        print(f"CVAE ({self.config['architecture']}): "
              f"{model.encoder.count_params() + model.decoder.count_params():,} parameters, "
              f"{training_gflops_per_image(model):.3f} GFLOP per training image.")

    def steps(self, data):
        """{"total", "warmup", "kl_warmup"}: the run's optimizer steps, and the two warm-ups cut
        to fit a short run (each says so when it is cut)."""
        self.images_per_epoch = devices.images_per_epoch(data.num_train, self.config["batch_size"],
                                                         self.device_count)
        steps = run_steps(self.config, self.images_per_epoch)
        if data.inspection and steps["total"] < SHORT_INSPECTION_STEPS:
            steps_per_epoch = steps["total"] // self.config["epochs"]
            print(f"An inspection run of {steps['total']} steps: on the digit and brick sets, "
                  f"about {INSPECTION_STEPS} found defects clearly better than 260-290 (on "
                  f"grass, worse; docs/anomaly-detection.md). Try "
                  f"--epochs={-(-INSPECTION_STEPS // max(1, steps_per_epoch))} in another out_dir,"
                  f" and keep the run whose synthetic-defect AUROC, at the end of the log, is "
                  f"higher.")
        if data.inspection and min(data.image_shape[:2]) >= TEXTURE_HINT_SIDE:
            # Half the side, a multiple of 8 so that the strided architecture can halve it.
            print(f"If these images are of a texture (no place where things belong: fabric, "
                  f"wood, a wall), try --patch_size={min(data.image_shape[:2]) // 16 * 8} in "
                  f"another "
                  f"out_dir: a model of patches found the brick set's defects far better, not "
                  f"grass's (docs/anomaly-detection.md). Keep the run whose synthetic-defect "
                  f"AUROC is higher.")
        return steps

    def write_config(self, **resolved):
        """config.json: the hyperparameters, what "auto" settings resolved to (precision_used,
        float32_layers, bias_method, likelihood_used), and the versions of the libraries."""
        self.config.update(resolved)  # what the run's model is built from when it is saved
        write_json(self.path(run_folder.CONFIG_FILE), {**self.config, "versions": versions()})

    def fit_inputs(self, data, shuffle, monitored):
        """(the training batches, the per-epoch held-out batches of `monitored` images), split
        evenly across the devices."""
        batch_size, conditional = self.config["batch_size"], self.config["conditional"]
        training_input = devices.even_batches(
            data.training_input(batch_size, shuffle, conditional), self.device_count,
            data.num_train, batch_size)
        split = "test" if data.x_val is None else "validation"
        monitored = monitored_on_devices(self.device_count, data.num_train,
                                         self.images_per_epoch, monitored, self.config, split)
        monitored_input = devices.even_batches(
            data.monitored_input(monitored, batch_size, conditional), self.device_count,
            monitored, batch_size)
        return training_input, monitored_input

    # ---- how it ends ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def stopping_cleanly(self, model, draw_reconstructions):
        """Training inside: at Ctrl-C or SIGTERM, save the weights and a reconstruction figure
        and say how to resume; at a loss that is no longer finite, keep the last good backup and
        say what to change. Either way exit_code is set, and the run goes no further."""
        try:
            yield
        except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (stopping.PreemptionGuard)
            self.save_model(model, self.config, self.out_dir)
            draw_reconstructions(self.path(run_folder.RECONSTRUCTIONS_FILE),
                                 title="Test images and their reconstructions (interrupted run)")
            self.exit_code = stopping.report_interrupted_training(interruption, self.config)
        except stopping.TrainingDiverged as error:
            self.exit_code = stopping.report_divergence(error, self.out_dir)

    def save(self, model):
        """Save the trained model; returns the float32, one-device copy that was saved, the
        model the evaluation measures (so that metrics.json describes the files)."""
        saved = self.save_model(model, self.config, self.out_dir)
        stopping.send_test_signal_at("evaluation")
        return saved

    @contextlib.contextmanager
    def evaluating(self):
        """The evaluation inside: interrupted, it says how to evaluate again; finished, the run
        is marked finished and exit_code is 0."""
        try:
            yield
        except KeyboardInterrupt as interruption:
            self.exit_code = stopping.report_interrupted_evaluation(interruption, self.out_dir)
            return
        stopping.kill_on_sigterm()
        run_folder.finish_run(self.out_dir)
        saved = f"{run_folder.RECONSTRUCTIONS_FILE}, metrics.json, figures"
        print(f"Saved the run in {self.out_dir}/: {saved}." if self.writes_the_run
              else f"Done; process 0 writes the run in {self.out_dir}/.")
        self.exit_code = 0


def run_steps(config, images_per_epoch):
    """{"total", "warmup", "kl_warmup"}: the run's optimizer steps, and the two warm-ups cut to
    fit a short run (each says so when it is cut)."""
    total = config["epochs"] * -(-images_per_epoch // config["batch_size"])
    warmup = fitted_warmup(config["warmup_steps"], total)
    if warmup < config["warmup_steps"]:
        print(f"A short run of {total} steps: the warm-up is cut from warmup_steps="
              f"{config['warmup_steps']} to {warmup} (a fifth of the run, at least "
              f"{MIN_WARMUP_STEPS})" + ("." if warmup < total else
                                        ", still the whole run: it never reaches its peak."))
    # Likewise the KL warm-up: a short run spends at least its second half on the ELBO's
    # own gradient.
    kl_warmup = min(config["kl_warmup_steps"], total // 2)
    if kl_warmup < config["kl_warmup_steps"]:
        print(f"A short run of {total} steps: the KL warm-up is cut from "
              f"kl_warmup_steps={config['kl_warmup_steps']} to {kl_warmup}.")
    return {"total": total, "warmup": warmup, "kl_warmup": kl_warmup}


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


