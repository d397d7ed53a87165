"""GPU check of the CCI refinement on Fashion-MNIST 70k: training throughput on CUDA with AMP.

Run on a CUDA machine from the repo root with the IDX files under .data/fashion-mnist; writes
$OUT/refine_gpu.json (copied to benchmarks/results/refine_gpu.json)."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
from sklearn.metrics import normalized_mutual_info_score as nmi

from cci_core.cluster.cluster_metrics import cluster_acc
from cci_core.cluster.clusterers import fit_clusterer
from cci_core.cluster.pca import PCA
from cci_core.ingest.idx import read_idx
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine import refine

D = Path(".data/fashion-mnist")
X = np.concatenate([read_idx(D / "train-images-idx3-ubyte.gz"), read_idx(D / "t10k-images-idx3-ubyte.gz")])[..., None]
y = np.concatenate([read_idx(D / "train-labels-idx1-ubyte.gz"), read_idx(D / "t10k-labels-idx1-ubyte.gz")])
out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
t0 = time.time()
Z = PCA(50).fit(X.reshape(len(X), -1).astype(np.float32) / 255).transform(X.reshape(len(X), -1).astype(np.float32) / 255)
init = fit_clusterer(Z, "kmeans", 10, seed=0).labels
out["kmeans"] = {"acc": cluster_acc(y, init), "nmi": float(nmi(y, init)), "seconds": time.time() - t0}
for name, cfg in [("kmeans-recluster", dict(rounds=1, warmup_steps=600, steps=600, recluster="kmeans")),
                  ]:
    t0 = time.time()
    res = refine(X, None, init, RefineConfig(**cfg), out_dir=f"/tmp/gpu-{name}", y_true=y, log=lambda m: print(m, flush=True))
    out[name] = {"wall_seconds": time.time() - t0, "chosen_round": res.chosen_round,
                 "rounds": [{k: r.get(k) for k in ("round", "acc", "nmi", "ari", "train_images_per_s", "ae_images_per_s",
                                                   "wall_seconds", "selection_score")} for r in res.history]}
    Path(os.environ.get("OUT", "/tmp"), "refine_gpu.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out[name]), flush=True)
