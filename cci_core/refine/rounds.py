"""The pieces of one refinement round (:func:`cci_core.refine.refine.refine` runs them in order).

Embed the corpus, re-cluster the embedding, re-seed empty clusters, trust rows by neighbourhood
consistency, and train the CNN on the joint objective over the trusted rows::

    J = J_CE(head(x), y) + lam * J_kmeans,   J_kmeans = mean ||embed(x) - c_y||^2

then score the round (external metrics when labels are known, internal ones always).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from cci_core.cluster.cluster_metrics import cluster_acc, silhouette
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.pca import PCA
from cci_core.common.device import use_amp
from cci_core.common.torch_data import CorpusImages, augment
from cci_core.refine.cnn import CNN
from cci_core.refine.config import RefineConfig
from cci_core.refine.train_steps import progress_line


@torch.no_grad()
def embed_corpus(model: CNN, data: CorpusImages, device, batch_size: int = 1024,
                 normalize: bool = True):
    """Embeddings (N, E) float32 (unit norm, or the raw ``features`` with
    ``normalize=False``) and class probabilities (N, k) float32."""
    model.eval()
    Z, P = [], []
    for _, x in data.iter_batches(batch_size):
        with torch.autocast(device.type, enabled=use_amp(device)):
            f = model.features(x.to(device))
            logits = model.head(F.relu(f))
        Z.append((F.normalize(f.float(), dim=1) if normalize else f.float()).cpu())
        P.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(Z).numpy(), torch.cat(P).numpy()


def unit(Z: np.ndarray) -> np.ndarray:
    """Rows of ``Z`` scaled to unit length (zero rows stay zero)."""
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def clustering_space(Z: np.ndarray, cfg: RefineConfig, seed: int,
                     pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The spaces :func:`cluster_embedding` works in: the joined space (N, p + E) (the unit
    rows of ``Z``, with ``pixels`` (N, p) the unit rows of both, so both count equally) and
    the space the partition is found in (N, d): its UMAP for ``umap_gmm``, its PCA-whitened
    components for ``kmeans``."""
    X = unit(Z) if pixels is None else np.concatenate([unit(pixels), unit(Z)], 1)
    if cfg.recluster == "umap_gmm":
        from cci_core.cluster.manifold import umap_embed
        U, _, _ = umap_embed(X, n_components=cfg.umap_dim, n_neighbors=cfg.umap_neighbors,
                             min_dist=0.0, sample_size=cfg.umap_sample, seed=seed)
        return X, U
    return X, np.asarray(PCA(min(cfg.pca_dim, X.shape[1]), whiten=True).fit_transform(X), dtype=np.float32)


def cluster_embedding(Z: np.ndarray, k: int, cfg: RefineConfig, seed: int,
                      previous: np.ndarray | None = None, pixels: np.ndarray | None = None,
                      spaces: tuple[np.ndarray, np.ndarray] | None = None):
    """(b) Cluster the embedding (its unit rows; with ``pixels`` (N, p), their unit rows
    joined on, so both count equally).

    Returns (labels (N,), space the labels live in (N, d), posterior margin (N,) in [0, 1]:
    top-1 minus top-2 GMM posterior, or the relative gap between the two nearest k-means
    centres). With ``previous`` labels and ``cfg.gmm_from_previous`` the GMM starts from
    their clusters in the new space (:func:`gmm_from_partition`); otherwise from
    ``cfg.gmm_inits`` k-means starts. With ``cfg.scan_heads`` the labels are the k-means consensus of the GMM's posteriors and the
    votes of that many SCAN heads fitted on the joined space, and with ``cfg.gmm_polish``
    a GMM started from that consensus and run to convergence then gives the labels and
    the margin (see :class:`RefineConfig`). ``spaces``: :func:`clustering_space`'s result for
    these arguments, when already computed.
    """
    Z, U = spaces if spaces is not None else clustering_space(Z, cfg, seed, pixels)
    if cfg.recluster == "umap_gmm":
        from sklearn.mixture import GaussianMixture

        if previous is not None and cfg.gmm_from_previous:
            gmm = gmm_from_partition(U, previous, k, seed)
        else:
            gmm = GaussianMixture(k, covariance_type="full", n_init=cfg.gmm_inits,
                                  random_state=seed)
        post = gmm.fit(U).predict_proba(U)
        if cfg.scan_heads == 0:
            return post.argmax(1).astype(np.int64), U, _posterior_margin(post)
        from sklearn.cluster import KMeans

        from cci_core.refine.scan import mine_neighbours, scan_head_votes
        votes = scan_head_votes(Z, mine_neighbours(Z, min(cfg.knn, len(Z) - 1), block=512), k,
                                n_heads=cfg.scan_heads, seed=seed)
        # each head's probabilities are nearly one-hot, so a disagreement costs ~2 in squared
        # distance; scaling the GMM's posteriors by sqrt(gmm_votes) weighs it as that many heads
        V = np.concatenate([votes, np.sqrt(cfg.gmm_votes) * post.astype(np.float32)], 1)
        # full-batch Lloyd (scikit-learn), not the project's MiniBatchKMeans: V is in memory and
        # small (N x (heads + 1) k), and the benchmark figures were measured with it
        km = KMeans(k, n_init=10, random_state=seed).fit(V)
        if not cfg.gmm_polish:
            return km.labels_.astype(np.int64), U, _centre_gap(km.transform(V))
        # the consensus picks the basin (no merged look-alike classes), EM places the boundaries
        post = gmm_from_partition(U, km.labels_, k, seed).fit(U).predict_proba(U)
        return post.argmax(1).astype(np.int64), U, _posterior_margin(post)
    W = U
    km = MiniBatchKMeans(k, batch_size=4096, max_iter=300, n_init=3, random_state=seed).fit(W)
    return km.labels_.astype(np.int64), W, _centre_gap(np.sqrt(
        ((W[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)))


def gmm_from_partition(U: np.ndarray, labels: np.ndarray, k: int, seed: int):
    """An unfitted full-covariance ``GaussianMixture`` that starts from the clusters of
    ``labels`` (N,) in ``U`` (N, d): their shares, means and covariances (a cluster with
    fewer than d + 1 rows borrows the covariance of all rows; an empty one also its mean)."""
    from sklearn.mixture import GaussianMixture
    d = U.shape[1]
    whole_mean, whole_cov = U.mean(0), np.cov(U, rowvar=False).reshape(d, d)
    counts = np.bincount(labels, minlength=k)[:k]
    means = np.stack([U[labels == c].mean(0) if counts[c] else whole_mean for c in range(k)])
    covs = [np.cov(U[labels == c], rowvar=False).reshape(d, d) if counts[c] > d else whole_cov
            for c in range(k)]
    reg = 1e-6 * np.eye(d)  # GaussianMixture's own reg_covar
    return GaussianMixture(k, covariance_type="full", random_state=seed,
                           weights_init=(counts + 1) / (counts.sum() + k), means_init=means,
                           precisions_init=np.stack([np.linalg.inv(c + reg) for c in covs]))


def _posterior_margin(post: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 posterior per row, (N,) in [0, 1], from posteriors (N, k)."""
    top = np.sort(post, 1)
    return top[:, -1] - top[:, -2]


def _centre_gap(distances: np.ndarray) -> np.ndarray:
    """Relative gap between each row's nearest and second-nearest centre, (N,) in [0, 1],
    from its distances to every centre (N, k)."""
    d = np.sort(distances, 1)
    return 1 - d[:, 0] / np.maximum(d[:, 1], 1e-12)


def knn_consistency(space: np.ndarray, labels: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Share of each row's ``n_neighbors`` nearest neighbours (in ``space``, itself left
    out) that carry its label: (N,) in [0, 1]."""
    from sklearn.neighbors import NearestNeighbors
    n_neighbors = min(n_neighbors, len(space) - 1)
    _, idx = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(space).kneighbors(space)
    return (labels[idx[:, 1:]] == labels[:, None]).mean(1)


def trusted_rows(score: np.ndarray, labels: np.ndarray, k: int, quantile: float) -> np.ndarray:
    """(d) Boolean mask: the ``quantile`` highest-``score`` rows of each cluster (ties
    broken by row order), at least one per non-empty cluster, so no cluster starves."""
    keep = np.zeros(len(labels), bool)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size:
            n_keep = max(1, int(math.ceil(quantile * members.size)))
            keep[members[np.argsort(-score[members], kind="stable")[:n_keep]]] = True
    return keep


def reseed_empty(labels: np.ndarray, space: np.ndarray, k: int, min_size: int) -> np.ndarray:
    """Give each cluster with fewer than ``min_size`` rows the far half of the largest one."""
    labels = labels.copy()
    for c in range(k):
        if (labels == c).sum() >= min_size:
            continue
        big = np.bincount(labels, minlength=k).argmax()
        members = np.flatnonzero(labels == big)
        d = np.linalg.norm(space[members] - space[members].mean(0), axis=1)
        labels[members[d > np.median(d)]] = c
    return labels


def cluster_centres(Z: np.ndarray, labels: np.ndarray, k: int) -> torch.Tensor:
    """(k, d) unit-norm cluster means (zero for an empty cluster): the ``c_y`` of the k-means term."""
    C = np.stack([Z[labels == c].mean(0) if (labels == c).any() else np.zeros(Z.shape[1])
                  for c in range(k)])
    return F.normalize(torch.from_numpy(C).float(), dim=1)


def train_round(model: CNN, teacher: CNN, data: CorpusImages, labels: np.ndarray,
                trusted: np.ndarray, centres: torch.Tensor | None, steps: int,
                cfg: RefineConfig, seed: int, device, on_step=None, log=None) -> dict:
    """Train ``steps`` steps on the joint loss over trusted rows, class-balanced; the
    teacher follows the student as an exponential moving average. ``on_step(step)``, when
    given, is called after every step; ``log(line)`` gets a progress line (images/s, time
    left) five times per round."""
    k = model.config.n_classes
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pools = [np.flatnonzero(trusted & (labels == c)) for c in range(k)]
    pools = [p for p in pools if p.size]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    scaler = torch.amp.GradScaler(enabled=use_amp(device))
    y_all = torch.from_numpy(labels).long()
    cen = centres.to(device) if centres is not None else None
    model.train()
    t0, ce_sum, km_sum, step = time.perf_counter(), 0.0, 0.0, 0
    for _ in range(steps):
        # class-balanced: draw a cluster uniformly, then a trusted row of it
        which = rng.integers(0, len(pools), cfg.batch_size)
        rows = np.array([pools[c][rng.integers(0, pools[c].size)] for c in which])
        x = augment(model.adapt(data.batch(rows).to(device)), gen, cfg.shift, cfg.scale, cfg.flip, cfg.erase)
        y = y_all[rows].to(device)
        with torch.autocast(device.type, enabled=use_amp(device)):
            f = model.features(x)
            ce = F.cross_entropy(model.head(F.relu(f)), y, label_smoothing=cfg.label_smoothing)
            km = ((F.normalize(f.float(), dim=1) - cen[y]) ** 2).sum(1).mean() \
                if cen is not None and cfg.lam > 0 else torch.zeros((), device=device)
            loss = ce + cfg.lam * km
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        decay = min(cfg.ema, (1 + step) / (10 + step))  # short budgets: teacher must keep up
        with torch.no_grad():  # EMA teacher, buffers (BN statistics) copied
            for pt, ps in zip(teacher.parameters(), model.parameters()):
                pt.lerp_(ps, 1 - decay)
            for bt, bs in zip(teacher.buffers(), model.buffers()):
                bt.copy_(bs)
        ce_sum += ce.item()
        km_sum += float(km.detach())
        if on_step is not None:
            on_step(step)
        if log is not None and (step % max(1, steps // 5) == 0 or step == steps):
            log(progress_line("training", step, steps, step * cfg.batch_size, time.perf_counter() - t0,
                              ce=ce_sum / step))
    seconds = time.perf_counter() - t0
    return {"loss_ce": ce_sum / steps, "loss_kmeans": km_sum / steps, "train_seconds": seconds,
            "train_images_per_s": steps * cfg.batch_size / max(seconds, 1e-9)}


def external_metrics(labels: np.ndarray, y_true: np.ndarray | None, prefix: str = "") -> dict:
    """ACC, NMI and ARI against known classes (``{}`` without them)."""
    if y_true is None:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    return {prefix + "acc": cluster_acc(y_true, labels),
            prefix + "nmi": float(normalized_mutual_info_score(y_true, labels)),
            prefix + "ari": float(adjusted_rand_score(y_true, labels))}


def internal_metrics(space: np.ndarray, labels: np.ndarray, cfg: RefineConfig, seed: int) -> dict:
    """Sampled silhouette and inertia of ``labels`` in ``space``."""
    sil, n = silhouette(space, labels, sample_size=cfg.silhouette_sample, seed=seed)
    inertia = float(sum(((space[labels == c] - space[labels == c].mean(0)) ** 2).sum()
                        for c in np.unique(labels)))
    return {"silhouette": sil, "silhouette_sample_size": n, "inertia": inertia}
