"""Export a run's anomaly scorer to ONNX, to score images anywhere with onnxruntime and NumPy.

    python export.py RUN_DIR               # writes RUN_DIR/scorer.onnx

The scorer is anomaly.build_anomaly_scorer, the model whose numbers the evaluation and score.py
report. Its input "image" is a float32 batch (N, height, width, channels) of the run's image
shape with values in [0, 1]: the images as the run takes them, resized, grey or RGB, divided by
255 (a conditional run's scorer also takes "label", int32 (N,)). Its outputs are
"anomaly_score" (N,) and "pixel_loss" (N, height, width), the expected per-pixel loss with fixed
draws of z. For an inspection run they are what its evaluation chose on synthetic defects (the
metadata's "score" says which: the negative ELBO or the smoothed map's peak, the map smoothed
inside the file), and the threshold kept with it goes into the metadata (image_threshold,
pixel_threshold, smoothing_sigma, scoring); for any other run, the negative ELBO in nats and the
map before smoothing. A statically binarized run's file thresholds its input at 0.5 itself.

The route is Keras's own model.export(format="onnx"), through TensorFlow and tf2onnx, whatever
backend trained the run (its weights are the same on every backend). Before the file replaces
any earlier one, onnxruntime runs it on test images and it must agree with Keras.
"""

import json
import os

import numpy as np

from plumbing.command_line import parse_overrides, quiet_tensorflow, run_command, split_run_dir
from plumbing.errors import RunError

EXPORT_DEFAULTS = {"check_images": 16}  # test images on which ONNX must agree with Keras
# How closely onnxruntime must agree with Keras. Both compute in float32, but onnxruntime's
# convolutions round differently from oneDNN's: measured on trained runs, scores of about 240
# nats differ by up to 3.4e-3 and 99.9% of the pixels by under 1.4e-5 nats, a few by up to
# 2.6e-3. A gap ten times that is a broken export, not rounding.
SCORE_TOLERANCE = 0.05  # nats per image
PIXEL_TOLERANCE = 0.05  # nats per pixel


def main(argv):
    run_dir, argv = split_run_dir(argv, "python export.py RUN_DIR")
    settings = parse_overrides(EXPORT_DEFAULTS, argv, {}, source=__file__)
    os.environ["KERAS_BACKEND"] = "tensorflow"  # the ONNX route Keras has on every platform
    quiet_tensorflow()
    from anomaly import build_anomaly_scorer
    from data import load_dataset_of_run
    from plumbing.atomic_files import write_atomically
    from plumbing.run_folder import (
        SCORER_FILE,
        kept_feature_memory,
        kept_threshold,
        scored_image_shape,
    )
    from saved_run import load_run

    config, model = load_run(run_dir)
    # A statically binarized run's file thresholds its input itself (score.py and the explorer
    # threshold new images before their scorer; here no project code stands before the file).
    # An inspection run's file scores and smooths as the kept threshold was chosen for.
    kept = kept_threshold(run_dir) or {}
    # A model of patches (patch_size) gets whole images, which the file cuts into patches.
    scorer = build_anomaly_scorer(model, binarize=config.get("binarize"),
                                  scoring=kept.get("scoring"),
                                  image_shape=scored_image_shape(config),
                                  feature_memory=kept_feature_memory(run_dir))
    data = load_dataset_of_run(config, run_dir)
    data = data if data.whole is None else data.whole
    count = max(1, min(settings["check_images"], len(data.x_test)))
    inputs = [data.x_test[:count]] + ([data.y_test[:count].astype("int32")]
                                      if model.conditional else [])
    expected = scorer.predict_on_batch(inputs if model.conditional else inputs[0])
    metadata = scorer_metadata(run_dir, config)

    gaps = {}

    def export(temporary):
        scorer.export(temporary, format="onnx", verbose=False)
        name_outputs_and_describe(temporary, metadata)
        gaps.update(check_against_keras(temporary, inputs, expected))

    try:
        path = write_atomically(os.path.join(run_dir, SCORER_FILE), export)
    except ImportError as error:
        raise RunError(f"Exporting to ONNX needs tf2onnx, onnx and onnxruntime ({error}): "
                       f"install them with `pip install -r requirements.txt`.") from None
    print(f"Wrote {path}: input image {metadata['input']}; outputs anomaly_score (N,) and "
          f"pixel_loss (N, height, width); threshold "
          f"{metadata.get('image_threshold', 'none kept with this run')}. On {count} test "
          f"images onnxruntime agreed with Keras to {gaps['score']:.1e} nats per image and "
          f"{gaps['pixel']:.1e} per pixel.")
    return 0


def scorer_metadata(run_dir, config):
    """What the file says of itself: its input, and the threshold kept with the run."""
    from plumbing.run_folder import kept_threshold, scored_image_shape

    shape = scored_image_shape(config)
    binarized = (", thresholded at 0.5 inside the file (the run trained on binarized images)"
                 if config.get("binarize") == "static" else "")
    metadata = {"input": f"float32 (N, {shape[0]}, {shape[1]}, {shape[2]}) in [0, 1]{binarized}",
                "image_shape": json.dumps(list(shape)),
                "class_names": json.dumps(config.get("data", {}).get("class_names"))}
    kept = kept_threshold(run_dir)
    if kept is not None:
        metadata.update({key: str(kept[key]) for key in
                         ("image_threshold", "pixel_threshold", "smoothing_sigma", "rule")})
        if "scoring" in kept:  # the outputs as this run's scorer computes them
            metadata.update(scoring=json.dumps(kept["scoring"]), score=kept["score"])
    return metadata


def name_outputs_and_describe(path, metadata):
    """Name the graph's outputs anomaly_score and pixel_loss, and store the metadata."""
    import onnx

    graph = onnx.load(path)
    for output, name in zip(graph.graph.output, ("anomaly_score", "pixel_loss")):
        for node in graph.graph.node:  # every use of the old name, as a result or an operand
            node.output[:] = [name if value == output.name else value for value in node.output]
            node.input[:] = [name if value == output.name else value for value in node.input]
        output.name = name
    onnx.helper.set_model_props(graph, metadata)
    onnx.save(graph, path)


def check_against_keras(path, inputs, expected):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = dict(zip(("image", "label"), inputs))  # by name: the scorer's own input names
    scores, maps = session.run(["anomaly_score", "pixel_loss"], feed)
    score_gap = float(np.max(np.abs(scores - expected[0])))
    pixel_gap = float(np.max(np.abs(maps - expected[1])))
    if score_gap > SCORE_TOLERANCE or pixel_gap > PIXEL_TOLERANCE:
        raise RunError(f"The exported scorer disagrees with Keras by {score_gap:.2g} nats per "
                       f"image and {pixel_gap:.2g} per pixel (allowed: {SCORE_TOLERANCE:g} and "
                       f"{PIXEL_TOLERANCE:g}); nothing was written. Check the versions of "
                       f"tf2onnx and onnxruntime against requirements.txt.")
    return {"score": score_gap, "pixel": pixel_gap}


if __name__ == "__main__":
    run_command(main)
