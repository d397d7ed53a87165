"""Assign images to clusters: with the trained classifier (cluster + softmax confidence)
or with centroids in a feature space (cluster + distance-margin confidence), in batches."""
from __future__ import annotations

import numpy as np
import torch

from cci_core.common.device import use_amp
from cci_core.common.torch_data import CorpusImages
from cci_core.refine.cnn import CNN


@torch.no_grad()
def assign_classifier(model: CNN, images, n_rows: int | None = None,
                      batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Label images with the classifier.

    Parameters
    ----------
    model : a trained CNN (e.g. from ``refine.classifier.load_classifier``), on its device
    images : zarr.Array or ndarray (N, H, W, C) uint8 matching the model's input shape
    n_rows : rows to label (None = all)

    Returns
    -------
    labels (n_rows,) int32, confidence (n_rows,) float32 = the top softmax probability
    """
    data = CorpusImages(images, n_rows)
    cfg = model.config
    if data.shape != (cfg.in_channels, cfg.image_height, cfg.image_width):
        raise ValueError(f"images are {data.shape} (C, H, W) but the classifier expects "
                         f"{(cfg.in_channels, cfg.image_height, cfg.image_width)}; resize them first")
    device = next(model.parameters()).device
    model.eval()
    labels, conf = [], []
    for _, x in data.iter_batches(batch_size):
        with torch.autocast(device.type, enabled=use_amp(device)):
            p = torch.softmax(model(x.to(device)).float(), 1)
        c, lab = p.max(1)
        labels.append(lab.cpu())
        conf.append(c.cpu())
    return torch.cat(labels).numpy().astype(np.int32), torch.cat(conf).numpy()


def assign_centroids(features, centers, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Label feature rows with their nearest centre.

    Parameters
    ----------
    features : (N, D) array (numpy, or anything sliceable into numpy, e.g. zarr / dask)
    centers : (k, D) array

    Returns
    -------
    labels (N,) int32, confidence (N,) float32 = 1 - d1 / d2, the margin between the
    nearest and second-nearest centre distances (0 = on the boundary, 1 = on the centre)
    """
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or len(centers) < 2:
        raise ValueError(f"centers must have shape (k >= 2, D), got {centers.shape}")
    if features.ndim != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(f"features must have shape (N, {centers.shape[1]}), got {features.shape}")
    c_sq = (centers ** 2).sum(1)
    labels, conf = [], []
    for start in range(0, features.shape[0], batch_size):
        x = np.asarray(features[start:start + batch_size], dtype=np.float64)
        d2 = np.maximum((x ** 2).sum(1)[:, None] - 2 * x @ centers.T + c_sq[None], 0)
        two = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])
        labels.append(d2.argmin(1).astype(np.int32))
        conf.append((1 - two[:, 0] / np.maximum(two[:, 1], 1e-12)).astype(np.float32))
    return np.concatenate(labels), np.concatenate(conf)
