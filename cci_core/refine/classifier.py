"""The CCI classifier on disk: per-round checkpoints of a refinement, the kept classifier and its loader.

A round ``r`` writes ``round-NN/`` (student and EMA-teacher weights, labels, embedding,
probabilities, history) and then ``round-NN/_DONE``; the kept round's teacher is written as
``classifier.*`` (safetensors + JSON, no pickle) beside ``labels.npy``, ``metrics.json`` and
``curves.png``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cci_core.common.device import pick_device
from cci_core.common.finite import check_weights
from cci_core.refine.cnn import CNN, CNNConfig, upgrade_record
from cci_core.refine.config import RefineConfig
from cci_core.store import fs
from cci_core.store.record_check import build_config
from cci_core.store.weights import WEIGHTS_FIX, load_weights, save_weights


def round_dir(out_dir: Path, r: int) -> Path:
    """The checkpoint folder of round ``r``."""
    return out_dir / f"round-{r:02d}"


def save_round(out_dir: Path, r: int, model: CNN, teacher: CNN, state: dict,
               history: list, cfg: RefineConfig) -> None:
    """Checkpoint round ``r`` (``state``: its labels, embedding ``Z`` and probabilities ``P``); ``_DONE`` last."""
    d = round_dir(out_dir, r)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"cnn": asdict(model.config), "refine": asdict(cfg)}
    save_weights(d, model.state_dict(), meta, name="student")
    save_weights(d, teacher.state_dict(), meta, name="classifier")
    fs.save_npy(d / "labels.npy", state["labels"].astype(np.int32))
    fs.save_npy(d / "embedding.npy", state["Z"].astype(np.float32))
    fs.save_npy(d / "probs.npy", state["P"].astype(np.float32))
    (d / "history.json").write_text(json.dumps(history, indent=2))
    (d / "_DONE").write_text("")


def last_done_round(out_dir: Path) -> int:
    """The last round with a ``_DONE`` marker (-1 when none)."""
    done = [int(p.parent.name.split("-")[1]) for p in out_dir.glob("round-*/_DONE")]
    return max(done) if done else -1


def load_classifier(directory: str | Path, device=None) -> CNN:
    """Load a classifier written by :func:`cci_core.refine.refine.refine` (safetensors + JSON, no pickle)."""
    tensors, meta = load_weights(directory, name="classifier", fields={"cnn": dict})
    check_weights(tensors, fs.as_path(directory) / "classifier.safetensors")  # NaN weights: NaN confidences
    # as CNNConfig.from_dict: an older square image_size is read as the shape, other versions' keys are left out
    model = CNN(build_config(CNNConfig, upgrade_record(meta["cnn"]), fs.as_path(directory) / "classifier.json",
                             WEIGHTS_FIX, "cnn.", ignore_unknown=True))
    model.load_state_dict(tensors)
    return model.to(pick_device(device)).eval()


def write_artifacts(out: Path, teacher: CNN, labels: np.ndarray, history: list, chosen: int,
                    cfg: RefineConfig) -> None:
    """The kept round's classifier, its labels, the per-round metrics and their curves."""
    save_weights(out, teacher.state_dict(), {"cnn": asdict(teacher.config), "refine": asdict(cfg)},
                 name="classifier")
    fs.save_npy(out / "labels.npy", labels.astype(np.int32))
    (out / "metrics.json").write_text(json.dumps(
        {"chosen_round": chosen, "rounds": history}, indent=2))
    try:
        from cci_core.refine.refine_pictures import plot_rounds
        plot_rounds(history, out / "curves.png")
    except ImportError:
        pass
