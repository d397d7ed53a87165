"""A fitted model on disk without pickle: ``<name>.safetensors`` (arrays) beside ``<name>.json`` (the rest).

Used by :class:`~cci_core.cluster.pca.PCA`, :class:`~cci_core.cluster.kmeans.MiniBatchKMeans` and
the clustering model of a run (:mod:`cci_core.cluster.clustering_model`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def save_arrays(directory: str | os.PathLike, name: str, arrays: dict[str, np.ndarray], meta: dict,
                indent: int | None = 2) -> Path:
    """Write ``arrays`` (each made C-contiguous, dtype kept) and ``meta`` (JSON); returns the ``.safetensors`` path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=indent))
    return path


def load_arrays(directory: str | os.PathLike, name: str, what: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the JSON written by :func:`save_arrays`.

    what : the model's name in the error when a file is missing (``no saved <what> '<name>' in <dir>``)
    """
    directory = Path(directory)
    path, meta_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"no saved {what} '{name}' in {directory}")
    return load_file(str(path)), json.loads(meta_path.read_text())
