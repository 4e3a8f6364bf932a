"""A trained run's model: built from the run folder's config.json through cvae.py, saved as
weights only, and loaded back the same way by every command that uses a run.

The weights are an HDF5 file of arrays, so loading them runs no code; the encoder and decoder
are also saved alone as Keras files of built-in layers, which load without this project.
"""

import os
import sys

import keras

from cvae import build_cvae
from plumbing.atomic_files import read_json, write_atomically
from plumbing.errors import RunError
from plumbing.run_folder import (
    CONFIG_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    HISTORY_FILE,
    WEIGHTS_FILE,
    image_shape_of,
    read_history,
    training_complete,
)


def build_model(config, seed=None):
    """A fresh CVAE of the architecture, latent size and image shape that config describes."""
    num_classes = None
    if config.get("conditional"):
        num_classes = len(config["data"]["class_names"])
    return build_cvae(int(config["latent_dim"]), image_shape_of(config),
                      config.get("architecture", "article"), seed=seed, num_classes=num_classes,
                      likelihood=config.get("likelihood_used", "bernoulli"),
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


