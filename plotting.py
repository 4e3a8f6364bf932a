"""Figures, drawn headless: each function takes arrays and a path, saves a PNG, returns the path."""

import os

import matplotlib

matplotlib.use("Agg")  # no display needed: the script runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_reconstructions(originals, reconstructions, labels, path, title=None):
    """Originals in the top row, each reconstruction directly below its original.

    originals, reconstructions: (n, height, width, 1) in [0, 1]; labels: n digit labels.
    """
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.25 * n + 1.1, 3.1), squeeze=False)
    for column in range(n):
        for row, images in enumerate((originals, reconstructions)):
            ax = axes[row, column]
            # vmin/vmax fixed so that a faint reconstruction looks faint instead of being
            # stretched to full contrast.
            ax.imshow(np.squeeze(images[column], axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, column].set_title(f"digit {int(labels[column])}", fontsize=10)
    axes[0, 0].set_ylabel("original", fontsize=10)
    axes[1, 0].set_ylabel("reconstruction", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, path)


def plot_training_snapshot(originals, reconstructions, samples, epoch, path):
    """One frame of the training movie: fixed test digits, their reconstructions, and images
    decoded from a fixed set of prior draws, so that frames differ only by what was learned."""
    n = len(originals)
    rows = (("test digit", originals), ("reconstruction", reconstructions),
            ("prior sample", samples[:n]))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.4, 4.2), squeeze=False)
    for row, (name, images) in enumerate(rows):
        for column in range(n):
            ax = axes[row, column]
            ax.imshow(np.squeeze(images[column], axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"after epoch {epoch}", fontsize=11)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return _save(fig, path)


def save_gif(frame_paths, path, seconds_per_frame=0.7):
    """Stitch PNG frames into an animated GIF (Pillow ships with matplotlib)."""
    from PIL import Image

    frames = [Image.open(p).convert("RGB") for p in frame_paths]
    size = frames[0].size
    frames = [f if f.size == size else f.resize(size) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                   duration=int(seconds_per_frame * 1000))
    return path
