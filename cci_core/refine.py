"""CCI refinement: train a CNN on cluster pseudo-labels and re-cluster its embedding, in rounds.

Objective per step, on a class-balanced batch of *trusted* rows, augmented:

    J = J_CE(head(x), y) + lam * J_kmeans,   J_kmeans = mean ||embed(x) - c_y||^2

where ``c_y`` are the round's cluster centres in the (unit-norm) embedding space.

One round, read top to bottom in :func:`refine`:
  (a) embed every corpus row with the EMA copy of the CNN (the teacher);
  (b) cluster the embedding: PCA-whitened k-means (project MiniBatchKMeans) or the
      manifold stage (UMAP + GMM);
  (c) Hungarian-match the new ids to the previous round's so ids stay stable;
  (d) trust a row when the new cluster, the previous round's cluster and the teacher's
      prediction agree (consensus across rounds and views), keep the ``trust_quantile``
      closest rows of each cluster by distance margin, and train ``steps`` steps.
Drift is bounded by the step budget, the EMA teacher and the consensus rule. The round
kept is the one with the best unsupervised score (sampled silhouette of its labels in
its own embedding; the starting clustering is scored in round 1's embedding), so a
refinement that drifts falls back to an earlier round. Labels, if given, only score.

Every round writes ``round-NN/`` (weights, EMA weights, labels, metrics) and then a
``round-NN/_DONE`` marker; calling :func:`refine` again on the same ``out_dir``
resumes after the last finished round and gives the same result on CPU.
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

from cci_core.cluster_metrics import cluster_acc, match_labels, sample_rows, silhouette
from cci_core.cnn import CNN, CNNConfig
from cci_core.device import pick_device, use_amp
from cci_core.kmeans import MiniBatchKMeans
from cci_core.pca import PCA
from cci_core.torch_data import CorpusImages, augment
from cci_core.weights import load_weights, save_weights

RECLUSTER = ("kmeans", "umap_gmm")


@dataclass
class RefineConfig:
    """Every knob of a refinement; the defaults are the Fashion-MNIST benchmark recipe.

    rounds : re-clustering rounds after the warm-up on the initial labels
    warmup_steps, steps : training steps on the initial labels / in each later round
    batch_size, lr, weight_decay : optimiser (AdamW, fresh each round, cosine decay)
    lam : weight of the k-means term (embedding distance to its cluster centre)
    label_smoothing : for the cross-entropy term
    trust_quantile : fraction of each cluster's consensus rows kept, closest first
    ema : decay of the teacher weights used to embed and predict
    recluster : ``kmeans`` (PCA-whitened mini-batch k-means) or ``umap_gmm``
    pca_dim : whitened dimensions before k-means
    umap_neighbors, umap_dim, umap_sample : manifold stage parameters
    shift, scale, flip, erase : augmentation
    silhouette_sample : rows for the sampled silhouette (selection score)
    width, depth, embed_dim : CNN shape
    seed : everything random derives from it (per round), so resume is exact on CPU
    device : None = CUDA when present, else CPU
    """
    rounds: int = 3
    warmup_steps: int = 600
    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lam: float = 0.5
    label_smoothing: float = 0.1
    trust_quantile: float = 0.8
    ema: float = 0.99
    recluster: str = "kmeans"
    pca_dim: int = 32
    umap_neighbors: int = 20
    umap_dim: int = 10
    umap_sample: int = 20000
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
            (self.warmup_steps >= 1 and self.steps >= 1,
             f"warmup_steps={self.warmup_steps}, steps={self.steps} must be >= 1"),
            (self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2"),
            (self.lr > 0, f"lr={self.lr} must be > 0"),
            (self.lam >= 0, f"lam={self.lam} must be >= 0"),
            (0 < self.trust_quantile <= 1, f"trust_quantile={self.trust_quantile} must be in (0, 1]"),
            (0 <= self.ema < 1, f"ema={self.ema} must be in [0, 1)"),
            (self.recluster in RECLUSTER, f"recluster={self.recluster!r}: use one of {RECLUSTER}"),
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
def embed_corpus(model: CNN, data: CorpusImages, device, batch_size: int = 1024):
    """Unit-norm embeddings (N, E) float32 and class probabilities (N, k) float32."""
    model.eval()
    Z, P = [], []
    for _, x in data.iter_batches(batch_size):
        with torch.autocast(device.type, enabled=use_amp(device)):
            f = model.features(x.to(device))
            logits = model.head(F.relu(f))
        Z.append(F.normalize(f.float(), dim=1).cpu())
        P.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(Z).numpy(), torch.cat(P).numpy()


def cluster_embedding(Z: np.ndarray, k: int, cfg: RefineConfig, seed: int):
    """(b) Cluster the embedding. Returns (labels (N,), space the labels live in (N, d))."""
    if cfg.recluster == "umap_gmm":
        from cci_core.clusterers import fit_clusterer
        from cci_core.manifold import umap_embed
        U, _, _ = umap_embed(Z, n_components=cfg.umap_dim, n_neighbors=cfg.umap_neighbors,
                             sample_size=cfg.umap_sample, seed=seed)
        res = fit_clusterer(U, "gmm", k=k, sample_size=len(U), seed=seed, covariance_type="full")
        return res.labels.astype(np.int64), U
    W = PCA(min(cfg.pca_dim, Z.shape[1]), whiten=True).fit_transform(Z)
    W = np.asarray(W, dtype=np.float32)
    km = MiniBatchKMeans(k, batch_size=4096, max_iter=300, n_init=3, random_state=seed).fit(W)
    return km.labels_.astype(np.int64), W


def trusted_rows(space: np.ndarray, labels: np.ndarray, agree: np.ndarray, k: int,
                 quantile: float) -> np.ndarray:
    """(d) Boolean mask: rows that agree, then the ``quantile`` closest to their cluster
    centre (in ``space``) within each cluster. A cluster left with no agreeing rows keeps
    its closest rows anyway, so no cluster starves."""
    keep = np.zeros(len(labels), bool)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size == 0:
            continue
        pool = members[agree[members]] if agree[members].any() else members
        d = np.linalg.norm(space[pool] - space[pool].mean(0), axis=1)
        n_keep = max(1, int(math.ceil(quantile * pool.size)))
        keep[pool[np.argsort(d, kind="stable")[:n_keep]]] = True
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
                cfg: RefineConfig, seed: int, device) -> dict:
    """Train ``steps`` steps on the joint loss over trusted rows, class-balanced."""
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
    seconds = time.perf_counter() - t0
    return {"loss_ce": ce_sum / steps, "loss_kmeans": km_sum / steps, "train_seconds": seconds,
            "train_images_per_s": steps * cfg.batch_size / max(seconds, 1e-9)}


def _score(labels: np.ndarray, y_true: np.ndarray | None) -> dict:
    if y_true is None:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    return {"acc": cluster_acc(y_true, labels),
            "nmi": float(normalized_mutual_info_score(y_true, labels)),
            "ari": float(adjusted_rand_score(y_true, labels))}


def _internal(space: np.ndarray, labels: np.ndarray, cfg: RefineConfig, seed: int) -> dict:
    sil, n = silhouette(space, labels, sample_size=cfg.silhouette_sample, seed=seed)
    C = np.stack([space[labels == c].mean(0) for c in np.unique(labels)])
    inertia = float(sum(((space[labels == c] - C[i]) ** 2).sum()
                        for i, c in enumerate(np.unique(labels))))
    return {"silhouette": sil, "silhouette_sample_size": n, "inertia": inertia,
            "selection_score": sil if sil is not None else -1.0}


# ----- checkpoints -----------------------------------------------------------------------


def _round_dir(out_dir: Path, r: int) -> Path:
    return out_dir / f"round-{r:02d}"


def _save_round(out_dir: Path, r: int, model: CNN, teacher: CNN, labels: np.ndarray,
                history: list, cfg: RefineConfig) -> None:
    d = _round_dir(out_dir, r)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"cnn": asdict(model.config), "refine": asdict(cfg)}
    save_weights(d, model.state_dict(), meta, name="student")
    save_weights(d, teacher.state_dict(), meta, name="classifier")
    np.save(d / "labels.npy", labels.astype(np.int32))
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
           out_dir: str | Path | None = None, y_true=None, log=print) -> RefineResult:
    """Refine a clustering with the CCI classifier.

    Parameters
    ----------
    images : zarr.Array or ndarray (N, H, W, C) uint8, H = W in (28, 32, 64), C in (1, 3)
    n_rows : committed rows (None = all)
    initial_labels : (n_rows,) int cluster ids in [0, k) -- the clustering to start from
    config : RefineConfig (defaults when None)
    out_dir : checkpoints and artifacts; an existing one with finished rounds is resumed
    y_true : (n_rows,) known classes, optional, ONLY for ACC/NMI/ARI in the metrics
    log : callable taking one string (progress lines)

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

    torch.manual_seed(cfg.seed)
    model = CNN(CNNConfig(in_channels=c, image_size=h, n_classes=k, width=cfg.width,
                          depth=cfg.depth, embed_dim=cfg.embed_dim)).to(device)
    teacher = copy.deepcopy(model)
    labels, history, start = init.astype(np.int64), [], 0
    kept_labels: dict[int, np.ndarray] = {}  # per-round labels when there is no out_dir
    if out is not None and (last := _last_done(out)) >= 0:
        d = _round_dir(out, last)
        model.load_state_dict(load_weights(d, "student", device)[0])
        teacher.load_state_dict(load_weights(d, "classifier", device)[0])
        labels = np.load(d / "labels.npy").astype(np.int64)
        history = json.loads((d / "history.json").read_text())
        start = last + 1
        log(f"resuming after round {last} from {d}")

    for r in range(start, cfg.rounds + 1):
        t0 = time.perf_counter()
        seed = cfg.seed * 1000 + r
        if r == 0:  # warm-up on the clustering we were given: all rows trusted, no centres
            trusted, centres, rec = np.ones(n, bool), None, {"round": 0}
            stats = train_round(model, teacher, data, labels, trusted, centres,
                                cfg.warmup_steps, cfg, seed, device)
        else:
            Z, P = embed_corpus(teacher, data, device)                      # (a)
            new, space = cluster_embedding(Z, k, cfg, seed)                 # (b)
            new = reseed_empty(new, space, k, min_size=max(2, n // (20 * k)))
            new = match_labels(labels, new, k)                              # (c)
            agree = (new == labels) & (new == P.argmax(1))                  # (d)
            trusted = trusted_rows(space, new, agree, k, cfg.trust_quantile)
            rec = {"round": r, "changed": float((new != labels).mean()),
                   "agreement": float(agree.mean()), "trusted": float(trusted.mean()),
                   **_internal(space, new, cfg, seed), **_score(new, y_true)}
            if r == 1:  # score the starting clustering in the same space, so it can be kept
                history[0].update(_internal(space, labels, cfg, seed))
            labels = new
            stats = train_round(model, teacher, data, labels, trusted, _centres(Z, labels, k),
                                cfg.steps, cfg, seed, device)
        if r == 0:
            rec.update(_score(labels, y_true))
        rec.update(stats)
        rec["wall_seconds"] = time.perf_counter() - t0
        history.append(rec)
        kept_labels[r] = labels
        log("round {round}: ".format(**rec) + ", ".join(
            f"{key} {rec[key]:.4f}" for key in ("acc", "nmi", "silhouette", "trusted") if rec.get(key) is not None))
        if out is not None:
            _save_round(out, r, model, teacher, labels, history, cfg)

    # Keep the round with the best unsupervised score; its classifier trained on its labels.
    scored = [h for h in history if "selection_score" in h]
    best = max(scored, key=lambda h: h["selection_score"]) if scored else history[0]
    chosen = best["round"]
    if out is not None:
        result_labels = np.load(_round_dir(out, chosen) / "labels.npy")
    else:
        result_labels = kept_labels.get(chosen, labels)
    log(f"kept round {chosen} (selection score {best.get('selection_score', float('nan')):.4f})")
    if out is not None and chosen != history[-1]["round"]:
        teacher.load_state_dict(load_weights(_round_dir(out, chosen), "classifier", device)[0])
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
        from cci_core.refine_pictures import plot_rounds
        plot_rounds(history, out / "curves.png")
    except ImportError:
        pass
