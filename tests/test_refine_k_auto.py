"""`cci refine RUN --k auto` (issue 29, item 5): the refinement chooses its number of clusters
from round 0's pre-trained embedding, without labels, and says what it chose and why.

On scikit-learn's digits (10 classes, ingested at 28x28 as `cci run` does) the chosen k is
within 10 +- 2 and the refinement's NMI within 0.02 of the same configuration given k = 10;
the choice is recorded (history, run.json, metrics.json) and printed by the CLI; a bad --k is
one error line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from faults import invoke

from cci_core.cluster import cluster_run as cr
from cci_core.refine.choose_k import choice_line, choose_k, parse_k_option
from cci_core.refine.classifier import load_classifier
from cci_core.refine.config import RefineConfig
from cci_core.refine.refine import refine
from cci_core.store import runs
from cci_core.store.corpus import open_corpus

# one small configuration for both runs: a short SimCLR start, UMAP + GMM + 4 SCAN heads, round 0 only
CFG = dict(rounds=0, cl_epochs=3, cl_min_steps=0, batch_size=64, width=8, embed_dim=32, warmup_steps=60,
           scan_heads=4, silhouette_sample=500, seed=0)


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("k-auto", corpus="d28", km=cr.ClusterParams(k=6, n_components=20))


@pytest.fixture(scope="module")
def digits(store):
    c = open_corpus(store, "d28")
    return np.asarray(c.images()[:c.n_rows]), pd.factorize(c.labels())[0]


def _nmi(res):
    return next(h for h in res.history if h["round"] == res.chosen_round)["nmi"]


def test_auto_k_on_digits_is_near_10_and_as_good_as_the_known_k(digits, tmp_path):
    images, y = digits
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is fast and repeatable
    try:
        known = refine(images, None, np.arange(len(images)) % 10, RefineConfig(**CFG), tmp_path / "known",
                       y_true=y, log=lambda s: None)
        lines = []
        # started from a 6-cluster run: auto must not keep its k
        auto = refine(images, None, np.arange(len(images)) % 6, RefineConfig(**CFG, k="auto"), tmp_path / "auto",
                      y_true=y, log=lines.append)
    finally:
        torch.set_num_threads(before)
    choice = auto.k_choice
    assert 8 <= choice["k"] <= 12, choice_line(choice)
    assert abs(_nmi(auto) - _nmi(known)) <= 0.02, (_nmi(auto), _nmi(known), choice_line(choice))
    # scores per candidate, the rule, and a line saying so; the heads and labels have the chosen k
    assert [s["k"] for s in choice["scores"]] == list(range(4, 21))
    assert all(0 <= s["stability"] <= 1 and s["min_share"] >= 0 for s in choice["scores"])
    assert "BIC" in choice["rule"] and any(line.startswith(f"  r0: k: chose {choice['k']} of 4..20")
                                                for line in lines)
    assert auto.labels.max() == choice["k"] - 1 and auto.model.head.out_features == choice["k"]
    clf = load_classifier(tmp_path / "auto")  # what `cci predict` loads
    assert clf.config.n_classes == choice["k"] and clf.head.out_features == choice["k"]
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["rounds"][0]["k_choice"] == choice
    # run again on the same folder: it resumes after round 0, with heads of the chosen k, not the given 6
    weights = (tmp_path / "auto" / "classifier.safetensors").read_bytes()
    again = refine(images, None, np.arange(len(images)) % 6, RefineConfig(**CFG, k="auto"), tmp_path / "auto",
                   log=lambda s: None)
    assert again.k_choice == choice and np.array_equal(again.labels, auto.labels)
    assert (tmp_path / "auto" / "classifier.safetensors").read_bytes() == weights


def test_choice_is_deterministic_and_label_free():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (6, 3))
    U = np.concatenate([c + rng.normal(0, 0.5, (150, 3)) for c in centres])
    a, b = choose_k(U, range(3, 10), seed=1), choose_k(U, range(3, 10), seed=1)
    assert (a.k, a.scores) == (b.k, b.scores) and a.k == 6, a.summary()


@pytest.mark.parametrize("bad", ["lots", "1:5", "9:3", "0"])
def test_bad_k_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="use auto, a range LOW:HIGH"):
        parse_k_option(bad)
    with pytest.raises(ValueError, match="needs a pre-training start"):
        RefineConfig(k="auto", start="given")


def test_cli_refine_k_auto_records_and_prints_the_choice(store, prefect_api):
    bad = invoke("refine", "km", "--k", "many", "--store", str(store.root))
    assert bad.exit_code == 1 and bad.stderr.strip().splitlines() == [
        "error: k='many': use auto, a range LOW:HIGH such as 5:20, or one number "
        "(k must look like 10 or 5:15 or 4:40:4, got 'many')"], bad.stderr
    ran = invoke("refine", "km", "--k", "3:6", "--rounds", "0", "--warmup-steps", "10", "--cl-epochs", "0.5",
                 "--batch-size", "64", "--set", "cl_min_steps=0", "--set", "width=8", "--set", "recluster=kmeans",
                 "--threads", "1", "--store", str(store.root))
    assert ran.exit_code == 0, ran.stderr[-3000:]
    run = runs.read_run(store, "km-refined")
    # the thread count asked for is the one used, recorded and printed (CPU results depend on it)
    assert run["params"]["threads"] == 1 == run["clustering"]["threads"] and "trained on cpu, 1 thread)" in ran.stdout
    choice = run["clustering"]["k_choice"]
    assert run["params"]["k"] == "3:6" and [s["k"] for s in choice["scores"]] == [3, 4, 5, 6]
    assert run["clustering"]["n_clusters"] == choice["k"] == len(run["partitions"])
    assert f"k: chose {choice['k']} of 3..6 by the least GMM BIC" in ran.stdout
    report = json.loads(Path(run["clustering"]["report"]).read_text())
    assert report["k_choice"] == choice and report["n_clusters"] == choice["k"]
