"""Score new images with a trained run: how unusual each one is, and where.

    python score.py RUN_DIR image.png folder/ arrays.npz [--percentile=99] [--out=scores.csv]
    python score.py RUN_DIR folder/ --figures=explained/ --latents=codes.npz

Each image goes through the preprocessing its run was trained with (plumbing/image_files.py for
files, plumbing/arrays.py for arrays) and gets its negative ELBO in nats and in bits
per dimension, the same single-sample estimate the evaluation saved for the run's own test split
(test_scores.npy), and its anomaly score (anomaly.py's scorer: the negative ELBO with fixed
draws, one number per image, whose per-pixel loss --figures and --masks show). Its percentile
among the test scores, and `anomalous` (the anomaly score above an inspection run's threshold,
else the negative ELBO above the --percentile-th of the test scores), go into a CSV with one row
per image. A file that cannot be read gets
its error in its row and a warning; the others are still scored, and the exit code is 1.
"""

import csv
import os
import sys

import numpy as np

from plumbing.atomic_files import write_atomically
from plumbing.command_line import (
    check_rules,
    parse_overrides,
    quiet_tensorflow,
    run_command,
    split_run_dir,
)
from plumbing.errors import DataError, RunError, require

SCORE_DEFAULTS = {
    "percentile": 99.0,  # an image above this percentile of the test-split scores is anomalous
    "out": None,  # the CSV; None = RUN_DIR/scores.csv
    "figures": None,  # a folder: per image, input, reconstruction, uncertainty and score maps
    "latents": None,  # an .npz file: z_mean and z_log_var of every image scored
    "samples": 16,  # K, draws from q(z|x) for the uncertainty maps
    "seed": 0,  # seeds the z samples
    "class_name": None,  # a conditional run: score every image as this class (name or index)
    "threshold": None,  # flag anomaly_score above this (nats); None = the run's stored threshold
    "masks": None,  # a folder: each image's predicted defect mask (an inspection run's threshold)
}
NPZ_IMAGE_KEYS = ("x", "x_test", "x_train", "images")


# What each setting may be: (name, test, what is allowed).
SCORE_RULES = (
    ("percentile", lambda value: 0 < value < 100, "between 0 and 100"),
    ("samples", lambda value: 1 <= value <= 1000, "1 to 1000"),
)
USAGE = "python score.py RUN_DIR INPUT... [--percentile=99]"


def main(argv):
    # The settings first: --help answers without a run folder, and -h is no image file.
    options = [argument for argument in argv if argument.startswith("--") or argument == "-h"]
    settings = parse_overrides(SCORE_DEFAULTS, options,
                               {"out": str, "figures": str, "latents": str, "class_name": str,
                                "threshold": float, "masks": str}, source=__file__)
    positional = [argument for argument in argv if argument not in options]
    require(len(positional) >= 2, f"Give the run folder and at least one image file, folder or "
                                  f".npz: {USAGE}.")
    run_dir, inputs = split_run_dir(positional, USAGE)
    check_rules(settings, SCORE_RULES)
    quiet_tensorflow()
    from data import as_the_run_sees, label_of_run
    from plumbing import run_folder
    from saved_run import load_run

    config, model = load_run(run_dir)
    test_scores = run_folder.read_test_scores(run_dir)
    rule = decision_rule(run_dir, test_scores, settings)
    image_shape = run_folder.scored_image_shape(config)
    label = label_of_run(settings["class_name"], config)
    if settings["figures"]:
        run_folder.require_whole_image_model(
            config, "--figures draws each image beside its reconstruction",
            "leave --figures out (the CSV still scores each image, patch by patch)")
    require(not model.conditional or label is not None,
            "This run is conditional: it scores an image given its class, -log p(x|y). Give the "
            "class with --class_name (its test scores were computed with each image's own class).")

    names, images, failed = read_inputs(inputs, image_shape)
    rows = []
    if images:
        rows = score_rows(model, as_the_run_sees(np.stack(images), config), names, label,
                            test_scores, rule, image_shape, settings)
    rows += [{"path": name, "error": error} for name, error in failed]
    out = settings["out"] or os.path.join(run_dir, "scores.csv")
    make_parent_folder(out)
    write_rows(out, rows)
    flagged = sum(1 for row in rows if row.get("anomalous") is True)
    print(f"Scored {len(names)} image(s) into {out}: {flagged} above {rule['why']} "
          f"({rule['column']} over {rule['threshold']:.4g}{rule['unit']}).")
    if failed:
        print(f"warning: {len(failed)} input(s) could not be read; their rows say why.",
              file=sys.stderr)
    return 1 if failed else 0


def decision_rule(run_dir, test_scores, settings):
    """What `anomalous` means here (plumbing/run_folder.py's anomaly_rule, as in the explorer);
    --masks needs the pixel threshold that only an inspection run keeps."""
    from plumbing.run_folder import ANOMALY_THRESHOLD_FILE, anomaly_rule

    rule = anomaly_rule(run_dir, test_scores, settings["percentile"], settings["threshold"])
    require(settings["masks"] is None or rule["pixel_threshold"] is not None,
            f"--masks needs the pixel threshold that evaluating an inspection run keeps in "
            f"{os.path.join(run_dir, ANOMALY_THRESHOLD_FILE)!r}, and this run has none: train it "
            f"on a folder in the inspection layout (train/good/, test/good/, test/<defect>/).",
            RunError)
    return rule


def score_rows(model, x, names, label, test_scores, rule, image_shape, settings):
    """The CSV rows of the images x (and their --latents, --figures and --masks, when asked)."""
    import anomaly as anomaly_detection
    import measures

    labels = None if label is None else np.full(len(x), label, "int32")
    scores, z_mean, z_log_var = new_image_measures(model, x, labels, settings["seed"])
    anomaly, maps = anomaly_detection.anomaly_scores(anomaly_detection.build_anomaly_scorer(
        model, scoring=rule["scoring"], image_shape=image_shape,
        feature_memory=rule["feature_memory"]), x, labels)
    compared = anomaly if rule["column"] == "anomaly_score" else scores
    scored_shape = tuple(model.encoder.inputs[0].shape[1:])  # an image's, or a patch's
    rows = [{"path": name, "negative_elbo_nats": f"{score:.4f}",
             "bits_per_dim": f"{measures.bits_per_dim(score, scored_shape, model.likelihood):.6f}",
             "anomaly_score": f"{anomaly_score:.4f}",
             "percentile": f"{100.0 * np.mean(test_scores <= score):.2f}",
             "anomalous": bool(value > rule["threshold"]), "error": ""}
            for name, score, anomaly_score, value in zip(names, scores, anomaly, compared)]
    if settings["masks"]:
        # The scorer smooths the maps itself when it was built with a kept scoring.
        smoothed = maps if rule["scoring"] else anomaly_detection.smooth(maps,
                                                                          rule["smoothing_sigma"])
        write_masks(smoothed > rule["pixel_threshold"], names, settings["masks"])
    if settings["latents"]:
        def write_latents(temporary):
            with open(temporary, "wb") as f:  # a path not ending in .npz would get one added
                np.savez(f, path=np.array(names), z_mean=z_mean, z_log_var=z_log_var)

        make_parent_folder(settings["latents"])
        write_atomically(settings["latents"], write_latents)
    if settings["figures"]:
        draw_explanations(model, x, labels, names, scores, maps, test_scores, settings)
    return rows


def new_image_measures(model, x, labels, seed):
    """(negative ELBO, z_mean, z_log_var) of each image (measures.negative_elbo_of_new_images);
    for a model of patches, the mean negative ELBO of its patches (nats per patch, as the run's
    test_scores.npy holds for each test image) and their codes, (N, patches, latent)."""
    import measures
    from patches import patch_size_of, patches_of_each_image

    patch_size = patch_size_of(model, x.shape[1:])
    if patch_size is None:
        return measures.negative_elbo_of_new_images(model, x, seed, labels)
    patches = patches_of_each_image(x, patch_size)
    count = len(patches) // len(x)
    scores, z_mean, z_log_var = measures.negative_elbo_of_new_images(
        model, patches, seed, None if labels is None else np.repeat(labels, count))

    def per_image(values):  # (N * P, ...) -> (N, P, ...)
        return values.reshape((len(x), count) + values.shape[1:])

    return per_image(scores).mean(axis=1), per_image(z_mean), per_image(z_log_var)


def read_inputs(inputs, image_shape):
    """(names, images as model input, [(name, error)]) for files, folders and .npz files."""
    from plumbing.arrays import arrays_as_model_input
    from plumbing.image_files import list_class_folder, prepare_files

    files, names, images, failed = [], [], [], []
    for item in inputs:
        if os.path.isdir(item):
            found, _ = list_class_folder(item)
            files += found
            if not found:
                failed.append((item, "the folder holds no image files"))
        elif item.lower().endswith(".npz") and os.path.isfile(item):
            try:
                with np.load(item, allow_pickle=False) as npz:
                    key = next((k for k in NPZ_IMAGE_KEYS if k in npz.files), None)
                    if key is None:
                        raise DataError(f"it has none of the keys {', '.join(NPZ_IMAGE_KEYS)}")
                    array = arrays_as_model_input(npz[key], image_shape, item)
                names += [f"{item}[{key}][{i}]" for i in range(len(array))]
                images += list(array)
            except (DataError, ValueError, OSError) as error:
                expected = "x".join(str(side) for side in image_shape)
                failed.append((item, f"cannot read it as images for this run, which takes "
                                     f"{expected} images (height x width x channels): {error}"))
        else:
            files.append(item)
    for path, pixels, error in prepare_files(files, image_shape):
        if error is None:
            names.append(path)
            images.append(pixels)
        else:
            print(f"warning: cannot read {path!r} as an image: {error}", file=sys.stderr)
            failed.append((path, error))
    return names, images, failed


def draw_explanations(model, x, labels, names, scores, pixel_loss, test_scores, settings):
    """Per image: the input, its reconstruction from z_mean, its uncertainty map, and the
    per-pixel loss its anomaly score sums (pixel_loss, from anomaly.py's scorer)."""
    import measures
    import plotting

    os.makedirs(settings["figures"], exist_ok=True)
    rng = np.random.default_rng(settings["seed"])
    z_mean, _ = measures.encode(model, x, labels=labels)
    reconstructions = measures.decode(model, z_mean, labels=labels)
    for start in range(0, len(x), 100):  # the maps of 100 images at a time
        uncertainty = measures.decoded_spread(
            model, x[start:start + 100], settings["samples"], rng,
            labels=None if labels is None else labels[start:start + 100])
        for offset in range(len(uncertainty)):
            index = start + offset
            percentile = 100.0 * np.mean(test_scores <= scores[index])
            plotting.plot_explanation(
                x[index], reconstructions[index], uncertainty[offset], pixel_loss[index],
                f"{os.path.basename(names[index])}: {scores[index]:.1f} nats, percentile "
                f"{percentile:.1f} of the test split",
                os.path.join(settings["figures"], f"{index:05d}_{figure_name(names[index])}.png"))


def write_masks(masks, names, folder):
    """Each image's predicted defect region as a PNG, 255 inside: FOLDER/<index>_<name>.png."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for index, (mask, name) in enumerate(zip(masks, names)):
        path = os.path.join(folder, f"{index:05d}_{figure_name(name)}.png")
        write_atomically(path, lambda temporary, mask=mask: Image.fromarray(
            np.where(mask, 255, 0).astype(np.uint8)).save(temporary, format="PNG"))


def make_parent_folder(path):
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as error:
        raise RunError(f"Cannot create the folder for {path!r}: {error.strerror}. Choose a path "
                       f"you can write to.") from None


def figure_name(name):
    """A file-name-safe stem of an input: 'digits/7.png' -> '7', 'a.npz[x][3]' -> 'a_x_3'."""
    stem = os.path.splitext(os.path.basename(name.split("[")[0]))[0]
    index = "_".join(part.strip("]") for part in name.split("[")[1:])
    joined = "_".join(part for part in (stem, index) if part)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in joined)


def write_rows(path, rows):
    columns = ["path", "negative_elbo_nats", "bits_per_dim", "anomaly_score", "percentile",
               "anomalous", "error"]

    def write(temporary):
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


if __name__ == "__main__":
    run_command(main)
