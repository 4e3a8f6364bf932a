"""sample.py and score.py on trained runs, grey and RGB, as a user runs them. The runs are
conftest.py's: finished_run, rgb_run and conditional_run, each trained once per session."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from conftest import (
    coloured_squares,
    fake_mnist_arrays,
    run_in_process,
    run_script,
    write_images,
    write_npz,
)

# A refusal that comes before Keras loads takes a fraction of a second: those are in the fast
# tier, the others (several seconds each) are slow.
slow = pytest.mark.slow


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@slow
@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_sample_draws_a_grid_and_single_images_reproducibly(kind, finished_run, rgb_run,
                                                            tmp_path):
    run = finished_run[0] if kind == "grey" else rgb_run
    channels = 1 if kind == "grey" else 3
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = run_script("sample.py", str(run), "--n=7", f"--seed={seed}", "--save_each=True",
                            f"--out_dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "a")) == sorted(
        ["samples.png"] + [f"sample_{i:04d}.png" for i in range(7)])
    first = [np.asarray(Image.open(tmp_path / name / "sample_0000.png")) for name in "abc"]
    size = 28 if kind == "grey" else 32
    assert first[0].shape == ((size, size) if channels == 1 else (size, size, 3))
    np.testing.assert_array_equal(first[0], first[1])  # the same seed, the same images
    assert not np.array_equal(first[0], first[2])


@slow
def test_sample_interpolates_between_two_image_files(finished_run, tmp_path):
    run = finished_run[0]
    raw = fake_mnist_arrays()
    write_images(tmp_path / "ends", raw["x_test"][:2])
    ends = f"{tmp_path / 'ends' / '000.png'},{tmp_path / 'ends' / '001.png'}"
    result = run_in_process("sample.py", str(run), f"--interpolate={ends}", "--steps=6",
                        f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(tmp_path / "out" / "interpolation.png") as png:
        assert png.format == "PNG" and png.size[0] > 3 * png.size[1]


@pytest.mark.parametrize("arguments, message", [
    ([], "Give the run folder first"),
    (["RUN", "--n=0"], "n must be 1 to 10000"),
    pytest.param(["RUN", "--interpolate=one.png"], "two image files", marks=slow),
    pytest.param(["RUN", "--interpolate=/no/a.png,/no/b.png"], "Cannot read '/no/a.png'",
                 marks=slow),
    pytest.param(["/no/such/run"], "is not a run folder", marks=slow),
])
def test_sample_refuses_bad_input(finished_run, arguments, message):
    arguments = [str(finished_run[0]) if a == "RUN" else a for a in arguments]
    result = run_script("sample.py", *arguments)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@slow
def test_score_files_folders_and_arrays_and_reports_what_it_cannot_read(finished_run, tmp_path):
    run, data_path, _ = finished_run
    raw = fake_mnist_arrays()
    write_images(tmp_path / "digits", raw["x_test"][:5])
    (tmp_path / "digits" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(coloured_squares(1)[0]).save(tmp_path / "colour.png")  # 32x32 RGB
    out = tmp_path / "scores.csv"
    result = run_script("score.py", str(run), str(tmp_path / "digits"),
                        str(tmp_path / "colour.png"), data_path, f"--out={out}",
                        f"--figures={tmp_path / 'maps'}", f"--latents={tmp_path / 'codes.npz'}",
                        "--samples=4")
    assert result.returncode == 1, result.stderr[-2000:]  # one file could not be read
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    rows = read_rows(out)
    assert len(rows) == 5 + 1 + 60 + 1
    broken = [row for row in rows if row["path"].endswith("broken.png")]
    assert broken[0]["error"] and not broken[0]["negative_elbo_nats"]
    scored = [row for row in rows if not row["error"]]
    nats = np.array([float(row["negative_elbo_nats"]) for row in scored])
    bits = np.array([float(row["bits_per_dim"]) for row in scored])
    np.testing.assert_allclose(bits, nats / (28 * 28 * np.log(2)), rtol=1e-5)
    # The run's own test images: their codes are the encoder's, image by image, and each score
    # is the negative ELBO recomputed in NumPy with the noise score.py draws for those pixels.
    import zlib

    from data import load_mnist
    from measures import encode
    from saved_run import load_run

    _, model = load_run(str(run))
    _, (x_test, _) = load_mnist(data_path)
    test_rows = [index for index, row in enumerate(scored) if "[x_test]" in row["path"]]
    codes = np.load(tmp_path / "codes.npz")
    z_mean, z_log_var = encode(model, x_test)
    np.testing.assert_allclose(codes["z_mean"][test_rows], z_mean, atol=1e-6)
    np.testing.assert_allclose(codes["z_log_var"][test_rows], z_log_var, atol=1e-6)
    epsilon = np.stack([np.random.default_rng([0, zlib.crc32(image.tobytes())])
                        .standard_normal(2) for image in x_test])
    z = (z_mean + np.exp(0.5 * z_log_var.astype(np.float64)) * epsilon).astype("float32")
    p = np.clip(model.decoder.predict(z, verbose=0).astype(np.float64), 1e-7, 1 - 1e-7)
    x = x_test.astype(np.float64)
    expected = (-np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
                + 0.5 * np.sum(z_mean**2 + np.exp(z_log_var) - 1 - z_log_var, axis=1))
    own = np.array([float(scored[index]["negative_elbo_nats"]) for index in test_rows])
    np.testing.assert_allclose(own, expected, atol=2e-3)  # the CSV keeps four decimals
    test_scores = np.load(run / "test_scores.npy")
    threshold = np.percentile(test_scores, 99)
    for row in scored:
        # The CSV rounds the score to 1e-4 nats: the percentile lies between its neighbours'.
        score = float(row["negative_elbo_nats"])
        low, high = (100.0 * np.mean(test_scores <= score + d) for d in (-1e-4, 1e-4))
        assert low - 0.01 <= float(row["percentile"]) <= high + 0.01
        if abs(score - threshold) > 1e-4:
            assert (row["anomalous"] == "True") == (score > threshold)
    # --figures: one figure per image scored, named by its place and its name, of four panels
    # side by side: the input and its reconstruction, then the two maps in colour (viridis and
    # magma), so that for a grey input the left half is grey and the right half coloured.
    def figure_name(index, path):
        stem = os.path.splitext(os.path.basename(path.split("[")[0]))[0]
        keys = [part.strip("]") for part in path.split("[")[1:]]
        return f"{index:05d}_{'_'.join([stem, *keys])}.png"

    expected = [figure_name(index, row["path"]) for index, row in enumerate(scored)]
    assert sorted(os.listdir(tmp_path / "maps")) == sorted(expected)
    for name, row in zip(expected, scored):
        with Image.open(tmp_path / "maps" / name) as png:
            assert png.format == "PNG" and png.size[0] > 2.5 * png.size[1], name
            pixels = np.asarray(png.convert("RGB"), np.int16)
        coloured = pixels.max(axis=-1) - pixels.min(axis=-1) > 40
        half = pixels.shape[1] // 2
        assert coloured[:, half:].mean() > 0.05, name  # the maps are drawn
        if not row["path"].endswith("colour.png"):
            assert coloured[:, :half].mean() < 0.01, name  # a grey input stays grey
    assert codes["z_mean"].shape == (len(scored), 2) and len(codes["path"]) == len(scored)


@slow
def test_score_on_an_rgb_run_converts_grey_inputs(rgb_run, tmp_path):
    write_images(tmp_path / "grey", fake_mnist_arrays()["x_test"][:3])
    result = run_in_process("score.py", str(rgb_run), str(tmp_path / "grey"),
                        f"--out={tmp_path / 'scores.csv'}", "--percentile=50")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(tmp_path / "scores.csv")
    assert len(rows) == 3
    for row in rows:  # bits per dimension of a 32x32x3 image: the grey digits became RGB
        assert float(row["bits_per_dim"]) == pytest.approx(
            float(row["negative_elbo_nats"]) / (32 * 32 * 3 * np.log(2)), rel=1e-4)
    assert "above the 50th percentile" in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["RUN"], "at least one image file"),
    (["RUN", "x.png", "--percentile=100"], "percentile must be between 0 and 100"),
    pytest.param(["/no/such/run", "x.png"], "is not a run folder", marks=slow),
])
def test_score_refuses_bad_input(finished_run, arguments, message):
    arguments = [str(finished_run[0]) if a == "RUN" else a for a in arguments]
    result = run_script("score.py", *arguments)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


@slow
def test_a_conditional_run_draws_and_scores_the_class_asked_for(conditional_run, tmp_path):
    import json

    run, data_path = conditional_run
    config = json.loads((run / "config.json").read_text())
    assert config["conditional"] is True
    result = run_in_process("sample.py", str(run), "--class_name=7", "--n=5", "--save_each=True",
                        f"--out_dir={tmp_path / 'sevens'}")
    assert result.returncode == 0, result.stderr[-2000:]
    # The saved images are the decoder's, for the seed's draws and class 7; class 3 differs.
    from saved_run import load_run

    _, model = load_run(str(run))
    z = np.random.default_rng(0).standard_normal((5, 2)).astype("float32")
    three, seven = (model.decoder.predict([z, np.full(5, c, "int32")], verbose=0) for c in (3, 7))
    saved = np.stack([np.asarray(Image.open(tmp_path / "sevens" / f"sample_{i:04d}.png"))
                      for i in range(5)])
    np.testing.assert_array_equal(saved, np.round(seven[..., 0] * 255).astype(np.uint8))
    assert not np.array_equal(saved, np.round(three[..., 0] * 255).astype(np.uint8))
    refused = run_in_process("score.py", str(run), data_path)
    assert refused.returncode == 2 and "--class_name" in refused.stderr
    scored = run_in_process("score.py", str(run), data_path, "--class_name=3",
                        f"--out={tmp_path / 'scores.csv'}")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert len(read_rows(tmp_path / "scores.csv")) == 60


@slow
def test_conditional_needs_labels(tmp_path):
    data_path = write_npz(tmp_path, x_train=coloured_squares(20, size=8))
    result = run_script("train.py", f"--dataset={data_path}", f"--out_dir={tmp_path / 'run'}",
                        "--conditional=True")
    assert result.returncode == 2 and "conditional=True needs class labels" in result.stderr


@slow
def test_an_images_score_does_not_depend_on_what_else_is_scored(finished_run, tmp_path):
    run = finished_run[0]
    write_images(tmp_path / "digits", fake_mnist_arrays()["x_test"][:6])
    alone = run_in_process("score.py", str(run), str(tmp_path / "digits" / "003.png"),
                       f"--out={tmp_path / 'alone.csv'}")
    together = run_in_process("score.py", str(run), str(tmp_path / "digits"),
                          f"--out={tmp_path / 'new' / 'together.csv'}",
                          f"--latents={tmp_path / 'codes'}")
    assert alone.returncode == 0 and together.returncode == 0, together.stderr[-2000:]
    score = {row["path"]: row["negative_elbo_nats"] for row in
             read_rows(tmp_path / "new" / "together.csv")}
    assert read_rows(tmp_path / "alone.csv")[0]["negative_elbo_nats"] == score[
        str(tmp_path / "digits" / "003.png")]
    assert np.load(tmp_path / "codes")["z_mean"].shape == (6, 2)  # no .npz added to the name
