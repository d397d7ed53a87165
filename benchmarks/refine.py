"""Benchmark `cci refine` on Fashion-MNIST 70k, k = 10, over seeds; labels only score.

Per seed ``s``, on this machine and through the CLI a user runs:

    cci cluster fmnist --k 10 --seed s --run-id fm-k10-s<s>      (k-means on PCA(50))
    cci refine fm-k10-s<s> --seed s                              (defaults otherwise)

plus, in this process, the manifold baseline with the same seed (PCA(50) -> UMAP(10 dims,
20 neighbours, min_dist 0, fitted on all rows) -> GaussianMixture(10, full)). Seed 0 is
exactly the defaults: `cci cluster CORPUS --k 10` then `cci refine RUN`. Reported per seed
and as mean +- std: ACC, NMI, ARI of k-means, of the manifold baseline and of the refined
run's kept round (the final assignment, never the best round by labels), the wall time of
the whole `cci refine` command, and images/s of each stage. The load average before and
after each seed is recorded: figures are only comparable on an otherwise idle machine.

    python benchmarks/refine.py [--seeds 0 1 2] [--store /tmp/refine-bench]

Writes benchmarks/results/refine.json after every seed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.cluster.clusterers import fit_clusterer
from cci_core.cluster.labels import read_labels
from cci_core.cluster.manifold import umap_embed
from cci_core.cluster.pca import PCA
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "refine.json"
CCI = Path(sys.executable).parent / "cci"
METRICS = ("acc", "nmi", "ari")


def score(y, labels) -> dict:
    return {"acc": cluster_acc(y, labels), "nmi": float(normalized_mutual_info_score(y, labels)),
            "ari": float(adjusted_rand_score(y, labels))}


def cci(store: Path, *args: str) -> tuple[dict, float]:
    """Run one `cci ... --json` command; returns (its JSON, wall seconds)."""
    t = time.perf_counter()
    out = subprocess.run([str(CCI), *args, "--store", str(store), "--json", "--quiet"], text=True,
                         capture_output=True)
    if out.returncode:
        raise SystemExit(f"cci {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout), time.perf_counter() - t


def manifold_baseline(X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    t = time.perf_counter()
    F = np.asarray(PCA(50).fit_transform(X.reshape(len(X), -1) / 255.0), dtype=np.float32)
    U, _, note = umap_embed(F, n_components=10, n_neighbors=20, min_dist=0.0, sample_size=len(F), seed=seed)
    gmm = fit_clusterer(U, "gmm", k=10, sample_size=len(U), seed=seed, covariance_type="full")
    return {**score(y, gmm.labels), "wall_seconds": time.perf_counter() - t, "umap": note}


def refined_scores(store: Path, run_id: str) -> dict:
    """The kept round's scores, every round's, and images/s per stage, from the run's report."""
    report = json.loads((store / "runs" / run_id / "reports" / "metrics.json").read_text())
    rounds = report["rounds"]
    kept = next(r for r in rounds if r["round"] == report["chosen_round"])
    r0 = rounds[0]
    stages = {"contrastive_images_per_s": r0.get("cl_images_per_s"),
              "contrastive_seconds": r0.get("cl_seconds"),
              "train_images_per_s": float(np.mean([r["train_images_per_s"] for r in rounds])),
              "round_seconds": [r["wall_seconds"] for r in rounds],
              "cluster_seconds": [r["cluster_seconds"] for r in rounds]}
    return {**{m: kept[m] for m in METRICS}, "chosen_round": report["chosen_round"],
            "best_round_by_labels": max(rounds, key=lambda r: r["nmi"])["round"],  # reported only
            "rounds": [{k: r.get(k) for k in ("round", *METRICS, "pred_acc", "pred_nmi", "selection_score",
                                             "changed", "wall_seconds")} for r in rounds],
            "stages": stages}


def summary(per_seed: list[dict]) -> dict:
    out = {}
    for part in ("kmeans_pca50", "manifold_umap_gmm", "refined"):
        for m in (*METRICS, "wall_seconds"):
            v = np.array([s[part][m] for s in per_seed])
            out[f"{part}.{m}"] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min())}
    margin = np.array([s["refined"]["nmi"] - s["manifold_umap_gmm"]["nmi"] for s in per_seed])
    out["refined_nmi_minus_manifold"] = {"per_seed": margin.tolist(), "min": float(margin.min())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--store", default="/tmp/refine-bench")
    args = ap.parse_args()
    store = Path(args.store)
    res = {"dataset": "fashion-mnist 70k", "k": 10, "command": "cci refine RUN --seed S (defaults otherwise)",
           "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores", "per_seed": []}

    def dump():
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(res, indent=2))

    if store.exists():
        raise SystemExit(f"{store} exists: give a new --store (runs are named by seed)")
    _, res["ingest_seconds"] = cci(store, "ingest", str(DATA), "--corpus", "fmnist")
    corpus = open_corpus(Store(str(store)), "fmnist")
    X = np.asarray(corpus.images()[:corpus.n_rows])
    y = pd.factorize(corpus.labels())[0]  # the corpus's row order, as the runs see it
    res["rows"] = int(corpus.n_rows)
    for seed in args.seeds:
        row = {"seed": seed, "load_before": os.getloadavg()}
        run = f"fm-k10-s{seed}"
        _, seconds = cci(store, "cluster", "fmnist", "--k", "10", "--seed", str(seed), "--run-id", run)
        row["kmeans_pca50"] = {**score(y, read_labels(store / "runs" / run)), "wall_seconds": seconds}
        row["manifold_umap_gmm"] = manifold_baseline(X, y, seed)
        print(f"seed {seed}: k-means {row['kmeans_pca50']}, manifold {row['manifold_umap_gmm']}", flush=True)
        summary_json, seconds = cci(store, "refine", run, "--seed", str(seed), "--run-id", f"{run}-refined")
        row["refined"] = {**refined_scores(store, summary_json["run_id"]), "wall_seconds": seconds}
        row["load_after"] = os.getloadavg()
        res["per_seed"].append(row)
        print(f"seed {seed}: refined {json.dumps({m: row['refined'][m] for m in (*METRICS, 'wall_seconds')})}",
              flush=True)
        dump()
    res["summary"] = summary(res["per_seed"])
    dump()
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
