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

With ``--suite``, the same over the validation suite of labelled corpora (benchmarks/corpora.py;
``--corpora`` picks some): per corpus and seed, `cci cluster CORPUS --k K` (K = its true class
count), the manifold baseline with K components, `cci refine` with the defaults and with each
``--compare NAME=OPTIONS``; per corpus the mean over seeds and the issue's done-when (refined NMI >=
baseline NMI + 0.05, ACC >= baseline ACC); the suite means and the rule for changing a default (the
suite's mean NMI does not fall, no corpus loses more than 0.02 NMI), each way for every compared set.
``--quick`` shrinks the refinement for a smoke test of the harness (not reportable).

    python benchmarks/refine.py --suite [--corpora digits16 ...] [--seeds 0 1 2]
        [--compare 'old=--lam 0.2 --set knn=10'] [--quick] [--out benchmarks/results/refine-suite.json]

Writes benchmarks/results/refine-suite.json after every refine run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.corpora import SUITE, ingest  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "refine.json"
SUITE_RESULT = Path(__file__).parent / "results" / "refine-suite.json"
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


def manifold_baseline(X: np.ndarray, y: np.ndarray, seed: int, k: int = 10) -> dict:
    t = time.perf_counter()
    F = np.asarray(PCA(50).fit_transform(X.reshape(len(X), -1) / 255.0), dtype=np.float32)
    U, _, note = umap_embed(F, n_components=10, n_neighbors=20, min_dist=0.0, sample_size=len(F), seed=seed)
    gmm = fit_clusterer(U, "gmm", k=k, sample_size=len(U), seed=seed, covariance_type="full")
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

# ---- the validation suite (--suite): refinement defaults judged over many unlike corpora ----

RULE = ("a default change is accepted only if the suite's mean NMI does not fall and no corpus loses more "
        "than 0.02 NMI (suite mean = the mean over corpora of each corpus's mean over seeds)")
DONE_WHEN = ("per corpus, over the seeds' means: refined (defaults) NMI >= manifold baseline (PCA50 -> UMAP10 -> "
             "GMM) NMI + 0.05, and refined ACC >= the manifold baseline's ACC")
MAX_NMI_LOSS, NMI_MARGIN = 0.02, 0.05
# --quick: a smoke test of the harness, never a result (one short round, a few hundred steps in all)
QUICK = ("--rounds", "1", "--warmup-steps", "30", "--steps", "30", "--cl-epochs", "1",
         "--set", "cl_min_steps=20", "--set", "round_epochs=1")
BASELINES = ("kmeans_pca50", "manifold_umap_gmm")


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=Path(__file__).parent, text=True, capture_output=True)
    return out.stdout.strip() if out.returncode == 0 else f"unknown ({out.stderr.strip()[:200]})"


def machine_facts() -> dict:
    """What the figures depend on: cores, threads, commit (and whether tracked files differ from it)."""
    import numba
    import torch
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    nproc = subprocess.run(["nproc"], text=True, capture_output=True, env=env).stdout.strip()  # nproc obeys OMP_*
    return {"machine": platform.machine(), "nproc": int(nproc) if nproc.isdigit() else nproc,
            "affinity_cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numba_threads": numba.get_num_threads(), "cuda": torch.cuda.is_available(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                               "CCI_DASK_ADDRESS", "PREFECT_API_URL") if k in os.environ},
            "commit": _git("rev-parse", "HEAD"), "tracked_files_modified": bool(_git("status", "--porcelain", "-uno"))}


def parse_compare(specs: list[str]) -> dict[str, list[str]]:
    """``NAME=OPTIONS`` -> {NAME: [option, ...]} (OPTIONS split as a shell would)."""
    out = {}
    for spec in specs:
        name, sep, opts = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name == "defaults" or name in out:
            raise SystemExit(f"error: --compare {spec!r}: give NAME=OPTIONS with a new NAME of letters, digits, "
                             "'.', '_' or '-' (not 'defaults'), e.g. --compare 'old=--lam 0.2 --set knn=10'")
        out[name] = shlex.split(opts)
    return out


def _find(d, key: str):
    """The first value of ``key`` in a nested JSON dict (the refine summary's threads / device)."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        for v in d.values():
            if (found := _find(v, key)) is not None:
                return found
    return None


def _timed(fn, *args) -> dict:
    """``fn(*args)``'s result dict with the load average before and after it."""
    before = os.getloadavg()
    out = fn(*args)
    return {**out, "load_before": before, "load_after": os.getloadavg()}


def kmeans_run(store: Path, corpus: str, k: int, seed: int, run: str, y: np.ndarray) -> dict:
    _, seconds = cci(store, "cluster", corpus, "--k", str(k), "--seed", str(seed), "--run-id", run)
    return {**score(y, read_labels(store / "runs" / run)), "wall_seconds": seconds}


def refine_run(store: Path, run: str, seed: int, run_id: str, options: list[str]) -> dict:
    out, seconds = cci(store, "refine", run, "--seed", str(seed), "--run-id", run_id, *options)
    return {**refined_scores(store, out["run_id"]), "wall_seconds": seconds, "options": options,
            "threads": _find(out, "threads"), "device": _find(out, "device")}


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def corpus_summary(per_seed: list[dict], variants: list[str]) -> dict:
    """Mean over seeds of each method's ACC/NMI/ARI and wall seconds, and the done-when check."""
    parts = [*BASELINES, *variants]
    rows = [r for r in per_seed if all(p in r for p in parts)]  # seeds finished so far
    if not rows:
        return {}
    out = {p: {m: _stats([r[p][m] for r in rows]) for m in (*METRICS, "wall_seconds")} for p in parts}
    ref, man = out["defaults"], out["manifold_umap_gmm"]
    out["seeds"] = [r["seed"] for r in rows]
    out["done_when"] = {
        "refined_nmi_minus_manifold": ref["nmi"]["mean"] - man["nmi"]["mean"],
        "refined_acc_minus_manifold": ref["acc"]["mean"] - man["acc"]["mean"],
        "per_seed_nmi_minus_manifold": [r["defaults"]["nmi"] - r["manifold_umap_gmm"]["nmi"] for r in rows],
        "met": bool(ref["nmi"]["mean"] >= man["nmi"]["mean"] + NMI_MARGIN and ref["acc"]["mean"] >= man["acc"]["mean"])}
    return out


def rule_check(per_corpus: dict, new: str, old: str) -> dict:
    """The suite rule for changing the defaults from variant ``old`` to variant ``new``."""
    nmi = {c: (s[new]["nmi"]["mean"], s[old]["nmi"]["mean"]) for c, s in per_corpus.items() if s}
    if not nmi:
        return {}
    delta = {c: a - b for c, (a, b) in nmi.items()}
    suite_delta = float(np.mean([a for a, _ in nmi.values()]) - np.mean([b for _, b in nmi.values()]))
    worst = min(delta, key=delta.get)
    return {"change": f"{old} -> {new}", "suite_mean_nmi_delta": suite_delta, "nmi_delta_per_corpus": delta,
            "worst_corpus": worst, "worst_nmi_delta": delta[worst],
            "accepted": bool(suite_delta >= 0 and delta[worst] >= -MAX_NMI_LOSS)}


def suite_summary(res: dict, variants: list[str]) -> dict:
    per_corpus = {c: v["summary"] for c, v in res["per_corpus"].items()}
    done = {c: s for c, s in per_corpus.items() if s}
    out = {"corpora_done": list(done), "whole_suite": set(done) == set(SUITE),
           "means": {p: {m: float(np.mean([s[p][m]["mean"] for s in done.values()])) for m in (*METRICS, "wall_seconds")}
                     for p in (*BASELINES, *variants)} if done else {},
           "done_when_met": {c: s["done_when"]["met"] for c, s in done.items()},
           "rule_checks": {}}
    for name in variants[1:]:
        out["rule_checks"][f"{name}->defaults"] = rule_check(done, "defaults", name)
        out["rule_checks"][f"defaults->{name}"] = rule_check(done, name, "defaults")
    out["decides"] = bool(out["whole_suite"] and not res["quick"])
    return out


def run_suite(args) -> None:
    """Every corpus of ``args.corpora``, every seed: k-means, manifold baseline, refine variants."""
    store = Path(args.store or "/tmp/refine-suite")
    if store.exists():
        raise SystemExit(f"error: {store} exists: give a new --store (runs are named by corpus and seed)")
    compares = parse_compare(args.compare)
    variants = ["defaults", *compares]
    options = {"defaults": [], **compares}
    quick = list(QUICK) if args.quick else []
    result = Path(args.out or SUITE_RESULT)
    res = {"benchmark": "cci refine validation suite (issue 29)", "quick": args.quick,
           "reportable": not args.quick, "rule": RULE, "done_when": DONE_WHEN, "seeds": args.seeds,
           "corpora": args.corpora, "corpus_seed": args.corpus_seed,
           "commands": {"kmeans_pca50": "cci cluster CORPUS --k K --seed S (K = the true class count)",
                        "manifold_umap_gmm": "in this process: PCA(50) -> UMAP(10 dims, 20 neighbours, min_dist 0, "
                                             "all rows) -> GaussianMixture(K, full), seed S",
                        **{v: " ".join(["cci refine RUN --seed S", *options[v], *quick]) for v in variants}},
           "machine": machine_facts(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "corpus": {}, "per_corpus": {}}

    def dump():
        res["summary"] = suite_summary(res, variants)
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps(res, indent=2))

    t_all = time.perf_counter()
    for name in args.corpora:
        res["corpus"][name] = ingest(store, name, seed=args.corpus_seed)
        corpus = open_corpus(Store(str(store)), name)
        X = np.asarray(corpus.images()[:corpus.n_rows])
        y = pd.factorize(corpus.labels())[0]  # the corpus's row order, as the runs see it
        k = int(y.max()) + 1
        res["corpus"][name].update(rows=int(corpus.n_rows), k=k, stored_shape=list(X.shape[1:]))
        entry = res["per_corpus"][name] = {"per_seed": [], "summary": {}}
        for seed in args.seeds:
            run, row = f"{name}-s{seed}", {"seed": seed}
            entry["per_seed"].append(row)
            row["kmeans_pca50"] = _timed(kmeans_run, store, name, k, seed, run, y)
            row["manifold_umap_gmm"] = _timed(manifold_baseline, X, y, seed, k)
            for v in variants:
                row[v] = _timed(refine_run, store, run, seed, f"{run}-{v}", [*options[v], *quick])
                dump()
            print(f"{name} seed {seed}: " + ", ".join(
                f"{p} nmi {row[p]['nmi']:.3f} acc {row[p]['acc']:.3f} ({row[p]['wall_seconds']:.0f} s)"
                for p in (*BASELINES, *variants)), flush=True)
            entry["summary"] = corpus_summary(entry["per_seed"], variants)
            dump()
    res["wall_seconds"] = time.perf_counter() - t_all
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump()
    print(json.dumps({k: res["summary"][k] for k in ("means", "done_when_met", "rule_checks", "decides")}, indent=1))
    print(f"wrote {result}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--store", default=None, help="a new store folder (default /tmp/refine-bench, "
                    "/tmp/refine-suite with --suite)")
    ap.add_argument("--suite", action="store_true", help="the validation suite of labelled corpora")
    ap.add_argument("--corpora", nargs="+", default=list(SUITE), choices=SUITE, help="--suite: which corpora")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=OPTIONS",
                    help="--suite: also refine with these `cci refine` options (e.g. a previous set of defaults)")
    ap.add_argument("--corpus-seed", type=int, default=0, help="--suite: seed of the corpora's construction")
    ap.add_argument("--quick", action="store_true", help="--suite: shrunk refinement, a smoke test only")
    ap.add_argument("--out", default=None, help=f"result JSON (default {RESULT} or, with --suite, {SUITE_RESULT})")
    args = ap.parse_args()
    if args.suite:
        return run_suite(args)
    if args.compare or args.quick or args.corpora != list(SUITE):
        raise SystemExit("error: --corpora, --compare and --quick need --suite")
    result = Path(args.out or RESULT)
    store = Path(args.store or "/tmp/refine-bench")
    res = {"dataset": "fashion-mnist 70k", "k": 10, "command": "cci refine RUN --seed S (defaults otherwise)",
           "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores", "per_seed": []}

    def dump():
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps(res, indent=2))

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
