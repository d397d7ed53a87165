"""A fitted model on disk without pickle: ``<name>.safetensors`` (arrays) beside ``<name>.json`` (the rest).

Used by :class:`~cci_core.cluster.pca.PCA`, :class:`~cci_core.cluster.kmeans.MiniBatchKMeans` and
the clustering model of a run (:mod:`cci_core.cluster.clustering_model`). The folder may be local or
in a store on an object store (:mod:`cci_core.store.fs`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load, load_file, save, save_file

from cci_core.common.finite import check_weights
from cci_core.store import fs
from cci_core.store.record_check import read_record, read_tensors

MODEL_FIX = "restore the run folder from a backup, or cluster again into a new run"


def save_numpy_tensors(path, arrays: dict[str, np.ndarray]) -> Path:
    """Write numpy arrays as one safetensors file, locally or as one object; returns the path."""
    path = fs.as_path(path)
    if fs.is_local(path):
        save_file(arrays, str(path))
    else:
        fs.write_bytes(path, save(arrays))
    return path


def load_numpy_tensors(path) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file written by :func:`save_numpy_tensors`."""
    path = fs.as_path(path)
    return load_file(str(path)) if fs.is_local(path) else load(path.read_bytes())


def save_arrays(directory: str | os.PathLike, name: str, arrays: dict[str, np.ndarray], meta: dict,
                indent: int | None = 2) -> Path:
    """Write ``arrays`` (each made C-contiguous, dtype kept) and ``meta`` (JSON); returns the ``.safetensors`` path."""
    directory = fs.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = save_numpy_tensors(directory / f"{name}.safetensors",
                              {k: np.ascontiguousarray(v) for k, v in arrays.items()})
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=indent))
    return path


def load_arrays(directory: str | os.PathLike, name: str, what: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the JSON written by :func:`save_arrays`.

    what : the model's name in the error when a file is missing (``no saved <what> '<name>' in <dir>``)
    """
    directory = fs.as_path(directory)
    path, meta_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"no saved {what} '{name}' in {directory}")
    arrays = read_tensors(path, MODEL_FIX, loader=load_numpy_tensors)
    check_weights(arrays, path)  # a damaged PCA or model: NaN projections, then NaN confidences
    return arrays, read_record(meta_path, MODEL_FIX)
