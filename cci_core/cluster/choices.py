"""The choices a clustering run offers, without sklearn or Dask: the request checks
(:mod:`cci_core.cluster.records`, the CLI) and the algorithms read the same definitions."""
from __future__ import annotations

ALGORITHMS = ("kmeans", "gmm", "dbscan", "hdbscan", "agglomerative")
SOLVERS = ("auto", "cov", "randomized", "full", "tsqr")  # PCA solvers (cci_core.cluster.pca)
# ``auto``: ``cov`` up to this many pixel values per image (64x64 grey), ``randomized`` above (the D x D
# covariance of a 100x60 RGB image, D = 18,000, is 2.6 GB and its eigh did not end in 10 minutes)
AUTO_COV_MAX_D = 4096
# Rows the PCA is fitted on by default: the top components of a larger corpus barely move with more
# rows, while the covariance pass (D x D per row) was most of a million-image clustering's time.
PCA_FIT_ROWS = 262_144


def parse_k_range(text: str) -> list[int]:
    """``"a:b"`` (inclusive) or ``"a:b:step"`` -> list of k; a single ``"k"`` -> [k]."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        raise ValueError(f"k must look like 10 or 5:15 or 4:40:4, got {text!r}") from None
    if len(parts) == 1:
        ks = parts
    elif len(parts) in (2, 3):
        step = parts[2] if len(parts) == 3 else 1
        if step < 1 or parts[1] < parts[0]:
            raise ValueError(f"k range {text!r} is empty; write low:high with low <= high")
        ks = list(range(parts[0], parts[1] + 1, step))
    else:
        raise ValueError(f"k must look like 10 or 5:15 or 4:40:4, got {text!r}")
    if min(ks) < 2:
        raise ValueError(f"every k must be >= 2, got {text!r}")
    return ks
