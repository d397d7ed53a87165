"""Images (Zarr / numpy / Dask, N×H×W×C uint8) -> lazy float32 feature rows N×D in [0, 1]."""
from __future__ import annotations

import dask.array as da
import numpy as np

DEFAULT_CHUNK_ROWS = 16384
BLOCK_BYTES = 16 << 20  # uint8 pixels per block of image_features: a few Zarr chunks, read in one call


def lazy_images(images, n_rows: int | None = None, chunk_rows: int | None = None) -> da.Array:
    """The first ``n_rows`` committed images as a lazy Dask array, chunked along rows only.

    Parameters
    ----------
    images : zarr.Array, numpy array or dask array of shape (N, H, W[, C])
    n_rows : committed row count (rows beyond it are ignored); all rows when None
    chunk_rows : rows per block; defaults to the Zarr chunking (or 16,384)
    """
    if isinstance(images, da.Array):
        arr = images
    elif hasattr(images, "chunks") and hasattr(images, "store"):  # zarr.Array
        whole = chunk_rows and chunk_rows % images.chunks[0] == 0  # whole chunks: read a block in one call
        arr = da.from_zarr(images, chunks=(chunk_rows,) + tuple(images.shape[1:]) if whole else None)
    else:
        images = np.asarray(images)
        arr = da.from_array(images, chunks=(min(len(images) or 1, chunk_rows or DEFAULT_CHUNK_ROWS),)
                            + images.shape[1:])
    if arr.ndim < 2:
        raise ValueError(f"images must have shape (N, H, W[, C]), got {arr.shape}")
    total = arr.shape[0]
    n = total if n_rows is None else int(n_rows)
    if not 0 <= n <= total:
        raise ValueError(f"n_rows={n_rows} is outside the array's {total} rows")
    arr = arr[:n]
    row_chunks = max(1, chunk_rows or (arr.chunks[0][0] if arr.chunks[0] else 1))
    return arr.rechunk((row_chunks,) + tuple(-1 for _ in arr.shape[1:]))


def _scale(block: np.ndarray) -> np.ndarray:
    out = block.reshape(block.shape[0], -1).astype(np.float32)
    if block.dtype == np.uint8:
        out *= np.float32(1.0 / 255.0)
    return out


def image_features(images, n_rows: int | None = None, chunk_rows: int | None = None) -> da.Array:
    """Flattened, scaled features, lazily: shape (n_rows, H*W*C) float32.

    uint8 pixels are divided by 255; float images are taken as they are.
    Nothing is read until the result is computed; each block is scaled on its own.
    A Zarr array is read, by default, in blocks of as many whole chunks as fit in
    ``BLOCK_BYTES`` (at least one): every block is a Dask task and a Zarr call, and a pass over a
    million 28x28 images in 4,096-row chunks was 245 of each.
    """
    if chunk_rows is None and hasattr(images, "chunks") and hasattr(images, "store") and images.ndim >= 2:
        per_chunk = images.chunks[0] * int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize
        chunk_rows = images.chunks[0] * max(1, BLOCK_BYTES // max(per_chunk, 1))
    arr = lazy_images(images, n_rows, chunk_rows)
    d = int(np.prod(arr.shape[1:]))
    return arr.map_blocks(_scale, chunks=(arr.chunks[0], (d,)),
                          drop_axis=list(range(2, arr.ndim)) if arr.ndim > 2 else None,
                          dtype=np.float32)
