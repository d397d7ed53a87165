"""Save and load torch module weights as safetensors + a JSON config (never pickle), in a local
folder or a folder of a store on an object store."""
from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from cci_core.store import fs
from cci_core.store.fs import AnyPath
from cci_core.store.record_check import read_record, read_tensors
from cci_core.store.store import atomic_write_bytes

WEIGHTS_FIX = "restore the model folder from a backup, or train the model again into a new run"
# the typed shape of a generator's config and of a training checkpoint's (checked once when loaded)
MODEL_STATE_FIELDS = {"kind": str, "model": dict}


def save_weights(directory: str | Path, tensors: dict[str, torch.Tensor], config: Any,
                 name: str = "model") -> AnyPath:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``directory`` atomically.

    ``tensors`` is usually ``module.state_dict()``; ``config`` is a dataclass or a
    JSON-serialisable dict. Returns the safetensors path.
    """
    directory = fs.makedirs(directory)
    weights = fs.save_tensors(directory / f"{name}.safetensors",
                              {k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    cfg = asdict(config) if is_dataclass(config) else dict(config)
    atomic_write_bytes(directory / f"{name}.json", json.dumps(cfg, indent=2, sort_keys=True).encode())
    return weights


def load_weights(directory: str | Path, name: str = "model",
                 device: str | torch.device = "cpu", fields: dict[str, type] | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read the tensors and the JSON config written by :func:`save_weights`; ``fields``: the config's
    required fields and their types (a missing or mistyped one is a RecordError naming the file)."""
    directory = fs.as_path(directory)
    weights = directory / f"{name}.safetensors"
    config = directory / f"{name}.json"
    if not weights.exists() or not config.exists():
        raise FileNotFoundError(f"no saved weights '{name}' in {directory} "
                                f"(expected {weights.name} and {config.name})")
    # the config first: it is small, and a damaged one says more than the tensors' error
    info = read_record(config, WEIGHTS_FIX, fields or {})
    return read_tensors(weights, WEIGHTS_FIX, device=str(device)), info
