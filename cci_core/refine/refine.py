"""CCI refinement: pre-train the CNN, cluster its embedding, then train it on trusted
cluster pseudo-labels and re-cluster its embedding, in rounds.

Objective per training step, on a class-balanced batch of *trusted* rows, augmented:

    J = J_CE(head(x), y) + lam * J_kmeans,   J_kmeans = mean ||embed(x) - c_y||^2

where ``c_y`` are the round's cluster centres in the (unit-norm) embedding space.

Round 0 (``start``): ``contrastive`` (the default) pre-trains the CNN with SimCLR
(:mod:`cci_core.refine.contrastive`: NT-Xent on two strongly augmented views of every
image), ``autoencoder`` as the encoder of a convolutional autoencoder (N2D-style,
:mod:`cci_core.refine.autoencoder`); either way the corpus is then embedded and clustered
as in (b). ``given`` keeps the clustering :func:`refine` was given. The clustering space
joins the unit embedding and the unit pixel principal components (``pixel_dim``): the
two kinds of neighbourhood err in different places.

Every round ``r``, read top to bottom in :func:`refine`:

  (a) embed every corpus row with the EMA teacher (round 0: the pre-trained encoder);
  (b) cluster the embedding (joined with the pixel components): the manifold stage (UMAP
      + GMM, best of a few starts) and, on the same space, ``scan_heads`` SCAN heads; the
      partition is the k-means consensus of their votes (the GMM counting ``gmm_votes``
      heads), polished by a GMM started from it (``gmm_polish``: the consensus picks the
      basin, EM the boundaries). Or PCA-whitened k-means (project MiniBatchKMeans).
      Clusters left (nearly) empty are re-seeded;
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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cci_core.cluster.cluster_metrics import match_labels
from cci_core.cluster.pca import PCA
from cci_core.common.device import pick_device
from cci_core.common.seeding import seeded
from cci_core.common.torch_data import CorpusImages
from cci_core.refine.choose_k import choice_line, choose_k, parse_k_option
from cci_core.refine.classifier import last_done_round, round_dir, save_round, write_artifacts
from cci_core.refine.cnn import CNN, CNNConfig
from cci_core.refine.config import RefineConfig
from cci_core.refine.rounds import (
    cluster_centres,
    cluster_embedding,
    clustering_space,
    embed_corpus,
    external_metrics,
    internal_metrics,
    knn_consistency,
    reseed_empty,
    train_round,
    trusted_rows,
    unit,
)
from cci_core.store import fs
from cci_core.store.store import read_json
from cci_core.store.weights import load_weights


def pixel_components(data: CorpusImages, dim: int) -> np.ndarray:
    """(N, dim) float32 principal components of the pixels, read block by block.

    Up to 32x32 grey the exact covariance (D x D float64, 8 MB at D = 1,024) is cheap; wider
    images use the randomized solver, which never forms it (64x64 RGB would need 1.2 GB).
    """
    flat = data.flat_features()
    d = flat.shape[1]
    pca = PCA(min(dim, d), solver="cov" if d <= 1024 else "randomized", random_state=0)
    return np.asarray(pca.fit(flat).transform(flat).compute(), dtype=np.float32)


@dataclass
class RefineResult:
    """labels : (N,) int32 of the kept round; chosen_round; history : per-round metrics."""
    labels: np.ndarray
    chosen_round: int
    history: list = field(default_factory=list)
    model: CNN | None = None
    out_dir: Path | None = None
    k_choice: dict | None = None  # with RefineConfig.k: the choice of k (KChoice.to_json())


def with_head(model: CNN, k: int, seed: int) -> CNN:
    """``model`` with a fresh cluster head of ``k`` outputs (seeded, on the model's device)
    and ``config.n_classes = k``; the trunk and embedding head are kept."""
    from dataclasses import replace

    from torch import nn
    with seeded(seed):
        model.head = nn.Linear(model.config.embed_dim, k).to(next(model.parameters()).device)
    model.config = replace(model.config, n_classes=k)
    return model



def refine(images, n_rows: int | None, initial_labels, config: RefineConfig | None = None,
           out_dir: str | Path | None = None, y_true=None, log=print, progress=None) -> RefineResult:
    """Refine a clustering with the CCI classifier.

    Parameters
    ----------
    images : zarr.Array or ndarray (N, H, W, C) uint8, any H and W, C in (1, 3)
    n_rows : committed rows (None = all)
    initial_labels : (n_rows,) int cluster ids in [0, k) -- the clustering to start from
        (with pre-training it fixes k, unless ``config.k`` asks to choose it, and the
        cluster ids; without, it is round 0's clustering)
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
    candidates = parse_k_option(cfg.k)  # None: k is the given clustering's
    if candidates is not None and 4 * max(candidates) > n:
        raise ValueError(f"k={cfg.k}: {max(candidates)} clusters of {n} rows leave fewer than 4 "
                         f"rows a cluster; try k up to {n // 4}")
    c, h, w = data.shape  # any shape: the CNN shrinks or pads it on the device (cci_core.refine.cnn)
    y_true = None if y_true is None else np.asarray(y_true)[:n]
    device = pick_device(cfg.device)
    out = fs.as_path(out_dir) if out_dir is not None else None

    with seeded(cfg.seed):
        model = CNN(CNNConfig(in_channels=c, image_height=h, image_width=w, n_classes=k, width=cfg.width,
                              depth=cfg.depth, embed_dim=cfg.embed_dim)).to(device)
    teacher = copy.deepcopy(model)
    # carried from round to round: labels, the teacher's embedding Z and probabilities P
    state = {"labels": init.astype(np.int64), "Z": None, "P": None}
    history, start = [], 0
    kept: dict[int, tuple[np.ndarray, dict]] = {}  # per-round labels/weights without out_dir
    if out is not None and (last := last_done_round(out)) >= 0:
        d = round_dir(out, last)
        history = read_json(d / "history.json")
        if candidates is not None:  # the heads have the k round 0 chose
            k = int(history[0]["k_choice"]["k"])
            teacher = copy.deepcopy(with_head(model, k, cfg.seed))
        model.load_state_dict(load_weights(d, "student", device)[0])
        teacher.load_state_dict(load_weights(d, "classifier", device)[0])
        state = {"labels": fs.load_npy(d / "labels.npy").astype(np.int64),
                 "Z": fs.load_npy(d / "embedding.npy"), "P": fs.load_npy(d / "probs.npy")}
        start = last + 1
        log(f"resuming after round {last} from {d}")

    # progress counts optimiser steps: the pre-training's (round 0), then each round's training
    from cci_core.refine.contrastive import contrastive_steps
    from cci_core.refine.train_steps import epoch_steps
    pre = 0
    if cfg.start == "contrastive":
        pre = contrastive_steps(cfg.cl_epochs, n, cfg.batch_size, cfg.cl_min_steps)
    elif cfg.start == "autoencoder":
        pre = epoch_steps(cfg.ae_epochs, n, cfg.batch_size)
    cap = epoch_steps(cfg.round_epochs, n, cfg.batch_size)
    budget = [min(cap, cfg.warmup_steps if r == 0 else cfg.steps) for r in range(cfg.rounds + 1)]
    total, every = pre + sum(budget), max(1, (pre + sum(budget)) // 50)

    def report(r: int, step: int, what: str) -> None:
        if progress is not None:
            progress(pre + sum(budget[:r]) + step, total, f"round {r}/{cfg.rounds}, {what}")

    def pre_step(s: int, steps: int) -> None:
        if progress is not None and (s % every == 0 or s == steps):
            progress(s, total, f"round 0/{cfg.rounds}, {cfg.start} epoch "
                               f"{s * cfg.batch_size / n:.1f}/{steps * cfg.batch_size / n:.1f}")

    pixels = None  # pixel principal components, joined to the embedding when re-clustering
    if cfg.pixel_dim > 0 and (cfg.start != "given" or cfg.rounds > 0):
        pixels = pixel_components(data, cfg.pixel_dim)

    for r in range(start, cfg.rounds + 1):
        t0 = time.perf_counter()
        seed = cfg.seed * 1000 + r
        prev, rec = state["labels"], {"round": r}
        if r == 0 and cfg.start != "given":  # pre-train, then cluster the embedding
            if cfg.start == "contrastive":
                from cci_core.refine.contrastive import pretrain_contrastive
                rec.update(pretrain_contrastive(
                    model, data, cfg.cl_epochs, batch_size=cfg.batch_size, lr=cfg.cl_lr,
                    weight_decay=cfg.weight_decay, temperature=cfg.cl_temperature,
                    min_steps=cfg.cl_min_steps, seed=seed,
                    device=device, log=lambda line: log(f"  r0: {line}"), log_every=max(50, pre // 20),
                    on_step=pre_step))
                log(f"  r0: contrastive {rec['cl_seconds']:.0f}s, "
                    f"{rec['cl_images_per_s']:.0f} images/s, loss {rec['cl_loss']:.4f}")
            else:
                from cci_core.refine.autoencoder import pretrain_autoencoder
                rec.update(pretrain_autoencoder(
                    model, data, cfg.ae_epochs, batch_size=cfg.batch_size, lr=cfg.ae_lr,
                    weight_decay=cfg.weight_decay, shift=cfg.ae_shift, seed=seed, device=device,
                    on_step=pre_step))
                log(f"  r0: autoencoder {rec['ae_seconds']:.0f}s, "
                    f"{rec['ae_images_per_s']:.0f} images/s, loss {rec['ae_loss']:.4f}")
            teacher.load_state_dict(model.state_dict())
            state["Z"], _ = embed_corpus(teacher, data, device, normalize=False)
        report(r, 0, "clustering")
        if state["Z"] is not None:
            Z = state["Z"]                                                    # (a)
            spaces = clustering_space(Z, cfg, seed, pixels)
            if r == 0 and candidates is not None:  # choose k on round 0's space, no labels
                rec["k_choice"] = choose_k(spaces[1], candidates, seed).to_json()
                k = rec["k_choice"]["k"]
                teacher = copy.deepcopy(with_head(model, k, cfg.seed))
                log("  r0: k: " + choice_line(rec["k_choice"]))
            new, space, margin = cluster_embedding(                           # (b)
                Z, k, cfg, seed, previous=prev if r > 0 else None, pixels=pixels, spaces=spaces)
            new = reseed_empty(new, space, k, min_size=max(2, n // (20 * k)))
            if prev.max() < k:  # (c); a chosen k below the given one starts new ids
                new = match_labels(prev, new, k)
            centres = cluster_centres(unit(Z), new, k)
        else:  # round 0 without pre-training: the given clustering, judged in pixel PCA
            space = pixels[:, :cfg.pca_dim] if pixels is not None else pixel_components(data, cfg.pca_dim)
            new, margin, centres = prev, np.zeros(n), None
        # (d) trust: the two views agree (re-clustering vs the teacher's prediction),
        # then neighbourhood consistency, then the margin
        agree = (new == state["P"].argmax(1)) if state["P"] is not None else np.ones(n, bool)
        consistency = knn_consistency(space, new, cfg.knn)
        trusted = trusted_rows(agree + consistency + 0.01 * margin, new, k, cfg.trust_quantile)
        rec.update({"changed": float((new != prev).mean()), "agreement": float(agree.mean()),
                    "knn_consistency": float(consistency.mean()),
                    "trusted": float(trusted.mean()), **internal_metrics(space, new, cfg, seed),
                    **external_metrics(new, y_true), "cluster_seconds": time.perf_counter() - t0})
        log(f"  r{r}: clustered at {rec['cluster_seconds']:.0f}s, changed {rec['changed']:.3f}"
            + (f", acc {rec['acc']:.4f}, nmi {rec['nmi']:.4f}" if "acc" in rec else ""))
        stats = train_round(model, teacher, data, new, trusted, centres, budget[r], cfg, seed, device,
                            on_step=lambda s, r=r: s % every == 0 and report(r, s, f"step {s}/{budget[r]}"),
                            log=lambda line, r=r: log(f"  r{r}: {line}"))
        state = {"labels": new,
                 **dict(zip("ZP", embed_corpus(teacher, data, device, normalize=False)))}
        pred = state["P"].argmax(1)
        # unsupervised selection: how much of the partition the classifier, trained on the
        # trusted rows only, reproduces on all rows
        rec.update(stats, selection_score=float((pred == new).mean()),
                   **external_metrics(pred, y_true, prefix="pred_"))
        rec["wall_seconds"] = time.perf_counter() - t0
        history.append(rec)
        log("round {round}: ".format(**rec) + ", ".join(
            f"{key} {rec[key]:.4f}" for key in ("acc", "nmi", "pred_acc", "selection_score",
                                                "trusted") if rec.get(key) is not None))
        report(r, budget[r], "done" + (f", acc {rec['acc']:.4g}" if "acc" in rec else ""))
        if out is not None:
            save_round(out, r, model, teacher, state, history, cfg)
        else:
            kept[r] = (new, copy.deepcopy(teacher.state_dict()))

    # Keep the round with the best unsupervised score, with the classifier trained on it.
    best = max(history, key=lambda h: h["selection_score"])
    chosen = best["round"]
    if out is not None:
        result_labels = fs.load_npy(round_dir(out, chosen) / "labels.npy")
        teacher.load_state_dict(load_weights(round_dir(out, chosen), "classifier", device)[0])
    else:
        result_labels = kept[chosen][0]
        teacher.load_state_dict(kept[chosen][1])
    log(f"kept round {chosen} (selection score {best['selection_score']:.4f})")
    if out is not None:
        write_artifacts(out, teacher, result_labels, history, chosen, cfg)
    return RefineResult(result_labels.astype(np.int32), chosen, history, teacher.eval(), out,
                        history[0].get("k_choice") if history else None)
