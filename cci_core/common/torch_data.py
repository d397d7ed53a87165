"""Torch data over a corpus images array (Zarr or numpy, N x H x W x C uint8), plus
plain-torch augmentation.

Rows are read in batches: contiguous slices for full passes, sorted index reads for
random batches. A corpus whose rows fit the memory budget (``$CCI_MEMORY_BUDGET_MB``, see
:mod:`cci_core.common.memory`) is read into memory once, which is much faster than
decompressing a Zarr chunk for every random batch; a larger one never is.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cci_core.common.memory import memory_budget_bytes


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) or (B, H, W) -> float32 (B, C, H, W) in [0, 1]."""
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[..., None]
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)


class CorpusImages(Dataset):
    """The first ``n_rows`` images of a corpus as a torch Dataset.

    Parameters
    ----------
    images : zarr.Array or ndarray of shape (N, H, W, C) (or (N, H, W)), uint8
    n_rows : committed rows to use (rows beyond it are ignored); default all
    cache_bytes : read everything into memory when the rows take at most this many bytes;
        default: the memory budget (``$CCI_MEMORY_BUDGET_MB``, 2 GiB unless set)

    ``ds[i]`` -> (float tensor (C, H, W) in [0, 1], i); ``ds.batch(rows)`` reads many
    rows at once, ``ds.iter_batches(batch_size)`` walks all rows in order.
    """

    def __init__(self, images, n_rows: int | None = None,
                 cache_bytes: int | None = None):
        if images.ndim not in (3, 4):
            raise ValueError(f"images must have shape (N, H, W, C) or (N, H, W), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}; store the corpus as uint8")
        n_rows = images.shape[0] if n_rows is None else int(n_rows)
        if not 0 < n_rows <= images.shape[0]:
            raise ValueError(f"n_rows={n_rows} must be in 1..{images.shape[0]} (the array's rows)")
        self.images, self.n_rows = images, n_rows
        self.shape = (images.shape[3] if images.ndim == 4 else 1, images.shape[1], images.shape[2])
        self._cache = None
        cache_bytes = memory_budget_bytes() if cache_bytes is None else cache_bytes
        self.row_bytes = int(np.prod(images.shape[1:]))
        if n_rows * self.row_bytes <= cache_bytes:
            self._cache = np.asarray(images[:n_rows])

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, i: int):
        return self.batch(np.array([i]))[0], int(i)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._cache is not None:
            return self._cache[rows]
        if isinstance(self.images, np.ndarray):
            return self.images[rows]
        order = np.argsort(rows)
        out = np.empty((len(rows),) + tuple(self.images.shape[1:]), np.uint8)
        out[order] = self.images.oindex[rows[order]]  # sorted reads touch each chunk once
        return out

    def batch(self, rows) -> torch.Tensor:
        """Rows (any order) -> float (B, C, H, W) in [0, 1]."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise ValueError(f"row index outside 0..{self.n_rows - 1}")
        return to_tensor(self._read(rows))

    def flat_features(self, block_rows: int | None = None):
        """All rows as flat float32 features in [0, 1], shape (N, C*H*W), in the order of
        :meth:`batch` (channel, row, column): a lazy Dask array whose blocks are read one at a
        time when computed, so the corpus is never held whole. Blocks of ``block_rows`` rows
        (default 16,384, fewer when their floats would not fit the memory budget)."""
        import dask
        import dask.array as da
        d = int(np.prod(self.shape))
        if block_rows is None:
            block_rows = max(1, min(16384, memory_budget_bytes() // (4 * d)))

        def block(start: int, stop: int) -> np.ndarray:
            src = self._cache if self._cache is not None else self.images
            return to_tensor(np.asarray(src[start:stop])).reshape(stop - start, d).numpy()
        starts = range(0, self.n_rows, block_rows)
        return da.concatenate([da.from_delayed(dask.delayed(block)(a, min(a + block_rows, self.n_rows)),
                                               (min(a + block_rows, self.n_rows) - a, d), np.float32)
                               for a in starts])

    def iter_batches(self, batch_size: int = 1024) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start row, float batch) over all rows in order, one slice at a time."""
        for start in range(0, self.n_rows, batch_size):
            stop = min(start + batch_size, self.n_rows)
            src = self._cache if self._cache is not None else self.images
            yield start, to_tensor(np.asarray(src[start:stop]))


def augment(x: torch.Tensor, generator: torch.Generator, shift: float = 0.12,
            scale: tuple[float, float] = (0.85, 1.15), flip: bool = True,
            erase: float = 0.0) -> torch.Tensor:
    """Random affine crop (shift + zoom), horizontal flip and optional square erasing.

    Parameters
    ----------
    x : float (B, C, H, W) in [0, 1], on any device
    generator : CPU torch.Generator, so the draws are the same on every device
    shift : largest shift as a fraction of the image side
    scale : zoom range (>1 zooms out); a zoom-in is a random crop resized back
    flip : flip half the images left-right
    erase : side of a zeroed square as a fraction of the image's shorter side (0 = off)
    """
    b, _, h, w = x.shape
    u = lambda lo, hi: torch.empty(b).uniform_(lo, hi, generator=generator)
    s = u(*scale)
    sx = s * torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else s
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, s
    theta[:, 0, 2], theta[:, 1, 2] = 2 * u(-shift, shift), 2 * u(-shift, shift)
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    if erase > 0:
        half = max(1, int(min(h, w) * erase)) / 2
        cy, cx = (torch.randint(0, n, (b,), generator=generator).to(x.device) for n in (h, w))
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        box = ((ys[None] - cy[:, None]).abs() < half)[:, :, None] & \
              ((xs[None] - cx[:, None]).abs() < half)[:, None, :]
        out = out.masked_fill(box[:, None], 0.0)
    return out
