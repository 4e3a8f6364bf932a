import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from PIL import Image

import plotting

NAMES = ["T-shirt/top", "airplane", "automobile", "Ankle boot", "a very long class name indeed"]


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plot_* functions save, still inspectable after it is written."""
    saved = []
    save = plotting._save
    monkeypatch.setattr(plotting, "_save", lambda fig, path: saved.append(fig) or save(fig, path))
    return saved


def texts(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def read_png(path):
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB")).astype(int)


def test_reconstruction_figure_is_a_png_of_the_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((10, 28, 28, 1))
    path = plotting.plot_reconstructions(images, images[::-1], [str(d) for d in range(10)],
                                         str(tmp_path / "r.png"), title="t")
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
    # 10 columns of about 1.25 inch at 100 dpi, two rows: wide, not tall.
    assert 1000 <= width <= 1600 and 250 <= height <= 400


def test_snapshots_make_a_gif(tmp_path):
    rng = np.random.default_rng(0)
    frames = [plotting.plot_training_snapshot(
        rng.random((10, 28, 28, 1)), rng.random((10, 28, 28, 1)), rng.random((10, 28, 28, 1)),
        epoch, str(tmp_path / f"{epoch}.png")) for epoch in (1, 2, 3)]
    path = plotting.save_gif(frames, str(tmp_path / "movie.gif"))
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (24, 32, 3), (24, 32, 1)])
def test_every_image_figure_is_written_for_grey_and_rgb_of_any_size(tmp_path, figures, shape):
    rng = np.random.default_rng(0)
    # Slightly outside [0, 1], as a decoder's output may be: must be clipped, not refused.
    images = rng.uniform(-0.1, 1.1, (100, *shape))
    captions = [NAMES[i % len(NAMES)] for i in range(100)]
    scores = rng.random(100)
    out = tmp_path.joinpath
    paths = [
        plotting.plot_reconstructions(images[:5], images[5:10], captions[:5], out("r.png")),
        plotting.plot_reconstructions(images[:5], images[5:10], None, out("r0.png")),
        plotting.plot_training_snapshot(images[:5], images[5:10], images[10:20], 1, out("s.png")),
        plotting.plot_manifold(images[:16], np.linspace(-1.5, 1.5, 4), (0, 1), out("m.png")),
        plotting.plot_image_grid(images[:12], 3, 4, out("g.png"), "samples"),
        plotting.plot_interpolations([images[:6], images[6:12]],
                                     ["3 to 7", "airplane to Ankle boot"], out("i.png")),
        plotting.plot_typical_and_atypical(images, scores, captions, out("a.png"), count=4),
        plotting.plot_typical_and_atypical(images, scores, None, out("a0.png")),
    ]
    for path in paths:
        read_png(path)
    assert not [t for fig in figures for t in texts(fig) if "digit" in t.lower()]


def test_long_captions_do_not_overlap(tmp_path, figures):
    images = np.zeros((len(NAMES), 28, 28, 1))
    plotting.plot_reconstructions(images, images, NAMES, tmp_path / "r.png")
    renderer = FigureCanvasAgg(figures[0]).get_renderer()  # a closed figure has lost its own
    spans = sorted((box.x0, box.x1) for box in (ax.title.get_window_extent(renderer)
                                                for ax in figures[0].axes) if box.width > 0)
    assert len(spans) == len(NAMES)
    assert all(left[1] < right[0] for left, right in zip(spans, spans[1:]))


def squares(grey):
    """Pure red, green and blue images, or their grey versions."""
    images = np.ones((3, 16, 16, 3)) * np.eye(3)[:, None, None, :]
    return images.mean(axis=-1, keepdims=True) if grey else images


def test_rgb_reconstructions_are_drawn_in_colour_and_grey_ones_in_grey(tmp_path):
    pixels = read_png(plotting.plot_reconstructions(squares(False), squares(False),
                                                    ["r", "g", "b"], tmp_path / "rgb.png"))
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert (red - np.maximum(green, blue) > 150).sum() > 500
    assert (green - np.maximum(red, blue) > 150).sum() > 500
    assert (blue - np.maximum(red, green) > 150).sum() > 500
    pixels = read_png(plotting.plot_reconstructions(squares(True), squares(True),
                                                    ["r", "g", "b"], tmp_path / "grey.png"))
    assert np.abs(pixels - pixels[..., :1]).max() <= 2


def test_image_grid_puts_image_r_c_in_block_r_c():
    rows, columns, h, w = 2, 3, 4, 5
    # Image i holds i, i + 10, i + 20 in its three channels, so every block names its source.
    images = np.arange(rows * columns)[:, None, None, None] + np.array([0, 10, 20]) \
        + np.zeros((rows * columns, h, w, 3))
    grid = plotting._image_grid(images, rows, columns)
    assert grid.shape == (rows * h, columns * w, 3)
    for r in range(rows):
        for c in range(columns):
            block = grid[r * h:(r + 1) * h, c * w:(c + 1) * w]
            np.testing.assert_array_equal(block, images[r * columns + c])
    with pytest.raises(ValueError, match="needs 9 images"):
        plotting._image_grid(images, 3, 3)


def colour_bar_labels(fig):
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    return [[t.get_text() for t in bar.get_yticklabels()] for bar in bars]


def test_latent_space_without_labels_with_named_classes_and_with_many(tmp_path, figures):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3))
    cases = {"none": (None, None), "three": (rng.integers(0, 3, 500), ["cat", "dog", "Ankle boot"]),
             "three0": (rng.integers(0, 3, 500), None), "many": (rng.integers(0, 25, 500), None)}
    for name, (labels, class_names) in cases.items():
        read_png(plotting.plot_latent_space(z, labels, class_names, (0, 2),
                                            tmp_path / f"{name}.png", name))
    assert colour_bar_labels(figures[0]) == []
    assert colour_bar_labels(figures[1]) == [["cat", "dog", "Ankle boot"]]
    assert colour_bar_labels(figures[2]) == [["0", "1", "2"]]
    # 25 classes: a continuous scale, not 25 crowded names.
    [labels] = colour_bar_labels(figures[3])
    assert len(labels) < 10


def test_score_figures_speak_of_classes(tmp_path, figures):
    rng = np.random.default_rng(0)
    scores = rng.normal(100, 10, 300)
    held = np.arange(300) < 30
    out = tmp_path.joinpath
    history = [dict(epoch=e, loss=3.0 - e, val_loss=3.1 - e) for e in range(3)]
    for path in (plotting.plot_score_histogram(scores, None, out("one.png")),
                 plotting.plot_score_histogram(scores, held, out("two.png"), "Ankle boot"),
                 plotting.plot_roc(np.linspace(0, 1, 20), np.linspace(0, 1, 20) ** 0.5, 0.8,
                                   "airplane", out("roc.png")),
                 plotting.plot_learning_curves(history, out("curves.png"))):
        read_png(path)
    assert figures[0].axes[0].get_legend() is None
    # 300 scores: the top and bottom 0.1% are one image each, left off the axes and counted.
    assert figures[0].axes[0].get_title() == (
        f"Anomaly scores of the test set (2 of 300 beyond the axes, up to {scores.max():.0f})")
    legend = [t.get_text() for t in figures[1].axes[0].get_legend().get_texts()]
    assert legend == ["classes seen in training", "Ankle boot (held out)"]
    assert "true-positive rate (airplane flagged)" in texts(figures[2])
    assert "false-positive rate (other classes flagged)" in texts(figures[2])
    assert not [t for fig in figures for t in texts(fig) if "digit" in t.lower()]
