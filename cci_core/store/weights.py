"""Save and load torch module weights as safetensors + a JSON config (never pickle)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_weights(directory: str | Path, tensors: dict[str, torch.Tensor], config: Any,
                 name: str = "model") -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``directory`` atomically.

    ``tensors`` is usually ``module.state_dict()``; ``config`` is a dataclass or a
    JSON-serialisable dict. Returns the safetensors path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.safetensors"
    tmp = weights.with_name(weights.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, weights)
    cfg = asdict(config) if is_dataclass(config) else dict(config)
    _atomic_write_text(directory / f"{name}.json", json.dumps(cfg, indent=2, sort_keys=True))
    return weights


def load_weights(directory: str | Path, name: str = "model",
                 device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read the tensors and the JSON config written by :func:`save_weights`."""
    directory = Path(directory)
    weights = directory / f"{name}.safetensors"
    config = directory / f"{name}.json"
    if not weights.exists() or not config.exists():
        raise FileNotFoundError(f"no saved weights '{name}' in {directory} "
                                f"(expected {weights.name} and {config.name})")
    return load_file(str(weights), device=str(device)), json.loads(config.read_text())
