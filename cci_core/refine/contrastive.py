"""Contrastive (SimCLR / NT-Xent) pre-training of the CCI CNN's trunk and embedding head.

Two strongly augmented views of every image in a batch (:mod:`cci_core.refine.augment`, whole
batch on the device) go through the CNN's ``features`` and a small projection head; the
NT-Xent loss pulls each image's two views together and pushes the other 2B - 2 views
away. The projection head is thrown away afterwards: the clusters are found in the
(unit-normalised) ``features``, which keep more of what separates the classes.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cci_core.common.device import use_amp
from cci_core.common.seeding import seeded
from cci_core.common.torch_data import CorpusImages
from cci_core.refine.augment import STRONG, AugmentConfig, random_view
from cci_core.refine.cnn import CNN
from cci_core.refine.train_steps import epoch_steps, optimizer_step, progress_line


class Projection(nn.Module):
    """MLP g(h) = W2 relu(BN(W1 h)) on the CNN's features; used only by the loss."""

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent loss of two views (B, D) each: row i of ``z1`` and row i of ``z2`` are the
    positive pair, every other row of both is a negative. Mean over the 2B anchors."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def contrastive_steps(epochs: float, n: int, batch_size: int, min_steps: int = 0) -> int:
    """Optimiser steps of :func:`pretrain_contrastive`: ``epochs`` over ``n`` images, at least ``min_steps``."""
    return max(min_steps, epoch_steps(epochs, n, batch_size))


def pretrain_contrastive(model: CNN, data: CorpusImages, epochs: float, *,
                         batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 1e-4,
                         temperature: float = 0.5, views: AugmentConfig = STRONG,
                         min_steps: int = 0, seed: int = 0, device=None,
                         log: Callable[[str], None] | None = None,
                         log_every: int = 50,
                         on_step: Callable[[int, int], None] | None = None) -> dict:
    """Train ``model``'s trunk and embedding head with NT-Xent on two views per image.

    ``epochs`` (may be fractional) times the corpus size images are drawn (each as two
    views), at least ``min_steps`` batches of them, in uniform random batches without
    replacement within an epoch; AdamW with a short linear warm-up and cosine decay. Every
    draw comes from ``seed`` (deterministic on CPU); AMP on CUDA only. The classification
    head is untouched. ``on_step(step, steps)``, when given, is called after every step.

    Returns
    -------
    dict: ``cl_steps``, ``cl_loss`` (mean of the last tenth of the steps),
    ``cl_seconds``, ``cl_images_per_s`` (images through forward + backward, both views)
    """
    device = device or next(model.parameters()).device
    with seeded(seed):
        proj = Projection(model.config.embed_dim).to(device)
    params = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    params += list(proj.parameters())
    n = len(data)
    steps = contrastive_steps(epochs, n, batch_size, min_steps)
    warm = max(1, steps // 20)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    scaler = torch.amp.GradScaler(enabled=use_amp(device))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(memory_format=torch.channels_last)  # ~1.3x faster convolutions on CPU
    model.train()
    proj.train()
    order, pos = rng.permutation(n), 0
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        rows = np.sort(order[pos:pos + batch_size])
        pos += batch_size
        x = model.adapt(data.batch(rows).to(device))  # the views drawn on the CNN's grid: any corpus shape
        x = torch.cat([random_view(x, gen, views), random_view(x, gen, views)])
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=use_amp(device)):
            z = proj(model.features(x))
        loss = nt_xent(z[:len(rows)], z[len(rows):], temperature)
        optimizer_step(opt, scaler, loss, sched)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, steps)
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(progress_line("contrastive", step + 1, steps, 2 * (step + 1) * batch_size,
                              time.perf_counter() - t0, loss=np.mean(losses[-log_every:])))
    model.to(memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - t0
    return {"cl_steps": steps, "cl_loss": float(np.mean(losses[-max(1, steps // 10):])),
            "cl_seconds": seconds,
            "cl_images_per_s": 2 * steps * batch_size / max(seconds, 1e-9)}
