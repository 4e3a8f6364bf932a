"""Two finished runs compared image by image (test or validation split): their paired difference.

    python benchmarks/paired_runs.py outputs runs/float32    # outputs minus runs/float32
    python benchmarks/paired_runs.py runs/a runs/b --split=validation   # to choose a setting on

A run's test_scores.npy holds each test image's negative ELBO. Both runs score the same images, so
the standard error of the difference of their means is that of the per-image differences, usually
far smaller than either run's own ± (the spread between digits, which both share). The evaluation
draws each image's z from one generator seeded by eval_seed, in the order of the test images, so
two runs with the same eval_seed and latent size share their draws too, which narrows it further.
The difference is A minus B: negative when A is the better model. The runs must have scored the
same test images, with the same likelihood, and both with or both without the class.

--split=validation pairs validation_scores.npy instead: runs trained with the same
validation_images and seed (or on the same inspection set) hold out the same images, and score
them with their own stream of eval_seed's draws. That is the comparison to choose a setting on;
the test split's is the one to report.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plumbing.arrays import KERAS_DATASETS  # noqa: E402
from plumbing.atomic_files import read_json  # noqa: E402
from plumbing.run_folder import (  # noqa: E402
    CONFIG_FILE,
    METRICS_FILE,
    SCORES_FILE,
    VALIDATION_SCORES_FILE,
    recorded_setting,
)

# What decides which test images a run scored: train.py's settings as config.json records them.
TEST_SPLIT_SETTINGS = ("dataset", "data_path", "image_size", "channels", "test_fraction",
                       "binarize", "patch_size", "seed")
# What else decides which validation images a run held out (seed always does: it draws them).
VALIDATION_SPLIT_SETTINGS = ("validation_images", "holdout_class")
SPLIT_FILES = {"test": SCORES_FILE, "validation": VALIDATION_SCORES_FILE}
# What makes two scores different quantities: nats of another density, or -log p(x|y).
SCORED_QUANTITY = {"likelihood": None, "conditional": False}


class CannotCompare(Exception):
    """Two runs that cannot be compared image by image, said as the paragraph a user reads."""


def read_run(run_dir, split="test"):
    """(config, metrics, per-image scores of split) of a finished run, or a CannotCompare."""
    import numpy as np

    config_path, metrics_path, scores_path = (
        os.path.join(run_dir, name) for name in (CONFIG_FILE, METRICS_FILE, SPLIT_FILES[split]))
    if not os.path.isfile(config_path):
        raise CannotCompare(f"{run_dir!r} is not a run folder: it has no {CONFIG_FILE}. Give the "
                            f"out_dir of a run of train.py.")
    try:
        config = read_json(config_path)
    except (OSError, ValueError) as error:
        raise CannotCompare(f"{config_path!r} could not be read ({error}): the run cannot be "
                            f"identified. Compare another run, or train this one again.") from None
    # What the data held out to choose settings on: validation_images, or an inspection set's
    # normal images (data.summary(), recorded as config's "data").
    if split == "validation" and not (config.get("data") or {}).get("validation_images"):
        raise CannotCompare(f"{run_dir!r} was trained without a validation split, so it has no "
                            f"validation scores. Compare on the test split (leave --split out), "
                            f"or train both runs with the same --validation_images.")
    if not os.path.isfile(metrics_path):
        raise CannotCompare(f"{run_dir!r} has no {METRICS_FILE}: the run has not finished its "
                            f"evaluation. Finish it by running its train.py command again.")
    if not os.path.isfile(scores_path):
        raise CannotCompare(f"{run_dir!r} has no {os.path.basename(scores_path)}: it was "
                            f"evaluated before evaluate.py wrote that file. Run `python "
                            f"evaluate.py {run_dir}` to score it again and write it.")
    try:
        return config, read_json(metrics_path), np.load(scores_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CannotCompare(f"{run_dir!r}'s scores could not be read ({error}). Run `python "
                            f"evaluate.py {run_dir}` to score its {split} images again.") from None


def split_differences(config_a, config_b, split="test"):
    """The settings that chose the two runs' images of split and differ, as phrases. The
    data_path of a Keras dataset does not count (a local copy holds the images Keras would
    download), nor, for its test split, the seed, unless it drew dynamically binarized test
    pixels. The validation images are drawn from the training images by seed, after any
    holdout_class is left out."""
    names = TEST_SPLIT_SETTINGS + (VALIDATION_SPLIT_SETTINGS if split == "validation" else ())
    a, b = ({name: recorded_setting(config, name) for name in names}
            for config in (config_a, config_b))
    keras_test_split = a["dataset"] == b["dataset"] and a["dataset"] in KERAS_DATASETS
    ignored = {"data_path"} if keras_test_split else set()
    if split == "test" and keras_test_split and "dynamic" not in (a["binarize"], b["binarize"]):
        ignored.add("seed")
    return [f"{name} {a[name]!r} against {b[name]!r}" for name in names
            if name not in ignored and a[name] != b[name]]


def reasons_not_comparable(run_a, run_b, split="test"):
    """What differs between two runs (config, metrics, scores of split) that their scores cannot
    be paired across, as phrases; empty when they can."""
    (config_a, metrics_a, scores_a), (config_b, metrics_b, scores_b) = run_a, run_b
    reasons = split_differences(config_a, config_b, split)
    reasons += [f"{name} {metrics_a.get(name, default)!r} against "
                f"{metrics_b.get(name, default)!r}"
                for name, default in SCORED_QUANTITY.items()
                if metrics_a.get(name, default) != metrics_b.get(name, default)]
    if not reasons and scores_a.shape != scores_b.shape:
        reasons.append(f"{len(scores_a)} against {len(scores_b)} {split} images")
    return reasons


def paired_difference(scores_a, scores_b):
    """(mean of a - b, its standard error, mean of a, mean of b) over the same images."""
    import numpy as np

    difference = np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64)
    return (float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference))),
            float(np.mean(scores_a)), float(np.mean(scores_b)))


def describe(label, run_dir, config, metrics, mean, split="test"):
    """One run's line: its mean score and what it was trained with, the 16-bit/float32 split
    included (two runs of one 16-bit policy can differ in it)."""
    precision = config.get("precision_used", config.get("precision"))
    split_layers = config.get("float32_layers")
    if split_layers is not None:
        precision += f" with {', '.join(split_layers) or 'no layer'} in float32"
        # Runs from before bias_method was recorded added their biases in float32.
        precision += f", biases {config.get('bias_method') or 'float32'}"
    return (f"{label} {run_dir}: {split} negative ELBO {mean:.2f} (seed {config.get('seed')}, "
            f"precision {precision}, eval_seed {metrics.get('eval_seed', 0)})")


def compare(run_a_dir, run_b_dir, split="test"):
    """The paired comparison of two run folders on split, as the lines the script prints."""
    run_a, run_b = read_run(run_a_dir, split), read_run(run_b_dir, split)
    reasons = reasons_not_comparable(run_a, run_b, split)
    if reasons:
        raise CannotCompare(f"{run_a_dir!r} and {run_b_dir!r} did not score the same quantity on "
                            f"the same {split} images ({'; '.join(reasons)}), so they cannot be "
                            f"compared image by image. Compare runs of the same data and model "
                            f"kind, or compare their metrics.json unpaired.")
    mean_difference, standard_error, mean_a, mean_b = paired_difference(run_a[2], run_b[2])
    shared = (run_a[1].get("eval_seed", 0) == run_b[1].get("eval_seed", 0)
              and run_a[0].get("latent_dim") == run_b[0].get("latent_dim"))
    return [describe("A", run_a_dir, run_a[0], run_a[1], mean_a, split),
            describe("B", run_b_dir, run_b[0], run_b[1], mean_b, split),
            f"A - B, paired over {len(run_a[2])} {split} images: {mean_difference:+.2f} ± "
            f"{standard_error:.2f} nats ({'the same' if shared else 'different'} z draws)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", help="a finished run's folder (its out_dir)")
    parser.add_argument("run_b", help="the run to compare it with, on the same images")
    parser.add_argument("--split", choices=tuple(SPLIT_FILES), default="test",
                        help="test (the default: to report) or validation (to choose a setting "
                             "on; both runs trained with the same --validation_images and seed)")
    args = parser.parse_args()
    try:
        print("\n".join(compare(args.run_a, args.run_b, args.split)))
    except CannotCompare as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
