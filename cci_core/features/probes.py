"""How well one feature space serves: k-means on it (ACC / NMI / ARI against the labels, sampled
silhouette) and, when the corpus has labels, how well simple classifiers read it (linear,
k-NN and random-forest probes trained on shares of a seeded train split).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from cci_core.features.records import FeatureParams, FeaturePlan
from cci_core.store import integrity
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store

PROBES = ("linear", "knn", "forest")


def load_features(store: Store, plan: FeaturePlan | dict, ext: dict) -> np.ndarray:
    """(N, F) float32 features of one extracted space."""
    plan = FeaturePlan.of(plan)
    if ext["source"] == "corpus":
        c = open_corpus(store, plan.corpus, plan.corpus_version)
        return c.read_images(slice(0, c.n_rows)).reshape(c.n_rows, -1).astype(np.float32) / np.float32(255.0)
    arr = integrity.open_checked(ext["path"], integrity.store_label(store.root, ext["path"]))  # a damaged chunk names itself
    return np.asarray(arr[:plan.n_rows], dtype=np.float32)


def probe_split(y: np.ndarray, test_fraction: float = 0.2, seed: int = 0, max_train: int | None = None,
                max_test: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the labelled rows: (train rows in a seeded order, test rows). The
    train subset for a share f of the labels is ``train[:ceil(f * len(train))]``."""
    rows = np.flatnonzero(pd.notna(y))
    perm = np.random.default_rng(seed).permutation(rows)
    n_test = max(1, int(round(test_fraction * len(perm))))
    test, train = perm[:n_test], perm[n_test:]
    if max_test is not None:
        test = test[:max_test]
    if max_train is not None:
        train = train[:max_train]
    return train, np.sort(test)


def subset(train: np.ndarray, fraction: float) -> np.ndarray:
    return train[:max(1, int(math.ceil(fraction * len(train))))]


def make_probe(name: str, params: FeatureParams | dict, n_train: int):
    """A fresh scikit-learn estimator for one probe."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    p = params if isinstance(params, dict) else asdict(params)
    if name == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=p["linear_max_iter"]))
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=min(p["knn_k"], n_train))
    if name == "forest":
        return RandomForestClassifier(n_estimators=p["forest_trees"], random_state=p["seed"], n_jobs=1)
    raise ValueError(f"probe {name!r} is unknown; use one of {', '.join(PROBES)}")


def run_probes(X: np.ndarray, y: np.ndarray, params: FeatureParams | dict) -> dict:
    """Accuracy on the held-out rows of each probe trained on each share of the train split:
    {probe: {"1%": {"acc", "n_train", "seconds"}, ...}}, plus ``n_test``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    p = params if isinstance(params, dict) else asdict(params)
    codes = pd.factorize(y)[0]
    train, test = probe_split(y, p["test_fraction"], p["seed"], p["max_train"], p["max_test"])
    out: dict = {"n_test": int(len(test)), "n_train_full": int(len(train))}
    for name in PROBES:
        out[name] = {}
        for f in p["fractions"]:
            rows = subset(train, f)
            t0 = time.perf_counter()
            if len(np.unique(codes[rows])) < 2:
                out[name][pct(f)] = {"acc": None, "n_train": int(len(rows)),
                                      "note": "fewer than 2 classes among the training rows"}
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = make_probe(name, p, len(rows)).fit(X[rows], codes[rows])
                acc = float((model.predict(X[test]) == codes[test]).mean())
            out[name][pct(f)] = {"acc": acc, "n_train": int(len(rows)),
                                  "seconds": round(time.perf_counter() - t0, 3)}
    return out


def pct(f: float) -> str:
    """A label share as its column name: 0.1 -> ``10%``."""
    return f"{100 * f:g}%"


def evaluate_space(store: Store, plan: FeaturePlan | dict, ext: dict) -> dict:
    """k-means (the project's MiniBatchKMeans) ACC / NMI / ARI and sampled silhouette, and
    the probes when the corpus has labels; the time each stage took."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from cci_core.cluster.cluster_metrics import cluster_acc, silhouette
    from cci_core.cluster.kmeans import MiniBatchKMeans
    plan = FeaturePlan.of(plan)
    p = plan.params
    t0 = time.perf_counter()
    X = load_features(store, plan, ext)
    timings = {"extract": ext.get("extract_seconds", 0.0), "load": round(time.perf_counter() - t0, 3)}
    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=plan.k, batch_size=min(1024, len(X)), random_state=p.seed).fit(X)
    labels = km.labels_
    timings["kmeans"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    sil, sil_n = silhouette(X, labels, p.silhouette_sample, p.seed)
    timings["silhouette"] = round(time.perf_counter() - t0, 3)
    res = {"space": ext["space"], "note": ext["note"], "dim": int(X.shape[1]), "k": plan.k,
           "path": ext.get("path"), "embeddings_artifact_id": ext.get("embeddings_artifact_id"),
           "model_artifact_id": ext.get("artifact_id") if ext["source"] not in ("corpus", "pca") else None,
           "device": ext.get("device"), "silhouette": sil, "silhouette_sample_size": sil_n,
           "acc": None, "nmi": None, "ari": None, "probes": None}
    corpus = open_corpus(store, plan.corpus, plan.corpus_version)
    y = corpus.labels()
    if y is not None:
        codes = pd.factorize(y)[0]
        ok = codes >= 0
        res.update(acc=cluster_acc(codes[ok], labels[ok]), nmi=float(normalized_mutual_info_score(codes[ok], labels[ok])),
                   ari=float(adjusted_rand_score(codes[ok], labels[ok])))
        t0 = time.perf_counter()
        res["probes"] = run_probes(X, np.asarray(y, dtype=object), p)
        timings["probes"] = round(time.perf_counter() - t0, 3)
    else:
        res["probe_note"] = plan.probe_note
    res["timings"] = timings
    res["seconds"] = round(sum(v for v in timings.values() if isinstance(v, (int, float))), 3)
    return res
