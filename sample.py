"""Generate images with a trained run: draws from the prior, or a path between two images.

    python sample.py RUN_DIR                          # 64 images into RUN_DIR/generated/
    python sample.py RUN_DIR --n=100 --seed=3 --save_each=True
    python sample.py RUN_DIR --interpolate=a.png,b.png
    python sample.py RUN_DIR --class_name=7        # a conditional run: sevens only

The model is rebuilt from the run folder (run_files.load_run). Images are the decoder's
Bernoulli means, the same as the run's samples.png; the input images of --interpolate go through
the preprocessing the run was trained with (image_files.prepare_file).
"""

import math
import os

SAMPLE_DEFAULTS = {
    "n": 64,  # images to draw from the prior
    "seed": 0,  # seeds the draws
    "save_each": False,  # True: also one PNG per image
    "interpolate": None,  # "A,B": two image files; decode the straight line between their codes
    "steps": 10,  # images on that line, both ends included
    "out_dir": None,  # where the files go; None = RUN_DIR/generated
    "class_name": None,  # a conditional run: draw this class (name or index); None = every class
}


def main(argv):
    from configurator import ConfigError, parse_overrides, require

    if not argv or argv[0].startswith("--"):
        raise ConfigError("Give the run folder first: python sample.py RUN_DIR [--n=64 ...].")
    run_dir, argv = argv[0], argv[1:]
    settings = parse_overrides(SAMPLE_DEFAULTS, argv, {"interpolate": str, "out_dir": str,
                                                      "class_name": str})
    require(1 <= settings["n"] <= 10_000, f"n must be 1 to 10000, not {settings['n']}.")
    require(2 <= settings["steps"] <= 100, f"steps must be 2 to 100, not {settings['steps']}.")
    require(0 <= settings["seed"] < 2**32, "seed must be in 0 .. 2**32 - 1.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import measures
    import plotting
    import run_files

    config, model = run_files.load_run(run_dir)
    out_dir = settings["out_dir"] or os.path.join(run_dir, run_files.GENERATED_FOLDER)
    os.makedirs(out_dir, exist_ok=True)
    latent_dim = int(config["latent_dim"])
    label = run_files.class_label(settings["class_name"], config)

    if settings["interpolate"] is not None:
        ends = settings["interpolate"].split(",")
        require(len(ends) == 2, f"--interpolate takes two image files separated by a comma, not "
                                f"{settings['interpolate']!r}.")
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
        return 0

    z = np.random.default_rng(settings["seed"]).standard_normal(
        (settings["n"], latent_dim)).astype("float32")
    labels, columns = None, min(10, math.ceil(math.sqrt(settings["n"])))
    if model.conditional and label is not None:
        labels = np.full(settings["n"], label, "int32")
    elif model.conditional:
        # Every class in turn: with up to ten classes, each column is one class.
        columns = min(10, len(config["data"]["class_names"]))
        labels = (np.arange(settings["n"]) % columns).astype("int32")
    images = measures.decode(model, z, labels=labels)
    rows = math.ceil(settings["n"] / columns)
    # A grid that the draws do not fill ends in blank panels.
    grid = np.concatenate([images, np.zeros((rows * columns - len(images),) + images.shape[1:],
                                            images.dtype)])
    path = plotting.plot_image_grid(
        grid, rows, columns, os.path.join(out_dir, "samples.png"),
        f"{settings['n']} images decoded from z ~ N(0, I), seed {settings['seed']}"
        + ("" if labels is None else ", class " + (
            config["data"]["class_names"][label] if label is not None else "by column")))
    print(f"Wrote {path}")
    if settings["save_each"]:
        for index, image in enumerate(images):
            plotting.save_image(image, os.path.join(out_dir, f"sample_{index:04d}.png"))
        print(f"Wrote {len(images)} images sample_0000.png ... into {out_dir}")
    return 0


def read_images(paths, config):
    """Image files as the run's model input, or RunError naming a file that cannot be read."""
    import numpy as np

    from image_files import prepare_files
    from run_files import RunError, image_shape_of

    results = prepare_files(paths, image_shape_of(config))
    for path, _, error in results:
        if error is not None:
            raise RunError(f"Cannot read {path!r} as an image ({error}). Give two image files.")
    return np.stack([pixels for _, pixels, _ in results])


if __name__ == "__main__":
    from configurator import run_command

    run_command(main)
