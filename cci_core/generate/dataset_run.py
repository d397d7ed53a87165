"""Publish what a run's generators make as a dataset version (``cci generate``).

For every per-cluster model (or the cluster-conditional one) of a trained run, draw N images
per cluster with recorded seeds, score each with the run's cluster classifier, and publish
images + manifest + card as a new version of a dataset (:mod:`cci_core.store.datasets`), recorded in
the lineage with the models, the classifier, the clustering and the corpus version as inputs.

Manifest columns (one row per image, row i is ``images.zarr[i]``):

    index               row in images.zarr
    image_id            sha256 of the pixels
    cluster             the cluster the image was generated for
    model               model name (cluster-<k> or conditional)
    model_artifact_id   lineage id of the generator
    seed                the generation seed; ``draw`` is the image's position in that draw,
    draw                so generate(load_generator(dir), draw + 1, seed=seed)[draw] repeats it
    classifier_label    the cluster the classifier assigns
    confidence          the classifier's probability for that cluster
    accepted            classifier_label == cluster and confidence >= threshold
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.common.finite import check_values
from cci_core.generate.records import read_training
from cci_core.store import dataset_card, fs, runs
from cci_core.store.datasets import DatasetWriter
from cci_core.store.store import Store, validate_name

MANIFEST_SCHEMA = {
    "index": "int64: row in images.zarr", "image_id": "sha256 of the pixels",
    "cluster": "int32: cluster the image was generated for", "model": "generator name",
    "model_artifact_id": "lineage id of the generator", "seed": "int64: generation seed",
    "draw": "int64: position in that seed's draw", "classifier_label": "int32: cluster the classifier assigns",
    "confidence": "float32: classifier probability of classifier_label",
    "accepted": "bool: classifier_label == cluster and confidence >= threshold"}


def chosen_models(store: Store, run: dict, which: str | None) -> tuple[str, list[dict]]:
    path = store.run_dir(run["run_id"]) / "models" / "training.json"
    if not path.exists():
        raise ValueError(f"run {run['run_id']!r} has no trained generators; run `cci train {run['run_id']}` first")
    models = read_training(store, path).get("models") or []
    by_kind: dict[str, list[dict]] = {}
    for m in models:
        by_kind.setdefault(m["kind"], []).append(m)
    choice = which or ("cluster" if "cluster" in by_kind else "conditional")
    choice = {"per-cluster": "cluster", "per_cluster": "cluster"}.get(choice, choice)
    if choice not in ("cluster", "conditional"):
        raise ValueError(f"--models {which!r}: use per-cluster or conditional")
    if choice not in by_kind:
        raise ValueError(f"run {run['run_id']!r} has no {which or 'per-cluster or conditional'} generators "
                         f"(it has: {', '.join(sorted(by_kind)) or 'none'}); train them with "
                         f"`cci train {run['run_id']} --mode {'conditional' if choice == 'conditional' else 'per-cluster'}`")
    for m in by_kind[choice]:
        if not (fs.as_path(m["dir"]) / "generator.safetensors").exists():
            raise ValueError(f"generator {m['name']} of run {run['run_id']!r} is missing in {m['dir']}; "
                             f"run `cci train {run['run_id']}` again")
    return choice, by_kind[choice]


def scoring_classifier(store: Store, run: dict, device=None):
    """(probabilities function on uint8 images, classifier artifact id, description).

    The run's CCI classifier when it has one (``cci refine``); otherwise the CNN that
    ``cci evaluate`` trained on the run's cluster labels (``runs/<run>/cluster-cnn``)."""
    from cci_core.generate.eval_references import space_fns
    space, aid, desc = scoring_space(store, run)
    return space_fns(space, device)[1], aid, desc


def scoring_space(store: Store, run: dict) -> tuple[dict, str | None, str]:
    """(feature space for :func:`~cci_core.generate.eval_references.space_fns`, classifier artifact id,
    description) of the classifier :func:`scoring_classifier` scores with."""
    if run.get("classifier"):
        space = {"source": "cci-classifier", "path": run["classifier"]}
        aid, desc = run.get("classifier_artifact_id"), "CCI classifier"
    else:
        cdir = store.run_dir(run["run_id"]) / "cluster-cnn"
        if not (cdir / "model.safetensors").exists():
            raise ValueError(f"run {run['run_id']!r} has no classifier to score generated images with; run "
                             f"`cci refine {run['run_id']}` (and train/generate from the refined run) or "
                             f"`cci evaluate {run['run_id']}` first")
        space = {"source": "cluster-cnn", "path": str(cdir)}
        found = runs.lineage_store(store).by_uri(str(cdir), kind="reference_cnn")
        aid, desc = (found.id if found else None), "CNN trained on the run's cluster labels"
    return space, aid, desc


def devices_used(run: dict, chosen: list[dict], here: str) -> tuple[bool | None, dict]:
    """(deterministic, devices): where the scoring classifier and each generator were trained and
    where this generation ran. True only when every one of them is the CPU (CUDA kernels and mixed
    precision are not bitwise repeatable), False when one is not, None when one was not recorded
    (runs made before devices were recorded, the evaluation's stand-in cluster CNN)."""
    devices = {"generate": here, "train": {m["name"]: m.get("device") or "unknown" for m in chosen},
               "classifier": (run.get("clustering") or {}).get("device") if run.get("classifier") else None}
    devices["classifier"] = devices["classifier"] or "unknown"
    flat = [devices["generate"], devices["classifier"], *devices["train"].values()]
    if any(d not in ("cpu", "unknown") for d in flat):
        return False, devices
    return (None if "unknown" in flat else True), devices


def generate_dataset(store: Store, run_id: str, dataset: str, per_cluster: int = 100,
                     threshold: float = 0.5, seed: int = 0, models: str | None = None,
                     batch_size: int = 512, producer: dict | None = None, log=print, progress=None) -> dict:
    """Generate ``per_cluster`` images for every trained cluster and publish a dataset version.

    ``progress(done, total, note)``, when given, is called after each cluster's images.

    Returns a summary: dataset, version, path, counts, acceptance per cluster, artifact id.
    """
    from cci_core.common.device import pick_device
    from cci_core.generate.sampling import generate, load_generator

    validate_name(dataset, "dataset name")
    if per_cluster < 1:
        raise ValueError(f"--per-cluster {per_cluster}: give at least 1 image per cluster")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold {threshold}: a confidence threshold lies in [0, 1]")
    run = runs.finished_run(store, run_id)
    kind, chosen = chosen_models(store, run, models)
    probs, classifier_id, classifier_desc = scoring_classifier(store, run)
    inputs = [(m["artifact_id"], "model") for m in chosen]
    inputs += [(run["clustering"]["clustering_artifact_id"], "clustering"), (run["corpus_artifact_id"], "corpus")]
    if classifier_id:
        inputs.append((classifier_id, "classifier"))
    lin = runs.lineage_store(store)
    missing = [i for i, _ in inputs if lin.find(i) is None]
    if missing:  # the dataset's lineage record could not be written: refuse before any work
        raise LookupError(f"run {run_id!r} refers to {', '.join(missing)}, not in the lineage store "
                          f"{store.lineage_url}; use the store the run was made in")
    shape = tuple(run["shape"])
    jobs = []  # (model dict, cluster, seed)
    for m in chosen:
        clusters = [m["cluster"]] if kind == "cluster" else list(m.get("clusters") or range(len(run["partitions"])))
        for c in clusters:
            jobs.append((m, int(c), seed * 100003 + int(c)))
    accepted_by_cluster: dict[int, list[int]] = {}
    hashes = hashlib.sha256()
    with DatasetWriter(store, dataset, shape) as writer:
        for j, (m, c, s) in enumerate(jobs):
            gen = load_generator(m["dir"])
            labels = np.full(per_cluster, c) if kind == "conditional" else None
            imgs = generate(gen, per_cluster, labels=labels, seed=s, batch_size=batch_size)
            p = np.concatenate([np.asarray(probs(imgs[i:i + batch_size])) for i in range(0, len(imgs), batch_size)])
            check_values(p, "probabilities of generated images", run.get("classifier") or store.run_dir(run_id) / "cluster-cnn")
            lab, conf = p.argmax(1).astype(np.int32), p.max(1).astype(np.float32)
            ok = (lab == c) & (conf >= threshold)
            ids = [hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in imgs]
            for i in ids:
                hashes.update(i.encode())
            writer.append(imgs, pd.DataFrame({
                "image_id": ids, "cluster": np.full(per_cluster, c, np.int32), "model": m["name"],
                "model_artifact_id": m["artifact_id"], "seed": np.full(per_cluster, s, np.int64),
                "draw": np.arange(per_cluster, dtype=np.int64), "classifier_label": lab, "confidence": conf,
                "accepted": ok}))
            accepted_by_cluster[c] = [int(ok.sum()), per_cluster]
            log(f"cluster {c}: {per_cluster} images from {m['name']}, {int(ok.sum())} accepted")
            if progress is not None:
                progress(j + 1, len(jobs), f"cluster {c}: {int(ok.sum())} of {per_cluster} accepted")
        params = {"run_id": run_id, "per_cluster": per_cluster, "threshold": threshold, "seed": seed,
                  "models": kind, "dataset": dataset}
        content = hashes.hexdigest()
        deterministic, devices = devices_used(run, chosen, str(pick_device(None)))
        n_acc = sum(a for a, _ in accepted_by_cluster.values())
        metrics = {"n_images": writer.n, "accepted": n_acc, "acceptance_rate": n_acc / writer.n,
                   "acceptance_by_cluster": {str(c): a / n for c, (a, n) in sorted(accepted_by_cluster.items())}}
        card = {"description": f"images generated by the {kind} generators of run {run_id}, scored by the "
                               f"run's {classifier_desc}",
                "schema": MANIFEST_SCHEMA, "source_corpus": {"name": run["corpus"], "version": run["corpus_version"],
                                                              "artifact_id": run["corpus_artifact_id"]},
                "run_id": run_id, "clustering_artifact_id": run["clustering"]["clustering_artifact_id"],
                "models": {m["name"]: m["artifact_id"] for m in chosen}, "classifier_artifact_id": classifier_id,
                "classifier": classifier_desc, "params": params, "metrics": metrics,
                "lineage": {"inputs": [{"id": i, "role": r} for i, r in inputs]},
                **dataset_card.generated_card_fields(store, run, kind),
                "deterministic": deterministic, "devices": devices}

        def record(path: Path, number: int) -> str:  # before the version is visible (publish last)
            return lin.record("dataset", f"{dataset}@v{number}", str(path), content,
                              size=int(np.prod(shape)) * writer.n, params={**params, "version": number},
                              metrics=metrics, producer=producer, inputs=inputs).id
        version = writer.commit(card, record=record)
    return {"dataset": dataset, "version": version.version, "path": str(version.path),
            "artifact_id": version.card["lineage"]["artifact_id"],
            "n_images": writer.n, "accepted": n_acc, "acceptance_by_cluster": metrics["acceptance_by_cluster"],
            "models": kind, "classifier": classifier_desc, "run_id": run_id}
