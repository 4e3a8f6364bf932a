import numpy as np
from PIL import Image

from plotting import plot_reconstructions, plot_training_snapshot, save_gif


def test_reconstruction_figure_is_a_png_of_the_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((10, 28, 28, 1))
    path = plot_reconstructions(images, images[::-1], np.arange(10), str(tmp_path / "r.png"),
                                title="t")
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
    # 10 columns of about 1.25 inch at 100 dpi, two rows: wide, not tall.
    assert 1000 <= width <= 1600 and 250 <= height <= 400


def test_snapshots_make_a_gif(tmp_path):
    rng = np.random.default_rng(0)
    frames = [plot_training_snapshot(rng.random((10, 28, 28, 1)), rng.random((10, 28, 28, 1)),
                                     rng.random((10, 28, 28, 1)), epoch,
                                     str(tmp_path / f"{epoch}.png")) for epoch in (1, 2, 3)]
    path = save_gif(frames, str(tmp_path / "movie.gif"))
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
