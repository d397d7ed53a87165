"""Benchmark the CCI refinement on Fashion-MNIST 70k, k = 10, labels used only to score.

One run measures, on this machine: k-means on PCA(50), the manifold baseline
(PCA(50) -> UMAP(10 dims, 20 neighbours, min_dist 0, fitted on ALL rows) ->
GaussianMixture(10)), then the refinement given the manifold clustering (its ids; the
refinement's round 0 re-clusters an autoencoder code), round by round (ACC, NMI, ARI,
wall time, training images/s). Writes benchmarks/results/refine.json (rewritten after
every round).

    python benchmarks/refine.py [--rounds 2] [--steps 800] [--ae-epochs 4] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.cluster.clusterers import fit_clusterer
from cci_core.cluster.manifold import umap_embed
from cci_core.cluster.pca import PCA
from cci_core.common.device import pick_device
from cci_core.ingest.idx import read_idx
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine import refine

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "refine.json"


def score(y, labels, seconds):
    return {"acc": cluster_acc(y, labels), "nmi": float(normalized_mutual_info_score(y, labels)),
            "ari": float(adjusted_rand_score(y, labels)), "wall_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=RefineConfig.rounds)
    ap.add_argument("--steps", type=int, default=RefineConfig.steps)
    ap.add_argument("--warmup-steps", type=int, default=RefineConfig.warmup_steps)
    ap.add_argument("--ae-epochs", type=float, default=RefineConfig.ae_epochs)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/refine-bench")
    args = ap.parse_args()
    done = sorted(Path(args.out).glob("round-*/_DONE"))
    if done:
        print(f"note: {args.out} has finished rounds; the refinement resumes from them")
    torch.set_num_threads(args.threads)

    X = np.concatenate([read_idx(DATA / "train-images-idx3-ubyte.gz"),
                        read_idx(DATA / "t10k-images-idx3-ubyte.gz")])[..., None]
    y = np.concatenate([read_idx(DATA / "train-labels-idx1-ubyte.gz"),
                        read_idx(DATA / "t10k-labels-idx1-ubyte.gz")]).astype(np.int64)
    res = {"dataset": "fashion-mnist 70k", "k": 10, "device": str(pick_device()),
           "machine": f"{platform.machine()}, torch threads {args.threads}", "baselines": {}}

    def dump():
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(res, indent=2))

    t0 = time.perf_counter()
    F = np.asarray(PCA(50).fit_transform(X.reshape(len(X), -1) / 255.0), dtype=np.float32)
    t_pca = time.perf_counter() - t0
    t = time.perf_counter()
    km = fit_clusterer(F, "kmeans", k=10, seed=0)
    res["baselines"]["kmeans_pca50"] = score(y, km.labels, t_pca + time.perf_counter() - t)
    t = time.perf_counter()
    U, _, note = umap_embed(F, n_components=10, n_neighbors=20, min_dist=0.0,
                            sample_size=len(F), seed=0)  # fitted on all 70k rows
    gmm = fit_clusterer(U, "gmm", k=10, sample_size=len(U), seed=0, covariance_type="full")
    res["baselines"]["manifold_umap_gmm"] = {
        **score(y, gmm.labels, t_pca + time.perf_counter() - t), "umap": note}
    print(json.dumps(res["baselines"], indent=1), flush=True)
    dump()

    cfg = RefineConfig(rounds=args.rounds, steps=args.steps, warmup_steps=args.warmup_steps,
                       ae_epochs=args.ae_epochs)
    res["refine_config"] = asdict(cfg)
    t_ref = time.perf_counter()

    def log(line):
        print(f"[{time.perf_counter() - t_ref:7.1f}s] {line}", flush=True)
        hist = Path(args.out)
        files = sorted(hist.glob("round-*/history.json"))
        if files:
            res["rounds"] = json.loads(files[-1].read_text())
            dump()

    out = refine(X, None, gmm.labels.astype(np.int64), cfg, args.out, y_true=y, log=log)
    res["rounds"] = out.history
    res["chosen_round"] = out.chosen_round
    res["refined"] = score(y, out.labels, time.perf_counter() - t_ref)
    res["best_round_by_labels"] = max(out.history, key=lambda h: h["nmi"])["round"]  # reported only
    res["total_wall_seconds"] = time.perf_counter() - t0
    # rounds finished by an earlier (interrupted) run are not in total_wall_seconds
    res["resumed_rounds"] = [int(d.parent.name.split("-")[1]) for d in done]
    res["refine_wall_seconds_all_rounds"] = float(sum(h["wall_seconds"] for h in out.history))
    base = res["baselines"]["manifold_umap_gmm"]
    res["beats_manifold_by"] = {m: res["refined"][m] - base[m] for m in ("acc", "nmi")}
    res["train_images_per_s"] = float(np.mean([h["train_images_per_s"] for h in out.history
                                               if "train_images_per_s" in h]))
    res["ae_images_per_s"] = out.history[0].get("ae_images_per_s")
    dump()
    print(json.dumps({k: res[k] for k in ("refined", "beats_manifold_by", "chosen_round", "best_round_by_labels",
                                           "train_images_per_s", "total_wall_seconds")}, indent=1))


if __name__ == "__main__":
    main()
