"""Per-cluster generators against one big unconditional GAN, at an equal step budget -> results/generate.json.

What a user runs, per seed s (``cci`` commands on a store of their own)::

    cci ingest /usr/share/datasets/fashion-mnist --corpus fmnist
    cci cluster fmnist --k 10 --seed s --run-id fm-k10-s<s>          # k-means: the clusters
    cci train fm-k10-s<s> --steps 300 --seed s                        # cci train's defaults otherwise
    cci evaluate fm-k10-s<s> --seed s

``cci train``'s defaults: per cluster 300 steps, half of the 3,000-step total on a shared start (a
cluster-conditional GAN of width 24 on the pooled partitions), each cluster's GAN cut out of it and
fine-tuned on its own partition for 150 steps; the baseline, one unconditional GAN of width 32 on the
whole corpus, gets the same 3,000 steps. ``cci evaluate`` measures both on the reference features (a
CNN trained on the true labels, no downloaded weights) and on the classifier features, with the
real-vs-real floor and every sample size. Scores come from ``reports/generation.json``; parameters,
images seen, wall time and peak memory per model from ``models/training.json``.

``--timing`` (seed 0) trains the per-cluster models again on fresh copies of the run with
``--no-baseline`` on 1 and on 2 Dask workers: the span from the first model's start to the last one's
end, and whether each generator is byte-identical to the main run's (same seed, other worker count).
``--refined RUN`` adds that refined run of the same corpus (trained and evaluated the same way).

    python benchmarks/generate.py --seeds 0 1 2 --timing      # ~25 min on 2 idle cores
    python benchmarks/generate.py --steps 1000 --seeds 0 --out benchmarks/results/generate-large.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.corpora import ingest  # noqa: E402
from benchmarks.refine import cci, machine_facts  # noqa: E402

OUT = Path(__file__).parent / "results" / "generate.json"
SHOWN = ("fid", "kid", "coverage", "precision", "recall", "density", "fidelity")


def _figures(r: dict) -> dict:
    return {m: r[m] for m in (*SHOWN, "n_real", "n_fake") if isinstance(r.get(m), (int, float))}


def _span(models: list[dict]) -> float:
    """Seconds from the first model's start to the last model's end (they may run in parallel)."""
    end = [datetime.fromisoformat(m["finished_at"]).timestamp() for m in models]
    start = [e - m["wall_seconds"] for e, m in zip(end, models)]
    return round(max(end) - min(start), 1)


def measured(store: Path, run_id: str) -> dict:
    """Scores of the run's last evaluation and costs of its models."""
    report = json.loads((store / "runs" / run_id / "reports" / "generation.json").read_text())
    training = json.loads((store / "runs" / run_id / "models" / "training.json").read_text())
    models = {m["name"]: m for m in training["models"]}
    per_cluster = [m for m in training["models"] if m["kind"] in ("cluster", "shared")]
    base = models.get("baseline")
    out = {"spaces": {}, "per_cluster_measures": {}, "floor": {}}
    for space, groups in report["reports"].items():
        out["spaces"][space] = {g: _figures(r) for g, r in groups.items()}
        out["floor"][space] = _figures(report["floor"][space])
        pc = report["per_cluster"][space].get("per_cluster", {})
        out["per_cluster_measures"][space] = {k: {m: e[m] for m in ("fid", "coverage", "n_real", "n_fake") if m in e}
                                              for k, e in pc.items()}
        g = out["spaces"][space]
        out.setdefault("per_cluster_beats_baseline", {})[space] = {
            "fid": g["per_cluster"]["fid"] < g["baseline"]["fid"],
            "coverage": g["per_cluster"]["coverage"] > g["baseline"]["coverage"]}
    cluster_params = [m["n_params"] for m in per_cluster if m["kind"] == "cluster"]
    out["cost"] = {
        "per_cluster": {"models": len(cluster_params), "params_each_max": max(cluster_params),
                        "params_each_min": min(cluster_params), "params_all_clusters": sum(cluster_params),
                        "shared_start_params": next((m["n_params"] for m in per_cluster if m["kind"] == "shared"), 0),
                        "images_seen": sum(m["images_seen"] for m in per_cluster),
                        "steps": sum(m["steps"] for m in per_cluster),
                        "train_seconds_sum": round(sum(m["wall_seconds"] for m in per_cluster), 1),
                        "peak_rss_mb_max": max(m["peak_rss_mb"] for m in per_cluster)},
        "baseline": None if base is None else {
            "params": base["n_params"], "images_seen": base["images_seen"], "steps": base["steps"],
            "train_seconds": base["wall_seconds"], "peak_rss_mb": base["peak_rss_mb"]}}
    out["models"] = [{k: m.get(k) for k in ("name", "kind", "cluster", "n_train", "steps", "n_params", "images_seen",
                                             "wall_seconds", "peak_rss_mb", "worker")} for m in training["models"]]
    out["train_params"] = training["params"]
    return out


def train_and_evaluate(store: Path, run_id: str, seed: int, steps: int) -> dict:
    _, t_train = cci(store, "train", run_id, "--steps", str(steps), "--seed", str(seed))
    _, t_eval = cci(store, "evaluate", run_id, "--seed", str(seed))
    return {"run_id": run_id, "seed": seed, "train_command_seconds": round(t_train, 1),
            "evaluate_command_seconds": round(t_eval, 1), **measured(store, run_id)}


def timing(store: Path, seed: int, steps: int) -> dict:
    """The per-cluster models alone (shared start + clusters) on 1 and on 2 Dask workers."""
    out = {}
    for workers in (1, 2):
        run = f"fm-k10-s{seed}-w{workers}"
        shutil.rmtree(store / "runs" / run, ignore_errors=True)
        cci(store, "cluster", "fmnist", "--k", "10", "--seed", str(seed), "--run-id", run)
        _, t = cci(store, "train", run, "--steps", str(steps), "--seed", str(seed), "--no-baseline",
                   "--workers", str(workers))
        models = json.loads((store / "runs" / run / "models" / "training.json").read_text())["models"]
        same = [_sha(store / "runs" / run / "models" / m["name"]) == _sha(store / "runs" / f"fm-k10-s{seed}" / "models"
                                                                          / m["name"]) for m in models]
        out[f"{workers}_workers"] = {"span_seconds": _span(models), "command_seconds": round(t, 1),
                                     "workers_used": sorted({m.get("worker") or "client" for m in models}),
                                     "generators_identical_to_the_main_run": all(same)}
    return out


def _sha(model_dir: Path) -> str | None:
    path = model_dir / "generator.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="steps per cluster (cci train --steps)")
    ap.add_argument("--timing", action="store_true", help="seed 0: per-cluster training on 1 and 2 workers")
    ap.add_argument("--refined", default=None, help="a refined run of fmnist in --store to measure too")
    ap.add_argument("--store", default="/tmp/cci-generate-bench", help="the benchmark's store (kept)")
    ap.add_argument("--load", default=None, help="what else ran on the machine (recorded); default: uptime's load")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    store = Path(args.store)
    t_all = time.perf_counter()
    res = {"benchmark": "per-cluster generators (cci train defaults) vs one unconditional GAN, equal step budget",
           "machine": machine_facts(), "load_before": os.getloadavg(), "load_note": args.load,
           "steps_per_cluster": args.steps, "store": str(store)}
    if not (store / "corpora" / "fmnist").exists():
        res["corpus"] = ingest(store, "fmnist")
    res["per_seed"] = []
    for seed in args.seeds:
        run = f"fm-k10-s{seed}"
        if not (store / "runs" / run / "run.json").exists():
            cci(store, "cluster", "fmnist", "--k", "10", "--seed", str(seed), "--run-id", run)
        res["per_seed"].append(train_and_evaluate(store, run, seed, args.steps))
        s = res["per_seed"][-1]["spaces"]["reference"]
        print(f"seed {seed}: per-cluster FD {s['per_cluster']['fid']:.2f} coverage {s['per_cluster']['coverage']:.3f} | "
              f"baseline FD {s['baseline']['fid']:.2f} coverage {s['baseline']['coverage']:.3f}", flush=True)
    wins = [r["per_cluster_beats_baseline"]["reference"] for r in res["per_seed"]]
    res["per_cluster_wins_every_seed"] = {"fid": all(w["fid"] for w in wins),
                                          "coverage": all(w["coverage"] for w in wins)}
    res["smaller_models"] = all(r["cost"]["per_cluster"]["params_each_max"] < r["cost"]["baseline"]["params"]
                                for r in res["per_seed"])
    if args.refined:
        res["refined"] = train_and_evaluate(store, args.refined, args.seeds[0], args.steps)
    if args.timing:
        res["timing"] = timing(store, args.seeds[0], args.steps)
    res["load_after"] = os.getloadavg()
    res["seconds_total"] = round(time.perf_counter() - t_all, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("per_cluster_wins_every_seed", "smaller_models", "seconds_total")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
