"""The operator's path, end to end: a real Prefect server (SQLite) on 127.0.0.1, a process work pool,
the project's deployments, a worker, one `cci-pipeline` run on a tiny corpus, its artifacts checked
through the API, then its page in the Prefect UI loaded in headless Chromium (screenshots saved as
test artifacts), its subflows named from their inputs and tagged. A second test runs `cci refine` against
a real server and watches its flow run page while it runs: the progress artifact advances round by round
(screenshots of each step). Every process the tests start is stopped at the end.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skipped only without them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from browser import CHROMEDRIVER, CHROMIUM, headless_chromium

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "cci-process-test"
CORPUS = "digits28"
DATASET = f"{CORPUS}-generated"
RUN_DEADLINE_S = 480

# builtin:digits at the pipeline's default 28x28, with every stage cut to a few steps
TINY = {"k": 4, "refine_rounds": 1, "refine_steps": 20,
        "refine_options": {"cl_epochs": 0.5, "cl_min_steps": 0, "recluster": "kmeans", "width": 8, "batch_size": 64},
        "train_steps": 10, "min_size": 20, "per_cluster": 8, "eval_samples": 40,
        "eval_options": {"ref_steps": 20, "max_real": 100, "kid_subset_size": 20, "kid_subsets": 5},
        "train_options": {"width": 8, "z_dim": 16}}
# (train_options are TrainParams fields: the pipeline builds the train stage's TrainSettings from them)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium "
                                                               "chromium-driver (.ci/run does)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{path}: {e}>"


class Procs:
    """The processes this test starts, with their logs; stops them (and their children) by pid."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list, env: dict) -> subprocess.Popen:
        log = self.logdir / f"{name}.log"
        with open(log, "wb") as fh:
            p = subprocess.Popen([str(a) for a in args], env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.started.append((name, p, log))
        return p

    def log(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def tails(self, n: int = 60) -> str:
        return "\n".join(f"----- {name} (pid {p.pid}, exit {p.poll()}) : last {n} lines of {log} -----\n"
                         f"{_tail(log, n)}" for name, p, log in self.started)

    def stop_all(self, timeout: float = 30) -> None:
        for _name, p, _ in reversed(self.started):  # worker first, then the server
            try:
                children = psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # Prefect's CLI shuts down cleanly on Ctrl-C
                try:
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    p.terminate()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout=10)
            alive = [c for c in children if c.is_running()]
            for c in alive:
                try:
                    c.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(alive, timeout=10)
            for c in alive:
                try:
                    c.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=10)
        for name, p, _ in self.started:
            assert p.poll() is not None, f"{name} (pid {p.pid}) is still running"


def _wait_for_api(api: str, server: subprocess.Popen, procs: Procs, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.poll() is not None:
            pytest.fail(f"the Prefect server exited with {server.returncode}\n{procs.tails()}")
        try:
            if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"the Prefect server did not answer {api}/health within {timeout:.0f} s\n{procs.tails()}")


def _run_logs(api: str, flow_run_ids: list[str], limit: int = 60) -> str:
    try:
        r = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": flow_run_ids}},
                                                   "sort": "TIMESTAMP_DESC", "limit": limit}, timeout=30)
        return "\n".join(f"{x['timestamp']} {x['level']:>2} {x['name']}: {x['message']}" for x in r.json()[::-1])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:  # only used to explain a failure
        return f"<could not read the run's logs: {e}>"


def _save(path: Path) -> None:
    dest = os.environ.get("CCI_TEST_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(dest) / path.name)


def test_operator_runs_pipeline_and_sees_it_in_the_ui(tmp_path, monkeypatch):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMIUM} is installed but {CHROMEDRIVER} is not: apt-get install chromium-driver")
    t_start = time.monotonic()
    port = _free_port()
    ui = f"http://127.0.0.1:{port}"
    api = f"{ui}/api"
    store = tmp_path / "store"
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    })
    procs = Procs(tmp_path)
    driver = None
    flow_run_id = None
    try:
        # 1. the server
        server = procs.start("server", [BIN / "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", port], env)
        _wait_for_api(api, server, procs)
        print(f"server answers at {api} after {time.monotonic() - t_start:.0f} s")

        # 2. the work pool and the deployments (the deployment module's deploy(), with tiny parameters)
        def run(args, timeout=180):
            r = subprocess.run([str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True,
                               timeout=timeout, check=False)
            assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{procs.tails()}"
            return r.stdout
        run([BIN / "prefect", "work-pool", "create", POOL, "--type", "process"])
        deploy_args = {"pool": POOL, "source": "builtin:digits", "corpus": CORPUS, "store_root": str(store),
                       "pipeline_params": TINY, "refresh_params": {"per_cluster": 8}, "refresh_paused": True,
                       "job_variables": {"env": {"OMP_NUM_THREADS": "1"}}}
        script = ("import json, sys\nfrom deployments.deploy import deploy\n"
                  "print(json.dumps([str(i) for i in deploy(**json.loads(sys.argv[1]))]))")
        out = run([sys.executable, "-c", script, json.dumps(deploy_args)])
        deployment_ids = json.loads(out.strip().splitlines()[-1])
        assert len(deployment_ids) == 2
        dep = httpx.get(f"{api}/deployments/name/cci-pipeline/cci-pipeline", timeout=30).json()
        assert dep["work_pool_name"] == POOL and dep["parameters"]["k"] == TINY["k"]
        assert dep["parameters"]["store_root"] == str(store.resolve())
        refresh = httpx.get(f"{api}/deployments/name/cci-refresh/cci-refresh", timeout=30).json()
        assert refresh["paused"] and refresh["schedules"], refresh

        # 3. a worker on the pool
        procs.start("worker", [BIN / "prefect", "worker", "start", "--pool", POOL, "--type", "process",
                               "--limit", "1"], env)

        # 4. trigger cci-pipeline as the operator would, and wait for it through the API
        r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}, timeout=30)
        assert r.status_code == 201, r.text
        flow_run_id = r.json()["id"]
        print(f"flow run {flow_run_id} created after {time.monotonic() - t_start:.0f} s")
        t_run = time.monotonic()
        state = None
        while time.monotonic() - t_run < RUN_DEADLINE_S:
            fr = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()
            state = fr["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            for name, p, _ in procs.started:
                assert p.poll() is None, f"{name} exited with {p.returncode}\n{procs.tails()}"
            time.sleep(3)
        subflows = httpx.post(f"{api}/flow_runs/filter", json={
            "flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}}, timeout=30).json()
        run_ids = [flow_run_id] + [s["id"] for s in subflows]
        if not state or state["type"] != "COMPLETED":
            pytest.fail(f"flow run {flow_run_id} is {state and state['type']} ({state and state.get('message')}) "
                        f"after {time.monotonic() - t_run:.0f} s\n----- the run's logs -----\n"
                        f"{_run_logs(api, run_ids)}\n{procs.tails(80)}")
        print(f"flow run {fr['name']!r} completed in {time.monotonic() - t_run:.0f} s")
        assert fr["name"] == f"pipeline {CORPUS} from builtin:digits"
        # every stage's run is named from its inputs and tagged with its stage and corpus
        names = {s["name"] for s in subflows}
        assert f"ingest {CORPUS} from builtin:digits" in names and f"cluster {CORPUS} k={TINY['k']}" in names, names
        assert any(n.startswith("refine ") for n in names) and any(n.startswith("generate ") for n in names), names
        for s in subflows:
            assert "cci" in s["tags"] and f"corpus:{CORPUS}" in s["tags"], (s["name"], s["tags"])
            assert any(t.startswith("stage:") and t != "stage:pipeline" for t in s["tags"]), (s["name"], s["tags"])
        sub_names = {s["flow_id"] for s in subflows}
        flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=30).json()}
        assert {"cci-ingest", "cci-cluster", "cci-refine", "cci-train", "cci-generate"} <= \
               {flows[i] for i in sub_names}, [flows[i] for i in sub_names]
        assert all(s["state"]["type"] == "COMPLETED" for s in subflows), [(flows[s["flow_id"]], s["state"])
                                                                         for s in subflows]

        # 5. the operator's artifacts, made by this run or its subflows
        arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": run_ids}}},
                          timeout=30).json()
        by_key = {a["key"]: a for a in arts if a.get("key")}
        expected = {f"pipeline-{CORPUS}": "markdown", f"cluster-metrics-{CORPUS}": "table",
                    f"cluster-sizes-{CORPUS}": "table", f"dataset-summary-{DATASET}": "markdown",
                    f"dataset-{DATASET}": "table"}
        for key, kind in expected.items():
            assert key in by_key, f"no artifact {key!r}; the run made {sorted(by_key)}"
            assert by_key[key]["type"] == kind and by_key[key]["data"], by_key[key]
        assert by_key[f"pipeline-{CORPUS}"]["flow_run_id"] == flow_run_id
        assert f"dataset `{DATASET}` v1" in by_key[f"pipeline-{CORPUS}"]["data"]
        assert any(a["type"] == "progress" for a in arts), "no progress artifact"

        # 6. the published dataset version on disk
        version = store / "datasets" / DATASET / "v1"
        assert (version / "_COMMITTED").exists(), sorted(p.name for p in version.parent.glob("*"))
        assert (version / "manifest.parquet").exists() and (version / "card.json").exists()
        assert json.loads((version.parent / "latest.json").read_text())["version"] == 1
        from cci_core.store.datasets import open_dataset
        from cci_core.store.store import Store
        ds = open_dataset(DATASET, store=Store(store))
        assert ds.version == 1 and len(ds) > 0 and ds.images.shape[1:3] == (28, 28)

        # 7. the flow run's page in the Prefect UI, in headless Chromium
        driver = headless_chromium(tmp_path)
        page = f"{ui}/runs/flow-run/{flow_run_id}"
        driver.get(page)

        def body() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        shot = tmp_path / "flow-run.png"
        try:
            WebDriverWait(driver, 90, poll_frequency=1).until(
                lambda d: fr["name"] in body() and "Completed" in body())
        except TimeoutException:
            driver.save_screenshot(str(shot))
            _save(shot)
            pytest.fail(f"the UI page {page} never showed the run {fr['name']!r} as Completed; it shows:\n"
                        f"{body()[:3000]}")
        driver.save_screenshot(str(shot))
        _save(shot)
        text = body()
        assert fr["name"] in text and "Completed" in text
        assert "Artifacts" in text and "Subflow Runs" in text, text[:3000]

        def open_tab(tab: str, expect: list[str], png: str) -> str:
            """Click the page's TAB, wait until it shows every string of EXPECT, screenshot it."""
            shot_tab = tmp_path / png
            xpath = (f"//*[normalize-space(.)='{tab}' and not(.//*[normalize-space(.)='{tab}'])]")
            found = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()]
            if found:
                found[0].click()
            else:  # the tab bar collapses to a select on narrow windows: go by the URL instead
                driver.get(f"{page}?tab={tab.replace(' ', '+')}")
            try:
                WebDriverWait(driver, 60, poll_frequency=1).until(lambda d: all(x in body() for x in expect))
            except TimeoutException:
                driver.save_screenshot(str(shot_tab))
                _save(shot_tab)
                pytest.fail(f"the {tab} tab of {page} does not show {expect}:\n{body()[:3000]}")
            driver.save_screenshot(str(shot_tab))
            _save(shot_tab)
            assert shot_tab.stat().st_size > 10_000
            return body()

        text = open_tab("Artifacts", [f"pipeline-{CORPUS}"], "flow-run-artifacts.png")
        assert f"pipeline-{CORPUS}" in text
        text = open_tab("Subflow Runs", ["cci-ingest", "cci-cluster", "cci-refine", "cci-train", "cci-generate",
                                         "cci-evaluate"], "flow-run-subflows.png")
        assert text.count("Completed") >= 6, text[:3000]
        assert shot.stat().st_size > 10_000
        print(f"screenshots in {tmp_path}; whole test {time.monotonic() - t_start:.0f} s")
    finally:
        if driver is not None:
            driver.quit()
        if flow_run_id is not None:  # a run left behind by a failure: cancel it before the worker goes
            try:
                st = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
                if st not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    httpx.post(f"{api}/flow_runs/{flow_run_id}/set_state",
                               json={"state": {"type": "CANCELLING"}, "force": True}, timeout=10)
                    time.sleep(5)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                print(f"could not cancel flow run {flow_run_id}: {e}")
        procs.stop_all()
        for name in ("server", "worker"):
            if procs.log(name).exists():
                _save(procs.log(name))


def test_refine_progress_advances_in_the_ui(tmp_path, monkeypatch):
    """`cci refine` against a real server: while it runs, its flow run page (Artifacts tab) shows the
    progress artifact advancing round by round (screenshots); the run is named and tagged."""
    from selenium.webdriver.common.by import By

    from cci_core.cluster import cluster_run as cr
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store

    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMIUM} is installed but {CHROMEDRIVER} is not: apt-get install chromium-driver")
    store = Store(tmp_path / "store")
    ingest_local(store, "builtin:digits", "d28", size=(28, 28))
    cr.run_local(store, "d28", cr.ClusterParams(k=4, n_components=10), run_id="run1")
    port = _free_port()
    ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PREFECT_HOME": str(tmp_path / "prefect-home"),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
                "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    procs = Procs(tmp_path)
    driver = None
    try:
        server = procs.start("server", [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                             env)
        _wait_for_api(api, server, procs)
        refine = procs.start("refine", [BIN / "cci", "refine", "run1", "--store", store.root, "--rounds", "2",
                                        "--steps", "150", "--batch-size", "32", "--set", "warmup_steps=150",
                                        "--set", "start=given", "--set", "width=8", "--set", "recluster=kmeans"], env)
        t0, run = time.monotonic(), None
        while run is None:
            assert refine.poll() is None, f"cci refine exited early\n{procs.tails()}"
            assert time.monotonic() - t0 < 180, f"no running flow run 'refine run1'\n{procs.tails()}"
            runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["refine run1"]}}},
                              timeout=30).json()
            run = next((r for r in runs if r["state_type"] == "RUNNING"), None)
            time.sleep(1)
        assert {"cci", "stage:refine", "corpus:d28", "run:run1"} <= set(run["tags"]), run["tags"]
        driver = headless_chromium(tmp_path)
        page = f"{ui}/runs/flow-run/{run['id']}"
        shown: list[str] = []  # the progress descriptions the page showed, in order
        tab = "//*[normalize-space(.)='Artifacts' and not(.//*[normalize-space(.)='Artifacts'])]"
        text = ""
        while refine.poll() is None and time.monotonic() - t0 < 400:
            driver.get(page)
            time.sleep(2)
            found = [e for e in driver.find_elements(By.XPATH, tab) if e.is_displayed()]
            if found:
                found[0].click()
                time.sleep(2)  # the tab fetches its artifacts
            text = driver.find_element(By.TAG_NAME, "body").text
            (tmp_path / "last-page.txt").write_text(text)
            driver.save_screenshot(str(tmp_path / "last-page.png"))
            line = next((ln for ln in text.splitlines() if "refine run1 into" in ln), None)
            if line and (not shown or line != shown[-1]):
                shown.append(line)
                shot = tmp_path / f"refine-progress-{len(shown)}.png"
                driver.save_screenshot(str(shot))
                _save(shot)
        assert refine.wait(timeout=300) == 0, procs.tails()
        assert len(shown) >= 2 and any("round" in s for s in shown), (shown, text[:3000])
        import re
        at = [tuple(map(int, m.groups())) for s in shown if (m := re.search(r"round (\d+)/\d+, step (\d+)", s))]
        assert len(at) >= 2 and at == sorted(at), shown  # it advanced, round by round
        fr = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=30).json()
        assert fr["state_type"] == "COMPLETED" and fr["name"] == "refine run1"
        driver.get(f"{ui}/runs/flow-run/{run['id']}")
        time.sleep(3)
        text = driver.find_element(By.TAG_NAME, "body").text
        shot = tmp_path / "refine-done.png"
        driver.save_screenshot(str(shot))
        _save(shot)
        assert "refine run1" in text and "stage:refine" in text, text[:3000]
        print(f"progress seen in the UI: {shown}; screenshots in {tmp_path}")
    finally:
        if driver is not None:
            driver.quit()
        procs.stop_all()
