"""Generate images with a trained run: draws from the prior, or a path between two images.

    python sample.py RUN_DIR                          # 64 images into RUN_DIR/generated/
    python sample.py RUN_DIR --n=100 --seed=3 --save_each=True
    python sample.py RUN_DIR --interpolate=a.png,b.png
    python sample.py RUN_DIR --class_name=7        # a conditional run: sevens only

The model is rebuilt from the run folder (saved_run.py). Images are the decoder's means under
the run's likelihood, the same as the run's samples.png; the input images of --interpolate go
through the preprocessing the run was trained with (plumbing/image_files.py).
"""

import math
import os

import numpy as np

from plumbing.command_line import (
    check_rules,
    parse_overrides,
    quiet_tensorflow,
    run_command,
    split_run_dir,
)
from plumbing.errors import RunError, require

SAMPLE_DEFAULTS = {
    "n": 64,  # images to draw from the prior
    "seed": 0,  # seeds the draws
    "save_each": False,  # True: also one PNG per image
    "interpolate": None,  # "A,B": two image files; decode the straight line between their codes
    "steps": 10,  # images on that line, both ends included
    "out_dir": None,  # where the files go; None = RUN_DIR/generated
    "class_name": None,  # a conditional run: draw this class (name or index); None = every class
}


# What each setting may be: (name, test, what is allowed).
SAMPLE_RULES = (
    ("n", lambda value: 1 <= value <= 10_000, "1 to 10000"),
    ("steps", lambda value: 2 <= value <= 100, "2 to 100"),
    ("seed", lambda value: 0 <= value < 2**32, "in 0 .. 2**32 - 1"),
)


def main(argv):
    run_dir, argv = split_run_dir(argv, "python sample.py RUN_DIR [--n=64 ...]")
    settings = parse_overrides(SAMPLE_DEFAULTS, argv, {"interpolate": str, "out_dir": str,
                                                      "class_name": str}, source=__file__)
    check_rules(settings, SAMPLE_RULES)
    quiet_tensorflow()
    from data import label_of_run
    from plumbing import run_folder
    from saved_run import load_run

    config, model = load_run(run_dir)
    out_dir = settings["out_dir"] or os.path.join(run_dir, run_folder.GENERATED_FOLDER)
    os.makedirs(out_dir, exist_ok=True)
    label = label_of_run(settings["class_name"], config)
    if settings["interpolate"] is not None:
        draw_interpolation(model, config, label, settings, out_dir)
    else:
        draw_prior_samples(model, config, label, settings, out_dir)
    return 0


def draw_interpolation(model, config, label, settings, out_dir):
    """The straight line between the codes of the two images of --interpolate, decoded."""
    import measures
    import plotting
    from plumbing import run_folder

    ends = settings["interpolate"].split(",")
    require(len(ends) == 2, f"--interpolate takes two image files separated by a comma, not "
                            f"{settings['interpolate']!r}.")
    run_folder.require_whole_image_model(
        config, "--interpolate encodes two whole images",
        "leave --interpolate out to decode patches drawn from the prior")
    images = read_images(ends, config)
    require(not model.conditional or label is not None,
            "This run is conditional: give the class of the two images with --class_name.")
    labels = None if label is None else np.full(settings["steps"], label, "int32")
    z_mean, _ = measures.encode(model, images, labels=None if labels is None else labels[:2])
    line = measures.decode(model, measures.straight_line(z_mean[0], z_mean[1],
                                                         settings["steps"]), labels=labels)
    names = [os.path.basename(end) for end in ends]
    path = plotting.plot_interpolations(line[None], [f"{names[0]} to {names[1]}"],
                                        os.path.join(out_dir, "interpolation.png"))
    print(f"Wrote {path}")


def draw_prior_samples(model, config, label, settings, out_dir):
    """n draws from the prior, decoded, as one grid (and one PNG each with --save_each)."""
    import measures
    import plotting

    n = settings["n"]
    z = np.random.default_rng(settings["seed"]).standard_normal(
        (n, int(config["latent_dim"]))).astype("float32")
    labels, columns = None, min(10, math.ceil(math.sqrt(n)))
    if model.conditional and label is not None:
        labels = np.full(n, label, "int32")
    elif model.conditional:
        # Every class in turn: with up to ten classes, each column is one class.
        columns = min(10, len(config["data"]["class_names"]))
        labels = (np.arange(n) % columns).astype("int32")
    images = measures.decode(model, z, labels=labels)
    rows = math.ceil(n / columns)
    # A grid that the draws do not fill ends in blank panels.
    grid = np.concatenate([images, np.zeros((rows * columns - len(images),) + images.shape[1:],
                                            images.dtype)])
    path = plotting.plot_image_grid(
        grid, rows, columns, os.path.join(out_dir, "samples.png"),
        f"{n} {'patches' if config.get('patch_size') else 'images'} decoded from z ~ N(0, I), "
        f"seed {settings['seed']}"
        + ("" if labels is None else ", class " + (
            config["data"]["class_names"][label] if label is not None else "by column")))
    print(f"Wrote {path}")
    if settings["save_each"]:
        for index, image in enumerate(images):
            plotting.save_image(image, os.path.join(out_dir, f"sample_{index:04d}.png"))
        print(f"Wrote {len(images)} images sample_0000.png ... into {out_dir}")


def read_images(paths, config):
    """Image files as the run's model input, or RunError naming a file that cannot be read."""
    from plumbing.image_files import prepare_files
    from plumbing.run_folder import image_shape_of

    results = prepare_files(paths, image_shape_of(config))
    for path, _, error in results:
        if error is not None:
            raise RunError(f"Cannot read {path!r} as an image ({error}). Give two image files.")
    return np.stack([pixels for _, pixels, _ in results])


if __name__ == "__main__":
    run_command(main)
