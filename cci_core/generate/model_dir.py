"""The folder of one trained generator, as :func:`cci_core.generate.training_loop.train_generator` writes it::

    out_dir/checkpoints/step-0000500/state.{safetensors,json}
    out_dir/samples/step-0000500.png
    out_dir/generator.{safetensors,json}
    out_dir/loss.png

Finding things in it needs no torch, so a request is checked quickly.
"""
from __future__ import annotations

from pathlib import Path

from cci_core.store import fs
from cci_core.store.store import read_json


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (JSON written last), oldest first."""
    found = [p for p in (fs.as_path(out_dir) / "checkpoints").glob("step-*") if (p / "state.json").exists()
             and (p / "state.safetensors").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint_info(out_dir: str | Path) -> dict | None:
    """The JSON of the newest complete checkpoint (model config, train config, step), or None."""
    found = checkpoint_dirs(out_dir)
    return read_json(found[-1] / "state.json") if found else None


def last_sample(out_dir: str | Path) -> str | None:
    """The newest sample grid, if any."""
    grids = sorted((fs.as_path(out_dir) / "samples").glob("step-*.png"))
    return str(grids[-1]) if grids else None
