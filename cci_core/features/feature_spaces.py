"""Every feature space the project has: where each one's model is, and the features of every
corpus row in it (``cci features RUN``; :mod:`cci_core.features.probes` measures them and
:mod:`cci_core.features.report` puts them on one table).

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

Each model is searched for in the run, then in the runs recorded as its children (its refined
and self-conditioned runs, through the run record's links), then in the run it was derived
from (``parent_run``) and its own, in that order (:func:`related_runs`).

Steps (the plan is a :class:`cci_core.features.records.FeaturePlan`; between Prefect tasks
its JSON dict, which every step also takes; the other steps return small JSON-ready dicts)::

    plan = FeaturePlan.from_json(plan_features(store, run_id, FeatureParams()))  # checks, finds models
    ext = [extract_space(store, plan, s) for s in plan.spaces]  # runs/<run>/features/<space>.zarr
    res = [evaluate_space(store, plan, e) for e in ext]         # probes: k-means + probes per space
    report = write_report(store, plan, res)                     # report: reports/features.{json,png}

:func:`compare_local` does all of them in this process.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.features.probes import evaluate_space
from cci_core.features.records import SPACES, FeatureParams, FeaturePlan, FeatureSpace
from cci_core.features.report import write_report
from cci_core.generate.records import read_training
from cci_core.store import fs, integrity, relpaths, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store, hash_files


def params_fields() -> set[str]:
    """The names of the :class:`FeatureParams` fields (the options a flow accepts)."""
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
    art = runs.lineage_store(store).by_uri(uri, kind=kind)
    return art.id if art else None


def _trained_models(r: dict, store: Store) -> list[dict]:
    path = store.run_dir(r["run_id"]) / "models" / "training.json"
    if not path.exists():
        return []
    return [m for m in read_training(store, path).get("models") or []
            if (fs.as_path(m["dir"]) / "generator.safetensors").exists()]


def find_space(store: Store, run: dict, space: str) -> FeatureSpace:
    """Where the model of one feature space is.

    Raises :class:`SpaceUnavailable` naming the command that trains the missing model.
    """
    rid = run["run_id"]
    chain = related_runs(store, run)
    if space == "pixels":
        return FeatureSpace(space, "corpus", None, run["corpus_artifact_id"], rid, note="raw pixels / 255, flattened")
    if space == "pca":
        for r in chain:
            emb = r.get("embeddings") or {}
            path = store.run_dir(r["run_id"]) / "embeddings.zarr"
            if emb.get("embeddings_artifact_id") and path.exists():
                return FeatureSpace(space, "pca", str(path), emb["embeddings_artifact_id"], r["run_id"],
                                    note=f"PCA({emb.get('n_components')}) of run {r['run_id']}")
        raise SpaceUnavailable(f"run {rid!r} (and the runs it derives from) has no PCA embeddings; "
                               f"make them with `cci cluster {run['corpus']}`")
    if space == "classifier":
        for r in chain:
            if r.get("classifier") and (fs.as_path(r["classifier"]) / "classifier.safetensors").exists():
                aid = r.get("classifier_artifact_id") or _find_artifact(store, "classifier", r["classifier"])
                return FeatureSpace(space, "cci-classifier", r["classifier"], aid, r["run_id"],
                                    note=f"CCI classifier embedding of run {r['run_id']}")
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
            return FeatureSpace(space, "discriminator", m["dir"], m["artifact_id"], r_id, m["name"],
                                f"discriminator features of the {what} of run {r_id}")
        raise SpaceUnavailable(f"no unconditional GAN was trained for run {rid!r}; train one with `cci train {rid}` "
                               "(per-cluster GANs and the baseline)")
    if space == "selfcond":
        for r in chain:
            for m in _trained_models(r, store):
                if m.get("self_conditioned"):
                    return FeatureSpace(space, "discriminator", m["dir"], m["artifact_id"], r["run_id"], m["name"],
                                        f"discriminator features of the self-conditioned GAN of run {r['run_id']}")
        raise SpaceUnavailable(f"run {rid!r} has no self-conditioned GAN; train one with "
                               f"`cci train {rid} --mode self-conditioned` (it makes run {rid}-selfcond)")
    if space == "vae":
        for r in chain:
            d = store.run_dir(r["run_id"]) / "models" / "vae-corpus"
            if (d / "generator.safetensors").exists():
                info = relpaths.read_record(store.root, d / "model.json") if (d / "model.json").exists() else {}
                return FeatureSpace(space, "vae", str(d), info.get("artifact_id"), r["run_id"], "vae-corpus",
                                    f"latent means of the whole-corpus VAE of run {r['run_id']}")
        cands = [(-int(m.get("n_train") or 0), r["run_id"], m) for r in chain for m in _trained_models(r, store)
                 if m.get("model") == "vae"]
        if cands:
            _, r_id, m = min(cands, key=lambda c: c[:2])
            return FeatureSpace(space, "vae", m["dir"], m["artifact_id"], r_id, m["name"],
                                f"latent means of the VAE of {m['name']} of run {r_id} (trained on its "
                                f"{m.get('n_train')} images only)")
        raise SpaceUnavailable(f"no VAE was trained for run {rid!r}; train one with `cci features {rid} "
                               f"--vae-steps 2000` (one VAE on the whole corpus) or `cci train {rid} --model vae`")
    raise ValueError(f"feature space {space!r} is unknown; use some of {', '.join(SPACES)}")


def plan_features(store: Store, run_id: str, params: FeatureParams) -> dict:
    """Check a comparison request and find each space's model; writes nothing. Returns the
    plan's JSON dict (:meth:`FeaturePlan.to_json`), what the Prefect tasks pass."""
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
    return FeaturePlan(run_id=run_id, store=str(store.root), run_dir=str(store.run_dir(run_id)),
                       corpus=run["corpus"], corpus_version=run["corpus_version"],
                       corpus_artifact_id=run["corpus_artifact_id"], n_rows=run["n_rows"], shape=tuple(run["shape"]),
                       has_labels=y is not None, n_classes=n_classes, k=int(k), params=params,
                       spaces=tuple(spaces), skipped=tuple(skipped), probe_note=probe_note).to_json()


# ----------------------------------------------------------------------------- extraction

def _embedder(space: FeatureSpace, device):
    """fn: uint8 (B, H, W, C) -> float32 (B, F), the features of one space's model."""
    import torch
    import torch.nn.functional as F

    from cci_core.generate.image_batches import to_signed_tensor
    if space.source == "cci-classifier":
        from cci_core.common.torch_data import to_tensor as unit_tensor
        from cci_core.refine.classifier import load_classifier
        model = load_classifier(space.dir, device)

        def fn(x):
            return F.normalize(model.features(unit_tensor(x).to(device)).float(), dim=1)
    elif space.source == "discriminator":
        from cci_core.generate.sampling import load_discriminator
        model = load_discriminator(space.dir, device)

        def fn(x):
            return model.features(to_signed_tensor(x, device)).float()
    elif space.source == "vae":
        from cci_core.generate.sampling import load_generator
        model = load_generator(space.dir, device)

        def fn(x):
            return model.encode(to_signed_tensor(x, device))[0].float()
    else:
        raise ValueError(f"space {space.space!r} is not extracted with a model")
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
            arr = zarr.create_array(fs.zarr_url(path), shape=(n_rows, f.shape[1]), chunks=(min(chunk_rows, n_rows), f.shape[1]),
                                    dtype="float32", compressors=integrity.compressors(), overwrite=True)
        buf.append(f)
        if sum(len(b) for b in buf) >= chunk_rows or s + batch_size >= n_rows:
            block = np.concatenate(buf)
            arr[start:start + len(block)] = block
            start += len(block)
            buf = []
    return n_rows, int(arr.shape[1])


def extract_space(store: Store, plan: FeaturePlan | dict, space: FeatureSpace | dict,
                  producer: dict | None = None) -> dict:
    """Features of every corpus row in one space. Model spaces are embedded on the device
    chosen now into ``runs/<run>/features/<space>.zarr`` and recorded as an ``embeddings``
    artifact (inputs: the model and the corpus version); pixels and PCA are read where they are.
    Returns the space's JSON dict with where its features are (``path``, ``dim``, ...)."""
    from cci_core.common.device import pick_device
    plan, space = FeaturePlan.of(plan), FeatureSpace.of(space)
    t0 = time.perf_counter()
    if space.source == "corpus":
        return {**space.to_json(), "path": None, "dim": int(np.prod(plan.shape)), "extract_seconds": 0.0,
                "device": None, "embeddings_artifact_id": None}
    if space.source == "pca":
        import zarr
        return {**space.to_json(), "path": space.dir, "dim": int(zarr.open_array(fs.zarr_url(space.dir), mode="r").shape[1]),
                "extract_seconds": 0.0, "device": None, "embeddings_artifact_id": space.artifact_id}
    device = pick_device(plan.params.device)
    corpus = open_corpus(store, plan.corpus, plan.corpus_version)
    out = fs.as_path(plan.run_dir) / "features" / f"{space.space}.zarr"
    out.parent.mkdir(parents=True, exist_ok=True)
    n, dim = extract_features(corpus.images(), corpus.n_rows, _embedder(space, device), out, plan.params.batch_size)
    seconds = time.perf_counter() - t0
    model_id = space.artifact_id
    inputs = [(plan.corpus_artifact_id, "corpus")] + ([(model_id, "model")] if model_id else [])
    params = {"space": space.space, "source": space.source, "model_dir": space.dir, "run_id": plan.run_id,
              "corpus": plan.corpus, "corpus_version": plan.corpus_version, "device": str(device)}
    content = hashlib.sha256(f"{model_id}|{plan.corpus_artifact_id}|{space.space}".encode()).hexdigest()
    art = runs.lineage_store(store).record(
        "embeddings", f"{plan.run_id}/features/{space.space}", str(out), content, size=n * dim * 4,
        params=params, metrics={"n_rows": n, "dim": dim, "seconds": round(seconds, 3)}, producer=producer,
        inputs=inputs)
    return {**space.to_json(), "path": str(out), "dim": dim, "extract_seconds": round(seconds, 3),
            "device": str(device), "embeddings_artifact_id": art.id}


def compare_local(store: Store, run_id: str, params: FeatureParams | None = None) -> dict:
    """Every step of ``cci features`` in this process."""
    plan = FeaturePlan.from_json(plan_features(store, run_id, params or FeatureParams()))
    results = [evaluate_space(store, plan, extract_space(store, plan, s)) for s in plan.spaces]
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
    gen = fs.as_path(res["generator"])
    files = [gen, gen.with_suffix(".json")]
    art = runs.lineage_store(store).record(
        "model", f"{run_id}/models/vae-corpus", str(out_dir), hash_files(files),
        size=sum(f.stat().st_size for f in files),
        params={"run_id": run_id, "model": "vae", "job": "vae-corpus", "model_config": asdict(cfg),
                "steps": steps, "batch_size": batch_size, "seed": seed},
        metrics={"steps": res["steps"], "n_train": res["n_train"], "seconds": round(res["seconds"], 3),
                 **{k: float(v) for k, v in res["losses"].items()}},
        producer=producer, inputs=[(run["corpus_artifact_id"], "corpus")])
    summary = {"name": "vae-corpus", "model": "vae", "dir": str(out_dir), "artifact_id": art.id,
               "steps": res["steps"], "n_train": res["n_train"], "seconds": round(res["seconds"], 3),
               "losses": res["losses"]}
    relpaths.write_record(store.root, out_dir / "model.json", summary)
    return summary
