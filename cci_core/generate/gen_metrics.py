"""Generation metrics on features from our own networks (no downloaded Inception weights).

All measures take precomputed arrays so they work with any feature extractor: the CCI
classifier's embeddings, or a reference CNN trained on true labels (``train_reference_cnn``).

- ``frechet_distance``: FD between Gaussians fitted to real and generated features (FID analogue).
- ``kid``: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets.
- ``precision_recall_density_coverage``: k-NN manifold measures (Kynkäänniemi et al. 2019;
  Naeem et al. 2020).
- ``cluster_fidelity``: share of images generated for cluster k that the classifier assigns to k.
- ``classifier_score``: the Inception-score analogue, exp(E KL(p(y|x) || p(y))).

``evaluate_generated`` assembles a report dict with plain lower-case keys and every sample
size; ``compare_reports`` says which of several reports wins on each measure.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import scipy.linalg
import torch
from sklearn.neighbors import NearestNeighbors
from torch import nn

from cci_core.common.device import pick_device
from cci_core.common.seeding import seeded
from cci_core.generate.image_batches import to_signed_tensor

LOWER_IS_BETTER = ("fid", "kid")
HIGHER_IS_BETTER = ("precision", "recall", "density", "coverage", "fidelity", "is")


def _as_2d(x, name: str, min_rows: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features); got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name} has {a.shape[0]} rows; at least {min_rows} are needed")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; check the feature extractor")
    return a


def _pair(real, fake, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(real, "feats_real", min_rows), _as_2d(fake, "feats_fake", min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_real has {a.shape[1]} features but feats_fake has {b.shape[1]}; "
                         "extract both with the same network")
    return a, b


def _sqrtm(m: np.ndarray, check: bool = True) -> np.ndarray | None:
    """Matrix square root; None when it is not finite or does not square back to ``m``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(m)
    if check:
        err = np.linalg.norm(root @ root - m) / max(np.linalg.norm(m), 1e-30)
        if not np.all(np.isfinite(root)) or err > 1e-4:
            return None
    return root


def frechet_distance(feats_real, feats_fake, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^{1/2})``, in float64. When the product's
    square root is not finite or does not square back (singular covariances: dead features,
    fewer samples than features), ``eps`` is added to both diagonals; a tiny imaginary part
    from round-off is dropped.

    Parameters
    ----------
    feats_real, feats_fake : arrays of shape (n_real, d) and (n_fake, d)
    """
    a, b = _pair(feats_real, feats_fake)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm(s1 @ s2)
    if covmean is None:
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset), check=False)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    fd = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)  # round-off can give a tiny negative value for identical sets


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m = x.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def kid(feats_real, feats_fake, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance analogue: unbiased MMD^2, kernel ``(x·y / d + 1)^3``.

    Averaged over ``subsets`` random subsets of ``min(subset_size, n_real, n_fake)`` rows
    from each set (drawn without replacement within a subset).

    Returns
    -------
    (mean, std) over the subsets; the mean is unbiased, so it can be slightly negative.
    """
    a, b = _pair(feats_real, feats_fake)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets={subsets} must be >= 1 and subset_size={subset_size} >= 2")
    m = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    vals = [_poly_mmd2(a[rng.choice(a.shape[0], m, replace=False)],
                       b[rng.choice(b.shape[0], m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _kth_nn_radius(x: np.ndarray, k: int) -> np.ndarray:
    # k + 1 neighbours because each point is its own nearest neighbour.
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, k]


def precision_recall_density_coverage(feats_real, feats_fake, k: int = 5,
                                      chunk: int = 1024) -> dict[str, float]:
    """k-NN manifold precision, recall, density and coverage.

    Each set's manifold is the union of balls around its points with radius the distance
    to the k-th nearest neighbour in the same set.

    - precision: share of fakes inside the real manifold (fidelity).
    - recall: share of reals inside the fake manifold (diversity).
    - density: mean number of real balls containing each fake, divided by k (can exceed 1).
    - coverage: share of real points whose ball contains at least one fake.

    Parameters
    ----------
    feats_real, feats_fake : arrays of shape (n_real, d), (n_fake, d), each with > k rows.
    """
    a, b = _pair(feats_real, feats_fake, min_rows=k + 1)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    r_real, r_fake = _kth_nn_radius(a, k), _kth_nn_radius(b, k)
    in_real = np.zeros(b.shape[0], bool)           # fake j inside the real manifold
    density_hits = 0
    real_in_fake = np.zeros(a.shape[0], bool)      # real i inside the fake manifold
    nearest_fake = np.full(a.shape[0], np.inf)     # distance from real i to its nearest fake
    a_sq = (a ** 2).sum(1)
    for s in range(0, b.shape[0], chunk):
        fb = b[s:s + chunk]
        d2 = (fb ** 2).sum(1)[:, None] + a_sq[None, :] - 2 * fb @ a.T
        dist = np.sqrt(np.maximum(d2, 0.0))        # (chunk, n_real)
        inside = dist <= r_real[None, :]
        in_real[s:s + chunk] = inside.any(1)
        density_hits += int(inside.sum())
        real_in_fake |= (dist <= r_fake[s:s + chunk, None]).any(0)
        nearest_fake = np.minimum(nearest_fake, dist.min(0))
    return {"precision": float(in_real.mean()), "recall": float(real_in_fake.mean()),
            "density": float(density_hits / (k * b.shape[0])),
            "coverage": float((nearest_fake <= r_real).mean())}


def cluster_fidelity(pred_clusters, intended_clusters) -> dict:
    """Share of generated images that the classifier assigns to the cluster they were made for.

    Returns
    -------
    {"fidelity": overall share, "per_cluster": {k: share}, "n_per_cluster": {k: count}}
    """
    pred = np.asarray(pred_clusters).ravel()
    want = np.asarray(intended_clusters).ravel()
    if pred.shape != want.shape or pred.size == 0:
        raise ValueError(f"pred_clusters ({pred.size}) and intended_clusters ({want.size}) must be "
                         "non-empty and the same length")
    hit = pred == want
    ks = np.unique(want)
    return {"fidelity": float(hit.mean()),
            "per_cluster": {int(k): float(hit[want == k].mean()) for k in ks},
            "n_per_cluster": {int(k): int((want == k).sum()) for k in ks}}


def classifier_score(probs, splits: int = 10, seed: int = 0,
                     eps: float = 1e-12) -> tuple[float, float]:
    """Inception-score analogue on the CCI classifier: exp(E_x KL(p(y|x) || p(y))).

    Ranges from 1 (every image gets the same prediction) to the number of classes
    (confident predictions, spread evenly over the classes).

    Parameters
    ----------
    probs : array (n, n_classes), rows are class probabilities.
    splits : the score is computed on this many equal parts of the rows, shuffled with
        ``seed`` first (generated images often come grouped by cluster, and a part holding
        one cluster would score ~1); returns (mean, std) over the parts.
    """
    p = _as_2d(probs, "probs", min_rows=1)
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("probs must be rows of class probabilities (non-negative, summing to 1); "
                         "apply softmax to logits first")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits={splits} must be between 1 and the number of rows ({p.shape[0]})")
    if splits > 1:
        p = p[np.random.default_rng(seed).permutation(p.shape[0])]
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + eps) - np.log(py + eps))).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------- reports

def evaluate_features(feats_real, feats_fake, probs_fake=None, intended=None, *, k: int = 5,
                      kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                      seed: int = 0) -> dict:
    """Report dict from precomputed features (and optionally the classifier's probabilities).

    Keys: ``fid kid kid_std precision recall density coverage`` always; ``is is_std`` when
    ``probs_fake`` is given; ``fidelity fidelity_per_cluster`` when ``intended`` cluster ids
    are given too; and the sample sizes ``n_real n_fake k kid_subsets kid_subset_size
    is_splits``.
    """
    a, b = _pair(feats_real, feats_fake, min_rows=k + 1)
    kid_m, kid_s = kid(a, b, kid_subsets, kid_subset_size, seed)
    report = {"fid": frechet_distance(a, b), "kid": kid_m, "kid_std": kid_s,
              **precision_recall_density_coverage(a, b, k),
              "n_real": int(a.shape[0]), "n_fake": int(b.shape[0]), "k": k,
              "kid_subsets": kid_subsets,
              "kid_subset_size": int(min(kid_subset_size, a.shape[0], b.shape[0]))}
    if probs_fake is not None:
        p = np.asarray(probs_fake)
        if p.shape[0] != b.shape[0]:
            raise ValueError(f"probs_fake has {p.shape[0]} rows for {b.shape[0]} generated images")
        splits = min(is_splits, p.shape[0])
        report["is"], report["is_std"] = classifier_score(p, splits, seed)
        report["is_splits"] = splits
        if intended is not None:
            fid = cluster_fidelity(p.argmax(1), intended)
            report["fidelity"] = fid["fidelity"]
            report["fidelity_per_cluster"] = {str(c): v for c, v in fid["per_cluster"].items()}
    elif intended is not None:
        raise ValueError("intended clusters need probs_fake (the classifier's predictions) "
                         "to measure fidelity")
    return report


def _apply(fn: Callable, images, batch_size: int) -> np.ndarray:
    n = images.shape[0]
    return np.concatenate([np.asarray(fn(np.asarray(images[i:i + batch_size])))
                           for i in range(0, n, batch_size)])


def evaluate_generated(real_images, fake_images, features: Callable, probs: Callable | None = None,
                       intended=None, *, batch_size: int = 256, **kwargs) -> dict:
    """Extract features batch by batch, then :func:`evaluate_features`.

    Parameters
    ----------
    real_images, fake_images : (n, H, W, C) uint8, numpy or zarr (read in batches).
    features : callable, uint8 (b, H, W, C) -> (b, d) features, e.g. the classifier's embed.
    probs : callable, uint8 (b, H, W, C) -> (b, n_clusters) probabilities, optional.
    intended : (n_fake,) the cluster each fake image was generated for, optional.
    kwargs : passed to :func:`evaluate_features` (k, kid_subsets, kid_subset_size, ...).
    """
    fr, ff = _apply(features, real_images, batch_size), _apply(features, fake_images, batch_size)
    pf = None if probs is None else _apply(probs, fake_images, batch_size)
    return evaluate_features(fr, ff, pf, intended, **kwargs)


def compare_reports(reports: dict[str, dict], metrics=LOWER_IS_BETTER + HIGHER_IS_BETTER) -> dict:
    """Say which report wins on each measure (lower fid/kid, higher for the rest).

    Parameters
    ----------
    reports : {name: report}, e.g. {"per_cluster": r1, "baseline": r2}.

    Returns
    -------
    {metric: {"better": "lower"|"higher", "values": {name: value or None}, "winner": name or
    "tie"}} for each metric that at least two reports have; a report without the metric
    (e.g. ``fidelity`` for an unconditional GAN) shows None and cannot win it.
    """
    if len(reports) < 2:
        raise ValueError(f"compare_reports needs at least two reports; got {len(reports)}")
    out = {}
    for m in metrics:
        vals = {name: r.get(m) for name, r in reports.items()}
        present = {n: v for n, v in vals.items() if v is not None}
        if len(present) < 2:
            continue
        lower = m in LOWER_IS_BETTER
        best = min(present.values()) if lower else max(present.values())
        winners = [n for n, v in present.items() if v == best]
        out[m] = {"better": "lower" if lower else "higher", "values": vals,
                  "winner": winners[0] if len(winners) == 1 else "tie"}
    return out


def comparison_table(comparison: dict) -> str:
    """Markdown table of :func:`compare_reports` output ("n/a" where a report lacks a measure)."""
    if not comparison:
        return "(no common measures)"
    names = list(next(iter(comparison.values()))["values"])
    lines = ["| measure | better | " + " | ".join(names) + " | winner |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for m, c in comparison.items():
        cells = " | ".join("n/a" if c["values"][n] is None else f"{c['values'][n]:.4g}" for n in names)
        lines.append(f"| {m} | {c['better']} | {cells} | {c['winner']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- a reference feature network

class ReferenceCNN(nn.Module):
    """Small CNN for true-label features: ``embed(x)`` (N, embed_dim), ``forward(x)`` logits.

    Input: float (N, C, H, W) in [-1, 1], any H, W >= 8.
    """

    def __init__(self, channels: int, n_classes: int, embed_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, embed_dim), nn.ReLU(True))
        self.head = nn.Linear(embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def train_reference_cnn(images, labels, n_classes: int | None = None, steps: int = 600,
                        batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                        device: str | None = None) -> ReferenceCNN:
    """Train :class:`ReferenceCNN` on uint8 images (N, H, W, C) with true labels (N,)."""
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images {images.shape} must be (N, H, W, C) with one label each "
                         f"(got {labels.shape[0]} labels)")
    n_classes = n_classes or int(labels.max()) + 1
    dev = pick_device(device)
    with seeded(seed):
        model = ReferenceCNN(images.shape[3], n_classes).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, images.shape[0], batch_size)
        loss = nn.functional.cross_entropy(model(to_signed_tensor(images[idx], dev)),
                                           torch.from_numpy(labels[idx]).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def _as_input(batch: np.ndarray, device: torch.device, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    x = to_signed_tensor(batch, device)  # [-1, 1]
    return x if (lo, hi) == (-1.0, 1.0) else (x + 1) * ((hi - lo) / 2) + lo


def feature_fn(model: nn.Module, method: str = "embed",
               value_range: tuple[float, float] = (-1.0, 1.0)) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (b, H, W, C) -> ``model.<method>(x)`` features (b, d) as numpy.

    Puts ``model`` in eval mode. ``value_range`` is the pixel range the model expects:
    (-1, 1) for :class:`ReferenceCNN`, (0, 1) for the CCI classifier (``cci_core.refine.cnn.CNN``).
    """
    dev = next(model.parameters()).device
    extract = getattr(model, method)
    model.eval()

    @torch.no_grad()
    def fn(batch: np.ndarray) -> np.ndarray:
        return extract(_as_input(batch, dev, value_range)).float().cpu().numpy()
    return fn


def prob_fn(model: nn.Module,
            value_range: tuple[float, float] = (-1.0, 1.0)) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (b, H, W, C) -> softmax of ``model(x)`` (b, n_classes) as numpy (eval mode)."""
    dev = next(model.parameters()).device
    model.eval()

    @torch.no_grad()
    def fn(batch: np.ndarray) -> np.ndarray:
        return torch.softmax(model(_as_input(batch, dev, value_range)).float(), 1).cpu().numpy()
    return fn
