"""A refined run: the CCI classifier trained on a finished clustering run, as a new run.

``cci refine RUN`` never changes RUN. It makes a new run folder (``<RUN>-refined`` unless
named) laid out like a clustering run, so everything that reads runs (predict, train,
generate) works on it unchanged::

    runs/<new-id>/run.json                 kind "refined", parent_run, refine config, status
                 refine/round-NN/           per-round checkpoints (resume after interruption)
                 classifier/classifier.*    the kept round's CNN (safetensors + JSON)
                 clustering/labels.parquet  the refined cluster of every corpus row
                 reports/metrics.json       per-round metrics and the chosen round
                 reports/explore.html       the cluster explorer page (cci_core.cluster.explore)
                 partitions/cluster-NNN.parquet
                 pictures/                  montages (nearest the centre in the classifier's
                                            embedding), curves.png (metrics per round)

Steps: :func:`start_refine` → :func:`refine_step` → :func:`cluster_run.write_partitions`
→ :func:`write_refine_pictures` → :func:`runs.finish_run`;
:func:`refine_local` runs them all in this process.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch

from cci_core.cluster import cluster_run
from cci_core.cluster.labels import LABELS_FILE, read_labels, write_labels
from cci_core.common.device import pick_device
from cci_core.common.options import from_options
from cci_core.common.threads import compute_threads
from cci_core.refine.choose_k import parse_k_option
from cci_core.refine.classifier import load_classifier
from cci_core.refine.cnn import CNNConfig
from cci_core.refine.config import RefineConfig
from cci_core.refine.records import RefinePlan
from cci_core.refine.refine import refine
from cci_core.store import fs, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store, atomic_write_json, derived_name, hash_files


def config_from_options(options: dict | None) -> RefineConfig:
    """A RefineConfig from ``{name: value}`` (values may be strings, as typed on a command line)."""
    return from_options(RefineConfig, options, "refine")


def check_refine(store: Store, run_id: str, config: RefineConfig, new_run_id: str | None = None) -> dict:
    """Everything checkable before training; returns the parent run.json. Any image shape is
    taken: the classifier shrinks or pads images on the device (:mod:`cci_core.refine.cnn`)."""
    parent = runs.finished_run(store, run_id)
    labels = fs.as_path(parent["run_dir"]) / "clustering" / LABELS_FILE
    if not labels.exists():  # checked here, before start-up, rather than by the training task
        raise FileNotFoundError(f"run {run_id!r} has no cluster labels: {labels} is missing; restore the run "
                                f"folder from a backup, or cluster the corpus again (`cci cluster {parent['corpus']}`)")
    n_noise = parent["clustering"].get("n_noise", 0)
    if n_noise:
        raise ValueError(f"run {run_id!r} leaves {n_noise} rows as noise ({parent['params']['algorithm']}); "
                         "refine needs every row in a cluster: start from kmeans, gmm or agglomerative")
    if parent["n_rows"] < config.batch_size:
        raise ValueError(f"corpus {parent['corpus']!r} has {parent['n_rows']} images, fewer than one batch "
                         f"({config.batch_size}); lower --batch-size or add images")
    ks = parse_k_option(config.k)
    if ks is not None and 4 * max(ks) > parent["n_rows"]:
        raise ValueError(f"--k {config.k}: {max(ks)} clusters of corpus {parent['corpus']!r}'s {parent['n_rows']} "
                         f"images leave fewer than 4 a cluster; use a range up to {parent['n_rows'] // 4}")
    h, w, c = parent["shape"]
    try:  # the classifier's shape options against the corpus's (any image shape: the CNN adapts it)
        CNNConfig(in_channels=c, image_height=h, image_width=w, n_classes=max(2, parent["clustering"].get("k") or 2),
                  width=config.width, depth=config.depth, embed_dim=config.embed_dim)
    except ValueError as exc:
        raise ValueError(f"refine options do not make a classifier for corpus {parent['corpus']!r} "
                         f"({h}x{w}x{c}): {exc}; change --set width/depth/embed_dim") from None
    runs.check_new_run_id(store, new_run_id or derived_name(run_id, "refined", "run id", "--run-id"))
    return parent


def start_refine(store: Store, run_id: str, config: RefineConfig, new_run_id: str | None = None) -> dict:
    """Create (or reopen, when unfinished) the refined run's folder and run.json; returns the
    plan as its JSON dict (what the tasks pass on; :meth:`RefinePlan.from_json` reads it)."""
    parent = check_refine(store, run_id, config, new_run_id)
    return runs.start_derived_run(store, parent, new_run_id or derived_name(run_id, "refined", "run id", "--run-id"),
                                  "refined", asdict(config))


def refine_step(store: Store, plan: RefinePlan | dict, log=print, producer: dict | None = None,
                progress=None) -> dict:
    """Train the classifier (resuming finished rounds), save it and the refined labels,
    record lineage; returns the clustering summary (ids, sizes, per-round metrics).
    ``progress(done, total, note)`` follows the training steps (see :func:`cci_core.refine.refine.refine`)."""
    plan = RefinePlan.of(plan)
    config = plan.config
    rdir = fs.as_path(plan.run_dir)
    c = open_corpus(store, plan.corpus, plan.corpus_version)
    parent = runs.read_run(store, plan.parent_run)
    initial = read_labels(parent["run_dir"])
    y = c.labels()
    y_codes = pd.factorize(y)[0] if y is not None else None
    result = refine(c.images(), c.n_rows, initial, config, out_dir=rdir / "refine", y_true=y_codes, log=log,
                    progress=progress)
    k = result.model.config.n_classes  # the given clustering's, or the one chosen (config.k)
    labels = np.asarray(result.labels, dtype=np.int32)  # ids already matched round to round

    cdir = rdir / "classifier"
    cdir.mkdir(parents=True, exist_ok=True)
    for name in ("classifier.safetensors", "classifier.json"):
        fs.copyfile(rdir / "refine" / name, cdir / name)
    lab_path = write_labels(rdir / "clustering", c, labels)
    history = result.history
    chosen = next((h for h in history if h.get("round") == result.chosen_round), history[-1] if history else {})
    headline = {m: chosen[m] for m in ("acc", "nmi", "ari", "silhouette", "inertia", "selection_score")
                if isinstance(chosen.get(m), (int, float))}
    sizes = np.bincount(labels, minlength=k).tolist()
    report = {"run_id": plan.run_id, "parent_run": plan.parent_run, "corpus": plan.corpus,
              "corpus_version": plan.corpus_version, "chosen_round": result.chosen_round,
              "rounds": history, "sizes": sizes, "n_clusters": k, "k_choice": result.k_choice, **headline,
              "config": plan.params}
    atomic_write_json(rdir / "reports" / "metrics.json", report)

    lin = runs.lineage_store(store)
    files = [cdir / "classifier.safetensors", cdir / "classifier.json"]
    clf = lin.record("classifier", f"{plan.run_id}/classifier", str(cdir), hash_files(files),
                     size=sum(f.stat().st_size for f in files), params=plan.params, metrics=headline,
                     producer=producer, inputs=[(plan.parent_clustering_artifact_id, "initial_clustering"),
                                                (plan.corpus_artifact_id, "corpus")])
    clustering = lin.record(
        "clustering", f"{plan.run_id}/clustering", str(rdir / "clustering"), hash_files([lab_path]),
        size=lab_path.stat().st_size, params={**plan.params, "parent_run": plan.parent_run},
        metrics={"n_clusters": k, "chosen_round": result.chosen_round, **headline}, producer=producer,
        inputs=[(clf.id, "classifier"), (plan.parent_clustering_artifact_id, "initial_clustering"),
                (plan.corpus_artifact_id, "corpus")])
    out = {"clustering_artifact_id": clustering.id, "classifier_artifact_id": clf.id, "k": k, "n_clusters": k,
           "n_noise": 0, "sizes": sizes, "metrics": headline, "chosen_round": result.chosen_round,
           "k_choice": result.k_choice,  # with config.k: scores per k, the k chosen and the rule
           "rounds": history, "report": str(rdir / "reports" / "metrics.json"),
           "changed_from_parent": float((labels != initial).mean()),
           "device": str(pick_device(config.device)),  # a CUDA-trained classifier is not bitwise repeatable
           "threads": torch.get_num_threads()}  # CPU results depend on the thread count
    runs.update_run(store, plan.run_id, clustering=out, classifier=str(cdir), classifier_artifact_id=clf.id)
    return out


def write_refine_pictures(store: Store, plan: RefinePlan | dict, cl: dict) -> list[str]:
    """Montages nearest each centre in the classifier's embedding; the per-round curves; the
    cluster explorer page ``reports/explore.html`` (:mod:`cci_core.cluster.explore`)."""
    import torch

    from cci_core.cluster.cluster_pictures import save_cluster_montages
    from cci_core.cluster.clusterers import centroids
    from cci_core.cluster.explore import build_explorer
    from cci_core.common.torch_data import CorpusImages
    from cci_core.refine.rounds import embed_corpus

    plan = RefinePlan.of(plan)
    rdir = fs.as_path(plan.run_dir)
    pics = rdir / "pictures"
    c = open_corpus(store, plan.corpus, plan.corpus_version)
    model = load_classifier(rdir / "classifier")
    Z, _ = embed_corpus(model, CorpusImages(c.images(), c.n_rows), next(model.parameters()).device)
    Z = np.asarray(Z.numpy() if isinstance(Z, torch.Tensor) else Z, dtype=np.float32)
    labels = read_labels(plan.run_dir)
    paths = save_cluster_montages(c.images(), Z, labels, centroids(Z, labels, cl["n_clusters"]), pics,
                                  n_rows=c.n_rows)
    curves = rdir / "refine" / "curves.png"
    if curves.exists():
        paths.append(fs.copyfile(curves, pics / "curves.png"))
    paths.append(build_explorer(store, plan.run_id))  # reports/explore.html
    return [str(p) for p in paths]


def refine_local(store: Store, run_id: str, config: RefineConfig | None = None,
                 new_run_id: str | None = None, log=print) -> dict:
    """Every step of ``cci refine`` in this process; returns the finished run.json."""
    config = config or RefineConfig()
    plan = RefinePlan.from_json(start_refine(store, run_id, config, new_run_id))
    with compute_threads(config.threads) if config.threads else contextlib.nullcontext():
        cl = refine_step(store, plan, log=log)
        cluster_run.write_partitions(store, plan.to_json(), cl, [(cl["classifier_artifact_id"], "classifier")])
        write_refine_pictures(store, plan, cl)
    return runs.finish_run(store, plan.run_id)
