"""The whole `cci run`, as a user types it, run twice at once into two fresh stores (each on its own
LocalCluster of two worker processes): one prints for a person, one prints JSON. One pair of runs
serves four checks, because a `cci run` is the slowest thing the suite does:

- what the terminal shows: a line per stage and the summary, nothing of Prefect's own logging;
- as `make run` starts it (no PREFECT_API_URL, its output piped), the UI address it prints opens the
  Prefect UI on its flow run while it runs, and so does the flow run's own page (headless Chromium);
- same seed, same inputs -> byte-identical published images and manifest;
- the clustering run links to the refined run made from it, so `cci features <clustering run>`
  finds the CCI classifier (found by the run record's links, not by a name pattern).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from browser import MISSING, have_chromium, headless_chromium

CCI = str(Path(sys.executable).parent / "cci")
SMALL = ["--k", "4", "--refine-steps", "20", "--train-steps", "20", "--per-cluster", "8", "--workers", "2",
         "--seed", "3", "--refine-set", "start=given", "--refine-set", "width=8",
         "--refine-set", "recluster=kmeans", "--eval-set", "samples=40", "--eval-set", "ref_steps=20",
         "--eval-set", "max_real=100", "--eval-set", "kid_subsets=5", "--eval-set", "kid_subset_size=20"]


def _env() -> dict:
    """The environment of a user without a GPU (CUDA kernels are not bitwise repeatable: the card says so),
    read when a test runs, so that the session's Prefect API (``prefect_api``) is in it."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, prefect_api):
    """`cci run` into store ``human`` (plain output, its own temporary Prefect server, watched in the UI
    while it runs: :func:`_watch`) and store ``json`` (--json) at the same time (the runs' timings differ;
    their outputs must not)."""
    root = tmp_path_factory.mktemp("cci-run")
    stores = {"human": root / "human", "json": root / "json"}
    envs = {"human": {k: v for k, v in _env().items() if k != "PREFECT_API_URL"}, "json": _env()}
    procs = {name: subprocess.Popen([CCI, "run", "builtin:digits", "--store", str(s), *SMALL]
                                    + (["--json"] if name == "json" else []),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envs[name])
             for name, s in stores.items()}
    human, said = procs["human"], []  # the human run's stderr, line by line as it comes

    def read():
        for line in human.stderr:
            said.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen = _watch(human, said, root) if have_chromium() else None
    except BaseException:
        for p in procs.values():
            p.terminate()  # a command ends on SIGTERM in one line, its temporary server stopped
            p.communicate(timeout=180)
        raise
    outs = {"json": procs["json"].communicate(timeout=1800), "human": (human.stdout.read(), "")}
    human.wait(timeout=1800)
    reader.join(timeout=60)
    outs["human"] = (outs["human"][0], "".join(said))
    for name, p in procs.items():
        assert p.returncode == 0, f"cci run ({name}) failed:\n{outs[name][1][-3000:]}"
    out = outs["json"][0]
    return {"stores": stores, "human": outs["human"], "summary": json.loads(out[out.index("{"):]), "ui": seen}


def _watch(proc: subprocess.Popen, said: list[str], folder: Path, timeout_s: float = 600) -> dict:
    """The pages the UI addresses PROC prints on stderr show, in headless Chromium, while PROC runs:
    ``{"runs"|"run": {"text": page text, "running": PROC still running then}}`` and ``"name"`` (the
    pipeline's flow run's)."""
    from selenium.webdriver.common.by import By

    def printed(pattern: str) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while not (found := next(filter(None, map(re.compile(pattern).search, list(said))), None)):
            assert proc.poll() is None and time.monotonic() < deadline, f"no {pattern!r} in:\n{''.join(said)}"
            time.sleep(0.5)
        return found

    def shown(url: str, expect: str) -> dict:
        deadline, text = time.monotonic() + 120, ""
        while expect not in text and time.monotonic() < deadline:
            driver.get(url)
            time.sleep(3)  # the page fetches its runs
            text = driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot(str(folder / f"ui-{len(seen)}.png"))
        return {"text": text, "running": proc.poll() is None}

    seen: dict = {"name": "pipeline digits28 from builtin:digits"}
    runs = printed(r"Watch it in the Prefect UI: (\S+/runs) \(until the command ends\)").group(1)
    driver = headless_chromium(folder)
    try:
        seen["runs"] = shown(runs, seen["name"])
        seen["run"] = shown(printed(r"Its flow run: (\S+/runs/flow-run/\S+)").group(1), "corpus:digits28")
    finally:
        driver.quit()
    return seen


def test_the_printed_ui_address_shows_the_run_while_it_runs(two_runs):
    seen = two_runs["ui"]
    if seen is None:
        pytest.skip(MISSING)
    for page in ("runs", "run"):  # the Runs page, then the flow run's own page
        assert seen[page]["running"] and seen["name"] in seen[page]["text"], (page, seen[page]["text"][:3000])
    assert "Running" in seen["run"]["text"] and "corpus:digits28" in seen["run"]["text"], seen["run"]["text"][:3000]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_prints_a_line_per_stage_and_the_summary(two_runs):
    stdout, stderr = two_runs["human"]
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    # off a terminal a running stage also says where it is every 30 s ("… "): as many as the load makes
    assert len([line for line in lines if not line.startswith("… ")]) <= 21, "\n".join(lines)
    stages = [line for line in lines if line.startswith("✓ ")]
    # the pipeline itself and its six stages, each once, in order
    # (evaluated before published: the dataset card carries the evaluation)
    assert [s.split()[1] for s in stages] == ["ingest", "cluster", "refine", "train", "evaluate", "generate",
                                              "pipeline"], stages
    assert all(" s, " in s and "tasks" in s for s in stages)
    assert "Finished in state" not in stderr and "INFO" not in stderr
    assert "Pipeline on digits28" in stdout
    # the profile, as SMALL overrides it, before the stages and in the summary
    from flows.profiles import resolve_profile
    profile = resolve_profile("quick", refine_steps=20, train_steps=20).line()
    assert stderr.splitlines()[0] == profile and f"  {profile}" in stdout.splitlines()
    # the refined run's explorer, with the generators' section the evaluation added
    page = Path(next(line for line in stdout.splitlines() if line.startswith("  explorer:")).split()[1])
    assert page.name == "explore.html" and "<h2>Real vs generated</h2>" in page.read_text()


def test_same_seed_gives_byte_identical_dataset(two_runs):
    summary, stores = two_runs["summary"], two_runs["stores"]
    b = Path(summary["dataset"]["path"])
    a = stores["human"] / b.relative_to(stores["json"])  # the same layout in the other store
    assert a.is_dir() and a != b

    # decoded images, then every chunk and metadata byte of the Zarr store
    ia, ib = zarr.open_array(str(a / "images.zarr"), mode="r")[:], zarr.open_array(str(b / "images.zarr"), mode="r")[:]
    assert ia.shape == (32, 28, 28, 1) and ia.std() > 0
    assert np.array_equal(ia, ib)
    assert _files(a / "images.zarr") == _files(b / "images.zarr")

    # the manifest's content, and its file byte for byte (it holds no wall-clock value)
    ma, mb = pd.read_parquet(a / "manifest.parquet"), pd.read_parquet(b / "manifest.parquet")
    pd.testing.assert_frame_equal(ma, mb)
    assert not any(pd.api.types.is_datetime64_any_dtype(t) for t in ma.dtypes)
    assert (a / "manifest.parquet").read_bytes() == (b / "manifest.parquet").read_bytes()
    assert (a / "data.parquet").read_bytes() == (b / "data.parquet").read_bytes()

    # the cards differ only in when they were written; both say the data is repeatable
    ca, cb = (json.loads((p / "card.json").read_text()) for p in (a, b))
    assert ca.pop("created_at") != "" and cb.pop("created_at") != ""
    assert ca == cb
    assert ca["deterministic"] is True and ca["devices"]["generate"] == "cpu"
    ev = ca["evaluation"]  # measured before publishing, by the models whose images these are
    assert ev["group"] == "per_cluster" and ev["fid"] > ev["floor"]["fid"] > 0 and 0 < ev["coverage"] <= 1
    assert ev["per_cluster"] and all(e["n_fake"] > 0 for e in ev["per_cluster"].values())
    assert set(ca["devices"]["train"].values()) == {"cpu"} and ca["devices"]["classifier"] == "cpu"


def test_features_of_the_clustering_run_list_the_cci_classifier(two_runs):
    from cci_core.store import runs
    from cci_core.store.store import Store
    summary, store = two_runs["summary"], Store(two_runs["stores"]["json"])
    refined = runs.read_run(store, summary["refined_run"])
    parent = refined["parent_run"]
    assert [c["run_id"] for c in runs.children(store, parent, "refined")] == [summary["refined_run"]]

    res = subprocess.run([CCI, "features", parent, "--store", str(store.root), "--space", "pixels",
                          "--space", "classifier", "--fractions", "1", "--max-train", "300", "--max-test", "200",
                          "--forest-trees", "5", "--workers", "1", "--json"],
                         capture_output=True, text=True, timeout=900, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout[res.stdout.index("{"):])
    compared, skipped = _named(report, "spaces"), _named(report, "skipped")
    assert "classifier" in compared and "classifier" not in skipped, json.dumps(report)[:3000]


def _named(obj, key: str) -> set[str]:
    """Every ``space`` named in a list held under ``key``, anywhere in a JSON report."""
    found = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, list):
                found |= {d["space"] for d in v if isinstance(d, dict) and "space" in d}
            found |= _named(v, key)
    elif isinstance(obj, list):
        for v in obj:
            found |= _named(v, key)
    return found
