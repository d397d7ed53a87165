"""Numbers from a model must be numbers: NaN or infinite weights, confidences, embeddings or
metrics are an error that names the model's weight file, never output.

Damaged weights (a flipped exponent bit, a diverged training saved as it was) make every
prediction NaN; a softmax of NaN has no top class, a mean confidence of NaN prints as ``nan``,
and a threshold compared with NaN silently rejects everything. These checks stop that where
the numbers are made.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FIX = ("the model is damaged or its training diverged: run `cci store verify`, restore the file from a backup, "
       "or train the model again")


class NonFiniteError(ValueError):
    """A model gave (or holds) NaN or infinite numbers; the message names its weight file."""


def _count_bad(values: Any) -> tuple[int, int]:
    """(non-finite entries, all entries) of an array or a torch tensor (integers are always finite)."""
    if hasattr(values, "detach"):  # a torch tensor: checked where it lives, without a copy to numpy
        import torch
        if not torch.is_floating_point(values):
            return 0, values.numel()
        return int((~torch.isfinite(values)).sum()), values.numel()
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.floating):
        return 0, arr.size
    return int((~np.isfinite(arr)).sum()), arr.size


def check_weights(tensors: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights (a state dict or a dict of arrays) with a NaN or an infinite value.

    Raises :class:`NonFiniteError` naming ``path`` and the first bad tensor.
    """
    for name, t in tensors.items():
        bad, total = _count_bad(t)
        if bad:
            raise NonFiniteError(f"weight file {path}: tensor {name!r} holds {bad:,} NaN or infinite values "
                                 f"(of {total:,}); {FIX}")


def check_values(values: Any, what: str, model: str | Path) -> Any:
    """Return ``values`` when every entry is finite; else raise :class:`NonFiniteError` naming
    ``what`` (``confidences``, ``embeddings``, ``metric fid``) and the ``model`` file that made them."""
    bad, total = _count_bad(values)
    if bad:
        raise NonFiniteError(f"{what} from model {model} are NaN or infinite ({bad:,} of {total:,}); {FIX}")
    return values


def check_metrics(metrics: Mapping[str, Any], model: str | Path, prefix: str = "") -> None:
    """Refuse a (nested) dict of metrics with a NaN or infinite number (None is allowed: not measured)."""
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            check_metrics(value, model, f"{name}.")
        elif isinstance(value, (float, np.floating)) and not np.isfinite(value):
            raise NonFiniteError(f"metric {name} of model {model} is {value}; {FIX}")
