"""What generated images are measured against (the first step of ``cci evaluate``): the feature networks
and the real images' features.

- ``classifier``: the run's CCI classifier, or, when the run has none, a reference CNN trained on the run's
  cluster labels (``runs/<run-id>/cluster-cnn/``) standing in for it;
- ``reference`` (only when the corpus has true labels): a reference CNN trained on the true labels, once
  per corpus version (``runs/<run-id>/reference-cnn/``, reused from the lineage store afterwards).

:func:`prepare_references` returns the JSON dict (``references.json``) the other evaluation steps read;
:func:`space_fns` turns one of its feature spaces into (features, probabilities) functions on uint8 images.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cci_core.cluster.labels import read_labels
from cci_core.common.memory import memory_budget_bytes
from cci_core.generate.records import EvaluationPlan, as_plan
from cci_core.store import fs, relpaths
from cci_core.store.corpus import open_corpus
from cci_core.store.runs import lineage_store
from cci_core.store.store import Store, hash_files


def sample_rows(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``rows`` (a seeded sample when more), sorted."""
    if len(rows) <= n:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def batched(fn, images: np.ndarray, bs: int = 512) -> np.ndarray:
    """``fn`` over ``images`` in batches of ``bs``, concatenated."""
    return np.concatenate([np.asarray(fn(images[i:i + bs])) for i in range(0, len(images), bs)])


def budget_rows(corpus, n: int) -> int:
    """``n``, or fewer: the rows of a sample read into memory whole must fit the memory budget."""
    return int(min(n, max(1, memory_budget_bytes() // int(np.prod(corpus.shape.hwc)))))


def corpus_features(corpus, rows: np.ndarray, fns: dict, bs: int = 512) -> dict:
    """``{name: (features, probabilities)}`` of corpus ``rows`` for each ``(features fn, probabilities fn)``
    in ``fns``, reading ``bs`` rows at a time (the batches :func:`batched` would make)."""
    out = {name: ([], []) for name in fns}
    for i in range(0, len(rows), bs):
        x = corpus.read_images(rows[i:i + bs])
        for name, (feats, probs) in fns.items():
            out[name][0].append(np.asarray(feats(x)))
            out[name][1].append(np.asarray(probs(x)))
    return {name: (np.concatenate(f), np.concatenate(pr)) for name, (f, pr) in out.items()}


def _train_cnn(store: Store, plan: EvaluationPlan, directory: Path, images: np.ndarray, labels: np.ndarray,
               n_classes: int, meta: dict, inputs: list, name: str, producer: dict | None):
    """Train a ReferenceCNN, save it (safetensors + JSON), record a ``reference_cnn`` artifact."""
    from cci_core.generate.gen_metrics import prob_fn, train_reference_cnn
    from cci_core.store.weights import save_weights
    p = plan.params
    t0 = time.perf_counter()
    model = train_reference_cnn(images, labels, n_classes, steps=p.ref_steps, seed=p.seed, device=p.device)
    acc = float((batched(prob_fn(model), images).argmax(1) == labels).mean())
    config = {"channels": int(images.shape[3]), "n_classes": n_classes, "embed_dim": model.head.in_features,
              "steps": p.ref_steps, "seed": p.seed, "n_train": int(len(images)), "train_acc": acc,
              "seconds": round(time.perf_counter() - t0, 3), **meta}
    path = save_weights(directory, model.state_dict(), config, name="model")
    files = [path, path.with_suffix(".json")]
    art = lineage_store(store).record(
        "reference_cnn", name, str(directory), hash_files(files), size=path.stat().st_size,
        params={k: v for k, v in config.items() if k not in ("train_acc", "seconds")},
        metrics={"train_acc": acc, "n_train": int(len(images))}, producer=producer, inputs=inputs)
    return model, art, config


def _load_cnn(directory: Path, device: str | None):
    from cci_core.common.device import pick_device
    from cci_core.common.finite import check_weights
    from cci_core.generate.gen_metrics import ReferenceCNN
    from cci_core.store.weights import load_weights
    tensors, config = load_weights(directory, "model", fields={"channels": int, "n_classes": int, "embed_dim": int})
    check_weights(tensors, directory / "model.safetensors")
    model = ReferenceCNN(config["channels"], config["n_classes"], config["embed_dim"])
    model.load_state_dict(tensors)
    return model.to(pick_device(device)).eval(), config


def _space_model(space: dict, device: str | None):
    """(model, value_range) of a feature space described in the refs."""
    if space["source"] == "cci-classifier":
        from cci_core.refine.classifier import load_classifier
        return load_classifier(space["path"], device), (0.0, 1.0)
    return _load_cnn(fs.as_path(space["path"]), device)[0], (-1.0, 1.0)


def space_fns(space: dict, device: str | None):
    """(features function, probabilities function) on uint8 images of one feature space of the refs."""
    from cci_core.generate.gen_metrics import feature_fn, prob_fn
    model, vr = _space_model(space, device)
    return feature_fn(model, "embed", vr), prob_fn(model, vr)


def _classifier_space(store: Store, plan: EvaluationPlan, corpus, labels: np.ndarray, producer) -> dict:
    """The ``classifier`` feature space: the run's CCI classifier, or a CNN on its cluster labels."""
    lin = lineage_store(store)
    if plan.classifier:
        path = str(fs.as_path(plan.classifier))
        art_id = plan.classifier_artifact_id
        if not art_id:
            art = lin.by_uri(path, kind="classifier")
            if art is None:
                files = [fs.as_path(path) / "classifier.safetensors", fs.as_path(path) / "classifier.json"]
                art = lin.record("classifier", f"{plan.run_id}/classifier", path, hash_files(files),
                                 size=files[0].stat().st_size, params={"run_id": plan.run_id},
                                 producer=producer, inputs=[(plan.clustering_artifact_id, "clustering")])
            art_id = art.id
        return {"source": "cci-classifier", "path": path, "artifact_id": art_id, "labels": "clusters",
                "note": "the run's CCI classifier (embedding features and cluster predictions)"}
    p, cdir = plan.params, fs.as_path(plan.run_dir) / "cluster-cnn"
    if (cdir / "model.safetensors").exists() and (art := lin.by_uri(str(cdir), kind="reference_cnn")):
        config = _load_cnn(cdir, p.device)[1]
    else:
        keep = sample_rows(np.flatnonzero(labels >= 0), budget_rows(corpus, p.ref_rows), p.seed)
        _, art, config = _train_cnn(
            store, plan, cdir, corpus.read_images(keep), labels[keep].astype(np.int64), plan.n_clusters,
            {"labels": "clusters", "run_id": plan.run_id, "corpus_artifact_id": plan.corpus_artifact_id},
            [(plan.clustering_artifact_id, "clustering"), (plan.corpus_artifact_id, "corpus")],
            f"{plan.run_id}/cluster-cnn", producer)
    return {"source": "cluster-cnn", "path": str(cdir), "artifact_id": art.id, "labels": "clusters",
            "train_acc": config["train_acc"],
            "note": "run has no CCI classifier: a reference CNN trained on the run's cluster labels stands in for it"}


def _reference_space(store: Store, plan: EvaluationPlan, corpus, producer) -> dict:
    """The ``reference`` feature space: a CNN on the corpus's true labels, trained once per corpus version."""
    p = plan.params
    found = None
    for art in lineage_store(store).list(kind="reference_cnn"):
        if (art.params.get("labels") == "true" and art.params.get("corpus_artifact_id") == plan.corpus_artifact_id
                and art.params.get("steps") == p.ref_steps and (fs.as_path(art.uri) / "model.safetensors").exists()):
            found = art
            break
    if found is not None:
        art, config = found, _load_cnn(fs.as_path(found.uri), p.device)[1]
    else:
        y = np.asarray(corpus.labels()).astype(str)
        classes, codes = np.unique(y, return_inverse=True)
        keep = sample_rows(np.arange(corpus.n_rows), budget_rows(corpus, p.ref_rows), p.seed)
        _, art, config = _train_cnn(
            store, plan, fs.as_path(plan.run_dir) / "reference-cnn", corpus.read_images(keep), codes[keep].astype(np.int64),
            len(classes), {"labels": "true", "classes": classes.tolist(), "corpus_artifact_id": plan.corpus_artifact_id},
            [(plan.corpus_artifact_id, "corpus")], f"{plan.corpus}@{plan.corpus_version}/reference-cnn", producer)
    return {"source": "reference-cnn", "path": art.uri, "artifact_id": art.id, "labels": "true",
            "train_acc": config["train_acc"], "note": "a reference CNN trained on the corpus's true labels"}


def prepare_references(store: Store, plan: EvaluationPlan | dict, producer: dict | None = None) -> dict:
    """The feature networks and the real images' features every group is measured against.

    Real images: a seeded sample of up to ``max_real`` rows per cluster and of up to
    ``max_real`` x clusters rows of the whole corpus; their features go to ``reports/eval/``.
    """
    from cci_core.generate.gen_metrics import evaluate_features
    plan = as_plan(EvaluationPlan, plan)
    p, eval_dir = plan.params, fs.as_path(plan.eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(store, plan.corpus, plan.corpus_version)
    labels = read_labels(plan.run_dir)
    spaces = {"classifier": _classifier_space(store, plan, corpus, labels, producer)}
    notes = [] if plan.classifier else [spaces["classifier"]["note"]]
    if plan.has_labels:
        spaces["reference"] = _reference_space(store, plan, corpus, producer)

    # -- the real images: per cluster and over the whole corpus
    per_cluster = {k: sample_rows(np.flatnonzero(labels == k), p.max_real, p.seed + 1 + k)
                   for k in range(plan.n_clusters)}
    overall = sample_rows(np.arange(corpus.n_rows), p.max_real * plan.n_clusters, p.seed)
    union = np.unique(np.concatenate([overall, *per_cluster.values()]))
    # read batch by batch: up to max_real x clusters images need not fit the memory budget
    real_feats = corpus_features(corpus, union, {name: space_fns(space, p.device) for name, space in spaces.items()})
    fs.save_npy(eval_dir / "real-rows.npy", union)
    real = {"rows": str(eval_dir / "real-rows.npy"), "n_overall": int(len(overall)),
            "n_per_cluster": {str(k): int(len(v)) for k, v in per_cluster.items()}}
    masks = {"overall": np.isin(union, overall),
             **{str(k): np.isin(union, v) for k, v in per_cluster.items()}}
    fs.save_npz(eval_dir / "real-masks.npz", **masks)
    real["masks"] = str(eval_dir / "real-masks.npz")
    floor, real_fidelity = {}, {}
    for name, space in spaces.items():
        f, pr = real_feats[name]
        fs.save_npy(eval_dir / f"real-{name}.npy", f.astype(np.float32))
        space["features"] = str(eval_dir / f"real-{name}.npy")
        space["dim"] = int(f.shape[1])
        # the floor: as many real images as a group generates (at most half the real whole-corpus
        # sample) against the rest of it, so that the floor's sample sizes are close to the groups' own
        idx = np.flatnonzero(masks["overall"])
        perm = np.random.default_rng(p.seed).permutation(idx)
        n_b = min(len(perm) // 2, p.samples * len(plan.trained_clusters))
        a, b = perm[n_b:], perm[:n_b]
        if min(len(a), len(b)) > p.k + 1:
            floor[name] = evaluate_features(f[a], f[b], pr[b], **p.metric_options())
        if name == "classifier":  # how often the classifier gives real cluster-k images cluster k
            lab = labels[union]
            ok = lab >= 0
            real_fidelity = {"fidelity": float((pr[ok].argmax(1) == lab[ok]).mean()), "n": int(ok.sum())}
    refs = {"spaces": spaces, "real": real, "floor": floor, "real_fidelity": real_fidelity, "notes": notes}
    relpaths.write_record(store.root, eval_dir / "references.json", refs)
    return refs
