"""Figures, drawn headless: each plot_* function takes arrays and a path, saves a PNG atomically
and returns the path; save_gif stitches saved PNGs into an animation."""

import os

import matplotlib

matplotlib.use("Agg")  # no display needed: the script runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from run_files import write_atomically  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=100, bbox_inches="tight"))
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
    return write_atomically(path, lambda temporary: frames[0].save(
        temporary, format="GIF", save_all=True, append_images=frames[1:], loop=0,
        duration=int(seconds_per_frame * 1000)))


def _image_grid(images, rows, columns):
    """(rows * columns, h, w, 1) images -> one (rows * h, columns * w) mosaic."""
    h, w = images.shape[1:3]
    grid = np.asarray(images)[..., 0].reshape(rows, columns, h, w)
    return grid.transpose(0, 2, 1, 3).reshape(rows * h, columns * w)


def plot_latent_space(z_mean, labels, dims, path, title):
    """Scatter of the test set's posterior means in two latent dimensions, coloured by digit."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("tab10", 10)
    points = ax.scatter(z_mean[:, dims[0]], z_mean[:, dims[1]], c=labels, cmap=cmap,
                        vmin=-0.5, vmax=9.5, s=3, alpha=0.7, linewidths=0)
    colorbar = fig.colorbar(points, ax=ax, ticks=range(10))
    colorbar.set_label("digit")
    ax.set_xlabel(f"z[{dims[0]}] (posterior mean)")
    ax.set_ylabel(f"z[{dims[1]}] (posterior mean)")
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def plot_manifold(images, quantiles, dims, path):
    """A grid of images decoded at Normal quantiles of the prior (Kingma & Welling, fig. 4)."""
    n = len(quantiles)
    fig, ax = plt.subplots(figsize=(8, 8))
    h, w = images.shape[1:3]
    ax.imshow(_image_grid(images, n, n), cmap="gray", vmin=0.0, vmax=1.0)
    # One tick per row/column, labelled with its z value: columns vary z[dims[0]] left to right,
    # rows vary z[dims[1]] from high (top) to low (bottom), as on a plot's axes.
    step = max(1, n // 5)
    ticks = list(range(0, n, step))
    ax.set_xticks([w * i + w / 2 for i in ticks], [f"{quantiles[i]:.2f}" for i in ticks])
    ax.set_yticks([h * i + h / 2 for i in ticks], [f"{quantiles[::-1][i]:.2f}" for i in ticks])
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]")
    ax.set_title(f"Decoded images over the latent space ({n}x{n} grid at Normal quantiles "
                 f"{quantiles[0]:.2f} .. {quantiles[-1]:.2f})", fontsize=10)
    return _save(fig, path)


def plot_image_grid(images, rows, columns, path, title):
    fig, ax = plt.subplots(figsize=(0.6 * columns + 0.5, 0.6 * rows + 0.7))
    ax.imshow(_image_grid(images, rows, columns), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_interpolations(rows_of_images, pair_labels, path):
    """One row per pair of test digits: start, the decoded path through latent space, end."""
    n_rows, n_steps = len(rows_of_images), len(rows_of_images[0])
    fig, axes = plt.subplots(n_rows, n_steps, figsize=(0.9 * n_steps + 1.0, 0.95 * n_rows + 0.6),
                             squeeze=False)
    for row, (images, (start, end)) in enumerate(zip(rows_of_images, pair_labels)):
        for column in range(n_steps):
            ax = axes[row, column]
            ax.imshow(np.squeeze(images[column], axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{start} to {end}", fontsize=9)
    fig.suptitle("Linear interpolation between the posterior means of two test digits",
                 fontsize=10)
    fig.subplots_adjust(wspace=0.04, hspace=0.06)
    return _save(fig, path)


def plot_learning_curves(history, path):
    """Train and test negative ELBO, reconstruction and KL per epoch, from history.csv rows."""
    epochs = [row["epoch"] + 1 for row in history]
    panels = (("loss", "negative ELBO"), ("reconstruction_loss", "reconstruction"),
              ("kl_loss", "KL"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, name) in zip(axes, panels):
        ax.plot(epochs, [row.get(key, np.nan) for row in history], "o-", label="train")
        ax.plot(epochs, [row.get(f"val_{key}", np.nan) for row in history], "s--", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves (train: running mean over the epoch; test: after the epoch)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_typical_and_atypical(images, scores, labels, path, count=10):
    """The test digits with the lowest and the highest negative ELBO, with their scores."""
    order = np.argsort(scores)
    fig, axes = plt.subplots(2, count, figsize=(1.25 * count + 1.2, 3.4), squeeze=False)
    for row, indices in enumerate((order[:count], order[::-1][:count])):
        for column, index in enumerate(indices):
            ax = axes[row, column]
            ax.imshow(np.squeeze(images[index], axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{int(labels[index])}: {scores[index]:.0f}", fontsize=9)
    axes[0, 0].set_ylabel("most typical", fontsize=9)
    axes[1, 0].set_ylabel("least typical", fontsize=9)
    fig.suptitle("Anomaly score = per-image negative ELBO in nats (title: digit: score)",
                 fontsize=10)
    return _save(fig, path)


def plot_score_histogram(scores, labels, path, holdout_digit=None):
    """Histogram of per-image scores; the held-out digit, if any, drawn apart."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    bins = np.linspace(np.percentile(scores, 0.1), np.percentile(scores, 99.9), 60)
    if holdout_digit is None:
        ax.hist(scores, bins=bins, color="tab:blue")
    else:
        held = labels == holdout_digit
        ax.hist(scores[~held], bins=bins, density=True, alpha=0.6,
                label="digits seen in training")
        ax.hist(scores[held], bins=bins, density=True, alpha=0.6,
                label=f"digit {holdout_digit} (held out)")
        ax.legend()
    ax.set_xlabel("negative ELBO (nats), higher = more anomalous")
    ax.set_ylabel("test images" if holdout_digit is None else "density")
    ax.set_title("Anomaly scores of the test set", fontsize=10)
    return _save(fig, path)


def plot_roc(fpr, tpr, auc, holdout_digit, path):
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"negative ELBO score, AUROC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false-positive rate (other digits flagged)")
    ax.set_ylabel(f"true-positive rate (digit {holdout_digit} flagged)")
    ax.set_title(f"Detecting the held-out digit {holdout_digit}", fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)
