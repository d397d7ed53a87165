"""Scratch probe for issue 16: contrastive CNN features -> neighbour-consistent clusters ->
confident self-labelling on Fashion-MNIST (labels only score). Writes
benchmarks/results/contrastive_probe.json (one entry per run, keyed by --tag).

Stages (each timed, images/s where images pass through the CNN):
  1. SimCLR pre-training of the CCI CNN (or --load a saved trunk);
  2. embed; k-means and GMM on the unit embedding (comparison);
  3. k-NN mining (cosine) and SCAN linear heads on the fixed features;
     optionally --scan-steps of whole-network SCAN fine-tuning;
  4. --rounds of confident self-labelling (weak-view targets, strong-view loss,
     J = J_CE + lam * J_kmeans), relabelling every row after each; stops early when
     fewer than --tol of the rows change.

    nice -n 19 python benchmarks/contrastive_probe.py --n 70000 --epochs 8 --tag a
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.common.device import pick_device
from cci_core.common.torch_data import CorpusImages
from cci_core.ingest.idx import read_idx
from cci_core.refine.cnn import CNN, CNNConfig
from cci_core.refine.contrastive import pretrain_contrastive
from cci_core.refine.rounds import embed_corpus
from cci_core.refine.scan import mine_neighbours, neighbour_purity, self_label_round, train_scan, train_scan_heads

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "contrastive_probe.json"


def score(y, labels) -> dict:
    return {"acc": round(cluster_acc(y, labels), 4),
            "nmi": round(float(normalized_mutual_info_score(y, labels)), 4),
            "ari": round(float(adjusted_rand_score(y, labels)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=70000)
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--load", default=None, help="saved state_dict: skip pre-training")
    ap.add_argument("--save", default=None)
    ap.add_argument("--knn", type=int, default=20)
    ap.add_argument("--entropy", type=float, default=5.0)
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--head-epochs", type=int, default=30)
    ap.add_argument("--scan-steps", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sl-steps", type=int, default=400)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--lam", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--tol", type=float, default=0.005)
    ap.add_argument("--bn-train", action="store_true", help="update BN statistics in self-labelling")
    ap.add_argument("--gmm", action="store_true", help="also GMM on the embedding (slow)")
    ap.add_argument("--umap", action="store_true", help="also UMAP(10) + GMM on the embedding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="probe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    stamp = lambda: f"[{time.perf_counter() - t_all:7.1f}s]"
    log = lambda s: print(stamp(), s, flush=True)

    X = np.concatenate([read_idx(DATA / "train-images-idx3-ubyte.gz"),
                        read_idx(DATA / "t10k-images-idx3-ubyte.gz")])[..., None][:args.n]
    y = np.concatenate([read_idx(DATA / "train-labels-idx1-ubyte.gz"),
                        read_idx(DATA / "t10k-labels-idx1-ubyte.gz")]).astype(np.int64)[:args.n]
    data, device, k = CorpusImages(X), pick_device(), 10
    res = {"args": vars(args), "device": str(device), "stages": {}}
    all_res = json.loads(RESULT.read_text()) if RESULT.exists() else {}

    def dump():
        res["wall_seconds"] = time.perf_counter() - t_all
        all_res[args.tag] = res
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(all_res, indent=1))

    torch.manual_seed(args.seed)
    model = CNN(CNNConfig(n_classes=k, width=16, depth=3, embed_dim=64)).to(device)
    if args.load:
        model.load_state_dict(torch.load(args.load, map_location=device))
        res["stages"]["pretrain"] = {"loaded": args.load}
    else:
        res["stages"]["pretrain"] = pretrain_contrastive(
            model, data, args.epochs, batch_size=args.batch_size, temperature=args.temperature,
            seed=args.seed, device=device, log=log, log_every=100)
        if args.save:
            torch.save(model.state_dict(), args.save)
    dump()

    def embed(tag):
        t = time.perf_counter()
        Z, P = embed_corpus(model, data, device, normalize=False)
        s = time.perf_counter() - t
        res["stages"][f"embed_{tag}"] = {"seconds": s, "images_per_s": len(Z) / s}
        return Z, P

    Z, _ = embed("pretrained")
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    from sklearn.cluster import KMeans
    t = time.perf_counter()
    km = KMeans(k, n_init=3, random_state=args.seed).fit(Zn)
    res["stages"]["kmeans_embedding"] = {**score(y, km.labels_), "seconds": time.perf_counter() - t}
    log(f"k-means on embedding {res['stages']['kmeans_embedding']}")
    if args.gmm:
        from sklearn.mixture import GaussianMixture
        t = time.perf_counter()
        g = GaussianMixture(k, covariance_type="full", n_init=3, random_state=args.seed).fit(Zn)
        res["stages"]["gmm_embedding"] = {**score(y, g.predict(Zn)),
                                          "seconds": time.perf_counter() - t}
        log(f"GMM on embedding {res['stages']['gmm_embedding']}")
    if args.umap:
        from sklearn.mixture import GaussianMixture

        from cci_core.cluster.manifold import umap_embed
        t = time.perf_counter()
        U, _, _ = umap_embed(Zn, n_components=10, n_neighbors=20, min_dist=0.0,
                             sample_size=len(Zn), seed=args.seed)
        g = GaussianMixture(k, covariance_type="full", n_init=3, random_state=args.seed).fit(U)
        res["stages"]["umap_gmm_embedding"] = {**score(y, g.predict(U)),
                                               "seconds": time.perf_counter() - t}
        log(f"UMAP + GMM on embedding {res['stages']['umap_gmm_embedding']}")
    dump()

    t = time.perf_counter()
    nb = mine_neighbours(Z, args.knn)
    res["stages"]["knn"] = {"seconds": time.perf_counter() - t,
                            "neighbour_purity": neighbour_purity(nb, y)}
    log(f"neighbours {res['stages']['knn']}")
    head, st = train_scan_heads(np.maximum(Z, 0), nb, k, n_heads=args.heads,
                                epochs=args.head_epochs, entropy_weight=args.entropy,
                                seed=args.seed)
    model.head.load_state_dict(head.state_dict())
    _, P = embed("scan_heads")
    res["stages"]["scan_heads"] = {**st, **score(y, P.argmax(1)),
                                   "confident_0.95": float((P.max(1) >= 0.95).mean())}
    log(f"SCAN heads {res['stages']['scan_heads']}")
    dump()
    if args.scan_steps:
        st = train_scan(model, data, nb, args.scan_steps, entropy_weight=args.entropy,
                        seed=args.seed, freeze_bn=not args.bn_train, device=device, log=log,
                        log_every=100)
        Z, P = embed("scan")
        res["stages"]["scan"] = {**st, **score(y, P.argmax(1)),
                                 "confident_0.95": float((P.max(1) >= 0.95).mean())}
        log(f"SCAN fine-tune {res['stages']['scan']}")
        dump()

    labels = P.argmax(1)
    res["rounds"] = []
    for r in range(args.rounds):
        Zu = torch.nn.functional.normalize(torch.from_numpy(Z), dim=1)
        cen = torch.stack([Zu[torch.from_numpy(labels == c)].mean(0) if (labels == c).any()
                           else torch.zeros(Zu.shape[1]) for c in range(k)])
        cen = torch.nn.functional.normalize(cen, dim=1)
        st = self_label_round(model, data, P, args.sl_steps, threshold=args.threshold,
                              lam=args.lam, centres=cen, lr=args.lr,
                              freeze_bn=not args.bn_train, seed=args.seed * 100 + r,
                              device=device, log=log, log_every=100)
        Z, P = embed(f"round{r}")
        new = P.argmax(1)
        changed = float((new != labels).mean())
        labels = new
        rec = {"round": r, **st, **score(y, labels), "changed": changed,
               "confident": float((P.max(1) >= args.threshold).mean())}
        res["rounds"].append(rec)
        log(f"self-label round {r}: {rec}")
        dump()
        if changed < args.tol:
            break
    res["final"] = score(y, labels)
    dump()
    log(f"final {res['final']}, wall {res['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
