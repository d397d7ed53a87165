"""CCI refinement: start from an autoencoder clustering, then train a CNN on trusted
cluster pseudo-labels and re-cluster its embedding, in rounds.

Objective per training step, on a class-balanced batch of *trusted* rows, augmented:

    J = J_CE(head(x), y) + lam * J_kmeans,   J_kmeans = mean ||embed(x) - c_y||^2

where ``c_y`` are the round's cluster centres in the (unit-norm) embedding space.

Round 0 (the start, N2D-style): pre-train the CNN trunk as the encoder of a convolutional
autoencoder (:mod:`cci_core.refine.autoencoder`), embed the corpus and cluster the code with the
manifold stage (UMAP + GMM); without pre-training (``ae_epochs=0``) round 0 keeps the
clustering it was given. Every round ``r``, read top to bottom in :func:`refine`:

  (a) embed every corpus row with the EMA teacher (round 0: the pre-trained encoder);
  (b) cluster the embedding: the manifold stage (UMAP + GMM, best of a few starts) or
      PCA-whitened k-means (project MiniBatchKMeans);
      clusters left (nearly) empty are re-seeded;
  (c) Hungarian-match the new ids to the previous round's (round 0: to the given ids);
  (d) trust rows by neighbourhood consistency (share of their ``knn`` nearest neighbours
      in the clustering space with the same cluster), after agreement between the two
      views (the re-clustering and the teacher's prediction), the posterior margin
      breaking ties; keep the ``trust_quantile`` best of each cluster and train ``steps``
      steps on them (class-balanced, augmented, EMA teacher);
  then score the round: the teacher predicts every row, and the selection score is the
  share of rows on which the classifier, trained on the trusted part only, reproduces
  the round's clustering (how learnable/self-consistent the partition is).

Drift is bounded by the step budget, the EMA teacher and the consensus rule. The round
kept is the one with the best selection score (unsupervised); its classifier is the one
trained on its labels. Labels, if given, only score.

Every round writes ``round-NN/`` (weights, EMA weights, labels, embedding, predictions,
metrics) and then a ``round-NN/_DONE`` marker; calling :func:`refine` again on the same
``out_dir`` resumes after the last finished round and gives the same result on CPU.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cci_core.cluster.cluster_metrics import cluster_acc, match_labels, silhouette
from cci_core.cluster.kmeans import MiniBatchKMeans
from cci_core.cluster.pca import PCA
from cci_core.common.device import pick_device, use_amp
from cci_core.common.seeding import seeded
from cci_core.common.torch_data import CorpusImages, augment
from cci_core.refine.cnn import CNN, CNNConfig
from cci_core.store.weights import load_weights, save_weights

RECLUSTER = ("kmeans", "umap_gmm")


@dataclass
class RefineConfig:
    """Every knob of a refinement; the defaults are the Fashion-MNIST benchmark recipe.

    rounds : rounds after round 0 (round 0 = start clustering + first training)
    ae_epochs : autoencoder pre-training epochs before round 0 (0 = start from the given
        clustering with a randomly initialised CNN)
    ae_lr, ae_shift : autoencoder optimiser rate and input shift (fraction of the side)
    warmup_steps, steps : training steps in round 0 / in each later round
    batch_size, lr, weight_decay : optimiser (AdamW, fresh each round, cosine decay)
    lam : weight of the k-means term (embedding distance to its cluster centre)
    label_smoothing : for the cross-entropy term
    trust_quantile : fraction of each cluster trusted for training, most consistent first
    knn : neighbours for the neighbourhood-consistency trust score
    ema : decay of the teacher weights used to embed and predict
    recluster : ``umap_gmm`` (UMAP + full-covariance GMM) or ``kmeans`` (PCA-whitened)
    gmm_inits : GMM restarts (k-means starts), the best likelihood kept
    gmm_from_previous : start the GMM from the previous round's cluster means instead
    pca_dim : whitened dimensions before k-means (and the trust space without UMAP)
    umap_neighbors, umap_dim, umap_sample : manifold stage (fitted on ``umap_sample``
        rows, the others transformed; the recipe fits all rows)
    shift, scale, flip, erase : augmentation of the classifier's training images
    silhouette_sample : rows for the sampled silhouette (reported, not used to select)
    width, depth, embed_dim : CNN shape
    seed : everything random derives from it (per round), so resume is exact on CPU
    device : None = CUDA when present, else CPU
    """
    rounds: int = 2
    ae_epochs: float = 4.0
    ae_lr: float = 2e-3
    ae_shift: float = 0.08
    warmup_steps: int = 1000
    steps: int = 800
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lam: float = 0.1
    label_smoothing: float = 0.1
    trust_quantile: float = 0.5
    knn: int = 20
    ema: float = 0.99
    recluster: str = "umap_gmm"
    gmm_inits: int = 3
    gmm_from_previous: bool = False
    pca_dim: int = 32
    umap_neighbors: int = 20
    umap_dim: int = 10
    umap_sample: int = 70000
    shift: float = 0.12
    scale: tuple = (0.85, 1.15)
    flip: bool = True
    erase: float = 0.0
    silhouette_sample: int = 5000
    width: int = 16
    depth: int = 3
    embed_dim: int = 64
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        checks = [
            (self.rounds >= 0, f"rounds={self.rounds} must be >= 0"),
            (self.ae_epochs >= 0, f"ae_epochs={self.ae_epochs} must be >= 0"),
            (self.warmup_steps >= 1 and self.steps >= 1,
             f"warmup_steps={self.warmup_steps}, steps={self.steps} must be >= 1"),
            (self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2"),
            (self.lr > 0 and self.ae_lr > 0, f"lr={self.lr}, ae_lr={self.ae_lr} must be > 0"),
            (self.lam >= 0, f"lam={self.lam} must be >= 0"),
            (0 < self.trust_quantile <= 1, f"trust_quantile={self.trust_quantile} must be in (0, 1]"),
            (self.knn >= 1, f"knn={self.knn} must be >= 1"),
            (0 <= self.ema < 1, f"ema={self.ema} must be in [0, 1)"),
            (self.recluster in RECLUSTER, f"recluster={self.recluster!r}: use one of {RECLUSTER}"),
            (self.gmm_inits >= 1, f"gmm_inits={self.gmm_inits} must be >= 1"),
            (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1],
             f"scale={self.scale} must be (low, high) with 0 < low <= high"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class RefineResult:
    """labels : (N,) int32 of the kept round; chosen_round; history : per-round metrics."""
    labels: np.ndarray
    chosen_round: int
    history: list = field(default_factory=list)
    model: CNN | None = None
    out_dir: Path | None = None


# ----- pieces of one round -------------------------------------------------------------


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


def _unit(Z: np.ndarray) -> np.ndarray:
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def cluster_embedding(Z: np.ndarray, k: int, cfg: RefineConfig, seed: int,
                      previous: np.ndarray | None = None):
    """(b) Cluster the embedding.

    Returns (labels (N,), space the labels live in (N, d), posterior margin (N,) in [0, 1]:
    top-1 minus top-2 GMM posterior, or the relative gap between the two nearest k-means
    centres). With ``previous`` labels and ``cfg.gmm_from_previous`` the GMM starts from
    their means in the new space; otherwise from ``cfg.gmm_inits`` k-means starts.
    """
    if cfg.recluster == "umap_gmm":
        from sklearn.mixture import GaussianMixture

        from cci_core.cluster.manifold import umap_embed
        U, _, _ = umap_embed(Z, n_components=cfg.umap_dim, n_neighbors=cfg.umap_neighbors,
                             min_dist=0.0, sample_size=cfg.umap_sample, seed=seed)
        if previous is not None and cfg.gmm_from_previous:
            means = np.stack([U[previous == c].mean(0) if (previous == c).any() else U.mean(0)
                              for c in range(k)])
            gmm = GaussianMixture(k, covariance_type="full", means_init=means, random_state=seed)
        else:
            gmm = GaussianMixture(k, covariance_type="full", n_init=cfg.gmm_inits,
                                  random_state=seed)
        post = gmm.fit(U).predict_proba(U)
        top = np.sort(post, 1)
        return post.argmax(1).astype(np.int64), U, top[:, -1] - top[:, -2]
    W = np.asarray(PCA(min(cfg.pca_dim, Z.shape[1]), whiten=True).fit_transform(_unit(Z)),
                   dtype=np.float32)
    km = MiniBatchKMeans(k, batch_size=4096, max_iter=300, n_init=3, random_state=seed).fit(W)
    d = np.sort(((W[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1), 1)
    return km.labels_.astype(np.int64), W, 1 - np.sqrt(d[:, 0] / np.maximum(d[:, 1], 1e-12))


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


def _centres(Z: np.ndarray, labels: np.ndarray, k: int) -> torch.Tensor:
    C = np.stack([Z[labels == c].mean(0) if (labels == c).any() else np.zeros(Z.shape[1])
                  for c in range(k)])
    return F.normalize(torch.from_numpy(C).float(), dim=1)


def train_round(model: CNN, teacher: CNN, data: CorpusImages, labels: np.ndarray,
                trusted: np.ndarray, centres: torch.Tensor | None, steps: int,
                cfg: RefineConfig, seed: int, device, on_step=None) -> dict:
    """Train ``steps`` steps on the joint loss over trusted rows, class-balanced; the
    teacher follows the student as an exponential moving average. ``on_step(step)``, when
    given, is called after every step."""
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
        x = augment(data.batch(rows).to(device), gen, cfg.shift, cfg.scale, cfg.flip, cfg.erase)
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
    seconds = time.perf_counter() - t0
    return {"loss_ce": ce_sum / steps, "loss_kmeans": km_sum / steps, "train_seconds": seconds,
            "train_images_per_s": steps * cfg.batch_size / max(seconds, 1e-9)}


def _score(labels: np.ndarray, y_true: np.ndarray | None, prefix: str = "") -> dict:
    if y_true is None:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    return {prefix + "acc": cluster_acc(y_true, labels),
            prefix + "nmi": float(normalized_mutual_info_score(y_true, labels)),
            prefix + "ari": float(adjusted_rand_score(y_true, labels))}


def _internal(space: np.ndarray, labels: np.ndarray, cfg: RefineConfig, seed: int) -> dict:
    sil, n = silhouette(space, labels, sample_size=cfg.silhouette_sample, seed=seed)
    inertia = float(sum(((space[labels == c] - space[labels == c].mean(0)) ** 2).sum()
                        for c in np.unique(labels)))
    return {"silhouette": sil, "silhouette_sample_size": n, "inertia": inertia}


# ----- checkpoints -----------------------------------------------------------------------


def _round_dir(out_dir: Path, r: int) -> Path:
    return out_dir / f"round-{r:02d}"


def _save_round(out_dir: Path, r: int, model: CNN, teacher: CNN, state: dict,
                history: list, cfg: RefineConfig) -> None:
    d = _round_dir(out_dir, r)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"cnn": asdict(model.config), "refine": asdict(cfg)}
    save_weights(d, model.state_dict(), meta, name="student")
    save_weights(d, teacher.state_dict(), meta, name="classifier")
    np.save(d / "labels.npy", state["labels"].astype(np.int32))
    np.save(d / "embedding.npy", state["Z"].astype(np.float32))
    np.save(d / "probs.npy", state["P"].astype(np.float32))
    (d / "history.json").write_text(json.dumps(history, indent=2))
    (d / "_DONE").write_text("")


def _last_done(out_dir: Path) -> int:
    done = [int(p.parent.name.split("-")[1]) for p in out_dir.glob("round-*/_DONE")]
    return max(done) if done else -1


def load_classifier(directory: str | Path, device=None) -> CNN:
    """Load a classifier written by :func:`refine` (safetensors + JSON, no pickle)."""
    tensors, meta = load_weights(directory, name="classifier")
    model = CNN(CNNConfig.from_dict(meta["cnn"]))
    model.load_state_dict(tensors)
    return model.to(pick_device(device)).eval()


# ----- the loop --------------------------------------------------------------------------


def refine(images, n_rows: int | None, initial_labels, config: RefineConfig | None = None,
           out_dir: str | Path | None = None, y_true=None, log=print, progress=None) -> RefineResult:
    """Refine a clustering with the CCI classifier.

    Parameters
    ----------
    images : zarr.Array or ndarray (N, H, W, C) uint8, H = W in (28, 32, 64), C in (1, 3)
    n_rows : committed rows (None = all)
    initial_labels : (n_rows,) int cluster ids in [0, k) -- the clustering to start from
        (with autoencoder pre-training it fixes k and the cluster ids; without, it is
        round 0's clustering)
    config : RefineConfig (defaults when None)
    out_dir : checkpoints and artifacts; an existing one with finished rounds is resumed
    y_true : (n_rows,) known classes, optional, ONLY for ACC/NMI/ARI in the metrics
    log : callable taking one string (progress lines)
    progress : callable ``progress(done, total, note)`` or None; called as training steps
        complete (every ~2 % of all rounds' steps) and when a round starts or ends

    Returns
    -------
    RefineResult with the kept round's labels; ``out_dir`` gets ``classifier.*``
    (the kept round's weights), ``labels.npy``, ``metrics.json``, ``curves.png``.
    """
    cfg = config or RefineConfig()
    data = CorpusImages(images, n_rows)
    n = len(data)
    init = np.asarray(initial_labels)
    if init.shape != (n,) or not np.issubdtype(init.dtype, np.integer) or init.min() < 0:
        raise ValueError(f"initial_labels must be {n} non-negative int cluster ids "
                         f"(one per row), got shape {init.shape} dtype {init.dtype}")
    k = int(init.max()) + 1
    if k < 2:
        raise ValueError("initial_labels has a single cluster; refine needs at least 2")
    if n < cfg.batch_size:
        raise ValueError(f"corpus has {n} rows, fewer than one batch ({cfg.batch_size}); "
                         f"lower batch_size or add images")
    c, h, w = data.shape
    if h != w:
        raise ValueError(f"images are {h}x{w}; refine needs square images")
    y_true = None if y_true is None else np.asarray(y_true)[:n]
    device = pick_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None

    with seeded(cfg.seed):
        model = CNN(CNNConfig(in_channels=c, image_size=h, n_classes=k, width=cfg.width,
                              depth=cfg.depth, embed_dim=cfg.embed_dim)).to(device)
    teacher = copy.deepcopy(model)
    # carried from round to round: labels, the teacher's embedding Z and probabilities P
    state = {"labels": init.astype(np.int64), "Z": None, "P": None}
    history, start = [], 0
    kept: dict[int, tuple[np.ndarray, dict]] = {}  # per-round labels/weights without out_dir
    if out is not None and (last := _last_done(out)) >= 0:
        d = _round_dir(out, last)
        model.load_state_dict(load_weights(d, "student", device)[0])
        teacher.load_state_dict(load_weights(d, "classifier", device)[0])
        state = {"labels": np.load(d / "labels.npy").astype(np.int64),
                 "Z": np.load(d / "embedding.npy"), "P": np.load(d / "probs.npy")}
        history = json.loads((d / "history.json").read_text())
        start = last + 1
        log(f"resuming after round {last} from {d}")

    # progress counts optimiser steps: the autoencoder's (round 0), then each round's training
    from cci_core.refine.autoencoder import autoencoder_steps
    ae = autoencoder_steps(cfg.ae_epochs, n, cfg.batch_size) if cfg.ae_epochs > 0 else 0
    budget = [cfg.warmup_steps if r == 0 else cfg.steps for r in range(cfg.rounds + 1)]
    total, every = ae + sum(budget), max(1, (ae + sum(budget)) // 50)

    def report(r: int, step: int, what: str) -> None:
        if progress is not None:
            progress(ae + sum(budget[:r]) + step, total, f"round {r}/{cfg.rounds}, {what}")

    for r in range(start, cfg.rounds + 1):
        t0 = time.perf_counter()
        seed = cfg.seed * 1000 + r
        prev, rec = state["labels"], {"round": r}
        if r == 0 and cfg.ae_epochs > 0:  # N2D-style start: autoencoder, then cluster its code
            from cci_core.refine.autoencoder import pretrain_autoencoder
            rec.update(pretrain_autoencoder(
                model, data, cfg.ae_epochs, batch_size=cfg.batch_size, lr=cfg.ae_lr,
                weight_decay=cfg.weight_decay, shift=cfg.ae_shift, seed=seed, device=device,
                on_step=lambda s, steps: progress is not None and (s % every == 0 or s == steps) and progress(
                    s, total, f"round 0/{cfg.rounds}, autoencoder epoch {cfg.ae_epochs * s / steps:.1f}"
                              f"/{cfg.ae_epochs:g}")))
            teacher.load_state_dict(model.state_dict())
            state["Z"], _ = embed_corpus(teacher, data, device, normalize=False)
            log(f"  r0: autoencoder {rec['ae_seconds']:.0f}s, "
                f"{rec['ae_images_per_s']:.0f} images/s, loss {rec['ae_loss']:.4f}")
        report(r, 0, "clustering")
        if state["Z"] is not None:
            Z = state["Z"]                                                    # (a)
            new, space, margin = cluster_embedding(                           # (b)
                Z, k, cfg, seed, previous=prev if r > 0 else None)
            new = reseed_empty(new, space, k, min_size=max(2, n // (20 * k)))
            new = match_labels(prev, new, k)                                  # (c)
            centres = _centres(_unit(Z), new, k)
        else:  # round 0 without pre-training: the given clustering, judged in pixel PCA
            Z = np.asarray(PCA(min(cfg.pca_dim, c * h * w)).fit_transform(
                data.batch(np.arange(n)).reshape(n, -1).numpy()), dtype=np.float32)
            new, space, margin, centres = prev, Z, np.zeros(n), None
        # (d) trust: the two views agree (re-clustering vs the teacher's prediction),
        # then neighbourhood consistency, then the margin
        agree = (new == state["P"].argmax(1)) if state["P"] is not None else np.ones(n, bool)
        consistency = knn_consistency(space, new, cfg.knn)
        trusted = trusted_rows(agree + consistency + 0.01 * margin, new, k, cfg.trust_quantile)
        rec.update({"changed": float((new != prev).mean()), "agreement": float(agree.mean()),
                    "knn_consistency": float(consistency.mean()),
                    "trusted": float(trusted.mean()), **_internal(space, new, cfg, seed),
                    **_score(new, y_true), "cluster_seconds": time.perf_counter() - t0})
        log(f"  r{r}: clustered at {rec['cluster_seconds']:.0f}s, changed {rec['changed']:.3f}"
            + (f", acc {rec['acc']:.4f}, nmi {rec['nmi']:.4f}" if "acc" in rec else ""))
        stats = train_round(model, teacher, data, new, trusted, centres, budget[r], cfg, seed, device,
                            on_step=lambda s, r=r: s % every == 0 and report(r, s, f"step {s}/{budget[r]}"))
        state = {"labels": new,
                 **dict(zip("ZP", embed_corpus(teacher, data, device, normalize=False)))}
        pred = state["P"].argmax(1)
        # unsupervised selection: how much of the partition the classifier, trained on the
        # trusted rows only, reproduces on all rows
        rec.update(stats, selection_score=float((pred == new).mean()),
                   **_score(pred, y_true, prefix="pred_"))
        rec["wall_seconds"] = time.perf_counter() - t0
        history.append(rec)
        log("round {round}: ".format(**rec) + ", ".join(
            f"{key} {rec[key]:.4f}" for key in ("acc", "nmi", "pred_acc", "selection_score",
                                                "trusted") if rec.get(key) is not None))
        report(r, budget[r], "done" + (f", acc {rec['acc']:.4g}" if "acc" in rec else ""))
        if out is not None:
            _save_round(out, r, model, teacher, state, history, cfg)
        else:
            kept[r] = (new, copy.deepcopy(teacher.state_dict()))

    # Keep the round with the best unsupervised score, with the classifier trained on it.
    best = max(history, key=lambda h: h["selection_score"])
    chosen = best["round"]
    if out is not None:
        result_labels = np.load(_round_dir(out, chosen) / "labels.npy")
        teacher.load_state_dict(load_weights(_round_dir(out, chosen), "classifier", device)[0])
    else:
        result_labels = kept[chosen][0]
        teacher.load_state_dict(kept[chosen][1])
    log(f"kept round {chosen} (selection score {best['selection_score']:.4f})")
    if out is not None:
        _write_artifacts(out, teacher, result_labels, history, chosen, cfg)
    return RefineResult(result_labels.astype(np.int32), chosen, history, teacher.eval(), out)


def _write_artifacts(out: Path, teacher: CNN, labels: np.ndarray, history: list, chosen: int,
                     cfg: RefineConfig) -> None:
    save_weights(out, teacher.state_dict(), {"cnn": asdict(teacher.config), "refine": asdict(cfg)},
                 name="classifier")
    np.save(out / "labels.npy", labels.astype(np.int32))
    (out / "metrics.json").write_text(json.dumps(
        {"chosen_round": chosen, "rounds": history}, indent=2))
    try:
        from cci_core.refine.refine_pictures import plot_rounds
        plot_rounds(history, out / "curves.png")
    except ImportError:
        pass
