"""Using a trained generator: load it (or the discriminator of its latest checkpoint) and draw images.

``generator.{safetensors,json}`` and the checkpoints are what :func:`cci_core.generate.training_loop.train_generator`
writes; the same seed draws the same images whatever the batch size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cci_core.common.device import pick_device
from cci_core.common.finite import check_weights
from cci_core.generate.gan import Discriminator, GANConfig, Generator
from cci_core.generate.image_batches import to_uint8
from cci_core.generate.training_loop import checkpoint_dirs
from cci_core.generate.vae import VAE, VAEConfig
from cci_core.store import fs
from cci_core.store.record_check import build_config
from cci_core.store.weights import MODEL_STATE_FIELDS, WEIGHTS_FIX, load_weights


def _load_state(model: nn.Module, tensors: dict, path: Path) -> None:
    """load_state_dict with an error that names the file and what to do."""
    check_weights(tensors, path)  # NaN weights would make NaN images, cast to garbage pixels
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match the {type(model).__name__} this version builds (its "
                         f"weights were written by an older version or another configuration); train "
                         f"the model again, e.g. `cci train RUN`. Details: {str(exc).splitlines()[0]}") from None


def load_generator(directory: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Load ``generator.{safetensors,json}`` written by :func:`train_generator` (eval mode)."""
    device = pick_device(str(device) if device is not None else None)
    tensors, info = load_weights(directory, "generator", fields=MODEL_STATE_FIELDS)
    config = fs.as_path(directory) / "generator.json"
    if info.get("kind") == "gan":
        model = Generator(build_config(GANConfig, info["model"], config, WEIGHTS_FIX, "model."))
    elif info.get("kind") == "vae":
        model = VAE(build_config(VAEConfig, info["model"], config, WEIGHTS_FIX, "model."))
    else:
        raise ValueError(f"{directory}/generator.json has kind={info.get('kind')!r}; expected 'gan' or 'vae'")
    _load_state(model, tensors, fs.as_path(directory) / "generator.safetensors")
    return model.to(device).eval()


def load_discriminator(out_dir: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """The discriminator of the latest checkpoint in ``out_dir`` (eval mode), e.g. for
    ``D.features(x)`` when re-clustering real images between training phases."""
    ckpts = checkpoint_dirs(out_dir)
    if not ckpts:
        raise FileNotFoundError(f"no checkpoint in {out_dir}/checkpoints; train first")
    tensors, info = load_weights(ckpts[-1], "state", fields=MODEL_STATE_FIELDS)
    if info["kind"] != "gan":
        raise ValueError(f"{ckpts[-1]} holds a {info['kind']}, which has no discriminator")
    D = Discriminator(build_config(GANConfig, info["model"], ckpts[-1] / "state.json", WEIGHTS_FIX, "model."))
    _load_state(D, {k[2:]: v for k, v in tensors.items() if k.startswith("D.")}, ckpts[-1] / "state.safetensors")
    return D.to(pick_device(str(device) if device is not None else None)).eval()


@torch.no_grad()
def generate(generator: nn.Module, n: int, labels=None, seed: int = 0,
             batch_size: int = 256) -> np.ndarray:
    """Draw ``n`` images from a Generator or VAE.

    Parameters
    ----------
    labels : int array (n,), cluster ids — required for a conditional generator.

    Returns
    -------
    ndarray of shape (n, H, W, C), uint8
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    cfg = generator.cfg
    n_classes = getattr(cfg, "n_classes", 0)
    if n_classes and labels is None:
        raise ValueError(f"this generator is conditional (n_classes={n_classes}); pass labels, n cluster ids")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if labels.shape != (n,):
            raise ValueError(f"labels has {labels.size} entries; expected n={n}")
        if not n_classes:
            raise ValueError("labels were given to an unconditional generator; pass labels=None")
        if n and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}); got {labels.min()}..{labels.max()}")
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    rng = np.random.default_rng(seed)  # numpy draws the same stream whatever the batch size
    out = np.empty((n, cfg.image_size, cfg.image_size, cfg.channels), np.uint8)
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        z = torch.from_numpy(rng.standard_normal((m, cfg.z_dim), dtype=np.float32)).to(device)
        if isinstance(generator, VAE):
            x = generator.decode(z)
        else:
            y = None if labels is None else torch.from_numpy(labels[i:i + m]).to(device)
            x = generator(z, y)
        out[i:i + m] = to_uint8(x)
    generator.train(was_training)
    return out
