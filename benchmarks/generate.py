"""Per-cluster GANs vs one unconditional GAN (and the conditional GAN) on Fashion-MNIST.

The true labels stand in for CCI clusters. Every model gets the same total step budget:
``steps_per_cluster`` for each of the K per-cluster GANs, K * ``steps_per_cluster`` for the
unconditional baseline and for the cluster-conditional GAN. Generated images are scored on
the features of a small reference CNN trained on the true labels (no downloaded weights):
FD, KID, precision/recall/density/coverage, per-cluster fidelity and the IS analogue, each
with its sample sizes. A held-out real sample gives the floor each measure can reach.

    python benchmarks/generate.py            # ~10 minutes on 2 CPU cores
    python benchmarks/generate.py --steps-per-cluster 20 --n-fake-per-cluster 100   # smoke

Writes benchmarks/results/generate.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cci_core.generate.gan import GANConfig
from cci_core.generate.gen_metrics import (
    compare_reports,
    comparison_table,
    evaluate_features,
    feature_fn,
    frechet_distance,
    prob_fn,
    train_reference_cnn,
)
from cci_core.generate.sampling import generate, load_generator
from cci_core.generate.training_loop import TrainConfig, train_generator
from cci_core.ingest.idx import read_idx

FMNIST = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).parent / "results" / "generate.json"


def batched(fn, images, bs=500):
    return np.concatenate([fn(images[i:i + bs]) for i in range(0, len(images), bs)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-per-cluster", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32, help="g_width and d_width")
    ap.add_argument("--n-fake-per-cluster", type=int, default=500)
    ap.add_argument("--n-real", type=int, default=5000, help="real test images to compare against")
    ap.add_argument("--ref-steps", type=int, default=1500, help="reference CNN training steps")
    ap.add_argument("--mode-seeking", type=float, default=None,
                    help="weight for every GAN; default as `cci train`: 1 for the conditional GAN, 0 otherwise")
    ap.add_argument("--no-conditional", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster on a shared 2-core machine)")
    ap.add_argument("--work-dir", default=None, help="keep checkpoints/samples here (default: temp)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    x_train = read_idx(FMNIST / "train-images-idx3-ubyte.gz")[..., None]
    y_train = read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    x_test = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[..., None]
    y_test = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    k_clusters = int(y_train.max()) + 1

    t = time.perf_counter()
    ref = train_reference_cnn(x_train, y_train, k_clusters, steps=args.ref_steps, seed=0, device="cpu")
    feats, probs = feature_fn(ref), prob_fn(ref)
    ref_acc = float((batched(probs, x_test).argmax(1) == y_test).mean())
    ref_seconds = time.perf_counter() - t
    print(f"reference CNN: test accuracy {ref_acc:.3f} ({ref_seconds:.0f} s)")

    rng = np.random.default_rng(0)
    real_idx = rng.choice(len(x_test), min(args.n_real, len(x_test)), replace=False)
    f_real = batched(feats, x_test[real_idx])
    y_real = y_test[real_idx]
    n_fake = args.n_fake_per_cluster * k_clusters
    intended = np.repeat(np.arange(k_clusters), args.n_fake_per_cluster)
    kw = dict(k=5, kid_subsets=50, kid_subset_size=1000, is_splits=10, seed=0)

    def score(images, intended_ids=None):
        f, p = batched(feats, images), batched(probs, images)
        report = evaluate_features(f_real, f, p, intended_ids, **kw)
        if intended_ids is not None:  # FD within each cluster: real class k vs fakes made for k
            report["fid_per_cluster"] = {
                str(c): frechet_distance(f_real[y_real == c], f[intended_ids == c])
                for c in range(k_clusters)}
            report["fid_per_cluster_n"] = {  # [n_real, n_fake] behind each figure
                str(c): [int((y_real == c).sum()), int((intended_ids == c).sum())]
                for c in range(k_clusters)}
        return report

    cfg = GANConfig(image_size=28, channels=1, z_dim=64, g_width=args.width, d_width=args.width,
                    d_features=128)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cci-gen-bench-"))
    total = args.steps_per_cluster * k_clusters
    reports, seconds = {}, {}

    def tc(steps, conditional=False):
        ms = args.mode_seeking if args.mode_seeking is not None else (1.0 if conditional else 0.0)
        return TrainConfig(steps=steps, batch_size=args.batch_size, checkpoint_every=max(steps // 2, 1),
                           mode_seeking=ms, seed=0, device="cpu")

    # 1. one GAN per cluster, steps_per_cluster each
    t = time.perf_counter()
    fakes = []
    for c in range(k_clusters):
        d = work / "per_cluster" / f"cluster-{c}"
        train_generator(x_train, d, cfg, tc(args.steps_per_cluster), rows=np.flatnonzero(y_train == c))
        fakes.append(generate(load_generator(d, "cpu"), args.n_fake_per_cluster, seed=c))
    seconds["per_cluster"] = time.perf_counter() - t
    reports["per_cluster"] = score(np.concatenate(fakes), intended)
    print(f"per-cluster: {seconds['per_cluster']:.0f} s, fid {reports['per_cluster']['fid']:.2f}")

    # 2. baseline: one unconditional GAN on the whole corpus, same total steps
    t = time.perf_counter()
    train_generator(x_train, work / "baseline", cfg, tc(total))
    seconds["baseline"] = time.perf_counter() - t
    reports["baseline"] = score(generate(load_generator(work / "baseline", "cpu"), n_fake, seed=0))
    print(f"baseline: {seconds['baseline']:.0f} s, fid {reports['baseline']['fid']:.2f}")

    # 3. one cluster-conditional GAN, same total steps
    if not args.no_conditional:
        ccfg = GANConfig(**{**cfg.__dict__, "n_classes": k_clusters})
        t = time.perf_counter()
        train_generator(x_train, work / "conditional", ccfg, tc(total, conditional=True), labels=y_train)
        seconds["conditional"] = time.perf_counter() - t
        g = load_generator(work / "conditional", "cpu")
        reports["conditional"] = score(generate(g, n_fake, labels=intended, seed=0), intended)
        print(f"conditional: {seconds['conditional']:.0f} s, fid {reports['conditional']['fid']:.2f}")

    # The floor: real training images in place of generated ones.
    floor_idx = rng.choice(len(x_train), n_fake, replace=False)
    floor = score(x_train[floor_idx], y_train[floor_idx])

    head_to_head = compare_reports({"per_cluster": reports["per_cluster"], "baseline": reports["baseline"]})
    all_models = compare_reports(reports) if len(reports) > 2 else head_to_head
    result = {
        "benchmark": "generate",
        "dataset": "fashion-mnist (true labels as stand-in clusters)",
        "n_clusters": k_clusters,
        "budget": {"steps_per_cluster": args.steps_per_cluster, "total_steps_per_model": total,
                   "batch_size": args.batch_size},
        "mode_seeking": args.mode_seeking if args.mode_seeking is not None else "1 for the conditional GAN, 0 otherwise",
        "gan_config": cfg.__dict__,
        "reference_cnn": {"test_acc": ref_acc, "train_steps": args.ref_steps, "seconds": ref_seconds,
                          "feature_dim": int(f_real.shape[1])},
        "reports": reports,
        "real_floor": floor,
        "train_seconds": seconds,
        "per_cluster_vs_baseline": head_to_head,
        "all_models": all_models,
        "wins": {name: sum(c["winner"] == name for c in all_models.values()) for name in reports},
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "device": "cpu"},
        "seconds_total": time.perf_counter() - t_all,
        "work_dir": str(work) if args.work_dir else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(comparison_table(all_models))
    print(f"real floor: fid {floor['fid']:.3f}, precision {floor['precision']:.3f}, "
          f"recall {floor['recall']:.3f}, fidelity {floor['fidelity']:.3f}")
    print(f"wrote {out} ({result['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
