"""Honest measures of what a run's trained generators make: the steps behind ``cci evaluate``.

Each step reads what the step before it wrote, writes its own files, records lineage and returns a
JSON-ready dict::

    ev = make_evaluation_plan(store, run_id, EvalParams(samples=500))  # checks only
    refs = prepare_references(store, ev)                    # classifier, reference CNN, real features
    groups = [evaluate_group(store, ev, refs, g) for g in ev.groups]
    report = write_report(store, ev, refs, groups)          # reports/generation.json

(:func:`evaluate_local` does all of them in this process; :mod:`cci_core.generate.training_run` trains the
models, :mod:`cci_core.generate.eval_references` prepares what they are measured against.) The plan is an
:class:`~cci_core.generate.records.EvaluationPlan`, passed between the steps as its JSON dict (``plan_evaluation``).

Run folder, added to the trained run's::

    runs/<run-id>/cluster-cnn/              stand-in cluster classifier (only when the run has no CCI
                                            classifier): a reference CNN trained on the cluster labels
                 reference-cnn/             reference CNN trained on the corpus's true labels (if any)
                 reports/eval/              real features, per-group results, generated grids
                 reports/generation.json    the evaluation report
                 reports/explore.html       the cluster explorer, rebuilt with the per-cluster FD and coverage
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np

from cci_core.generate.eval_references import batched, prepare_references, space_fns
from cci_core.generate.records import (
    ClusterSize,
    EvalGroup,
    EvaluationPlan,
    GroupModel,
    SkippedCluster,
    as_plan,
    read_training,
)
from cci_core.generate.settings import EvalParams
from cci_core.store import fs, relpaths
from cci_core.store.corpus import open_corpus
from cci_core.store.runs import finished_run, lineage_store, update_run
from cci_core.store.store import Store, hash_files, utc_now

HEADLINE = ("fid", "kid", "precision", "recall", "density", "coverage", "fidelity", "is")
GROUP_ORDER = ("per_cluster", "conditional", "baseline")


def make_evaluation_plan(store: Store, run_id: str, params: EvalParams) -> EvaluationPlan:
    """The typed plan of :func:`plan_evaluation`."""
    params.validate()
    run = finished_run(store, run_id)
    path = store.run_dir(run_id) / "models" / "training.json"
    if not path.exists():
        raise ValueError(f"run {run_id!r} has no trained models yet; run `cci train {run_id}` first")
    training = read_training(store, path)
    groups: dict[str, dict] = {}
    for m in training["models"]:
        if m["kind"] == "shared":  # a start the clusters' models were fine-tuned from, not a model of its own
            continue
        if not (fs.as_path(m["dir"]) / "generator.safetensors").exists():
            raise ValueError(f"model {m['name']} of run {run_id!r} has no generator in {m['dir']}; "
                             f"run `cci train {run_id}` again to finish it")
        group = {"cluster": "per_cluster"}.get(m["kind"], m["kind"])
        g = groups.setdefault(group, {"group": group, "model": m["model"], "models": []})
        g["models"].append(GroupModel.from_json(m))
    corpus = open_corpus(store, run["corpus"], run["corpus_version"])
    made_for = sorted({k for g in groups.values() if g["group"] != "baseline" for m in g["models"]
                       for k in ([m.cluster] if m.cluster is not None else m.clusters or [])})
    return EvaluationPlan(
        run_id=run_id, store=str(store.root), run_dir=str(store.run_dir(run_id)),
        eval_dir=str(store.run_dir(run_id) / "reports" / "eval"), corpus=run["corpus"],
        corpus_version=run["corpus_version"], corpus_artifact_id=run["corpus_artifact_id"],
        clustering_artifact_id=run["clustering"]["clustering_artifact_id"], n_rows=run["n_rows"],
        shape=tuple(run["shape"]), n_clusters=len(run["partitions"]),
        partitions=tuple(ClusterSize(p["cluster"], p["count"]) for p in run["partitions"]),
        trained_clusters=tuple(made_for or training["trained_clusters"]),
        skipped=tuple(SkippedCluster.from_json(x) for x in training["skipped"] if x["cluster"] not in made_for),
        training={k: training[k] for k in ("mode", "model", "total_steps", "params")},
        has_labels=corpus.labels() is not None, classifier=run.get("classifier"),
        classifier_artifact_id=run.get("classifier_artifact_id"), params=EvalParams(**asdict(params)),
        groups=tuple(EvalGroup(g["group"], g["model"], tuple(g["models"])) for g in
                     (groups[name] for name in GROUP_ORDER if name in groups)))


def plan_evaluation(store: Store, run_id: str, params: EvalParams) -> dict:
    """Check an evaluation request (the run, its trained models) and group the models; returns the plan's
    JSON dict."""
    return make_evaluation_plan(store, run_id, params).to_json()


def mixture_counts(sizes: dict[int, int], total: int, minimum: int) -> dict[int, int]:
    """Share ``total`` draws among clusters in proportion to ``sizes`` (largest remainder),
    at least ``minimum`` each: a set of per-cluster generators then samples the corpus's own
    mixture, which is what the whole-corpus measures compare against."""
    ids = sorted(sizes)
    w = np.array([sizes[k] for k in ids], np.float64)
    raw = w / w.sum() * total
    n = np.floor(raw).astype(np.int64)
    n[np.argsort(n - raw)[: total - int(n.sum())]] += 1
    return {k: int(max(c, minimum)) for k, c in zip(ids, n)}


def _generate_group(plan: EvaluationPlan, group: EvalGroup) -> tuple[np.ndarray, np.ndarray | None]:
    """Generated images of one group and the cluster each was made for (None for the baseline)."""
    from cci_core.generate.sampling import generate, load_generator
    p = plan.params
    device = p.device
    total = p.samples * len(plan.trained_clusters)
    sizes = {q.cluster: q.count for q in plan.partitions if q.cluster in plan.trained_clusters}
    n = mixture_counts(sizes, total, p.k + 2)
    if group.group == "per_cluster":
        imgs, intended = [], []
        for m in sorted(group.models, key=lambda m: m.cluster):
            imgs.append(generate(load_generator(m.dir, device), n[m.cluster], seed=p.seed + 1 + m.cluster))
            intended.append(np.full(n[m.cluster], m.cluster, np.int64))
        return np.concatenate(imgs), np.concatenate(intended)
    m = group.models[0]
    if group.group == "conditional":
        intended = np.concatenate([np.full(n[k], k, np.int64) for k in m.clusters])
        return generate(load_generator(m.dir, device), len(intended), labels=intended, seed=p.seed), intended
    return generate(load_generator(m.dir, device), total, seed=p.seed), None


def evaluate_group(store: Store, plan: EvaluationPlan | dict, refs: dict, group: EvalGroup | dict) -> dict:
    """Generate ``samples`` images per cluster with one group of models and measure them.

    Per feature space: the whole generated set against the real whole-corpus sample
    (FD, KID, precision/recall/density/coverage, IS analogue; fidelity when images were made
    for a cluster), and per cluster the images made for cluster k (for the baseline: those the
    classifier assigns to k) against the real images of cluster k. Every figure carries its
    sample sizes (``n_real``, ``n_fake``, ...).
    """
    from cci_core.common.imagegrid import make_grid, save_labelled_rows, save_png
    from cci_core.generate.gen_metrics import cluster_fidelity, evaluate_features
    plan, group = as_plan(EvaluationPlan, plan), as_plan(EvalGroup, group)
    p, eval_dir = plan.params, fs.as_path(plan.eval_dir)
    t0 = time.perf_counter()
    fakes, intended = _generate_group(plan, group)
    # a grid: 8 images per cluster, one row per cluster labelled as the real montage is (the baseline,
    # made for no cluster: 8 per row, unlabelled)
    path = eval_dir / f"generated-{group.group}.png"
    if intended is not None:
        clusters = np.unique(intended)
        rows = []
        for k in clusters:
            imgs = fakes[np.flatnonzero(intended == k)[:8]]
            rows.append(np.concatenate([imgs, np.full((8 - len(imgs), *imgs.shape[1:]), 255, np.uint8)]))
        grid = save_labelled_rows(make_grid(np.concatenate(rows), ncols=8), [f"cluster {k}" for k in clusters],
                                  path, scale=2)
    else:
        pick = np.arange(min(len(fakes), 8 * max(1, len(plan.trained_clusters))))
        grid = save_png(make_grid(fakes[pick], ncols=8), path, scale=2)
    masks = fs.load_npz(refs["real"]["masks"])
    kw = p.metric_options()
    reports, per_cluster, assigned = {}, {}, None
    for name, space in refs["spaces"].items():
        feats, probs = space_fns(space, p.device)
        fr = fs.load_npy(space["features"]).astype(np.float64)
        ff, pf = batched(feats, fakes), batched(probs, fakes)
        is_cluster_space = space["labels"] == "clusters"
        rep = evaluate_features(fr[masks["overall"]], ff, pf, intended if is_cluster_space else None, **kw)
        rep.update(features=name, feature_dim=int(ff.shape[1]))
        reports[name] = rep
        if is_cluster_space and assigned is None:
            assigned = pf.argmax(1)
        per_cluster[name] = {}
        which = intended if intended is not None else assigned
        for k in plan.trained_clusters:
            sel = np.flatnonzero(which == k) if which is not None else np.zeros(0, int)
            real_k = fr[masks[str(k)]]
            entry = {"n_real": int(len(real_k)), "n_fake": int(len(sel)),
                     "made_for_cluster": intended is not None}
            if len(sel) > p.k + 1 and len(real_k) > p.k + 1:
                r = evaluate_features(real_k, ff[sel], None, None, **{**kw, "kid_subsets": min(kw["kid_subsets"], 20)})
                entry.update({m: r[m] for m in ("fid", "kid", "kid_std", "precision", "recall", "density",
                                                 "coverage", "kid_subset_size")})
                if is_cluster_space and intended is not None:
                    entry["fidelity"] = cluster_fidelity(pf[sel].argmax(1), intended[sel])["fidelity"]
            else:
                entry["skipped"] = (f"{len(sel)} generated / {len(real_k)} real images; "
                                    f"more than k+1={p.k + 1} of each are needed")
            per_cluster[name][str(k)] = entry
        if intended is None and assigned is not None and is_cluster_space:
            counts = np.bincount(assigned, minlength=plan.n_clusters)
            rep["assigned_per_cluster"] = {str(k): int(c) for k, c in enumerate(counts)}
    result = {"group": group.group, "model": group.model, "n_fake": int(len(fakes)),
              "samples_per_cluster": p.samples, "shape": list(fakes.shape[1:]), "dtype": str(fakes.dtype),
              "pixel_range": [int(fakes.min()), int(fakes.max())],
              "models": {m.name: m.artifact_id for m in group.models},
              "reports": reports, "per_cluster": per_cluster, "grid": str(grid),
              "seconds": round(time.perf_counter() - t0, 3)}
    relpaths.write_record(store.root, eval_dir / f"{group.group}.json", result)
    return result


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _compare(plan: EvaluationPlan, refs: dict, results: list[dict], reports: dict, groups: list[str]):
    """Who wins each measure, per feature space: (comparison, head_to_head, wins, per_cluster_winners, markdown)."""
    from cci_core.generate.gen_metrics import compare_reports, comparison_table
    comparison, head_to_head, wins, per_cluster_winners = {}, {}, {}, {}
    md = [f"# Generation report: run `{plan.run_id}`",
          f"corpus {plan.corpus} v{plan.corpus_version}; {plan.params.samples} generated images "
          f"per cluster; clusters trained: {list(plan.trained_clusters)}"]
    if plan.skipped:
        md.append("skipped clusters: " + "; ".join(f"{s.cluster} ({s.reason})" for s in plan.skipped))
    for space, reps in reports.items():
        info = refs["spaces"][space]
        md.append(f"\n## features: {space} ({info['note']})\n")
        if len(reps) >= 2:
            comparison[space] = compare_reports(reps)
            wins[space] = {g: sum(c["winner"] == g for c in comparison[space].values()) for g in groups}
            md.append(comparison_table(comparison[space]))
            if "baseline" in reps:
                head_to_head[space] = {g: {m: c["winner"] for m, c in compare_reports(
                    {g: reps[g], "baseline": reps["baseline"]}).items()} for g in groups if g != "baseline"}
            per_cluster_winners[space] = {}
            for k in map(str, plan.trained_clusters):
                cands = {r["group"]: r["per_cluster"][space][k] for r in results if "fid" in r["per_cluster"][space][k]}
                if len(cands) >= 2:
                    per_cluster_winners[space][k] = {m: c["winner"] for m, c in compare_reports(
                        cands, metrics=("fid", "kid", "precision", "recall", "density", "coverage")).items()}
        else:
            md.append("(one model group only: nothing to compare)")
        fid_line = [f"{g} {r['fidelity']:.3f}" for g, r in reps.items() if _finite(r.get("fidelity"))]
        if fid_line:
            md.append(f"\nfidelity (share of images made for cluster k that the classifier assigns to k; "
                      f"chance {1 / plan.n_clusters:.3f}): " + ", ".join(fid_line))
        md.append("\nsample sizes: " + "; ".join(
            f"{g}: n_real={r['n_real']}, n_fake={r['n_fake']}, k={r['k']}, kid {r['kid_subsets']}x"
            f"{r['kid_subset_size']}, is_splits={r.get('is_splits')}" for g, r in reps.items()))
    if refs["notes"]:
        md.append("\nnotes: " + " ".join(refs["notes"]))
    return comparison, head_to_head, wins, per_cluster_winners, "\n".join(md)


def training_cost(store: Store, run_dir: str, groups: list[str]) -> dict:
    """What each evaluated group cost to train, from ``models/training.json``: models, generator parameters
    (each, at most, and in all), images seen, training seconds summed over its tasks and the largest task's
    peak resident memory. The per-cluster group counts its shared start (its steps are in the budget)."""
    models = read_training(store, fs.as_path(run_dir) / "models" / "training.json").get("models") or []
    kinds = {"per_cluster": ("cluster", "shared"), "conditional": ("conditional",), "baseline": ("baseline",)}
    out = {}
    for g in groups:
        ms = [m for m in models if m["kind"] in kinds.get(g, ())]
        made = [m for m in ms if m["kind"] != "shared"]  # the models that make the images
        if not ms or any(m.get("n_params") is None for m in ms):
            continue  # trained before costs were recorded
        out[g] = {"models": len(made), "params_each_max": max(m["n_params"] for m in made),
                  "params_all": sum(m["n_params"] for m in made),
                  "shared_start_params": sum(m["n_params"] for m in ms if m["kind"] == "shared"),
                  "images_seen": sum(m["images_seen"] for m in ms), "steps": sum(m["steps"] for m in ms),
                  "train_seconds": round(sum(m.get("wall_seconds") or m["seconds"] for m in ms), 1),
                  "peak_rss_mb_max": max(m["peak_rss_mb"] for m in ms)}
    return out


def write_report(store: Store, plan: EvaluationPlan | dict, refs: dict, results: list[dict],
                 producer: dict | None = None) -> dict:
    """Put the groups side by side, say which wins each measure, write
    ``reports/generation.json``, record it as a ``report`` artifact and, for per-cluster generators,
    rebuild the run's cluster explorer (``reports/explore.html``) with their per-cluster measures."""
    plan = as_plan(EvaluationPlan, plan)
    order = [g.group for g in plan.groups]
    results = sorted(results, key=lambda r: order.index(r["group"]))
    groups = [r["group"] for r in results]
    reports = {space: {r["group"]: r["reports"][space] for r in results} for space in refs["spaces"]}
    comparison, head_to_head, wins, per_cluster_winners, markdown = _compare(plan, refs, results, reports, groups)
    cost = training_cost(store, plan.run_dir, groups)
    if cost:
        markdown += ("\n\n| training cost | models | parameters (each, at most) | parameters (all) | images seen | "
                     "task seconds (sum) | peak MB (largest task) |\n|---|---|---|---|---|---|---|\n"
                     + "\n".join(f"| {g} | {c['models']} | {c['params_each_max']:,} | {c['params_all']:,}"
                                  + (f" (+ shared start {c['shared_start_params']:,})" if c["shared_start_params"] else "")
                                  + f" | {c['images_seen']:,} | {c['train_seconds']} | {c['peak_rss_mb_max']} |"
                                  for g, c in cost.items()))
    params, skipped = asdict(plan.params), [s.to_json() for s in plan.skipped]
    report = {"run_id": plan.run_id, "corpus": plan.corpus, "corpus_version": plan.corpus_version,
              "created_at": utc_now(), "samples_per_cluster": plan.params.samples, "params": params,
              "training": dict(plan.training), "trained_clusters": list(plan.trained_clusters), "skipped": skipped,
              "groups": groups, "feature_spaces": {s: {k: v for k, v in i.items() if k != "features"}
                                                   for s, i in refs["spaces"].items()},
              "reports": reports, "per_cluster": {space: {r["group"]: r["per_cluster"][space] for r in results}
                                                  for space in refs["spaces"]},
              "comparison": comparison, "head_to_head": head_to_head, "wins": wins,
              "per_cluster_winners": per_cluster_winners, "floor": refs["floor"],
              "cost": cost,
              "real_fidelity": refs["real_fidelity"], "notes": refs["notes"],
              "models": {r["group"]: r["models"] for r in results},
              "grids": {r["group"]: r["grid"] for r in results},
              "generated": {r["group"]: {"n": r["n_fake"], "shape": r["shape"], "dtype": r["dtype"],
                                         "pixel_range": r["pixel_range"]} for r in results},
              "markdown": markdown}
    path = fs.as_path(plan.run_dir) / "reports" / "generation.json"
    relpaths.write_record(store.root, path, report)
    headline = {f"{g}_{m}": reports["classifier"][g][m] for g in groups for m in HEADLINE
                if _finite(reports["classifier"][g].get(m))}
    inputs = [(aid, "model") for r in results for aid in r["models"].values()]
    inputs += [(s["artifact_id"], "features") for s in refs["spaces"].values()]
    art = lineage_store(store).record(
        "report", f"{plan.run_id}/generation", str(path), hash_files([path]), size=path.stat().st_size,
        params={"run_id": plan.run_id, **params, "groups": groups}, metrics=headline,
        producer=producer, inputs=inputs)
    update_run(store, plan.run_id, evaluation={"report": str(path), "report_artifact_id": art.id,
                                               "finished_at": report["created_at"]})
    if "per_cluster" in groups:
        from cci_core.generate.explore_generated import rebuild_explorer
        rebuild_explorer(store, plan.run_id)  # reports/explore.html: the per-cluster FD and coverage beside the images
    return {"run_id": plan.run_id, "run_dir": plan.run_dir, "report": str(path),
            "report_artifact_id": art.id, "groups": groups, "comparison": comparison, "wins": wins,
            "head_to_head": head_to_head, "headline": {s: reports[s] for s in reports},
            "feature_spaces": report["feature_spaces"], "skipped": skipped, "grids": report["grids"],
            "floor": refs["floor"], "real_fidelity": refs["real_fidelity"], "notes": refs["notes"],
            "markdown": report["markdown"]}


def evaluate_local(store: Store, run_id: str, params: EvalParams | None = None) -> dict:
    """Every evaluation step in this process (what the evaluate flow does on Dask)."""
    plan = make_evaluation_plan(store, run_id, params or EvalParams())
    refs = prepare_references(store, plan)
    return write_report(store, plan, refs, [evaluate_group(store, plan, refs, g) for g in plan.groups])
