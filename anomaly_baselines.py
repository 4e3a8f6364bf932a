"""The two simple anomaly detectors that every inspection result is reported beside, so that a
user sees at once whether the VAE earns its keep on their images:

- PCA residual: what the top principal components of the normal training images cannot
  explain, pixel by pixel (a linear autoencoder, fitted in closed form);
- nearest neighbour: the difference to the closest normal training image (a memory, no model).

Both give a per-pixel map, the squared residual summed over the channels, which anomaly.py
turns into an image score and a smoothed pixel map exactly as it does the VAE's own map.
NumPy only (patches.py cuts the images for PatchWise): fitted on the training images, never on
the held-out or the test ones.
"""

import dataclasses

import numpy as np

PCA_COMPONENTS = 32  # as many components as the baselines of issue 31 used
DISTANCE_CHUNK = 256  # images whose distances to every training image are computed at once


def _flat(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


@dataclasses.dataclass
class PCAResidual:
    """The mean (D,) and the top principal components (k, D, orthonormal rows) of the normal
    training images."""
    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, x_train, k=PCA_COMPONENTS):
        """At most k components, fewer when there are fewer images (a thin SVD of the centred
        images, exact)."""
        x = _flat(x_train)
        mean = x.mean(axis=0)
        k = max(1, min(k, len(x) - 1, x.shape[1] - 1))
        _, _, components = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, components[:k])

    def maps(self, x):
        """(N, height, width): each image's squared residual after projection onto the
        components, summed over the channels."""
        centred = _flat(x) - self.mean
        residual = centred - (centred @ self.components.T) @ self.components
        return (residual ** 2).reshape(np.shape(x)).sum(axis=-1)


@dataclasses.dataclass
class NearestNeighbour:
    """The normal training images themselves; an image's map is its squared difference to the
    closest of them in L2 distance."""
    train: np.ndarray

    @classmethod
    def fit(cls, x_train):
        return cls(np.asarray(x_train, dtype=np.float64))

    def nearest(self, x):
        """The index of each image's nearest training image."""
        train = _flat(self.train)
        train_norms = np.einsum("ij,ij->i", train, train)
        flat = _flat(x)
        nearest = np.empty(len(flat), dtype=np.int64)
        for start in range(0, len(flat), DISTANCE_CHUNK):
            chunk = flat[start:start + DISTANCE_CHUNK]
            # |x - t|^2 = |x|^2 - 2 x.t + |t|^2, and |x|^2 is the same along a row.
            distances = train_norms[None, :] - 2 * chunk @ train.T
            nearest[start:start + len(chunk)] = distances.argmin(axis=1)
        return nearest

    def maps(self, x):
        """(N, height, width): each image's squared difference to its nearest training image,
        summed over the channels (a training image's map is 0)."""
        x = np.asarray(x, dtype=np.float64)
        return ((x - self.train[self.nearest(x)]) ** 2).sum(axis=-1)


@dataclasses.dataclass
class PatchWise:
    """A baseline fitted on the training images' patches (patches.py) and applied patch by
    patch, its maps averaged where the patches overlap: what a model of patches is compared
    with."""
    baseline: object
    size: int

    def maps(self, x):
        from keras import ops

        from patches import average_patch_maps, cut_into_patches

        patch_maps = self.baseline.maps(ops.convert_to_numpy(cut_into_patches(x, self.size)))
        return ops.convert_to_numpy(average_patch_maps(patch_maps, np.shape(x)[1:3]))


def fit_baselines(x_train, patch_size=None):
    """{name: fitted baseline} on the normal training images; with patch_size, the same two
    fitted on their patches as well."""
    pca = PCAResidual.fit(x_train)
    baselines = {f"pca_residual_{len(pca.components)}": pca,
                 "nearest_neighbour": NearestNeighbour.fit(x_train)}
    if patch_size is not None:
        from patches import patches_of_each_image

        patches = patches_of_each_image(x_train, patch_size)
        pca = PCAResidual.fit(patches)
        baselines.update({
            f"pca_residual_{len(pca.components)}_patches": PatchWise(pca, patch_size),
            "nearest_neighbour_patches": PatchWise(NearestNeighbour.fit(patches), patch_size)})
    return baselines
