"""Training batches of uint8 images, and the conversions between uint8 images and the generators' tensors.

The generators work on float (B, C, H, W) tensors in [-1, 1] (:func:`to_signed_tensor`, :func:`to_uint8`);
:class:`RowSource` draws seeded batches of rows of an (N, H, W, C) uint8 array, reading a window at a time
when the rows do not fit in memory.
"""
from __future__ import annotations

import numpy as np
import torch

from cci_core.common.memory import memory_budget_bytes


def take_rows(images, rows: np.ndarray) -> np.ndarray:
    """``images[rows]`` of a numpy or zarr array (zarr: one orthogonal selection)."""
    if isinstance(images, np.ndarray):
        return images[rows]
    return np.asarray(images.get_orthogonal_selection((rows,)))


class RowSource:
    """Uniform random batches (with replacement) of rows of an (N, H, W, C) uint8 array.

    Rows fitting in ``max_bytes`` (default: the memory budget, ``$CCI_MEMORY_BUDGET_MB``) are
    read once; otherwise a contiguous window of the (sorted) rows is read and sampled from for
    ``window // batch_size`` steps, then the next window is chosen from ``(seed, window number)``,
    so resuming needs no extra state.
    """

    def __init__(self, images, rows=None, n_rows: int | None = None, labels=None,
                 batch_size: int = 64, max_bytes: int | None = None, seed: int = 0):
        if images.ndim != 4 or np.dtype(images.dtype) != np.uint8:
            raise ValueError(f"images must be uint8 with shape (N, H, W, C); got {images.dtype} "
                             f"{tuple(images.shape)}")
        n_total = images.shape[0] if n_rows is None else int(n_rows)
        if not 0 < n_total <= images.shape[0]:
            raise ValueError(f"n_rows={n_rows} must be in 1..{images.shape[0]} (the array's length)")
        rows = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
        if rows.size == 0:
            raise ValueError("rows is empty: there is nothing to train on")
        if rows.min() < 0 or rows.max() >= n_total:
            raise ValueError(f"rows must lie in [0, {n_total}) (the committed rows); "
                             f"got min {rows.min()}, max {rows.max()}")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64).ravel()
            if labels.shape != rows.shape:
                raise ValueError(f"labels has {labels.size} entries but there are {rows.size} rows; "
                                 "give one cluster id per training row")
        order = np.argsort(rows, kind="stable")
        self.images, self.rows = images, rows[order]
        self.labels = None if labels is None else labels[order]
        self.seed = seed
        row_bytes = int(np.prod(images.shape[1:]))
        max_bytes = memory_budget_bytes() if max_bytes is None else max_bytes
        self.window = int(min(self.rows.size, max(batch_size, max_bytes // row_bytes)))
        self.refresh_every = max(1, self.window // batch_size)
        self._window_id = None
        if self.window == self.rows.size:
            self._load(0)

    def __len__(self) -> int:
        return int(self.rows.size)

    def _load(self, start: int) -> None:
        sel = slice(start, start + self.window)
        self.cache = take_rows(self.images, self.rows[sel])
        self.cache_labels = None if self.labels is None else self.labels[sel]

    def batch(self, batch_size: int, gen: torch.Generator, step: int):
        """Return (uint8 images (B, H, W, C), labels (B,) or None) for training step ``step``."""
        if self.window < self.rows.size:
            wid = step // self.refresh_every
            if wid != self._window_id:
                rng = np.random.default_rng((self.seed, wid))
                self._load(int(rng.integers(0, self.rows.size - self.window + 1)))
                self._window_id = wid
        idx = torch.randint(len(self.cache), (batch_size,), generator=gen).numpy()
        return self.cache[idx], None if self.cache_labels is None else self.cache_labels[idx]


def to_signed_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1] on ``device`` (the generators' range; compare
    :func:`cci_core.common.torch_data.to_tensor`, which gives [0, 1])."""
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # e.g. a slice of a read-only IDX buffer
        batch = batch.copy()
    x = torch.from_numpy(batch).to(device)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) numpy."""
    x = ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
