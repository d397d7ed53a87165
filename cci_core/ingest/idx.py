"""Readers for MNIST-format IDX files (raw or gzip-compressed)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX type codes -> numpy dtypes (big-endian on disk).
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXFormatError(ValueError):
    """The file is not a valid IDX file."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read a whole IDX file (``.gz`` or raw) into a numpy array.

    Returns
    -------
    ndarray of shape given by the file header, e.g. (N, 28, 28) uint8 for images
    or (N,) uint8 for labels.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise IDXFormatError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IDXFormatError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise IDXFormatError(f"{path}: truncated IDX file ({len(data)} bytes, header says {expected})")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)
