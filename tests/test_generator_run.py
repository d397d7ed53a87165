"""The library behind `cci train` / `cci evaluate` on a real store: builtin digits at 28x28,
a 3-cluster run, tiny models and budgets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cci_core.cluster import cluster_run as cr
from cci_core.generate import evaluation_run as ev
from cci_core.generate import training_run as tr
from cci_core.generate.settings import EvalParams, TrainParams
from cci_core.ingest.ingest import ingest_local
from cci_core.store import runs
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store

# every cluster from scratch here (shared_start=0); the shared start: test_shared_start_then_each_cluster_fine_tuned
TINY = dict(steps=20, batch_size=16, width=8, baseline_width=8, z_dim=8, checkpoint_every=10, device="cpu",
            shared_start=0.0)


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("genstore", "digits28", r3=cr.ClusterParams(k=3, n_components=20))


@pytest.fixture(scope="module")
def trained(store):
    sizes = [p["count"] for p in runs.read_run(store, "r3")["partitions"]]
    # a min-size between the smallest and the others: exactly the smallest cluster is skipped
    small = int(np.argmin(sizes))
    min_size = min(sizes) + 1
    summary = tr.train_local(store, "r3", TrainParams(min_size=min_size, **TINY))
    return summary, small, sizes


def _finite_numbers(d: dict) -> bool:
    return all(math.isfinite(v) for v in d.values() if isinstance(v, (int, float)) and not isinstance(v, bool))


def test_train_skips_small_cluster_records_lineage_and_baseline_budget(store, trained):
    summary, small, sizes = trained
    names = [m["name"] for m in summary["models"]]
    big = [k for k in range(3) if k != small]
    assert names == [f"cluster-{k}" for k in big] + ["baseline"]
    assert summary["skipped"] == [{"cluster": small, "count": sizes[small],
                                   "reason": f"{sizes[small]} images, fewer than --min-size {sizes[small] + 1}"}]
    run = runs.read_run(store, "r3")
    parts = {p["cluster"]: p for p in run["partitions"]}
    lin = LineageStore(store.lineage_url)
    for m in summary["models"]:
        assert m["resumed_from"] is None and all(math.isfinite(v) for v in m["losses"].values())
        d = Path(m["dir"])
        assert (d / "generator.safetensors").exists() and (d / "loss.png").exists()
        assert list((d / "checkpoints").glob("step-*/state.safetensors")) and Path(m["samples"]).exists()
        art = lin.get(m["artifact_id"])
        assert art.kind == "model" and art.params["model"] == "gan" and art.params["steps"] == 20
        if m["kind"] == "cluster":
            k = m["cluster"]
            assert m["n_train"] == sizes[k] and m["steps"] == 20
            assert sorted(art.inputs) == sorted([(parts[k]["artifact_id"], "partition"),
                                                 (run["corpus_artifact_id"], "corpus")])
        else:  # the baseline: whole corpus, the same total step budget
            assert m["n_train"] == run["n_rows"] and m["steps"] == 20 * len(big)
            assert art.inputs == [(run["corpus_artifact_id"], "corpus")]
    assert run["training"]["model_artifact_ids"] == summary["model_artifact_ids"]

    from cci_core.generate.sampling import generate, load_generator
    out = generate(load_generator(summary["models"][0]["dir"], "cpu"), 5, seed=1)
    assert out.shape == (5, 28, 28, 1) and out.dtype == np.uint8


def test_rerun_resumes_without_redoing_and_more_steps_continue(store, trained):
    summary, small, sizes = trained
    params = TrainParams(min_size=sizes[small] + 1, **TINY)
    again = tr.train_local(store, "r3", params)
    for before, after in zip(summary["models"], again["models"]):
        assert after["resumed_from"] == before["steps"] and after["steps"] == before["steps"]
        assert after["artifact_id"] == before["artifact_id"]  # same weights, same lineage record
    # a larger budget continues the step count from the checkpoint (one cluster, no baseline)
    big = max(range(3), key=lambda k: sizes[k])
    more = tr.train_local(store, "r3", TrainParams(**{**asdict_params(params), "steps": 30, "baseline": False,
                                                      "min_size": sizes[big]}))
    m = more["models"][0]
    assert m["name"] == f"cluster-{big}" and m["resumed_from"] == 20 and m["steps"] == 30
    # the models this call did not touch stay listed for `cci evaluate`
    assert {x["name"] for x in more["models"][1:]} == {x["name"] for x in summary["models"]} - {m["name"]}
    assert all(x["from_earlier_run"] for x in more["models"][1:])
    # leave the run as the other tests expect it (20-step models): re-train that cluster's folder
    import shutil
    shutil.rmtree(Path(m["dir"]))
    tr.train_local(store, "r3", params)


def asdict_params(p):
    from dataclasses import asdict
    return asdict(p)


def test_bad_requests_are_one_clear_error_and_write_nothing(store, trained, tmp_path):
    from cci_core.common.shapes import MODEL_SIZES as SIZES
    assert tr.MODEL_SIZES is SIZES  # the one definition, which keeps request checks free of torch
    with pytest.raises(LookupError, match="no run 'nope'"):
        tr.plan_training(store, "nope", TrainParams())
    cr.start_run(store, "digits28", cr.ClusterParams(k=3, n_components=20), run_id="unfinished")
    with pytest.raises(ValueError, match="no finished clustering"):
        tr.plan_training(store, "unfinished", TrainParams())
    with pytest.raises(ValueError, match="smaller than --min-size 5000"):
        tr.plan_training(store, "r3", TrainParams(min_size=5000))
    with pytest.raises(ValueError, match="conditional GAN"):
        tr.plan_training(store, "r3", TrainParams(mode="conditional", model="vae"))
    # models already trained with other settings are never trained over
    with pytest.raises(ValueError, match="already holds a gan trained with other settings"):
        tr.plan_training(store, "r3", TrainParams(**{**TINY, "width": 16, "min_size": 1}))
    # evaluate before train
    cr.run_local(store, "digits28", cr.ClusterParams(k=2, n_components=10), run_id="untrained")
    with pytest.raises(ValueError, match="no trained models yet; run `cci train untrained` first"):
        ev.plan_evaluation(store, "untrained", EvalParams())
    assert not (store.run_dir("untrained") / "models").exists()
    assert not (store.run_dir("untrained") / "reports" / "generation.json").exists()
    # 8x8 images: the generators make 28/32/64-pixel images
    small_store = Store(tmp_path / "s8")
    ingest_local(small_store, "builtin:digits", "digits")
    cr.run_local(small_store, "digits", cr.ClusterParams(k=3, n_components=20), run_id="r8")
    with pytest.raises(ValueError, match="--size 28x28"):
        tr.plan_training(small_store, "r8", TrainParams())


def test_conditional_and_vae_modes(store):
    cr.run_local(store, "digits28", cr.ClusterParams(k=3, n_components=20, seed=1), run_id="r3c")
    cond = tr.train_local(store, "r3c", TrainParams(mode="conditional", min_size=1, baseline=False,
                                                    **{**TINY, "steps": 5}))
    (m,) = cond["models"]
    run = runs.read_run(store, "r3c")
    assert m["name"] == "conditional" and m["steps"] == 15 and m["n_train"] == run["n_rows"]
    art = LineageStore(store.lineage_url).get(m["artifact_id"])
    assert sorted(i for i, r in art.inputs if r == "partition") == sorted(p["artifact_id"] for p in run["partitions"])
    from cci_core.generate.sampling import generate, load_generator
    g = load_generator(m["dir"], "cpu")
    assert g.cfg.n_classes == 3
    assert generate(g, 6, labels=[0, 1, 2, 0, 1, 2]).shape == (6, 28, 28, 1)
    # mode seeking: on by default for the conditional GAN only; an explicit weight applies to every GAN
    state = json.loads((Path(m["dir"]) / "checkpoints" / "step-0000015" / "state.json").read_text())
    assert state["train"]["mode_seeking"] == 1.0 and state["model"]["d_condition"] == "concat"
    plan = tr.plan_training(store, "r3c", TrainParams(**TINY))
    assert [tr.train_config(plan, j).mode_seeking for j in plan["jobs"]] == [0.0, 0.0, 0.0, 0.0]
    plan = tr.plan_training(store, "r3c", TrainParams(mode_seeking=0.5, **TINY))
    assert {tr.train_config(plan, j).mode_seeking for j in plan["jobs"]} == {0.5}
    with pytest.raises(ValueError, match="--batch-size 1: mode seeking compares pairs"):
        TrainParams(mode="conditional", batch_size=1).validate()
    TrainParams(mode="conditional", batch_size=1, mode_seeking=0).validate()  # off: one image per step is fine
    # the per-cluster VAE in another run folder
    cr.run_local(store, "digits28", cr.ClusterParams(k=2, n_components=20), run_id="r2v")
    vae = tr.train_local(store, "r2v", TrainParams(model="vae", min_size=1, baseline=False, **{**TINY, "steps": 5}))
    assert [m["model"] for m in vae["models"]] == ["vae", "vae"]
    assert all(math.isfinite(v) for m in vae["models"] for v in m["losses"].values())


def test_shared_start_then_each_cluster_fine_tuned(store):
    from cci_core.generate.sampling import generate, load_generator
    cr.run_local(store, "digits28", cr.ClusterParams(k=3, n_components=20, seed=2), run_id="r3s")
    params = TrainParams(**{**TINY, "shared_start": 0.5, "baseline_width": 12, "min_size": 1, "steps": 10})
    plan = tr.make_training_plan(store, "r3s", params)
    # the budget: 10 steps x 3 clusters, half of it on the shared start, the rest split between the clusters
    assert [(j.name, j.kind, j.steps) for j in plan.jobs] == [
        ("shared-start", "shared", 15), ("cluster-0", "cluster", 5), ("cluster-1", "cluster", 5),
        ("cluster-2", "cluster", 5), ("baseline", "baseline", 30)]
    with pytest.raises(ValueError, match="shared start .* is not trained yet"):
        tr.train_job(store, plan, plan.jobs[1])  # a cluster before its start: refused, nothing trained
    summary = tr.train_local(store, "r3s", params)
    models = {m["name"]: m for m in summary["models"]}
    run = runs.read_run(store, "r3s")
    shared = models["shared-start"]
    assert shared["kind"] == "shared" and shared["n_train"] == run["n_rows"] and shared["steps"] == 15
    assert load_generator(shared["dir"], "cpu").cfg.n_classes == 3  # a conditional GAN on the pooled partitions
    lin = LineageStore(store.lineage_url)
    base_params = models["baseline"]["n_params"]
    for k in range(3):
        m = models[f"cluster-{k}"]
        assert m["steps"] == 5 and m["images_seen"] == 5 * 16 and m["peak_rss_mb"] > 0
        assert (shared["artifact_id"], "model") in lin.get(m["artifact_id"]).inputs
        g = load_generator(m["dir"], "cpu")
        assert g.cfg.n_classes == 0 and g.cfg.bias_map and m["n_params"] == sum(p.numel() for p in g.parameters())
        assert m["n_params"] < base_params  # each cluster's model is smaller than the one big model
        assert generate(g, 3, seed=0).shape == (3, 28, 28, 1)
    # the shared start is not evaluated as a model of its own; its cost counts in the per-cluster group's
    assert [g.group for g in ev.make_evaluation_plan(store, "r3s", EvalParams()).groups] == ["per_cluster", "baseline"]
    cost = ev.training_cost(store, str(store.run_dir("r3s")), ["per_cluster", "baseline"])
    assert cost["per_cluster"]["models"] == 3 and cost["per_cluster"]["images_seen"] == (15 + 3 * 5) * 16
    assert cost["per_cluster"]["params_all"] == 3 * models["cluster-0"]["n_params"]
    assert cost["per_cluster"]["shared_start_params"] == shared["n_params"] > models["cluster-0"]["n_params"]
    assert cost["per_cluster"]["params_each_max"] < cost["baseline"]["params_each_max"] == base_params
    assert cost["baseline"]["images_seen"] == 30 * 16 and cost["baseline"]["peak_rss_mb_max"] > 0
    # a cluster's folder trained from scratch is not fine-tuned over (other settings)
    with pytest.raises(ValueError, match="already holds a gan trained with other settings"):
        tr.plan_training(store, "r3s", TrainParams(**{**TINY, "min_size": 1, "steps": 10}))
    with pytest.raises(ValueError, match="--shared-start 1.0 must lie in"):
        TrainParams(shared_start=1.0).validate()
    # a VAE's shared start is one VAE on the pooled partitions, fine-tuned per cluster the same way
    cr.run_local(store, "digits28", cr.ClusterParams(k=2, n_components=20, seed=3), run_id="r2vs")
    vae = tr.train_local(store, "r2vs", TrainParams(**{**TINY, "model": "vae", "shared_start": 0.5, "min_size": 1,
                                                       "steps": 4, "baseline": False}))
    assert [(m["name"], m["model"], m["steps"]) for m in vae["models"]] == [
        ("shared-start", "vae", 4), ("cluster-0", "vae", 2), ("cluster-1", "vae", 2)]


def test_mixture_counts_follow_cluster_sizes():
    assert ev.mixture_counts({0: 600, 1: 300, 2: 100}, 100, 1) == {0: 60, 1: 30, 2: 10}
    n = ev.mixture_counts({3: 1, 5: 1, 7: 1}, 10, 1)  # largest remainder: 10 in all, none below 3
    assert sum(n.values()) == 10 and sorted(n.values()) == [3, 3, 4]
    assert ev.mixture_counts({0: 990, 1: 10}, 100, 7) == {0: 99, 1: 7}  # the floor wins for a tiny cluster


def test_evaluate_report_side_by_side_with_baseline(store, trained):
    summary, small, _ = trained
    rep = ev.evaluate_local(store, "r3", EvalParams(samples=20, max_real=120, ref_steps=30, kid_subsets=5))
    report = json.loads(Path(rep["report"]).read_text())
    assert report["groups"] == ["per_cluster", "baseline"] and set(report["reports"]) == {"classifier", "reference"}
    for space in ("classifier", "reference"):
        for group in ("per_cluster", "baseline"):
            r = report["reports"][space][group]
            for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "is",
                        "n_real", "n_fake", "k", "kid_subset_size"):
                assert key in r and math.isfinite(r[key]), (space, group, key)
            assert r["n_fake"] == 20 * 2 and r["n_real"] == 120 * 3
        assert set(report["comparison"][space]) >= {"fid", "kid", "precision", "recall", "density", "coverage", "is"}
        for c in report["comparison"][space].values():
            assert c["winner"] in ("per_cluster", "baseline", "tie")
        assert set(report["head_to_head"][space]["per_cluster"]) >= {"fid", "coverage"}
    per = report["reports"]["classifier"]["per_cluster"]
    assert 0.0 <= per["fidelity"] <= 1.0 and "fidelity" not in report["reports"]["classifier"]["baseline"]
    assert set(per["fidelity_per_cluster"]) == {str(k) for k in range(3) if k != small}
    per_k = report["per_cluster"]["classifier"]["per_cluster"]
    assert set(per_k) == {str(k) for k in range(3) if k != small}
    # 40 draws shared out by cluster size: the per-cluster models sample the corpus's own mixture
    sizes = {p["cluster"]: p["count"] for p in runs.read_run(store, "r3")["partitions"] if p["cluster"] != small}
    want = ev.mixture_counts(sizes, 40, 7)
    assert sum(want.values()) == 40 and [e["n_fake"] for e in per_k.values()] == [want[int(k)] for k in per_k]
    for e in per_k.values():
        assert e["n_real"] == 120 and math.isfinite(e["fid"])
    assert report["skipped"][0]["cluster"] == small and "fewer than --min-size" in report["skipped"][0]["reason"]
    # the floor: two halves of the real sample are much closer than generated images
    assert report["floor"]["classifier"]["fid"] < per["fid"]
    from PIL import Image
    grid, base_grid = (Image.open(store.root / report["grids"][g]) for g in ("per_cluster", "baseline"))
    # one row of 8 per trained cluster, labelled in a strip on the left (the baseline's: 8 per row, no labels)
    assert grid.height == base_grid.height == 2 * (2 * 30) + 4 and grid.width > base_grid.width == 2 * (8 * 30 + 2)
    assert report["generated"]["baseline"]["shape"] == [28, 28, 1] and report["generated"]["baseline"]["dtype"] == "uint8"
    # no CCI classifier in this run: a CNN on the cluster labels stands in, and the report says so
    assert report["feature_spaces"]["classifier"]["source"] == "cluster-cnn"
    assert any("stands in" in n for n in report["notes"]) and "| fid | lower |" in report["markdown"]

    lin = LineageStore(store.lineage_url)
    ref = lin.get(report["feature_spaces"]["reference"]["artifact_id"])
    assert ref.kind == "reference_cnn" and ref.params["labels"] == "true"
    assert (Path(ref.uri) / "model.safetensors").exists() and (Path(ref.uri) / "model.json").exists()
    art = lin.get(rep["report_artifact_id"])
    assert art.kind == "report"
    assert sorted(i for i, r in art.inputs if r == "model") == sorted(summary["model_artifact_ids"].values())
    assert sorted(i for i, r in art.inputs if r == "features") == sorted(
        s["artifact_id"] for s in report["feature_spaces"].values())
    # the true-label reference CNN is trained once per corpus version: a second evaluation reuses it
    again = ev.evaluate_local(store, "r3", EvalParams(samples=20, max_real=120, ref_steps=30, kid_subsets=5))
    assert again["feature_spaces"]["reference"]["artifact_id"] == ref.id


def test_evaluate_uses_the_runs_cci_classifier_when_it_has_one(store, trained):
    # a classifier folder as refinement writes it (classifier.safetensors + classifier.json)
    from dataclasses import asdict

    from cci_core.refine.cnn import CNN, CNNConfig
    from cci_core.store.store import atomic_write_json
    from cci_core.store.weights import save_weights
    cfg = CNNConfig(in_channels=1, image_height=28, image_width=28, n_classes=3, width=4, depth=2, embed_dim=16)
    cdir = store.run_dir("r3") / "refine-test"
    save_weights(cdir, CNN(cfg).state_dict(), {"cnn": asdict(cfg)}, name="classifier")
    run_json = store.run_dir("r3") / "run.json"
    run = json.loads(run_json.read_text())
    atomic_write_json(run_json, {**run, "classifier": str(cdir)})
    try:
        rep = ev.evaluate_local(store, "r3", EvalParams(samples=12, max_real=60, ref_steps=30, kid_subsets=3))
    finally:
        atomic_write_json(run_json, {**json.loads(run_json.read_text()), "classifier": None})
    space = rep["feature_spaces"]["classifier"]
    assert space["source"] == "cci-classifier" and space["dim"] == 16 and not rep["notes"]
    lin = LineageStore(store.lineage_url)
    assert lin.get(space["artifact_id"]).kind == "classifier"
    assert (space["artifact_id"], "features") in lin.get(rep["report_artifact_id"]).inputs
    assert math.isfinite(rep["headline"]["classifier"]["per_cluster"]["fidelity"])


def test_typed_plans_and_model_records_give_back_the_same_dicts(store, trained):
    from cci_core.generate.records import EvaluationPlan, ModelRecord, TrainingPlan, TrainJob
    summary, small, sizes = trained
    params = TrainParams(min_size=sizes[small] + 1, **TINY)
    plan = tr.plan_training(store, "r3", params)
    typed = TrainingPlan.from_json(plan)
    assert typed.to_json() == plan and json.dumps(typed.to_json()) == json.dumps(plan)  # same keys, same order
    assert TrainingPlan.from_json(json.loads(json.dumps(plan))).to_json() == plan  # through JSON too (Prefect)
    assert tr.make_training_plan(store, "r3", params) == typed
    # one settings object builds each job's model and training configuration
    job = typed.jobs[0]
    assert typed.model_config(job) == params.model_config(typed.shape, job.kind, typed.n_clusters)
    assert tr.train_config(plan, plan["jobs"][0]) == typed.train_config(job)
    assert typed.model_config(job).d_features == 4 * params.width
    assert TrainJob.from_json({"name": "cluster-9"}).to_json() == {"name": "cluster-9"}  # a name only orders a report
    # the model record: model.json and training.json hold the same record; keys added later are kept, in order
    for m in summary["models"]:
        on_disk = json.loads((Path(m["dir"]) / "model.json").read_text())
        assert ModelRecord.from_json(on_disk).to_json() == on_disk and on_disk.keys() == m.keys()
        assert ModelRecord.from_json(m).to_json() == m and list(ModelRecord.from_json(m).to_json()) == list(m)
    extra = {**summary["models"][0], "from_earlier_run": True, "worker": "tcp://w"}
    assert list(ModelRecord.from_json(extra).to_json().items())[-2:] == [("from_earlier_run", True), ("worker", "tcp://w")]
    ev_plan = ev.plan_evaluation(store, "r3", EvalParams(samples=20))
    assert EvaluationPlan.from_json(ev_plan).to_json() == ev_plan
    assert json.dumps(EvaluationPlan.from_json(json.loads(json.dumps(ev_plan))).to_json()) == json.dumps(ev_plan)


def test_to_signed_tensor_is_the_generators_range():
    import torch

    from cci_core.common.torch_data import to_tensor
    from cci_core.generate.image_batches import to_signed_tensor, to_uint8
    x = np.array([[[[0], [255]], [[128], [1]]]], np.uint8)
    t = to_signed_tensor(x, torch.device("cpu"))
    assert t.shape == (1, 1, 2, 2) and t.min() == -1.0 and t.max() == 1.0
    assert to_tensor(x).min() == 0.0  # the other conversion gives [0, 1]
    assert np.array_equal(to_uint8(t), x)
