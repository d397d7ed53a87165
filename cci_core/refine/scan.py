"""Neighbour-consistent clustering (SCAN) and confident self-labelling on a CNN embedding.

1. :func:`mine_neighbours` — the ``k`` nearest rows of every row by cosine similarity
   in the (pre-trained) embedding, exact, in blocks.
2. :func:`scan_loss` — each row and one of its neighbours should get the same cluster
   (``-log <p_row, p_neighbour>``), minus ``entropy_weight`` times the entropy of the
   mean prediction so that no cluster collapses. :func:`train_scan_heads` fits linear
   cluster heads on fixed features (cheap) and keeps one, :func:`scan_head_votes` returns
   all of them (the refinement's re-clustering takes their consensus), :func:`train_scan`
   fine-tunes the whole CNN on augmented views.
3. :func:`self_label_round` — train on rows the model is already sure of: targets from a
   weakly augmented view, the loss on a strongly augmented one, only where the weak
   view's top probability reaches ``threshold`` (:func:`self_label_loss`), batches
   balanced over clusters; plus ``lam`` times the k-means term on the unit embedding,
   so the objective stays J = J_CE + lam * J_kmeans.

Labels never enter: heads are chosen by their SCAN loss, rounds stop when the partition
stops changing.
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
from cci_core.refine.augment import STRONG, WEAK, AugmentConfig, random_view
from cci_core.refine.cnn import CNN
from cci_core.refine.train_steps import optimizer_step, progress_line

# ----- neighbours -------------------------------------------------------------------------


@torch.no_grad()
def mine_neighbours(Z, k: int, block: int = 2048) -> np.ndarray:
    """Indices (N, k) int64 of each row's ``k`` nearest other rows by cosine similarity,
    nearest first (the row itself is left out; exact ties in no promised order).

    Parameters
    ----------
    Z : (N, D) array or tensor, any scale (rows are normalised here)
    k : neighbours per row, 1 <= k < N
    block : rows compared at once (memory ~ block x N floats)
    """
    Z = torch.as_tensor(np.asarray(Z, dtype=np.float32))
    n = Z.shape[0]
    if Z.ndim != 2 or not 1 <= k < n:
        raise ValueError(f"need a 2-D embedding with more than k={k} rows, got shape {tuple(Z.shape)}")
    Z = F.normalize(Z, dim=1)
    out = np.empty((n, k), np.int64)
    for s in range(0, n, block):
        sim = Z[s:s + block] @ Z.t()
        rows = torch.arange(s, min(s + block, n))
        sim[rows - s, rows] = float("-inf")
        out[s:s + block] = torch.topk(sim, k, dim=1).indices.numpy()
    return out


def neighbour_purity(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Share of (row, neighbour) pairs with the same label (a score of the mining, for
    reports where labels exist)."""
    labels = np.asarray(labels)
    return float((labels[neighbours] == labels[:, None]).mean())


# ----- SCAN --------------------------------------------------------------------------------


def scan_loss(logits: torch.Tensor, neighbour_logits: torch.Tensor,
              entropy_weight: float = 5.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN objective of a batch of rows and one neighbour of each.

    Returns (total, consistency, entropy): consistency = mean ``-log <p_i, p_j>``,
    entropy = entropy of the batch's mean prediction (natural log), total =
    consistency - entropy_weight * entropy. The neighbour's probabilities are not
    detached (both sides learn, as in SCAN).
    """
    p = torch.softmax(logits.float(), 1)
    q = torch.softmax(neighbour_logits.float(), 1)
    consistency = -torch.log((p * q).sum(1).clamp_min(1e-7)).mean()
    mean = p.mean(0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


def _pairs(rng: np.random.Generator, neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return neighbours[rows, rng.integers(0, neighbours.shape[1], len(rows))]


def _fit_scan_heads(H: torch.Tensor, neighbours: np.ndarray, k: int, n_heads: int, epochs: int,
                    batch_size: int, lr: float, entropy_weight: float,
                    seed: int) -> tuple[nn.Linear, np.ndarray]:
    """``n_heads`` linear heads in one ``nn.Linear(D, n_heads * k)``, fitted with the SCAN
    loss on fixed features ``H`` (N, D); returns it and each head's last-epoch mean loss."""
    n, d = H.shape
    with seeded(seed):
        heads = nn.Linear(d, n_heads * k)  # all heads in one matrix: one product per batch
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, n)
    last = np.zeros(n_heads)
    for _ in range(epochs):
        order = rng.permutation(n)
        sums, count = np.zeros(n_heads), 0
        for s in range(0, n - batch_size + 1, batch_size):
            rows = order[s:s + batch_size]
            out = heads(torch.cat([H[rows], H[_pairs(rng, neighbours, rows)]]))
            out = out.view(2, len(rows), n_heads, k)
            p = torch.softmax(out, -1)  # (2, B, heads, k): scan_loss for every head at once
            mean = p[0].mean(0)
            losses = -torch.log((p[0] * p[1]).sum(-1).clamp_min(1e-7)).mean(0) \
                + entropy_weight * (mean * torch.log(mean.clamp_min(1e-8))).sum(-1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            sums += losses.detach().numpy()
            count += 1
        last = sums / max(count, 1)
    return heads, last


def train_scan_heads(features, neighbours: np.ndarray, k: int, *, n_heads: int = 5,
                     epochs: int = 30, batch_size: int = 512, lr: float = 1e-2,
                     entropy_weight: float = 5.0, seed: int = 0) -> tuple[nn.Linear, dict]:
    """Fit ``n_heads`` linear cluster heads on fixed ``features`` (N, D) (the CNN's head
    input, ``relu(features)``) with the SCAN loss; keep the one with the lowest loss.

    Returns
    -------
    (the chosen ``nn.Linear(D, k)``, stats: per-head final loss, chosen head, seconds)
    """
    t0 = time.perf_counter()
    H = torch.as_tensor(np.asarray(features, dtype=np.float32))
    heads, last = _fit_scan_heads(H, neighbours, k, n_heads, epochs, batch_size, lr,
                                  entropy_weight, seed)
    best = int(np.argmin(last))
    with seeded(seed):  # its init is overwritten, but draws must not touch another's block
        head = nn.Linear(H.shape[1], k)
    with torch.no_grad():
        head.weight.copy_(heads.weight[best * k:(best + 1) * k])
        head.bias.copy_(heads.bias[best * k:(best + 1) * k])
    return head, {"scan_head_losses": last.tolist(), "scan_head": best,
                  "scan_head_seconds": time.perf_counter() - t0}


def scan_head_votes(features, neighbours: np.ndarray, k: int, *, n_heads: int = 16,
                    epochs: int = 30, batch_size: int = 512, lr: float = 1e-2,
                    entropy_weight: float = 5.0, seed: int = 0) -> np.ndarray:
    """Cluster probabilities of ``n_heads`` SCAN heads fitted on fixed ``features`` (N, D),
    side by side: (N, n_heads * k) float32, each block of ``k`` columns one head.

    One head's partition swings with its start (on Fashion-MNIST ACC 0.61-0.72 over 8
    seeds, and the lowest loss does not pick the best); a consensus of all heads does not
    (see :func:`cci_core.refine.rounds.cluster_embedding`).
    """
    H = torch.as_tensor(np.asarray(features, dtype=np.float32))
    heads, _ = _fit_scan_heads(H, neighbours, k, n_heads, epochs, batch_size, lr,
                               entropy_weight, seed)
    with torch.no_grad():
        out = heads(H).view(len(H), n_heads, k)
        return torch.softmax(out, -1).reshape(len(H), n_heads * k).numpy()


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, but with ``freeze_bn`` the batch-norm layers stay in eval mode:
    fine-tuning then keeps the statistics the clustering was read with (batches of
    augmented, class-balanced views would shift them, and with them every prediction)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train_scan(model: CNN, data: CorpusImages, neighbours: np.ndarray, steps: int, *,
               batch_size: int = 256, lr: float = 1e-4, weight_decay: float = 1e-4,
               entropy_weight: float = 5.0, views: AugmentConfig = STRONG, seed: int = 0,
               freeze_bn: bool = True, device=None, log: Callable[[str], None] | None = None,
               log_every: int = 50) -> dict:
    """Fine-tune the whole CNN (trunk, embedding head, cluster head) with the SCAN loss on
    augmented views of rows and of one random neighbour of each (batch-norm statistics
    frozen with ``freeze_bn``, see :func:`train_mode`). Returns statistics."""
    device = device or next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(enabled=use_amp(device))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    train_mode(model, freeze_bn)
    t0, cons, ent = time.perf_counter(), [], []
    for step in range(steps):
        rows = rng.integers(0, n, batch_size)
        both = np.concatenate([rows, _pairs(rng, neighbours, rows)])
        x = random_view(model.adapt(data.batch(both).to(device)), gen, views)  # on the CNN's grid
        with torch.autocast(device.type, enabled=use_amp(device)):
            logits = model(x)
        loss, c, e = scan_loss(logits[:batch_size], logits[batch_size:], entropy_weight)
        optimizer_step(opt, scaler, loss)
        cons.append(c.item())
        ent.append(e.item())
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(progress_line("scan", step + 1, steps, 2 * (step + 1) * batch_size,
                              time.perf_counter() - t0, consistency=np.mean(cons[-log_every:]),
                              entropy=np.mean(ent[-log_every:])))
    seconds = time.perf_counter() - t0
    return {"scan_steps": steps, "scan_consistency": float(np.mean(cons[-max(1, steps // 10):])),
            "scan_entropy": float(np.mean(ent[-max(1, steps // 10):])), "scan_seconds": seconds,
            "scan_images_per_s": 2 * steps * batch_size / max(seconds, 1e-9)}


# ----- confident self-labelling -------------------------------------------------------------


def self_label_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float,
                    balance: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of the strong view against the weak view's argmax, only on rows whose
    weak top probability is >= ``threshold``; other rows get no gradient at all.

    With ``balance`` each kept row is weighted by the inverse frequency of its target in
    the kept set, so a dominant cluster cannot swallow the others.

    Returns (loss (0 when no row passes), mask (B,) bool, targets (B,) int64)
    """
    with torch.no_grad():
        prob = torch.softmax(weak_logits.detach().float(), 1)
        top, target = prob.max(1)
        mask = top >= threshold
    if not bool(mask.any()):
        return strong_logits.float().sum() * 0.0, mask, target
    k = strong_logits.shape[1]
    weight = None
    if balance:
        counts = torch.bincount(target[mask], minlength=k).float()
        weight = torch.where(counts > 0, mask.sum() / (k * counts.clamp_min(1)),
                             torch.zeros_like(counts))
    ce = F.cross_entropy(strong_logits[mask].float(), target[mask], weight=weight,
                         reduction="sum")
    norm = weight[target[mask]].sum() if weight is not None else mask.sum().float()
    return ce / norm, mask, target


def confident_rows(probs: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Per cluster (argmax of ``probs`` (N, k)), the rows whose top probability reaches
    ``threshold``, most confident first; empty arrays for clusters without any."""
    probs = np.asarray(probs)
    top, lab = probs.max(1), probs.argmax(1)
    pools = []
    for c in range(probs.shape[1]):
        rows = np.flatnonzero((lab == c) & (top >= threshold))
        pools.append(rows[np.argsort(-top[rows], kind="stable")])
    return pools


def self_label_round(model: CNN, data: CorpusImages, probs: np.ndarray, steps: int, *,
                     threshold: float = 0.95, freeze_bn: bool = True, lam: float = 0.1,
                     centres: torch.Tensor | None = None,
                     batch_size: int = 256, lr: float = 1e-4, weight_decay: float = 1e-4,
                     weak: AugmentConfig = WEAK, strong: AugmentConfig = STRONG,
                     seed: int = 0, device=None, log: Callable[[str], None] | None = None,
                     log_every: int = 50) -> dict:
    """One round of confident self-labelling on the whole CNN.

    Batches are drawn from the rows whose current prediction ``probs`` (N, k) reaches
    ``threshold``, a cluster uniformly then a row of it (class-balanced); the loss is
    :func:`self_label_loss` (the weak view must still reach ``threshold`` in this step)
    plus ``lam`` times mean ||unit embedding(strong view) - centres[target]||^2 over the
    same rows (``centres`` (k, E) unit rows; no k-means term without them). With
    ``freeze_bn`` (default) batch-norm statistics are not updated (:func:`train_mode`).
    """
    device = device or next(model.parameters()).device
    pools = [p for p in confident_rows(probs, threshold) if p.size]
    if not pools:
        raise ValueError(f"no row reaches the self-labelling threshold {threshold}; "
                         f"lower it or train the clustering longer")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    scaler = torch.amp.GradScaler(enabled=use_amp(device))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    cen = centres.to(device) if centres is not None else None
    train_mode(model, freeze_bn)
    t0, ce_sum, km_sum, kept = time.perf_counter(), 0.0, 0.0, 0
    for step in range(steps):
        which = rng.integers(0, len(pools), batch_size)
        rows = np.array([pools[c][rng.integers(0, pools[c].size)] for c in which])
        x = model.adapt(data.batch(rows).to(device))  # on the CNN's grid: any corpus shape
        xw, xs = random_view(x, gen, weak), random_view(x, gen, strong)
        with torch.no_grad(), torch.autocast(device.type, enabled=use_amp(device)):
            weak_logits = model(xw)
        with torch.autocast(device.type, enabled=use_amp(device)):
            f = model.features(xs)
            logits = model.head(F.relu(f))
        ce, mask, target = self_label_loss(weak_logits, logits, threshold)
        km = torch.zeros((), device=device)
        if cen is not None and lam > 0 and bool(mask.any()):
            km = ((F.normalize(f[mask].float(), dim=1) - cen[target[mask]]) ** 2).sum(1).mean()
        optimizer_step(opt, scaler, ce + lam * km, sched)
        ce_sum, km_sum, kept = ce_sum + ce.item(), km_sum + km.item(), kept + int(mask.sum())
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(progress_line("self-label", step + 1, steps, 2 * (step + 1) * batch_size,
                              time.perf_counter() - t0, ce=ce_sum / (step + 1),
                              kept=kept / ((step + 1) * batch_size)))
    seconds = time.perf_counter() - t0
    return {"sl_steps": steps, "sl_pool": int(sum(p.size for p in pools)),
            "sl_loss_ce": ce_sum / steps, "sl_loss_kmeans": km_sum / steps,
            "sl_kept": kept / (steps * batch_size), "sl_seconds": seconds,
            "sl_images_per_s": 2 * steps * batch_size / max(seconds, 1e-9)}
