"""train.py's command line: its hyperparameters with the --name=value overrides applied, each
checked against its rule before anything loads, so that nothing starts on a value that would
fail an hour later.

The hyperparameters themselves, with their types, defaults and comments, are declared once, at
the top of train.py.
"""

import os

from plumbing.arrays import KERAS_DATASETS
from plumbing.atomic_files import read_json
from plumbing.command_line import check_rules, parse_overrides
from plumbing.devices import DISTRIBUTIONS
from plumbing.errors import require
from plumbing.inspection_folders import is_inspection_folder
from plumbing.optimizer import LR_SCHEDULES, OPTIMIZERS
from plumbing.precision import PRECISIONS
from plumbing.run_folder import CONFIG_FILE

# latent_dim=None: the article's 2, which makes the latent space plottable, or for an inspection
# set the size chosen on the synthetic defects of three sets' validation splits
# (docs/anomaly-detection.md): a 2-d latent space reconstructs normal images too coarsely for their
# residual to find a defect.
ARTICLE_LATENT_DIM, INSPECTION_LATENT_DIM = 2, 16
# cvae.LIKELIHOODS, and "auto" (data.fitting_likelihood); written out, as Keras may not load yet.
LIKELIHOODS = ("auto", "bernoulli", "gaussian", "discretized_logistic")
# What each hyperparameter may be: (name, test, what is allowed).
RULES = (
    ("image_size", lambda value: value is None or 4 <= value <= 2048,
     "None or 4 to 2048 pixels"),
    ("channels", lambda value: value in (None, 1, 3), "None, 1 (grey) or 3 (RGB)"),
    ("test_fraction", lambda value: 0 < value < 1, "between 0 and 1"),
    ("binarize", lambda value: value in (None, "static", "dynamic"),
     "None (grey pixels), static or dynamic"),
    ("architecture", lambda value: value in ("article", "strided"), "article or strided"),
    ("likelihood", lambda value: value in LIKELIHOODS, f"one of {', '.join(LIKELIHOODS)}"),
    ("epochs", lambda value: value > 0, "at least 1"),
    ("batch_size", lambda value: value > 0, "at least 1"),
    ("latent_dim", lambda value: value > 0, "at least 1"),
    ("patch_size", lambda value: value is None or value >= 8,
     "None (the model sees whole images) or at least 8 pixels"),
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


def recorded_latent_dim(config):
    """The latent size out_dir's run recorded, so that the same command resumes it (one started
    before inspection sets got their own size recorded 2); None for a new run, with
    overwrite=True, or where the run there is of another dataset (prepare_out_dir refuses to mix
    the two, in words: its size must not decide this one's)."""
    path = os.path.join(config["out_dir"], CONFIG_FILE)
    if config["overwrite"] or not os.path.isfile(path):
        return None
    try:
        recorded = read_json(path)
        if recorded.get("dataset", config["dataset"]) != config["dataset"]:
            return None
        return recorded.get("latent_dim")
    except (OSError, ValueError, AttributeError):  # prepare_out_dir explains an unreadable one
        return None


def read_config(hyperparameters, types, argv, source=None):
    """The hyperparameters with the command line's overrides, checked against RULES. types: the
    type of each hyperparameter, as train.py annotates it (what a None default may become)."""
    config = parse_overrides(hyperparameters, argv, types, source=source)
    for key in ("data_path",) + (() if config["dataset"] in KERAS_DATASETS else ("dataset",)):
        if config[key] is not None:
            # Absolute, so that evaluate.py finds the data from any folder.
            config[key] = os.path.abspath(config[key])
    require(config["data_path"] is None or config["dataset"] in KERAS_DATASETS,
            f"data_path is the local copy of a named dataset ({', '.join(KERAS_DATASETS)}); "
            f"for your own .npz or folder, pass its path as --dataset instead.")
    if config["latent_dim"] is None:  # resolved here, so that config.json records the size
        config["latent_dim"] = recorded_latent_dim(config) or (
            INSPECTION_LATENT_DIM if config["dataset"] not in KERAS_DATASETS
            and is_inspection_folder(config["dataset"]) else ARTICLE_LATENT_DIM)
    check_rules(config, RULES)
    require(config["binarize"] is None or config["likelihood"] in ("auto", "bernoulli"),
            f"binarize={config['binarize']} makes every pixel 0 or 1, which only the bernoulli "
            f"likelihood models; leave likelihood as auto (or bernoulli), or binarize as None.")
    require(config["learning_rate"] * config["weight_decay"] < 1,
            f"weight_decay={config['weight_decay']} at learning_rate={config['learning_rate']} "
            f"would take more than the whole of each weight at every step; their product must be "
            f"below 1 (0.1 to 1 is a typical weight_decay at the default rate).")
    return config
