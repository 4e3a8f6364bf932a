"""Two finished runs compared test image by test image: the paired difference of their scores.

    python benchmarks/paired_runs.py outputs runs/float32    # outputs minus runs/float32

Every run's evaluation scores each test image's negative ELBO with noise drawn from the image's
own pixels (measures.negative_elbo_of_new_images), so two runs on the same test split share their
draws, and the difference of their means has a standard error of the per-image differences,
usually far smaller than either run's own ± (the spread between digits, which both share). The
difference is A minus B: negative when A is the better model. The two runs must have scored the
same test images: the same dataset, file and split.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plumbing.arrays import KERAS_DATASETS  # noqa: E402
from plumbing.atomic_files import read_json  # noqa: E402
from plumbing.run_folder import CONFIG_FILE, SCORES_FILE  # noqa: E402

# What decides which test images a run scored (train.py's settings, as config.json records them);
# data_path too, but for a Keras dataset, whose local copy holds the same images as the download.
TEST_SPLIT_SETTINGS = ("dataset", "data_path", "image_size", "channels", "test_fraction",
                       "binarize", "patch_size")


def settings_that_differ(config_a, config_b):
    """The TEST_SPLIT_SETTINGS on which two runs' configs disagree."""
    same_copy_either_way = config_a.get("dataset") in KERAS_DATASETS
    return [name for name in TEST_SPLIT_SETTINGS
            if config_a.get(name) != config_b.get(name)
            and not (name == "data_path" and same_copy_either_way)]


class CannotCompare(Exception):
    """Two runs that cannot be compared image by image, said as the paragraph a user reads."""


def read_run(run_dir):
    """(config, per-image test scores) of a finished run, or a CannotCompare that says why not."""
    import numpy as np

    config_path, scores_path = (os.path.join(run_dir, name) for name in (CONFIG_FILE, SCORES_FILE))
    if not os.path.isfile(config_path):
        raise CannotCompare(f"{run_dir!r} is not a run folder: it has no {CONFIG_FILE}. Give the "
                            f"out_dir of a run of train.py.")
    if not os.path.isfile(scores_path):
        raise CannotCompare(f"{run_dir!r} has no {SCORES_FILE}: the run has not finished its "
                            f"evaluation. Finish it (run its train.py command again) or run "
                            f"`python evaluate.py {run_dir}`.")
    try:
        return read_json(config_path), np.load(scores_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CannotCompare(f"{run_dir!r} could not be read ({error}). Run `python evaluate.py "
                            f"{run_dir}` to score its test images again.") from None


def paired_difference(scores_a, scores_b):
    """(mean of a - b, its standard error, mean of a, mean of b) over the same test images."""
    import numpy as np

    difference = np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64)
    return (float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference))),
            float(np.mean(scores_a)), float(np.mean(scores_b)))


def compare(run_a, run_b):
    """The paired comparison of two run folders, as the lines the script prints."""
    (config_a, scores_a), (config_b, scores_b) = read_run(run_a), read_run(run_b)
    differing = settings_that_differ(config_a, config_b)
    if differing or scores_a.shape != scores_b.shape:
        what = ", ".join(f"{name} {config_a.get(name)!r} against {config_b.get(name)!r}"
                         for name in differing) or (f"{len(scores_a)} against {len(scores_b)} "
                                                     f"test images")
        raise CannotCompare(f"{run_a!r} and {run_b!r} did not score the same test images ({what}), "
                            f"so they cannot be compared image by image. Compare runs of the same "
                            f"data, or compare their metrics.json unpaired.")
    mean_difference, standard_error, mean_a, mean_b = paired_difference(scores_a, scores_b)
    return [f"A {run_a}: test negative ELBO {mean_a:.2f} (seed {config_a.get('seed')}, "
            f"precision {config_a.get('precision_used', config_a.get('precision'))})",
            f"B {run_b}: test negative ELBO {mean_b:.2f} (seed {config_b.get('seed')}, "
            f"precision {config_b.get('precision_used', config_b.get('precision'))})",
            f"A - B, paired over {len(scores_a)} test images: {mean_difference:+.2f} ± "
            f"{standard_error:.2f} nats"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", help="a finished run's folder (its out_dir)")
    parser.add_argument("run_b", help="the run to compare it with, on the same test images")
    args = parser.parse_args()
    try:
        print("\n".join(compare(args.run_a, args.run_b)))
    except CannotCompare as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
