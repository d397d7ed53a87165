"""Every feature space on Fashion-MNIST 70k, k = 10: how well each clusters (k-means ACC / NMI /
ARI, sampled silhouette) and how well linear / k-NN / random-forest probes read it from 1 %,
10 % and 100 % of a seeded train split (held-out test rows), with the wall time of each stage.

The pipeline is the project's own, on a temporary store: ingest the IDX files, cluster
(PCA 50 + k-means 10), optionally a short CCI refinement, train the self-conditioned GAN (its
conditions re-found on its discriminator's features), the per-cluster GANs with the
unconditional baseline and the conditional GAN (same total steps), a whole-corpus VAE, then
``feature_spaces.compare_local`` on the self-conditioned run (which finds the PCA, baseline
discriminator, VAE and classifier of its parent run), then the generator evaluation.

    python benchmarks/features.py --refine-steps 1000   # ~25 minutes on 2 shared CPU cores
    python benchmarks/features.py --gan-steps 20 --recluster-every 10 --vae-steps 10 \
        --max-train 2000 --max-test 1000 --out /tmp/f.json   # smoke

Writes benchmarks/results/features.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from cci_core.cluster import cluster_run as cr
from cci_core.features import feature_spaces as fs
from cci_core.generate import selfcond as sc
from cci_core.ingest.ingest import ingest_local
from cci_core.store.store import Store

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "features.json"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


GEN_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")


def train_generators(store: Store, args, stage) -> dict:
    """Per-cluster GANs + the unconditional baseline, and the cluster-conditional GAN, on the
    clustering run with the self-conditioned GAN's total step budget. The baseline's
    discriminator is also the ``discriminator`` feature space."""
    from cci_core.generate.settings import TrainParams
    from cci_core.generate.training_run import train_local
    k = 10
    per = max(1, args.gan_steps // k)
    common = dict(steps=per, width=args.gan_width, z_dim=64, batch_size=64, min_size=1, checkpoint_every=per,
                  device="cpu", seed=0)
    stage("train_per_cluster_and_baseline", train_local, store, "fm", TrainParams(mode="per-cluster", **common))
    stage("train_conditional", train_local, store, "fm",
          TrainParams(mode="conditional", baseline=False, **common))
    return {"steps_per_cluster": per, "total_steps": per * k}


def generation_comparison(store: Store, args, stage, budget: dict) -> dict:
    """Self-conditioned vs per-cluster vs cluster-conditional vs unconditional at the same total
    step budget, measured by the generator evaluation (``cci evaluate``) of each run. The
    ``reference`` space (a CNN trained on the true labels, shared by both runs through the
    lineage store) is common to all four; each run's ``classifier`` space is a CNN trained on
    that run's own clusters, so fidelity there measures self-consistency."""
    from cci_core.generate.evaluation_run import evaluate_local
    from cci_core.generate.settings import EvalParams
    ep = EvalParams(samples=args.eval_samples, max_real=1000, ref_steps=args.ref_steps, ref_rows=20000,
                    kid_subsets=20, kid_subset_size=500, device="cpu")
    a = stage("evaluate_clustering_run", evaluate_local, store, "fm", ep)
    b = stage("evaluate_self_conditioned_run", evaluate_local, store, "fm-selfcond", ep)
    table = []
    for run, rep, groups in (("fm", a, ["per_cluster", "conditional", "baseline"]), ("fm-selfcond", b, ["conditional"])):
        for g in groups:
            ref = rep["headline"]["reference"][g]
            own = rep["headline"]["classifier"][g]
            name = "self_conditioned" if run == "fm-selfcond" else g
            table.append({"model": name, "total_steps": budget["total_steps"], **{m: ref.get(m) for m in GEN_METRICS},
                          "fidelity_own_clusters": own.get("fidelity"), "n_fake": ref.get("n_fake")})
    return {**budget, "eval_params": ep.__dict__, "table": table,
            "features": "reference = CNN on the true labels (same for every model)",
            "reports": {"fm": a["report"], "fm-selfcond": b["report"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gan-steps", type=int, default=3000)
    ap.add_argument("--recluster-every", type=int, default=500)
    ap.add_argument("--gan-width", type=int, default=32,
                    help="GAN width (D features = 4 x width), `cci train`'s default; every GAN here gets it")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--refine-steps", type=int, default=0,
                    help="train a short CCI classifier (cci refine) with this many steps per round; 0 = skip")
    ap.add_argument("--max-train", type=int, default=20000, help="cap on the probes' train split")
    ap.add_argument("--max-test", type=int, default=5000, help="cap on the probes' held-out rows")
    ap.add_argument("--forest-trees", type=int, default=50)
    ap.add_argument("--generation", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare what the per-cluster GANs, the conditional GAN, the baseline (all trained on "
                         "the clustering run with the self-conditioned GAN's total step budget) and the "
                         "self-conditioned GAN generate")
    ap.add_argument("--eval-samples", type=int, default=200, help="generated images per cluster (evaluation)")
    ap.add_argument("--ref-steps", type=int, default=300, help="reference / cluster CNN steps (evaluation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", default=None, help="keep the store here (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    load_before = uptime()
    t_all = time.perf_counter()
    stages: dict[str, float] = {}
    tmp = tempfile.TemporaryDirectory() if args.store is None else None
    store = Store(args.store or tmp.name)

    def stage(name, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        stages[name] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {stages[name]} s", flush=True)
        return out

    stage("ingest", ingest_local, store, str(DATA), "fmnist")
    stage("cluster_pca50_kmeans10", cr.run_local, store, "fmnist", cr.ClusterParams(k=10, n_components=50), run_id="fm")
    if args.refine_steps:
        from cci_core.refine.config import RefineConfig
        from cci_core.refine.refine_run import refine_local
        stage("refine", refine_local, store, "fm",
              RefineConfig(rounds=1, steps=args.refine_steps, warmup_steps=args.refine_steps, cl_epochs=1.0, cl_min_steps=0),
              log=lambda *a: None)
    scp = sc.SelfCondParams(steps=args.gan_steps, recluster_every=args.recluster_every, width=args.gan_width,
                            z_dim=64, batch_size=64, checkpoint_every=args.recluster_every, seed=0, device="cpu")
    run = stage("self_conditioned_gan", sc.selfcond_local, store, "fm", scp, log=print)
    budget = train_generators(store, args, stage)
    stage("vae_whole_corpus", fs.train_corpus_vae, store, "fm", steps=args.vae_steps, width=16, z_dim=16,
          batch_size=64, device="cpu")
    params = fs.FeatureParams(k=10, max_train=args.max_train, max_test=args.max_test, forest_trees=args.forest_trees,
                              linear_max_iter=300, silhouette_sample=5000, device="cpu")
    rep = stage("compare", fs.compare_local, store, "fm-selfcond", params)
    generation = generation_comparison(store, args, stage, budget) if args.generation else None
    parent = json.loads((store.run_dir("fm") / "reports" / "metrics.json").read_text())
    result = {
        "dataset": "Fashion-MNIST train + test (70,000 images, 28x28), k = 10; labels used only to score",
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "uptime_before": load_before, "uptime_after": uptime()},
        "params": {**vars(args), "feature_params": params.__dict__},
        "stages_seconds": stages, "total_seconds": round(time.perf_counter() - t_all, 1),
        "table": rep["table"], "skipped": rep["skipped"],
        "per_space_timings": {r["space"]: r["timings"] for r in rep["spaces"]},
        "probe_sizes": {r["space"]: {"n_test": r["probes"]["n_test"], "n_train_full": r["probes"]["n_train_full"]}
                        for r in rep["spaces"] if r["probes"]},
        "spaces": {r["space"]: r["note"] for r in rep["spaces"]},
        "clustering_run_pca_kmeans": {m: parent.get(m) for m in ("acc", "nmi", "ari", "silhouette")},
        "self_conditioned": {"final": run["clustering"]["metrics"], "sizes": run["clustering"]["sizes"],
                             "timings": run["clustering"].get("timings"),
                             "history": json.loads((store.run_dir("fm-selfcond") / "selfcond" / "history.json")
                                                   .read_text())},
        "generation": generation,
        "markdown": rep["markdown"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(rep["markdown"])
    print(json.dumps({"stages_seconds": stages, "total_seconds": result["total_seconds"]}, indent=1))


if __name__ == "__main__":
    main()
