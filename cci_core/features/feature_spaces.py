"""Every feature space the project has, on one table: how well each clusters and, when the
corpus has labels, how well simple classifiers read it (``cci features RUN``).

Spaces (each only when its model exists; an explicitly requested space without its model
raises an error that names the command which trains it):

    pixels          raw pixels / 255, flattened (read from the corpus itself)
    pca             the clustering run's PCA projections (runs/<run>/embeddings.zarr)
    classifier      the CCI classifier's unit-norm embedding (`cci refine`)
    discriminator   an unconditional GAN discriminator's penultimate features D.features(x):
                    the baseline GAN's (whole corpus), else the per-cluster GAN trained on
                    the most images — features a GAN learns with no labels and no conditions
    selfcond        the self-conditioned GAN's discriminator features (`cci self-condition`)
    vae             a VAE encoder's latent means: the whole-corpus VAE (models/vae-corpus,
                    :func:`train_corpus_vae`), else the per-cluster VAE trained on the most images

The run, the run it was derived from (``parent_run``, e.g. a self-conditioned or refined
run's clustering run), ``<run>-refined`` and ``<run>-selfcond`` are searched for each model.

Steps (each returns a small JSON-ready dict)::

    plan = plan_features(store, run_id, FeatureParams())      # checks, finds models; writes nothing
    ext = [extract_space(store, plan, s) for s in plan["spaces"]]  # runs/<run>/features/<space>.zarr
    res = [evaluate_space(store, plan, e) for e in ext]       # k-means + probes per space
    report = write_report(store, plan, res)                   # reports/features.{json,png}

:func:`compare_local` does all of them in this process.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.cluster import cluster_run
from cci_core.store import runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store, atomic_write_json, read_json, utc_now

SPACES = ("pixels", "pca", "classifier", "discriminator", "selfcond", "vae")
PROBES = ("linear", "knn", "forest")


@dataclass
class FeatureParams:
    """Everything ``cci features`` depends on.

    spaces : the spaces to compare (None = every space whose model exists)
    k : k-means clusters (None = number of true classes when labelled, else the run's k)
    silhouette_sample : rows of the sampled silhouette
    test_fraction : held-out share of the labelled rows (seeded split)
    fractions : shares of the train split the probes are trained on
    max_train, max_test : caps on the train split (before the fractions) and on the test rows
    knn_k, forest_trees, linear_max_iter : the probes (k-NN neighbours, random-forest trees,
        logistic-regression iterations on standardised features)
    batch_size : images per batch when extracting features
    seed, device : every random draw derives from seed; device None = CUDA when present, else CPU
    """
    spaces: list[str] | None = None
    k: int | None = None
    silhouette_sample: int = 5000
    test_fraction: float = 0.2
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    max_train: int | None = None
    max_test: int | None = None
    knn_k: int = 5
    forest_trees: int = 100
    linear_max_iter: int = 500
    batch_size: int = 1024
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        for s in self.spaces or []:
            if s not in SPACES:
                raise ValueError(f"feature space {s!r} is unknown; use some of {', '.join(SPACES)}")
        if self.k is not None and self.k < 2:
            raise ValueError(f"--k {self.k} must be >= 2")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction {self.test_fraction} must lie in (0, 1)")
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"--fractions {self.fractions}: each share of the labels must lie in (0, 1]")
        for name in ("silhouette_sample", "knn_k", "forest_trees", "linear_max_iter", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("max_train", "max_test"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 2 (or None for no cap)")


def params_fields() -> set[str]:
    return {f.name for f in fields(FeatureParams)}


class SpaceUnavailable(ValueError):
    """A requested feature space whose model has not been trained (the message names the command)."""


# ----------------------------------------------------------------------------- finding models

def related_runs(store: Store, run: dict) -> list[dict]:
    """The run, the refined and self-conditioned runs made from it (its recorded children),
    then its parents (and theirs), in that order."""
    seen, out, todo = set(), [], [run]
    while todo:
        r = todo.pop(0)
        if r["run_id"] in seen:
            continue
        seen.add(r["run_id"])
        out.append(r)
        todo += runs.children(store, r["run_id"], "refined") + runs.children(store, r["run_id"], "self-conditioned")
        parent = runs.RunRecord.from_json(r).parent_run
        if parent and runs.run_file(store, parent).exists():
            todo.append(runs.read_run(store, parent))
    return out


def _find_artifact(store: Store, kind: str, uri: str) -> str | None:
    for art in runs.lineage_store(store).list(kind=kind, limit=100000):
        if Path(art.uri).resolve() == Path(uri).resolve():
            return art.id
    return None


def _trained_models(r: dict, store: Store) -> list[dict]:
    path = store.run_dir(r["run_id"]) / "models" / "training.json"
    if not path.exists():
        return []
    return [m for m in read_json(path).get("models", []) if (Path(m["dir"]) / "generator.safetensors").exists()]


def find_space(store: Store, run: dict, space: str) -> dict:
    """Where the model of one feature space is: {space, source, dir, artifact_id, note}.

    Raises :class:`SpaceUnavailable` naming the command that trains the missing model.
    """
    rid = run["run_id"]
    chain = related_runs(store, run)
    if space == "pixels":
        return {"space": space, "source": "corpus", "dir": None, "artifact_id": run["corpus_artifact_id"],
                "run_id": rid, "note": "raw pixels / 255, flattened"}
    if space == "pca":
        for r in chain:
            emb = r.get("embeddings") or {}
            path = store.run_dir(r["run_id"]) / "embeddings.zarr"
            if emb.get("embeddings_artifact_id") and path.exists():
                return {"space": space, "source": "pca", "dir": str(path), "artifact_id": emb["embeddings_artifact_id"],
                        "run_id": r["run_id"], "note": f"PCA({emb.get('n_components')}) of run {r['run_id']}"}
        raise SpaceUnavailable(f"run {rid!r} (and the runs it derives from) has no PCA embeddings; "
                               f"make them with `cci cluster {run['corpus']}`")
    if space == "classifier":
        for r in chain:
            if r.get("classifier") and (Path(r["classifier"]) / "classifier.safetensors").exists():
                aid = r.get("classifier_artifact_id") or _find_artifact(store, "classifier", r["classifier"])
                return {"space": space, "source": "cci-classifier", "dir": r["classifier"], "artifact_id": aid,
                        "run_id": r["run_id"], "note": f"CCI classifier embedding of run {r['run_id']}"}
        raise SpaceUnavailable(f"run {rid!r} has no CCI classifier; train one with `cci refine {rid}` "
                               f"(it makes run {rid}-refined, which `cci features {rid}` then finds)")
    if space == "discriminator":
        cands = []
        for depth, r in enumerate(chain):
            for m in _trained_models(r, store):
                if m.get("model") == "gan" and m["kind"] in ("baseline", "cluster"):
                    rank = 0 if m["kind"] == "baseline" else 1
                    cands.append((rank, depth, -int(m.get("n_train") or 0), r["run_id"], m))
        if cands:
            rank, _, _, r_id, m = min(cands, key=lambda c: c[:4])
            what = "unconditional baseline GAN" if rank == 0 else f"GAN of {m['name']} ({m.get('n_train')} images)"
            return {"space": space, "source": "discriminator", "dir": m["dir"], "artifact_id": m["artifact_id"],
                    "run_id": r_id, "model": m["name"], "note": f"discriminator features of the {what} of run {r_id}"}
        raise SpaceUnavailable(f"no unconditional GAN was trained for run {rid!r}; train one with `cci train {rid}` "
                               "(per-cluster GANs and the baseline)")
    if space == "selfcond":
        for r in chain:
            for m in _trained_models(r, store):
                if m.get("self_conditioned"):
                    return {"space": space, "source": "discriminator", "dir": m["dir"],
                            "artifact_id": m["artifact_id"], "run_id": r["run_id"], "model": m["name"],
                            "note": f"discriminator features of the self-conditioned GAN of run {r['run_id']}"}
        raise SpaceUnavailable(f"run {rid!r} has no self-conditioned GAN; train one with "
                               f"`cci train {rid} --mode self-conditioned` (it makes run {rid}-selfcond)")
    if space == "vae":
        for r in chain:
            d = store.run_dir(r["run_id"]) / "models" / "vae-corpus"
            if (d / "generator.safetensors").exists():
                info = read_json(d / "model.json") if (d / "model.json").exists() else {}
                return {"space": space, "source": "vae", "dir": str(d), "artifact_id": info.get("artifact_id"),
                        "run_id": r["run_id"], "model": "vae-corpus",
                        "note": f"latent means of the whole-corpus VAE of run {r['run_id']}"}
        cands = [(-int(m.get("n_train") or 0), r["run_id"], m) for r in chain for m in _trained_models(r, store)
                 if m.get("model") == "vae"]
        if cands:
            _, r_id, m = min(cands, key=lambda c: c[:2])
            return {"space": space, "source": "vae", "dir": m["dir"], "artifact_id": m["artifact_id"],
                    "run_id": r_id, "model": m["name"],
                    "note": f"latent means of the VAE of {m['name']} of run {r_id} (trained on its "
                            f"{m.get('n_train')} images only)"}
        raise SpaceUnavailable(f"no VAE was trained for run {rid!r}; train one with `cci features {rid} "
                               f"--vae-steps 2000` (one VAE on the whole corpus) or `cci train {rid} --model vae`")
    raise ValueError(f"feature space {space!r} is unknown; use some of {', '.join(SPACES)}")


def plan_features(store: Store, run_id: str, params: FeatureParams) -> dict:
    """Check a comparison request and find each space's model; writes nothing."""
    params.validate()
    run = runs.finished_run(store, run_id)
    corpus = open_corpus(store, run["corpus"], run["corpus_version"])
    y = corpus.labels()
    n_classes = int(pd.Series(y).nunique()) if y is not None else None
    spaces, skipped = [], []
    for s in params.spaces or SPACES:
        try:
            spaces.append(find_space(store, run, s))
        except SpaceUnavailable as exc:
            if params.spaces:  # asked for by name: say how to make it
                raise
            skipped.append({"space": s, "reason": str(exc)})
    probe_note = None
    if y is None:
        probe_note = (f"corpus {run['corpus']!r} v{run['corpus_version']} has no labels, so the probe columns "
                      "(linear / k-NN / random forest accuracy) are empty; ingest it with labels (IDX with its "
                      "labels file, .npz with labels, or --label-from-folder) to fill them")
    k = params.k or n_classes or len(run["partitions"])
    return {"run_id": run_id, "store": str(store.root), "run_dir": str(store.run_dir(run_id)),
            "corpus": run["corpus"], "corpus_version": run["corpus_version"],
            "corpus_artifact_id": run["corpus_artifact_id"], "n_rows": run["n_rows"], "shape": run["shape"],
            "has_labels": y is not None, "n_classes": n_classes, "k": int(k), "params": asdict(params),
            "spaces": spaces, "skipped": skipped, "probe_note": probe_note}


# ----------------------------------------------------------------------------- extraction

def _embedder(space: dict, device):
    """(fn: uint8 (B, H, W, C) -> float32 (B, F), model description)."""
    import torch
    import torch.nn.functional as F

    from cci_core.generate.image_batches import to_signed_tensor
    if space["source"] == "cci-classifier":
        from cci_core.common.torch_data import to_tensor as unit_tensor
        from cci_core.refine.refine import load_classifier
        model = load_classifier(space["dir"], device)

        def fn(x):
            return F.normalize(model.features(unit_tensor(x).to(device)).float(), dim=1)
    elif space["source"] == "discriminator":
        from cci_core.generate.sampling import load_discriminator
        model = load_discriminator(space["dir"], device)

        def fn(x):
            return model.features(to_signed_tensor(x, device)).float()
    elif space["source"] == "vae":
        from cci_core.generate.sampling import load_generator
        model = load_generator(space["dir"], device)

        def fn(x):
            return model.encode(to_signed_tensor(x, device))[0].float()
    else:
        raise ValueError(f"space {space['space']!r} is not extracted with a model")
    model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return fn(np.asarray(x)).cpu().numpy().astype(np.float32)
    return run


def extract_features(images, n_rows: int, fn, path: str | Path, batch_size: int = 1024,
                     chunk_rows: int = 16384) -> tuple[int, int]:
    """Embed the first ``n_rows`` images batch by batch with ``fn`` into a float32 Zarr
    (N, F) at ``path``, writing whole chunks. Returns (N, F)."""
    import zarr
    arr, buf, start = None, [], 0
    for s in range(0, n_rows, batch_size):
        f = fn(np.asarray(images[s:min(n_rows, s + batch_size)]))
        if arr is None:
            arr = zarr.create_array(str(path), shape=(n_rows, f.shape[1]), chunks=(min(chunk_rows, n_rows), f.shape[1]),
                                    dtype="float32", overwrite=True)
        buf.append(f)
        if sum(len(b) for b in buf) >= chunk_rows or s + batch_size >= n_rows:
            block = np.concatenate(buf)
            arr[start:start + len(block)] = block
            start += len(block)
            buf = []
    return n_rows, int(arr.shape[1])


def extract_space(store: Store, plan: dict, space: dict, producer: dict | None = None) -> dict:
    """Features of every corpus row in one space. Model spaces are embedded on the device
    chosen now into ``runs/<run>/features/<space>.zarr`` and recorded as an ``embeddings``
    artifact (inputs: the model and the corpus version); pixels and PCA are read where they are."""
    from cci_core.common.device import pick_device
    p = plan["params"]
    t0 = time.perf_counter()
    if space["source"] == "corpus":
        return {**space, "path": None, "dim": int(np.prod(plan["shape"])), "extract_seconds": 0.0, "device": None,
                "embeddings_artifact_id": None}
    if space["source"] == "pca":
        import zarr
        return {**space, "path": space["dir"], "dim": int(zarr.open_array(space["dir"], mode="r").shape[1]),
                "extract_seconds": 0.0, "device": None, "embeddings_artifact_id": space["artifact_id"]}
    device = pick_device(p["device"])
    corpus = open_corpus(store, plan["corpus"], plan["corpus_version"])
    out = Path(plan["run_dir"]) / "features" / f"{space['space']}.zarr"
    out.parent.mkdir(parents=True, exist_ok=True)
    n, dim = extract_features(corpus.images(), corpus.n_rows, _embedder(space, device), out, p["batch_size"])
    seconds = time.perf_counter() - t0
    model_id = space.get("artifact_id")
    inputs = [(plan["corpus_artifact_id"], "corpus")] + ([(model_id, "model")] if model_id else [])
    params = {"space": space["space"], "source": space["source"], "model_dir": space["dir"], "run_id": plan["run_id"],
              "corpus": plan["corpus"], "corpus_version": plan["corpus_version"], "device": str(device)}
    import hashlib
    content = hashlib.sha256(f"{model_id}|{plan['corpus_artifact_id']}|{space['space']}".encode()).hexdigest()
    art = runs.lineage_store(store).record(
        "embeddings", f"{plan['run_id']}/features/{space['space']}", str(out), content, size=n * dim * 4,
        params=params, metrics={"n_rows": n, "dim": dim, "seconds": round(seconds, 3)}, producer=producer,
        inputs=inputs)
    return {**space, "path": str(out), "dim": dim, "extract_seconds": round(seconds, 3), "device": str(device),
            "embeddings_artifact_id": art.id}


def load_features(store: Store, plan: dict, ext: dict) -> np.ndarray:
    """(N, F) float32 features of one extracted space."""
    if ext["source"] == "corpus":
        c = open_corpus(store, plan["corpus"], plan["corpus_version"])
        return c.read_images(slice(0, c.n_rows)).reshape(c.n_rows, -1).astype(np.float32) / np.float32(255.0)
    import zarr
    return np.asarray(zarr.open_array(ext["path"], mode="r")[:plan["n_rows"]], dtype=np.float32)


# ----------------------------------------------------------------------------- measures

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
                out[name][_pct(f)] = {"acc": None, "n_train": int(len(rows)),
                                      "note": "fewer than 2 classes among the training rows"}
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = make_probe(name, p, len(rows)).fit(X[rows], codes[rows])
                acc = float((model.predict(X[test]) == codes[test]).mean())
            out[name][_pct(f)] = {"acc": acc, "n_train": int(len(rows)),
                                  "seconds": round(time.perf_counter() - t0, 3)}
    return out


def _pct(f: float) -> str:
    return f"{100 * f:g}%"


def evaluate_space(store: Store, plan: dict, ext: dict) -> dict:
    """k-means (the project's MiniBatchKMeans) ACC / NMI / ARI and sampled silhouette, and
    the probes when the corpus has labels; the time each stage took."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from cci_core.cluster.cluster_metrics import cluster_acc, silhouette
    from cci_core.cluster.kmeans import MiniBatchKMeans
    p = plan["params"]
    t0 = time.perf_counter()
    X = load_features(store, plan, ext)
    timings = {"extract": ext.get("extract_seconds", 0.0), "load": round(time.perf_counter() - t0, 3)}
    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=plan["k"], batch_size=min(1024, len(X)), random_state=p["seed"]).fit(X)
    labels = km.labels_
    timings["kmeans"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    sil, sil_n = silhouette(X, labels, p["silhouette_sample"], p["seed"])
    timings["silhouette"] = round(time.perf_counter() - t0, 3)
    res = {"space": ext["space"], "note": ext["note"], "dim": int(X.shape[1]), "k": plan["k"],
           "path": ext.get("path"), "embeddings_artifact_id": ext.get("embeddings_artifact_id"),
           "model_artifact_id": ext.get("artifact_id") if ext["source"] not in ("corpus", "pca") else None,
           "device": ext.get("device"), "silhouette": sil, "silhouette_sample_size": sil_n,
           "acc": None, "nmi": None, "ari": None, "probes": None}
    corpus = open_corpus(store, plan["corpus"], plan["corpus_version"])
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
        res["probe_note"] = plan["probe_note"]
    res["timings"] = timings
    res["seconds"] = round(sum(v for v in timings.values() if isinstance(v, (int, float))), 3)
    return res


# ----------------------------------------------------------------------------- the report

def table_rows(results: list[dict], fractions) -> list[dict]:
    """One flat row per space: what the Prefect table artifact and the README show."""
    rows = []
    for r in results:
        row = {"space": r["space"], "dim": r["dim"], "acc": _r(r["acc"]), "nmi": _r(r["nmi"]), "ari": _r(r["ari"]),
               "silhouette": _r(r["silhouette"])}
        for probe in PROBES:
            for f in fractions:
                cell = (r["probes"] or {}).get(probe, {}).get(_pct(f)) if r["probes"] else None
                row[f"{probe}_{_pct(f)}"] = _r(cell["acc"]) if cell else None
        row["seconds"] = r["seconds"]
        rows.append(row)
    return rows


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no feature space)"
    cols = list(rows[0])
    fmt = lambda v: "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def save_chart(results: list[dict], path: str | Path) -> Path:
    """PNG: k-means NMI / ACC per space, and each probe's accuracy with all the labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [r["space"] for r in results]
    x = np.arange(len(names))
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    for i, m in enumerate(("acc", "nmi", "ari", "silhouette")):
        ax.bar(x + (i - 1.5) * 0.2, [r[m] or 0.0 for r in results], 0.2, label=m)
    ax.set_xticks(x, names, rotation=20)
    ax.set_title("k-means on each space")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    for i, probe in enumerate(PROBES):
        vals = []
        for r in results:
            cells = (r["probes"] or {}).get(probe) or {}
            last = cells[max(cells, key=lambda c: float(c.rstrip('%')))] if cells else None
            vals.append((last or {}).get("acc") or 0.0)
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=probe)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title("probe accuracy, largest label share" if any(r["probes"] for r in results)
                 else "probes: no labels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_report(store: Store, plan: dict, results: list[dict], producer: dict | None = None) -> dict:
    """``reports/features.json`` + ``features.png``, recorded as a ``report`` artifact."""
    order = [s["space"] for s in plan["spaces"]]
    results = sorted(results, key=lambda r: order.index(r["space"]))
    rdir = Path(plan["run_dir"]) / "reports"
    rows = table_rows(results, plan["params"]["fractions"])
    chart = save_chart(results, rdir / "features.png")
    md = [f"# Feature spaces of run `{plan['run_id']}`",
          f"corpus {plan['corpus']} v{plan['corpus_version']}, {plan['n_rows']} images; k-means with k={plan['k']}",
          "", markdown_table(rows)]
    if plan["skipped"]:
        md += ["", "not compared:"] + [f"- {s['space']}: {s['reason']}" for s in plan["skipped"]]
    if plan["probe_note"]:
        md += ["", plan["probe_note"]]
    report = {"run_id": plan["run_id"], "corpus": plan["corpus"], "corpus_version": plan["corpus_version"],
              "created_at": utc_now(), "k": plan["k"], "params": plan["params"], "spaces": results, "table": rows,
              "skipped": plan["skipped"], "probe_note": plan["probe_note"], "chart": str(chart),
              "markdown": "\n".join(md)}
    path = atomic_write_json(rdir / "features.json", report)
    inputs = [(plan["corpus_artifact_id"], "corpus")]
    inputs += [(r["embeddings_artifact_id"], "features") for r in results if r.get("embeddings_artifact_id")]
    metrics = {f"{r['space']}_{m}": r[m] for r in results for m in ("acc", "nmi", "ari", "silhouette")
               if isinstance(r[m], (int, float))}
    art = runs.lineage_store(store).record(
        "report", f"{plan['run_id']}/features", str(path), cluster_run.hash_files([path]), size=path.stat().st_size,
        params={"run_id": plan["run_id"], **plan["params"], "spaces": order}, metrics=metrics, producer=producer,
        inputs=list(dict.fromkeys(inputs)))
    runs.update_run(store, plan["run_id"], features={"report": str(path), "report_artifact_id": art.id,
                                                            "chart": str(chart), "finished_at": report["created_at"]})
    return {"run_id": plan["run_id"], "report": str(path), "report_artifact_id": art.id, "chart": str(chart),
            "table": rows, "skipped": plan["skipped"], "probe_note": plan["probe_note"], "markdown": report["markdown"],
            "spaces": results}


def compare_local(store: Store, run_id: str, params: FeatureParams | None = None) -> dict:
    """Every step of ``cci features`` in this process."""
    plan = plan_features(store, run_id, params or FeatureParams())
    results = [evaluate_space(store, plan, extract_space(store, plan, s)) for s in plan["spaces"]]
    return write_report(store, plan, results)


# ----------------------------------------------------------------------------- a whole-corpus VAE

def train_corpus_vae(store: Store, run_id: str, steps: int = 2000, width: int = 32, z_dim: int = 16,
                     batch_size: int = 64, seed: int = 0, device: str | None = None,
                     producer: dict | None = None) -> dict:
    """One VAE on the whole corpus of a run (``runs/<run>/models/vae-corpus``), recorded as a
    ``model`` artifact: the ``vae`` feature space. Resumes from its checkpoints."""
    from cci_core.generate.training_loop import TrainConfig, train_generator
    from cci_core.generate.vae import VAEConfig
    run = runs.finished_run(store, run_id)
    corpus = open_corpus(store, run["corpus"], run["corpus_version"])
    h, _, c = run["shape"]
    cfg = VAEConfig(image_size=h, channels=c, z_dim=z_dim, width=width)
    out_dir = store.run_dir(run_id) / "models" / "vae-corpus"
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, checkpoint_every=steps, seed=seed, device=device)
    res = train_generator(corpus.images(), out_dir, cfg, tcfg, n_rows=corpus.n_rows)
    gen = Path(res["generator"])
    files = [gen, gen.with_suffix(".json")]
    art = runs.lineage_store(store).record(
        "model", f"{run_id}/models/vae-corpus", str(out_dir), cluster_run.hash_files(files),
        size=sum(f.stat().st_size for f in files),
        params={"run_id": run_id, "model": "vae", "job": "vae-corpus", "model_config": asdict(cfg),
                "steps": steps, "batch_size": batch_size, "seed": seed},
        metrics={"steps": res["steps"], "n_train": res["n_train"], "seconds": round(res["seconds"], 3),
                 **{k: float(v) for k, v in res["losses"].items()}},
        producer=producer, inputs=[(run["corpus_artifact_id"], "corpus")])
    summary = {"name": "vae-corpus", "model": "vae", "dir": str(out_dir), "artifact_id": art.id,
               "steps": res["steps"], "n_train": res["n_train"], "seconds": round(res["seconds"], 3),
               "losses": res["losses"]}
    atomic_write_json(out_dir / "model.json", summary)
    return summary
