"""Anomaly detection as inspection teams do it: an MVTec AD folder, image and pixel metrics, a
threshold kept with the run, score.py applying it, and the exported ONNX scorer."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import anomaly as anomaly_detection
from benchmarks.inspection_set import DEFECTS, write_inspection_set
from conftest import ROOT, coloured_squares, fake_mnist_arrays, require_module, run_script
from data import load_dataset
from plumbing.errors import DataError
from plumbing.run_folder import kept_feature_memory


# ---- the metrics, against brute force -----------------------------------------------------------
def brute_force_curve(scores, positive):
    """(precision, recall, thresholds) at every distinct score, flagging scores >= threshold."""
    thresholds = np.unique(scores)[::-1]
    flagged = scores[None, :] >= thresholds[:, None]
    true_positives = (flagged & positive[None, :]).sum(axis=1)
    return true_positives / flagged.sum(axis=1), true_positives / positive.sum(), thresholds


def test_average_precision_and_f1_max_match_brute_force():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # rounded: many ties
    positive = rng.random(300) < 0.3
    scores[positive] += 0.8
    precision, recall, thresholds = brute_force_curve(scores, positive)
    expected_ap = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    average_precision = anomaly_detection.average_precision(scores, positive)
    assert average_precision == pytest.approx(expected_ap, abs=1e-12)
    f1 = 2 * precision * recall / (precision + recall)
    best, threshold = anomaly_detection.f1_max(scores, positive)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert threshold == thresholds[np.argmax(f1)]


def test_aupro_of_perfect_and_of_uninformative_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 20, 20), np.uint8)
    masks[0, 2:6, 2:6] = 1
    masks[1, 10:18, 4:7] = 1
    masks[1, 1:3, 15:19] = 1  # a second region in the same image counts on its own
    perfect = masks + 0.01 * rng.random(masks.shape)
    assert anomaly_detection.aupro(perfect, masks) == pytest.approx(1.0, abs=1e-9)
    # A map unrelated to the defects: each region's overlap follows the false-positive rate,
    # so the normalised area up to 0.3 is about 0.15.
    assert anomaly_detection.aupro(rng.random(masks.shape), masks) == pytest.approx(0.15, abs=0.04)


def test_aupro_matches_an_independent_sweep_over_every_threshold():
    from scipy import ndimage

    rng = np.random.default_rng(2)
    masks = np.zeros((5, 16, 16), np.uint8)
    for index in range(5):
        top, left = rng.integers(0, 10, size=2)
        masks[index, top:top + 5, left:left + 4] = 1
    maps = rng.random(masks.shape) + 0.6 * masks
    normal = maps[masks == 0]
    regions = [(maps[i][labelled == r]) for i in range(5)
               for labelled, count in [ndimage.label(masks[i])] for r in range(1, count + 1)]
    levels = np.sort(np.unique(maps))[::-1]
    fpr = np.array([np.mean(normal > level) for level in levels])
    pro = np.array([np.mean([np.mean(region > level) for region in regions]) for level in levels])
    keep = fpr <= 0.3
    expected = np.trapezoid(pro[keep], fpr[keep]) / 0.3
    aupro = anomaly_detection.aupro(maps, masks, thresholds=2000)
    assert aupro == pytest.approx(expected, abs=0.01)


def test_aupro_with_tied_pixels_matches_the_sweep_over_every_threshold():
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 12, 12), np.uint8)
    masks[:, 3:7, 3:7] = 1
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1)  # eleven values: many ties
    normal = maps[masks == 0]
    regions = [maps[i][masks[i] > 0] for i in range(4)]
    levels = np.unique(maps)[::-1]
    fpr = np.array([np.mean(normal > level) for level in levels])
    pro = np.array([np.mean([np.mean(region > level) for region in regions]) for level in levels])
    # The exact curve is piecewise linear between operating points: its area up to 0.3.
    grid = np.linspace(0, 0.3, 3001)
    expected = np.trapezoid(np.interp(grid, fpr, pro), grid) / 0.3
    assert anomaly_detection.aupro(maps, masks) == pytest.approx(expected, abs=2e-3)


# ---- the folder ----------------------------------------------------------------------------------
def digits(n=400, seed=0):
    raw = fake_mnist_arrays(n_train=n, n_test=10, seed=seed)["x_train"]
    return np.clip(raw.astype(np.int32) // 3, 0, 255).astype(np.uint8)  # fainter than defects


def test_an_inspection_folder_trains_on_good_images_and_keeps_its_masks(tmp_path, capsys):
    root = write_inspection_set(str(tmp_path / "set"), digits(), n_train=100, n_good=12,
                                n_per_defect=5, masks_for=("scratch", "blob", "hole"))
    data = load_dataset(root, test_fraction=0.2, seed=0)
    assert data.inspection and data.y_train is None
    assert data.num_train == 80 and len(data.x_val) == 20  # a seeded fifth held out
    assert data.class_names == ["good", *sorted(DEFECTS)]
    assert np.bincount(data.y_test).tolist() == [12, 5, 5, 5, 5]
    faint = data.class_names.index("faint")
    # faint has no masks: its images are evaluated at image level only, and the log says so.
    assert data.has_mask.tolist() == (data.y_test != faint).tolist()
    assert "5 defective test image(s)" in capsys.readouterr().out
    # Each mask is where the drawing changed the digit, within the image.
    blob = np.flatnonzero(data.y_test == data.class_names.index("blob"))
    assert all(data.test_masks[i].sum() > 10 for i in blob)
    assert not data.test_masks[data.y_test == 0].any()


def test_an_unreadable_defect_image_is_skipped_with_its_mask(tmp_path, capsys):
    root = tmp_path / "set"
    write_inspection_set(str(root), digits(), n_train=20, n_good=4, n_per_defect=3)
    (root / "test" / "blob" / "0001.png").write_bytes(b"not a png")
    data = load_dataset(str(root))
    assert np.sum(data.y_test == data.class_names.index("blob")) == 2
    assert "0001.png" in capsys.readouterr().err  # named in the warning of files skipped


@pytest.mark.parametrize("spoil, message", [
    (lambda root: os.makedirs(root / "train" / "scratch"), "train/ holds scratch/"),
    (lambda root: Image.new("L", (20, 20)).save(root / "ground_truth" / "blob" / "0000_mask.png"),
     "must have its image's size"),
    (lambda root: Image.new("L", (28, 28)).save(root / "ground_truth" / "blob" / "0099_mask.png"),
     "has no image"),
    (lambda root: os.makedirs(root / "validation"), "may hold only train/, test/ and"),
    (lambda root: [path.write_bytes(b"junk") for path in (root / "test" / "hole").iterdir()],
     "test/hole/ has no readable image"),
])
def test_a_broken_inspection_folder_is_refused_in_one_paragraph(tmp_path, spoil, message):
    root = tmp_path / "set"
    write_inspection_set(str(root), digits(), n_train=20, n_good=4, n_per_defect=2)
    spoil(root)
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(str(root))


# ---- a run: evaluation, threshold, score.py, export ------------------------------------------
@pytest.fixture(scope="module")
def inspection_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspection")
    root = write_inspection_set(str(folder / "set"), digits(600), n_train=300, n_good=30,
                                n_per_defect=10)
    # The strided architecture: the inspection machinery does not depend on it, and it is 14x
    # cheaper than the article's.
    result = run_script("train.py", f"--dataset={root}", f"--out_dir={folder / 'run'}",
                        "--architecture=strided", "--epochs=2", "--batch_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", root, result


@pytest.mark.slow
def test_an_inspection_run_reports_image_and_pixel_metrics_and_keeps_its_threshold(
        inspection_run):
    run_dir, root, result = inspection_run
    assert "the warm-up is cut from warmup_steps=500 to 50" in result.stdout
    # 270 training images in batches of 32 for 2 epochs: 9 steps each, and the advice to train
    # for 850 steps; the latent size left unset is the inspection sets' 16.
    assert "An inspection run of 18 steps" in result.stdout
    assert "Try --epochs=95 in another out_dir" in result.stdout
    assert json.loads((run_dir / "config.json").read_text())["latent_dim"] == 16
    metrics = json.loads((run_dir / "metrics.json").read_text())
    anomaly = metrics["anomaly"]
    # The validation numbers a user compares runs by: the best pixel AUROC of every candidate
    # map and smoothing, and the better image AUROC of its peak and of the totals.
    table, chosen = anomaly["validation"]["candidates"]["cvae"], anomaly["validation"]["chosen"]
    rows = [row for name, row in table.items() if name != "total_image_auroc"]
    best = max(rows, key=lambda row: row["pixel_auroc"])
    assert chosen["cvae"]["pixel_auroc"] == best["pixel_auroc"]
    assert chosen["cvae"]["image_auroc"] == max(best["peak_image_auroc"],
                                                table["total_image_auroc"])
    assert (f"pixel AUROC {best['pixel_auroc']:.3f}, image AUROC "
            f"{chosen['cvae']['image_auroc']:.3f}. Compare runs") in result.stdout
    kept = json.loads((run_dir / "anomaly_threshold.json").read_text())
    assert kept == anomaly["threshold"]
    # Recompute what the run reported from its own scorer and data, independently.
    from anomaly import build_anomaly_scorer
    from saved_run import load_run

    _, model = load_run(str(run_dir))
    data = load_dataset(root)
    # The scorer as kept (its map, smoothing and image score chosen on synthetic defects).
    assert kept["scoring"]["pixel_map"] in anomaly_detection.PIXEL_MAPS
    assert kept["scoring"]["image_score"] in anomaly_detection.IMAGE_SCORES
    scorer = build_anomaly_scorer(model, scoring=kept["scoring"],
                                  feature_memory=kept_feature_memory(str(run_dir)))
    val_scores, _ = anomaly_detection.anomaly_scores(scorer, data.x_val)
    test_scores, _ = anomaly_detection.anomaly_scores(scorer, data.x_test)
    # The threshold: the score ranked k-th from the top of the n held-out ones, k/(n+1) = 1%.
    n = len(val_scores)
    k = max(1, round(0.01 * (n + 1)))
    assert kept["image_threshold"] == pytest.approx(np.sort(val_scores)[n - k], rel=1e-4,
                                                    abs=1e-4)
    assert kept["expected_flagged_good"] == pytest.approx(k / (n + 1))
    is_defect = data.y_test > 0
    assert anomaly["image_auroc"] == pytest.approx(
        anomaly_detection.auroc(test_scores, is_defect), abs=0.005)
    flagged = test_scores > kept["image_threshold"]
    assert anomaly["flagged_good"] == pytest.approx(np.mean(flagged[~is_defect]))
    assert anomaly["flagged_defective"] == pytest.approx(np.mean(flagged[is_defect]))
    assert set(anomaly["per_defect"]) == set(DEFECTS)
    for kind, values in anomaly["per_defect"].items():
        keep = (data.y_test == 0) | (data.y_test == data.class_names.index(kind))
        assert values["image_auroc"] == pytest.approx(
            anomaly_detection.auroc(test_scores[keep], is_defect[keep]), abs=0.01)
        assert {"pixel_auroc", "pixel_aupro", "image_aupr", "image_f1_max"} <= set(values)
        assert values["flagged"] == pytest.approx(np.mean(flagged[data.y_test == data.class_names
                                                                   .index(kind)]))
    # The baselines beside it, scored on the same test images, and the choice on synthetic
    # defects for each detector.
    assert set(anomaly["baselines"]) == {"pca_residual_32", "nearest_neighbour"}
    for baseline in anomaly["baselines"].values():
        assert 0 <= baseline["image_auroc"] <= 1 and 0 <= baseline["pixel_auroc"] <= 1
        assert set(baseline["per_defect"]) == set(DEFECTS)
    assert set(anomaly["validation"]["candidates"]) == {"cvae", "pca_residual_32",
                                                         "nearest_neighbour"}
    assert anomaly["validation"]["images"] == len(data.x_val)
    assert "chosen on synthetic defects" in result.stdout and "baseline pca_residual_32" in \
        result.stdout
    check_the_anomaly_figures(run_dir, len(DEFECTS))


def figure_pixels(path):
    with Image.open(path) as png:
        assert png.format == "PNG", path
        return np.asarray(png.convert("RGB"), np.int32)


def check_the_anomaly_figures(run_dir, kinds):
    """The three figures of an inspection run with `kinds` kinds of defect, each shaped as its
    figure size in inches says (bbox_inches="tight" trims a few pixels) and drawing what it is
    for."""
    # ROC (5.5 x 5 inches): one curve for all defects, one per kind and one per baseline, in
    # matplotlib's colour cycle: its first 3 + kinds colours are drawn (curve and legend), the
    # ninth (olive; the eighth is a grey like the text's) is not.
    roc = figure_pixels(run_dir / "anomaly_roc.png")
    assert len(roc) / roc.shape[1] == pytest.approx(5 / 5.5, rel=0.1)
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    drawn = [int(np.sum(np.abs(roc - [int(c[i:i + 2], 16) for i in (1, 3, 5)]).sum(-1) < 30))
             for c in cycle[:kinds + 3] + ["#bcbd22"]]
    assert min(drawn[:-1]) >= 10 and drawn[-1] < 5, drawn
    # Histograms (7 x 1.9 inches per kind): one panel per kind, one above the other, each with
    # the good images' histogram (blue) and the defective ones' (red), half transparent.
    histograms = figure_pixels(run_dir / "anomaly_histograms.png")
    height = len(histograms)
    assert height / histograms.shape[1] == pytest.approx(1.9 * kinds / 7, rel=0.1)
    for band in range(kinds):
        panel = histograms[band * height // kinds:(band + 1) * height // kinds]
        blue, red = panel[..., 2] - panel[..., 0] > 40, panel[..., 0] - panel[..., 2] > 40
        # (A few tenths of a percent: a kind scored far above the good images spreads over a
        # logarithmic axis in low bars; a histogram not drawn leaves none.)
        assert blue.mean() > 0.002 and red.mean() > 0.002, band
    # Overlays (1.6 x 1.76 inches an image): a row of five for the good images and for each
    # kind, every row with its heat maps in colour over the grey images.
    overlays = figure_pixels(run_dir / "anomaly_overlays.png")
    height, rows = len(overlays), kinds + 1
    assert height / overlays.shape[1] == pytest.approx(rows * 1.1 / 5, rel=0.1)
    coloured = overlays.max(axis=-1) - overlays.min(axis=-1) > 40
    # Every row in colour, the good images' too: the scale runs to twice the pixel threshold, so
    # a map of a normal image is drawn at its own level, not black beside a defect's peak.
    for row in range(rows):
        assert coloured[row * height // rows:(row + 1) * height // rows].mean() > 0.1, row
    # The synthetic defects the scoring was chosen on: a row of five for each kind, the same way.
    validation = figure_pixels(run_dir / "anomaly_validation.png")
    height, rows = len(validation), 3
    assert height / validation.shape[1] == pytest.approx(rows * 1.1 / 5, rel=0.1)
    coloured = validation.max(axis=-1) - validation.min(axis=-1) > 40
    for row in range(rows):
        assert coloured[row * height // rows:(row + 1) * height // rows].mean() > 0.1, row


@pytest.mark.slow
def test_score_py_applies_the_kept_threshold_and_writes_masks(inspection_run, tmp_path):
    run_dir, root, _ = inspection_run
    kept = json.loads((run_dir / "anomaly_threshold.json").read_text())
    images = [os.path.join(root, "test", kind, "0000.png") for kind in ("good", "blob")]
    result = run_script("score.py", str(run_dir), *images, f"--out={tmp_path / 'a.csv'}",
                        f"--masks={tmp_path / 'masks'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    for row in rows:
        assert (row["anomalous"] == "True") == (
            float(row["anomaly_score"]) > kept["image_threshold"])
    assert "the threshold kept with the run" in result.stdout
    assert sorted(os.listdir(tmp_path / "masks")) == ["00000_0000.png", "00001_0000.png"]
    # --threshold overrides it: 0 nats flags everything.
    result = run_script("score.py", str(run_dir), *images, f"--out={tmp_path / 'b.csv'}",
                        "--threshold=0")
    assert all(row["anomalous"] == "True" for row in csv.DictReader(open(tmp_path / "b.csv")))


def export_and_compare(run_dir, x):
    """Export the run's scorer, and compare onnxruntime's outputs on x with the Keras scorer's."""
    import onnxruntime

    from anomaly import build_anomaly_scorer
    from saved_run import load_run

    result = run_script("export.py", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    _, model = load_run(str(run_dir))
    kept_path = run_dir / "anomaly_threshold.json"
    scoring = json.loads(kept_path.read_text()).get("scoring") if kept_path.exists() else None
    scores, maps = build_anomaly_scorer(
        model, scoring=scoring, image_shape=x.shape[1:],
        feature_memory=kept_feature_memory(str(run_dir))).predict_on_batch(x)
    session = onnxruntime.InferenceSession(str(run_dir / "scorer.onnx"))
    onnx_scores, onnx_maps = session.run(["anomaly_score", "pixel_loss"], {"image": x})
    # onnxruntime's float32 convolutions round differently from oneDNN's (see export.py): the
    # scores agree to a few thousandths of a nat, and all but a few pixels to 1e-4.
    np.testing.assert_allclose(onnx_scores, scores, atol=1e-2, rtol=0)
    assert np.percentile(np.abs(onnx_maps - maps), 99.5) < 1e-4
    np.testing.assert_allclose(onnx_maps, maps, atol=1e-2, rtol=0)
    return session


@pytest.mark.slow
def test_the_exported_scorer_agrees_with_the_run_and_keeps_the_threshold(inspection_run,
                                                                          tmp_path):
    run_dir, root, _ = inspection_run
    data = load_dataset(root)
    session = export_and_compare(run_dir, data.x_test[:24])
    kept = json.loads((run_dir / "anomaly_threshold.json").read_text())
    metadata = session.get_modelmeta().custom_metadata_map
    assert float(metadata["image_threshold"]) == kept["image_threshold"]
    # The README's snippet scores a PNG with onnxruntime, NumPy and Pillow, and finds the
    # anomaly_score that score.py gives the same file.
    readme = open(os.path.join(ROOT, "README.md")).read()
    snippet = re.search(r"```python\n(# Score a PNG with the exported scorer.*?)```", readme,
                        re.S).group(1)
    image = os.path.join(root, "test", "blob", "0001.png")
    code = snippet.replace("outputs/scorer.onnx", str(run_dir / "scorer.onnx")).replace(
        "image.png", image)
    ran = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    scored = run_script("score.py", str(run_dir), image, f"--out={tmp_path / 's.csv'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    expected = float(next(csv.DictReader(open(tmp_path / "s.csv")))["anomaly_score"])
    assert float(ran.stdout.split()[0]) == pytest.approx(expected, abs=1e-2)


@pytest.mark.slow
def test_an_rgb_run_exports_a_scorer_that_agrees(rgb_run, tmp_path):
    import shutil

    run = tmp_path / "run"  # a copy: the export writes into the run folder, which others share
    shutil.copytree(rgb_run, run)
    export_and_compare(run, coloured_squares(8, seed=5).astype("float32") / 255)


@pytest.mark.slow
def test_export_py_refuses_a_folder_that_is_no_run(tmp_path):
    result = run_script("export.py", str(tmp_path))
    assert result.returncode == 2 and "is not a run folder" in result.stderr
    assert "Traceback" not in result.stderr and not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_model_of_patches_scores_whole_images_in_every_command(tmp_path):
    """patch_size: trained on patches, evaluated, scored, exported and refused where a command
    needs a whole-image model, on whole images throughout."""
    root = write_inspection_set(str(tmp_path / "set"), digits(400), n_train=200, n_good=20,
                                n_per_defect=6)
    run_dir = tmp_path / "run"
    result = run_script("train.py", f"--dataset={root}", f"--out_dir={run_dir}",
                        "--architecture=strided", "--patch_size=16", "--epochs=1",
                        "--batch_size=64")
    assert result.returncode == 0, result.stderr[-3000:]
    # 180 training digits of 28x28 in 16x16 patches at corners 0, 8 and 12: 1,620 patches.
    assert "in 16x16 patches: 1620 training, 180 validation" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["image_shape"] == [16, 16, 1]
    assert config["data"]["patches_of"]["image_shape"] == [28, 28, 1]
    anomaly = json.loads((run_dir / "metrics.json").read_text())["anomaly"]
    assert set(anomaly["baselines"]) == {"pca_residual_32", "nearest_neighbour",
                                         "pca_residual_32_patches", "nearest_neighbour_patches"}
    # score.py reads whole digits and gives the scorer's numbers; its masks are whole too.
    images = [os.path.join(root, "test", kind, "0000.png") for kind in ("good", "blob")]
    scored = run_script("score.py", str(run_dir), *images, f"--out={tmp_path / 'a.csv'}",
                        f"--masks={tmp_path / 'masks'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    from anomaly import build_anomaly_scorer
    from saved_run import load_run

    _, model = load_run(str(run_dir))
    kept = json.loads((run_dir / "anomaly_threshold.json").read_text())
    x = np.stack([np.asarray(Image.open(path), np.float32)[..., None] / 255 for path in images])
    expected, _ = build_anomaly_scorer(
        model, scoring=kept["scoring"], image_shape=(28, 28, 1),
        feature_memory=kept_feature_memory(str(run_dir))).predict_on_batch(x)
    assert [float(row["anomaly_score"]) for row in rows] == pytest.approx(expected, abs=1e-3)
    masks = sorted(os.listdir(tmp_path / "masks"))
    assert len(masks) == 2 and all(
        np.asarray(Image.open(tmp_path / "masks" / name)).shape == (28, 28) for name in masks)
    # Its negative ELBO is nats per patch, ranked among the test digits' (their patches' means).
    import measures

    test_scores = np.load(run_dir / "test_scores.npy")
    assert len(test_scores) == len(load_dataset(root).x_test)
    # So are the validation scores: one per held-out normal digit (20, of 9 patches each).
    validation_scores = np.load(run_dir / "validation_scores.npy")
    assert len(validation_scores) == 20
    assert validation_scores.mean() == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["validation_negative_elbo"], abs=1e-3)
    for row in rows:
        nats = float(row["negative_elbo_nats"])
        assert float(row["bits_per_dim"]) == pytest.approx(
            measures.bits_per_dim(nats, (16, 16, 1), model.likelihood), rel=1e-4)
        assert float(row["percentile"]) == pytest.approx(100 * np.mean(test_scores <= nats),
                                                         abs=0.01)
    # evaluate.py, run again on the finished run, reports the same inspection numbers.
    again = run_script("evaluate.py", str(run_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())["anomaly"]
    assert metrics["image_auroc"] == anomaly["image_auroc"]
    assert metrics["pixel_auroc"] == anomaly["pixel_auroc"]
    # The exported file takes whole digits and agrees with Keras.
    session = export_and_compare(run_dir, load_dataset(root).x_test[:12])
    assert session.get_inputs()[0].shape[1:] == [28, 28, 1]
    # What needs a whole-image model says so in one paragraph.
    for command in (("score.py", str(run_dir), images[0], f"--figures={tmp_path / 'figures'}"),
                    ("explore.py", str(run_dir)),
                    ("sample.py", str(run_dir), f"--interpolate={images[0]},{images[1]}")):
        refused = run_script(*command)
        assert refused.returncode == 2 and "patch_size" in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_an_inspection_set_of_large_images_is_told_of_patch_size(tmp_path):
    from benchmarks.photo_crops import write_inspection_folder

    require_module("skimage", "scikit-image carries the photographs: "
                              "pip install -r requirements-dev.txt")
    root = write_inspection_folder("brick", str(tmp_path / "brick"), train=40, good=6,
                                   per_defect=2, seed=0)
    result = run_script("train.py", f"--dataset={root}", f"--out_dir={tmp_path / 'run'}",
                        "--architecture=strided", "--epochs=1", "--batch_size=16")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "of a texture" in result.stdout and "try --patch_size=32 in another" in result.stdout
