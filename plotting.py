"""Figures, drawn headless: each plot_* function takes arrays and a path, saves a PNG atomically
and returns the path; save_gif stitches saved PNGs into an animation; EpochSnapshots draws the
same test images and prior draws at the end of every training epoch.

Images are (n, height, width, 1) grey or (n, height, width, 3) RGB, values in [0, 1], any size.
"""

import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display needed: the script runs on servers and in CI
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402

import measures  # noqa: E402
from plumbing.atomic_files import write_atomically, writing  # noqa: E402


# ---- the article's figures -----------------------------------------------------------------------
def plot_reconstructions(originals, reconstructions, captions, path, title=None):
    """Originals in the top row, each reconstruction directly below its original, each column
    titled with its caption (a class name; None or "" for none)."""
    return _panels((originals, reconstructions), ("original", "reconstruction"), path,
                   titles=[list(captions) if captions is not None else [], []],
                   suptitle=title)


def plot_latent_space(z_mean, labels, class_names, dims, path, title):
    """Scatter of the test set's posterior means in two latent dimensions, coloured by class
    when labels are given: one colour each up to 20 classes, a continuous scale beyond."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    x, y = z_mean[:, dims[0]], z_mean[:, dims[1]]
    style = dict(s=3, alpha=0.7, linewidths=0)
    if labels is None:
        ax.scatter(x, y, color="tab:blue", **style)
    else:
        labels = np.asarray(labels).astype(int)
        k = len(class_names) if class_names is not None else int(labels.max()) + 1
        if k <= 20:
            # The first k colours of a qualitative map, so that class i keeps its colour
            # from one dataset to the next; vmin/vmax centre each colour on its label.
            cmap = ListedColormap(plt.get_cmap("tab10" if k <= 10 else "tab20").colors[:k])
            points = ax.scatter(x, y, c=labels, cmap=cmap, vmin=-0.5, vmax=k - 0.5, **style)
            colorbar = fig.colorbar(points, ax=ax, ticks=range(k))
            names = class_names if class_names is not None else range(k)
            colorbar.set_ticklabels([str(name) for name in names])
            colorbar.set_label("class")
        else:
            # Too many classes to tell apart by colour or to name on a bar: a rainbow of indices.
            points = ax.scatter(x, y, c=labels, cmap="turbo", **style)
            fig.colorbar(points, ax=ax).set_label("class index")
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
    _show(ax, _image_grid(images, n, n))
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
    """rows x columns images as one mosaic, filled row by row (e.g. draws from the prior)."""
    h, w = images.shape[1:3]
    fig, ax = plt.subplots(figsize=(0.6 * columns * w / h + 0.5, 0.6 * rows + 0.7))
    _show(ax, _image_grid(images, rows, columns))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_learning_curves(history, path, held_out="test"):
    """Train and held-out negative ELBO, reconstruction and KL per epoch, from history.csv rows;
    held_out names the images of the val_* columns ("validation" when the run held some out)."""
    epochs = [row["epoch"] + 1 for row in history]
    panels = (("loss", "negative ELBO"), ("reconstruction_loss", "reconstruction"),
              ("kl_loss", "KL"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, name) in zip(axes, panels):
        ax.plot(epochs, [row.get(key, np.nan) for row in history], "o-", label="train")
        ax.plot(epochs, [row.get(f"val_{key}", np.nan) for row in history], "s--", label=held_out)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Learning curves (train: running mean over the epoch; {held_out}: after the "
                 f"epoch)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ---- more of a run's figures ---------------------------------------------------------------------
def plot_interpolations(rows_of_images, row_captions, path):
    """One row per pair of test images: start, the decoded path through latent space, end."""
    return _panels(rows_of_images, row_captions, path, panel_inches=0.85, fontsize=9,
                   suptitle="Linear interpolation between the posterior means of two test images")


def plot_typical_and_atypical(images, scores, captions, path, count=10):
    """The test images with the lowest and the highest negative ELBO, titled with their class
    name (if captions are given) and score."""
    order = np.argsort(scores)
    rows = (order[:count], order[::-1][:count])
    titles = [[f"{captions[i]}: {scores[i]:.0f}" if captions is not None else f"{scores[i]:.0f}"
               for i in indices] for indices in rows]
    how = "class: score" if captions is not None else "score"
    return _panels([images[indices] for indices in rows], ("most typical", "least typical"),
                   path, titles=titles, fontsize=9,
                   suptitle=f"Anomaly score = per-image negative ELBO in nats (title: {how})")


def plot_score_histogram(scores, is_held_out, path, holdout_name=None):
    """Histogram of per-image scores; the held-out class, if any, drawn apart as a density."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    # The axes leave out the extreme 0.1% at each end, so one odd image cannot squash the rest;
    # the title counts them, since anomalies.png shows exactly those images.
    low, high = np.percentile(scores, [0.1, 99.9])
    bins = np.linspace(low, high, 60)
    beyond = int(np.sum((scores < low) | (scores > high)))
    # Two densities only when there is a held-out class, named, with images in this set.
    split = is_held_out is not None and holdout_name is not None and np.any(is_held_out)
    if not split:
        ax.hist(scores, bins=bins, color="tab:blue")
    else:
        held = np.asarray(is_held_out, dtype=bool)
        ax.hist(scores[~held], bins=bins, density=True, alpha=0.6,
                label="classes seen in training")
        ax.hist(scores[held], bins=bins, density=True, alpha=0.6,
                label=f"{holdout_name} (held out)")
        ax.legend()
    ax.set_xlabel("negative ELBO (nats), higher = more anomalous")
    ax.set_ylabel("density" if split else "test images")
    title = "Anomaly scores of the test set"
    if beyond:
        title += f" ({beyond} of {len(scores)} beyond the axes, up to {np.max(scores):.0f})"
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_roc(fpr, tpr, auc, holdout_name, path):
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"negative ELBO score, AUROC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false-positive rate (other classes flagged)")
    ax.set_ylabel(f"true-positive rate ({holdout_name} flagged)")
    ax.set_title(f"Detecting the held-out class: {holdout_name}", fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_explanation(image, reconstruction, uncertainty, pixel_loss, title, path):
    """One scored image: the input, its reconstruction from z_mean, the per-pixel spread of
    images decoded from q(z|x) (where the model is unsure), and the per-pixel loss (where the
    score comes from), each map with its own colour scale."""
    fig, axes = plt.subplots(1, 4, figsize=(11.5, 3.3))
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=10)
    _show(axes[1], reconstruction)
    axes[1].set_title("reconstruction (z_mean)", fontsize=10)
    for ax, values, name, cmap in (
            (axes[2], uncertainty, "uncertainty: std over z ~ q(z|x)", "viridis"),
            (axes[3], pixel_loss, "score per pixel (nats)", "magma")):
        shown = ax.imshow(values, cmap=cmap, vmin=0.0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=10)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_training_snapshot(originals, reconstructions, samples, epoch, path):
    """One frame of the training movie: fixed test images, their reconstructions, and images
    decoded from a fixed set of prior draws, so that frames differ only by what was learned."""
    n = len(originals)
    return _panels((originals, reconstructions, samples[:n]),
                   ("test image", "reconstruction", "prior sample"), path,
                   suptitle=f"after epoch {epoch}", fontsize=9)


def save_image(image, path):
    """One image (h, w, 1 or 3) in [0, 1] as a PNG of its own size, pixel for pixel."""
    from PIL import Image

    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    return write_atomically(path, lambda temporary: picture.save(temporary, format="PNG"))


def save_gif(frame_paths, path, seconds_per_frame=0.7):
    """Stitch PNG frames into an animated GIF (Pillow ships with matplotlib)."""
    from PIL import Image

    frames = [Image.open(p).convert("RGB") for p in frame_paths]
    size = frames[0].size
    frames = [f if f.size == size else f.resize(size) for f in frames]
    return write_atomically(path, lambda temporary: frames[0].save(
        temporary, format="GIF", save_all=True, append_images=frames[1:], loop=0,
        duration=int(seconds_per_frame * 1000)))


# ---- anomaly detection on labelled defects -------------------------------------------------------
def plot_anomaly_rocs(curves, path):
    """curves: {name: (fpr, tpr, auroc)}, each defect kind against the good test images; a
    name starting "baseline" is drawn dashed, for comparison."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name}: AUROC {auc:.3f}", lw=2 if name == "all defects" else 1,
                ls="--" if name.startswith("baseline") else "-")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false-positive rate (good images flagged)")
    ax.set_ylabel("true-positive rate (defective images flagged)")
    ax.set_title("Image-level ROC of the anomaly score", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_anomaly_histograms(good, defects, threshold, path, score_name):
    """Score histograms: the good test images against each kind of defect (defects: {kind:
    scores}), with the stored threshold; score_name labels the axis."""
    kinds = list(defects)
    fig, axes = plt.subplots(len(kinds), 1, figsize=(7, 1.9 * len(kinds)), sharex=True,
                             squeeze=False)
    everything = np.concatenate([good, *defects.values()])
    low, high = everything.min(), np.percentile(everything, 99.5)
    # Scores spanning over a factor of 5 (a defect's peak far above every good image's) get a
    # logarithmic axis: on a linear one the good images would fill a single bar.
    logarithmic = low > 0 and high / low > 5
    bins = np.geomspace(low, high, 50) if logarithmic else np.linspace(low, high, 50)
    for ax, kind in zip(axes[:, 0], kinds):
        if logarithmic:
            ax.set_xscale("log")
        ax.hist(good, bins=bins, density=True, alpha=0.55, label="good", color="tab:blue")
        ax.hist(defects[kind], bins=bins, density=True, alpha=0.55, label=kind, color="tab:red")
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
        ax.legend(fontsize=8, loc="upper right")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel(f"anomaly score: {score_name}")
    fig.suptitle("Anomaly scores of the test images", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_anomaly_overlays(rows, pixel_threshold, path,
                          title="Most and least anomalous test images of each kind"):
    """One row per (row name, images, pixel maps, ground-truth masks or None, scores): each image
    in grey with its pixel map as a heat map over it, the region above pixel_threshold outlined
    in cyan and the true defect in green, and its score above it.

    The heat map's colours run from 0 to twice pixel_threshold in every row, so that the
    threshold is the scale's middle colour whatever the map: a scale set by the largest value
    shown would leave a good image black beside one defect's peak, and would change from figure
    to figure."""
    columns = max(len(row[1]) for row in rows)
    h, w = np.shape(rows[0][1][0])[:2]
    size = 1.6
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * size, len(rows) * size * 1.1),
                             squeeze=False)
    colour_top = 2 * pixel_threshold
    scale = "colour from 0 to twice the threshold"
    if not colour_top > 0:  # a threshold at or below 0 (an excess loss can be): the largest shown
        colour_top = max(max(float(np.max(row[2])) for row in rows), 0.0) or 1.0
        scale = "colour from 0 to the largest value shown"
    for axes_row, (name, images, maps, masks, scores) in zip(axes, rows):
        for c, ax in enumerate(axes_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            image = np.asarray(images[c])
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else np.clip(image, 0, 1),
                      cmap="gray", vmin=0, vmax=1)
            ax.imshow(maps[c], cmap="inferno", alpha=0.45, vmin=0, vmax=colour_top)
            if np.any(maps[c] > pixel_threshold):
                ax.contour(maps[c] > pixel_threshold, levels=[0.5], colors="cyan",
                           linewidths=1)
            if masks is not None and np.any(masks[c]):
                ax.contour(masks[c] > 0, levels=[0.5], colors="lime", linewidths=1,
                           linestyles="dashed")
            ax.set_title(f"{scores[c]:.4g}", fontsize=8, pad=2)
        axes_row[0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}\n(cyan: above the pixel threshold, green: true defect; {scale})",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ---- during training -----------------------------------------------------------------------------
class EpochSnapshots(keras.callbacks.Callback):
    """Saves snapshots/epoch_NNN.png, the same test images and the same prior draws every epoch,
    and stitches every frame so far into training.gif, so that even an interrupted run has it.

    originals: the images drawn; labels: their classes (None without labels), which a
    conditional model is given, and in which it decodes the prior draws too.
    """

    def __init__(self, originals, labels, latent_dim, folder, gif_path, seed=0):
        super().__init__()
        self.originals = originals
        self.labels = labels
        self.folder = folder
        self.gif_path = gif_path
        # Fixed draws from the prior, so successive frames show the decoder change, not z.
        self.z = np.random.default_rng(seed).standard_normal(
            (len(originals), latent_dim)).astype("float32")

    def _labels(self):
        return self.labels if self.model.conditional else None

    def on_epoch_end(self, epoch, logs=None):
        labels = self._labels()
        reconstructions = measures.reconstruct(self.model, self.originals, labels)
        samples = measures.decode(self.model, self.z, labels=labels)
        if not writing():  # drawing touches no device: process 0 alone draws (atomic_files)
            return
        plot_training_snapshot(self.originals, reconstructions, samples, epoch + 1,
                               os.path.join(self.folder, f"epoch_{epoch + 1:03d}.png"))
        frames = sorted(name for name in os.listdir(self.folder)
                        if name.startswith("epoch_") and name.endswith(".png"))
        save_gif([os.path.join(self.folder, name) for name in frames], self.gif_path)

    def draw_reconstructions(self, path, title):
        """The images and their reconstructions by the model as it is now (an interrupted run's
        figure)."""
        reconstructions = measures.reconstruct(self.model, self.originals, self._labels())
        return plot_reconstructions(self.originals, reconstructions, None, path, title=title)


# ---- layout: saving, one panel, captions that fit, rows of panels --------------------------------
def _save(fig, path):
    if writing():  # in a process that writes nothing (atomic_files), not even the folder
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return path


def _show(ax, image):
    """Draw one (h, w, 1) grey or (h, w, 3) RGB image, without ticks."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image shaped (height, width, 1 or 3), got {image.shape}")
    if image.shape[-1] == 1:
        # vmin/vmax fixed so that a faint reconstruction looks faint instead of being
        # stretched to full contrast.
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        # imshow clips RGB floats itself, but warns on every image a decoder overshoots.
        ax.imshow(np.clip(image, 0.0, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])


def _fit(text, inches, fontsize):
    """(text wrapped onto at most two lines, font size) that fit `inches` of width, shrinking the
    font down to 6 pt first, so that a long class name never runs into its neighbour's."""
    text = "" if text is None else str(text).strip()
    if not text:
        return "", fontsize
    room = 0.95 * 72 * inches  # points, less a margin so that neighbours never touch

    def points(line, size):  # the width the line takes when drawn in the default font
        return TextPath((0, 0), line, size=size).get_extents().width

    for size in range(fontsize, 5, -1):
        characters = max(1, int(room * len(text) / points(text, size)))
        lines = textwrap.wrap(text, characters, break_long_words=False)
        if len(lines) <= 2 and all(points(line, size) <= room for line in lines):
            return "\n".join(lines), size
    return "\n".join(textwrap.wrap(text, characters)), size  # still too long: break words too


def _panels(rows, row_names, path, titles=None, suptitle=None, panel_inches=1.15, fontsize=10):
    """Rows of equally sized images, each row named on its left and each panel optionally
    titled. Every panel is placed in inches from the image shape, so that panels sit a thin gap
    apart whatever the height/width ratio and the captions have room above their row."""
    n_rows, n_columns = len(rows), len(rows[0])
    h, w = np.shape(rows[0][0])[:2]
    # The shorter side gets panel_inches, so captions and row names keep their room whatever the
    # shape; the longer side at most twice that, so a very long image does not make a huge figure.
    inches_per_pixel = min(panel_inches / min(h, w), 2 * panel_inches / max(h, w))
    width, height = w * inches_per_pixel, h * inches_per_pixel
    # One font size for all row names, the largest at which the longest fits beside its row.
    names = [_fit(name, height, fontsize) for name in row_names]
    names = [_fit(name, height, min(size for _, size in names)) for name in row_names]
    titles = [[_fit(text, width, fontsize) for text in row] for row in (titles or [[]] * n_rows)]
    # Room for each row's titles: its tallest caption, in lines of its own font size, plus pad.
    above = [max([(text.count("\n") + 1) * size * 1.3 / 72 + 0.1 for text, size in row if text],
                 default=0.0) for row in titles]
    gap = 0.06
    between = gap + max(above[1:], default=0.0)
    top = (0.4 if suptitle else 0.05) + above[0]
    fig_width = n_columns * width + (n_columns - 1) * gap
    fig_height = top + n_rows * height + (n_rows - 1) * between
    fig = plt.figure(figsize=(fig_width, fig_height))
    for r, images in enumerate(rows):
        bottom = fig_height - top - r * (height + between) - height
        for c, image in enumerate(images):
            ax = fig.add_axes((c * (width + gap) / fig_width, bottom / fig_height,
                               width / fig_width, height / fig_height))
            _show(ax, image)
            if c < len(titles[r]) and titles[r][c][0]:
                ax.set_title(titles[r][c][0], fontsize=titles[r][c][1], pad=4)
            if c == 0:
                ax.set_ylabel(names[r][0], fontsize=names[r][1])
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 1, y=1 - 0.08 / fig_height, va="top")
    return _save(fig, path)


def _image_grid(images, rows, columns):
    """(rows * columns, h, w, c) images -> one (rows * h, columns * w, c) mosaic, filled row by
    row: image r * columns + c lands in block (r, c)."""
    images = np.asarray(images)
    n, h, w, channels = images.shape
    if n != rows * columns:
        raise ValueError(f"a {rows}x{columns} grid needs {rows * columns} images, got {n}")
    grid = images.reshape(rows, columns, h, w, channels)
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, channels)
