"""Pick the torch device at run time: CUDA when present, else CPU."""
from __future__ import annotations

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``prefer`` if given, else ``cuda`` when available, else ``cpu``."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_amp(device: torch.device) -> bool:
    """Mixed precision only on CUDA."""
    return device.type == "cuda"
