"""Honest test-set numbers: the per-image negative ELBO and its summary, in nats.

Everything runs in large batches through the encoder and decoder (no per-image predict calls).
"""

import numpy as np
from keras import ops

from cvae import negative_elbo_terms

EVAL_BATCH_SIZE = 500


def per_image_negative_elbo(model, x, batch_size=EVAL_BATCH_SIZE):
    """(reconstruction, kl) per image, each (N,), from one z sample per image, in nats.

    The sum of the two is a single-sample, unbiased estimate of each image's negative ELBO.
    """
    reconstruction, kl = [], []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        outputs = model(batch, training=False)
        rec, k = negative_elbo_terms(batch, outputs["reconstruction"], outputs["z_mean"],
                                     outputs["z_log_var"])
        reconstruction.append(ops.convert_to_numpy(rec))
        kl.append(ops.convert_to_numpy(k))
    return np.concatenate(reconstruction), np.concatenate(kl)


def mean_and_standard_error(values):
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def summarize_negative_elbo(reconstruction, kl):
    """Mean and standard error of the negative ELBO and of its two terms, as a flat dict."""
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    kl = np.asarray(kl, dtype=np.float64)
    summary = {}
    for name, values in (("negative_elbo", reconstruction + kl),
                         ("reconstruction", reconstruction), ("kl", kl)):
        mean, standard_error = mean_and_standard_error(values)
        summary[f"test_{name}"] = mean
        summary[f"test_{name}_stderr"] = standard_error
    return summary
