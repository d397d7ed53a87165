"""Bad input through the real `cci`: one `error:` line naming the value at fault, exit code 1,
no traceback, the store untouched (issue 15, items 5 and 8).

Most cases run the Typer app in this process (fast). For those, starting a Prefect server is
itself a failure: every one of them must be refused before one starts. A few run the `cci`
console script as subprocesses to prove the exit code and a clean stderr end to end.

Set ``CCI_BAD_INPUT_REPORT=path.json`` to write the tally the issue asks for (tried, clear
errors, tracebacks, silent results, losses).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cci_core.cluster.cluster_run import ClusterParams

TALLY: dict[str, str] = {}  # case id -> clear error | traceback | silent result | loss | other


class ServerStarted(AssertionError):
    pass


@contextlib.contextmanager
def _no_server():
    raise ServerStarted("a Prefect server or API was requested: the check came too late")
    yield  # pragma: no cover


@pytest.fixture(scope="module")
def store(digits28_store):
    from cci_core.store.corpus import open_corpus
    from cci_core.store.datasets import DatasetWriter
    from cci_core.store.runs import lineage_store
    s = digits28_store("bad-inputs", corpus="d28", run1=ClusterParams(k=10, n_components=20))
    # a published dataset named like the corpus: `d28@v1` alone names both (the wrong artifact)
    corpus = open_corpus(s, "d28")
    with DatasetWriter(s, "d28", (28, 28, 1)) as writer:
        writer.append(corpus.images()[:8], pd.DataFrame({"source_row": range(8)}))
        writer.commit({"description": "eight corpus rows"}, record=lambda path, version: lineage_store(s).record(
            "dataset", f"d28@v{version}", str(path), "1" * 64, params={"version": version},
            inputs=[(corpus.artifact_id, "source")]).id)
    return s


@pytest.fixture(scope="module")
def not_dask_port():
    """A TCP port that accepts connections but speaks no Dask (a mistyped port of another service)."""
    import socket
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-sources")
    (d / "empty").mkdir()
    (d / "allbad").mkdir()
    for i in range(3):
        (d / "allbad" / f"junk{i}.png").write_bytes(b"not an image " * (i + 1))
    rng = np.random.default_rng(0)
    np.save(d / "wide.npy", rng.uniform(-500, 2050, size=(20, 8, 8)).astype(np.float32))
    np.savez(d / "more_labels.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             labels=np.arange(100) % 10)
    np.savez(d / "fewer_labels.npz", images=rng.integers(0, 256, (100, 8, 8), dtype=np.uint8),
             labels=np.arange(40) % 10)
    (d / "empty_store").mkdir()
    (d / "dir.parquet").mkdir()
    (d / "corrupt_store" / "corpora").mkdir(parents=True)
    (d / "corrupt_store" / "lineage.db").write_bytes(b"this is not SQLite " * 100)
    return d


def _store_state(root: Path) -> str:
    """Hash of every file in the store (lineage.db by its rows: SQLite may rewrite pages on a read)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("lineage.db"):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
        elif p.is_dir():
            h.update(str(p.relative_to(root)).encode() + b"/")
    db = root / "lineage.db"
    if db.exists():
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            for table in ("artifacts", "artifact_inputs"):
                rows = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2")).all()
                h.update(repr(rows).encode())
        engine.dispose()
    return h.hexdigest()


# (id, argv with {S} the store, {I} the inputs folder, fragments the error line must contain)
CASES = [
    # store and lineage
    ("lineage-show-missing-store", "lineage show d28@v1 --store /nonexistent/cci", ["/nonexistent/cci", "--store"]),
    ("lineage-list-missing-store", "lineage list --store /nonexistent/cci", ["/nonexistent/cci"]),
    ("lineage-list-not-a-store", "lineage list --store {I}/empty_store", ["empty_store", "not a CCI store"]),
    ("lineage-list-corrupt-database", "lineage list --store {I}/corrupt_store", ["lineage.db", "cannot be read"]),
    ("lineage-show-file-as-store", "lineage show x --store {I}/wide.npy", ["wide.npy", "not a folder"]),
    ("lineage-show-unknown-name", "lineage show nosuch@v9 --store {S}", ["nosuch@v9", "cci lineage list"]),
    ("lineage-show-unknown-kind-name", "lineage show corpus:d28@v7 --store {S}", ["corpus:d28@v7"]),
    ("lineage-list-unknown-kind", "lineage list --kind corpra --store {S}", ["--kind", "corpra", "corpus"]),
    ("lineage-show-kind-without-name", "lineage show clustering: --store {S}", ["clustering:"]),
    ("lineage-show-ambiguous-name", "lineage show d28@v1 --store {S}", ["d28@v1", "corpus:d28@v1", "dataset:d28@v1"]),
    ("corpus-info-unknown", "corpus info nosuch --store {S}", ["nosuch"]),
    ("corpus-info-unknown-version", "corpus info d28 --version 9 --store {S}", ["9"]),
    ("corpus-list-missing-store", "corpus list --store /nonexistent/cci", ["/nonexistent/cci"]),
    ("datasets-show-unknown", "datasets show nosuch --store {S}", ["nosuch"]),
    ("datasets-list-missing-store", "datasets list --store /nonexistent/cci", ["/nonexistent/cci"]),
    ("datasets-show-bad-version", "datasets show d28 --version abc --store {S}", ["abc"]),
    ("datasets-show-missing-version", "datasets show d28 --version 7 --store {S}", ["7"]),
    ("datasets-export-into-a-file", "datasets export d28 {I}/wide.npy --store {S}", ["wide.npy", "is a file"]),
    ("datasets-export-parquet-onto-folder", "datasets export d28 {I}/dir.parquet --store {S}",
     ["dir.parquet", "is a folder"]),
    ("datasets-export-unknown", "datasets export nosuch {I}/out --store {S}", ["nosuch"]),
    # cluster
    ("cluster-unknown-corpus", "cluster nosuch --store {S}", ["nosuch"]),
    ("cluster-missing-store", "cluster d28 --store /nonexistent/cci", ["/nonexistent/cci"]),
    ("cluster-k-below-2", "cluster d28 --k 1 --store {S}", ["1"]),
    ("cluster-k-above-n", "cluster d28 --k 5000 --store {S}", ["5000"]),
    ("cluster-unknown-algorithm", "cluster d28 --algorithm nosuch --store {S}", ["nosuch"]),
    ("cluster-bad-components", "cluster d28 --components abc --store {S}", ["--components", "abc"]),
    ("cluster-finished-run-id", "cluster d28 --run-id run1 --store {S}", ["run1"]),
    ("cluster-bad-run-id", "cluster d28 --run-id ../x --store {S}", ["../x"]),
    ("cluster-unreachable-dask", "cluster d28 --dask-address tcp://127.0.0.1:1 --store {S}",
     ["tcp://127.0.0.1:1", "connection refused", "dask scheduler"]),
    ("cluster-malformed-dask", "cluster d28 --dask-address tcp://127.0.0.1 --store {S}",
     ["--dask-address", "tcp://127.0.0.1"]),
    ("cluster-not-a-dask-peer", "cluster d28 --dask-address tcp://127.0.0.1:{P} --store {S}",
     ["tcp://127.0.0.1:", "no Dask handshake"]),
    ("cluster-no-workers", "cluster d28 --workers 0 --store {S}", ["--workers 0"]),
    ("cluster-negative-eps", "cluster d28 --algorithm dbscan --eps -1 --store {S}", ["--eps", "-1"]),
    ("cluster-min-cluster-size-1", "cluster d28 --algorithm hdbscan --min-cluster-size 1 --store {S}",
     ["--min-cluster-size 1"]),
    ("cluster-umap-dim-0", "cluster d28 --embedding umap --umap-dim 0 --store {S}", ["--umap-dim 0"]),
    # refine, predict
    ("refine-unknown-run", "refine nosuch --store {S}", ["nosuch"]),
    ("refine-unknown-option", "refine run1 --set bogus=1 --store {S}", ["bogus"]),
    ("refine-bad-device", "refine run1 --device nosuch --store {S}", ["--device", "nosuch"]),
    ("refine-option-without-value", "refine run1 --set rounds --store {S}", ["rounds", "NAME=VALUE"]),
    ("predict-unknown-run", "predict nosuch --corpus d28 --store {S}", ["nosuch"]),
    ("predict-nothing-to-label", "predict run1 --store {S}", ["--corpus"]),
    ("predict-all-unreadable", "predict run1 {I}/allbad --store {S}", ["allbad", "nothing to label"]),
    ("predict-float-out-of-range", "predict run1 {I}/wide.npy --store {S}", ["wide.npy", "--value-range"]),
    ("predict-bad-rows", "predict run1 --corpus d28 --rows 5:1 --store {S}", ["5:1"]),
    # train, evaluate, generate
    ("train-unknown-run", "train nosuch --store {S}", ["nosuch"]),
    ("train-unknown-model", "train run1 --model nosuch --store {S}", ["nosuch"]),
    ("train-bad-device", "train run1 --device gpu0 --store {S}", ["--device", "gpu0"]),
    ("selfcond-bad-device", "self-condition run1 --device cdua --store {S}", ["--device", "cdua"]),
    ("train-unreachable-dask", "train run1 --steps 5 --dask-address tcp://127.0.0.1:1 --store {S}",
     ["tcp://127.0.0.1:1"]),
    ("evaluate-no-generators", "evaluate run1 --store {S}", ["run1", "cci train"]),
    ("generate-unknown-run", "generate nosuch --dataset g --store {S}", ["nosuch"]),
    ("generate-no-generators", "generate run1 --dataset g --store {S}", ["run1", "cci train"]),
    ("generate-bad-dataset-name", "generate run1 --dataset ../x --store {S}", ["../x"]),
    ("generate-bad-threshold", "generate run1 --dataset g --threshold 2 --store {S}", ["--threshold", "2"]),
    ("generate-bad-per-cluster", "generate run1 --dataset g --per-cluster 0 --store {S}", ["--per-cluster", "0"]),
    # palette, stylize, segment
    ("palette-unknown-source", "palette nosuch --store {S}", ["nosuch"]),
    ("palette-one-colour", "palette d28 --colors 1 --store {S}", ["1"]),
    ("palette-unknown-method", "palette d28 --method nosuch --store {S}", ["nosuch"]),
    ("stylize-palette-outside-store", "stylize d28 --palette ../../../etc/passwd --dataset s --store {S}",
     ["../../../etc/passwd"]),
    ("stylize-unknown-palette", "stylize d28 --palette nosuch --dataset s --store {S}", ["nosuch"]),
    ("segment-k-below-2", "segment d28 --k 1 --store {S}", ["1"]),
    ("segment-bad-space", "segment d28 --space xyz --store {S}", ["--space", "xyz"]),
    ("segment-colour-space-on-gray", "segment d28 --space rgb --store {S}", ["--space rgb", "gray"]),
    ("segment-unknown-source", "segment nosuch --store {S}", ["nosuch"]),
    # features, self-condition
    ("features-unknown-run", "features nosuch --store {S}", ["nosuch"]),
    ("features-bad-fractions", "features run1 --fractions a,b --store {S}", ["a,b"]),
    ("selfcond-unknown-run", "self-condition nosuch --store {S}", ["nosuch"]),
    ("selfcond-bad-init", "self-condition run1 --init nosuch --steps 5 --store {S}", ["nosuch"]),
    # refresh, run
    ("refresh-missing-source", "refresh {I}/nosuch --corpus d28 --store {S}", ["nosuch"]),
    ("refresh-unknown-corpus", "refresh builtin:digits --corpus nosuch --store {S}", ["nosuch"]),
    ("refresh-no-served-run", "refresh builtin:digits --corpus d28 --store {S}", ["d28", "cci run"]),
    ("refresh-unknown-run", "refresh builtin:digits nosuch --corpus d28 --store {S}", ["nosuch"]),
    ("run-missing-source", "run {I}/nosuch --store {S}", ["nosuch"]),
    ("run-k-below-2", "run builtin:digits --k 1 --store {S}", ["--k", "1"]),
    ("run-bad-corpus-name", "run builtin:digits --corpus ../x --store {S}", ["../x"]),
    ("run-bad-size", "run builtin:digits --size abc --store {S}", ["--size", "abc"]),
    ("run-bad-channels", "run builtin:digits --channels 2 --store {S}", ["--channels", "2"]),
    ("run-npz-fewer-labels", "run {I}/fewer_labels.npz --store {S}", ["fewer_labels.npz", "40"]),
    ("run-unknown-eval-setting", "run builtin:digits --eval-set bogus=1 --store {S}", ["bogus", "ref_steps"]),
    ("run-eval-setting-wrong-type", "run builtin:digits --eval-set ref_steps=many --store {S}",
     ["ref_steps", "many"]),
    ("run-eval-samples-too-few", "run builtin:digits --eval-set samples=3 --store {S}", ["--samples", "3"]),
    ("refresh-float-out-of-range", "refresh {I}/wide.npy --corpus d28 --store {S}", ["wide.npy", "--value-range"]),
    ("run-unreachable-dask", "run builtin:digits --dask-address tcp://127.0.0.1:1 --store {S}",
     ["tcp://127.0.0.1:1"]),
    # ingest (new corpus "newc" in the same store: a refused ingest creates nothing)
    ("ingest-missing-source", "ingest {I}/nosuch --corpus newc --store {S}", ["nosuch"]),
    ("ingest-bad-size", "ingest builtin:digits --corpus newc --size 0x5 --store {S}", ["--size", "0x5"]),
    ("ingest-bad-size-text", "ingest builtin:digits --corpus newc --size big --store {S}", ["--size", "big"]),
    ("ingest-unreachable-dask", "ingest builtin:digits --corpus newc --dask-address tcp://127.0.0.1:1 --store {S}",
     ["tcp://127.0.0.1:1", "connection refused"]),
    ("ingest-bad-corpus-name", "ingest builtin:digits --corpus ../x --store {S}", ["../x"]),
    ("ingest-bad-channels", "ingest builtin:digits --corpus newc --channels 2 --store {S}", ["--channels", "2"]),
    ("ingest-bad-fit", "ingest builtin:digits --corpus newc --size 8 --fit nosuch --store {S}", ["nosuch"]),
    ("ingest-empty-folder", "ingest {I}/empty --corpus newc --store {S}", ["empty"]),
    ("ingest-all-bad-folder", "ingest {I}/allbad --corpus newc --store {S}", ["allbad"]),
    ("ingest-float-out-of-range", "ingest {I}/wide.npy --corpus newc --store {S}", ["wide.npy", "--value-range"]),
    ("ingest-npz-more-labels", "ingest {I}/more_labels.npz --corpus newc --store {S}", ["more_labels.npz", "100", "40"]),
    ("ingest-npz-fewer-labels", "ingest {I}/fewer_labels.npz --corpus newc --store {S}", ["fewer_labels.npz", "100", "40"]),
]


def classify(exit_code: int, stderr: str, stdout: str, changed: bool, fragments: list[str]) -> str:
    """What a bad input produced, in the issue's words."""
    if changed:
        return "loss"
    if "Traceback" in stderr or "Traceback" in stdout:
        return "traceback"
    if exit_code == 0:
        return "silent result"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if exit_code == 1 and len(errors) == 1 and all(f in errors[0] for f in fragments):
        return "clear error"
    return "other"


@pytest.mark.parametrize("case_id,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case_id, argv, fragments, store, inputs, not_dask_port, monkeypatch):
    from flows.cli import app
    monkeypatch.setattr("flows.runtime.prefect_api", _no_server)
    monkeypatch.setenv("COLUMNS", "400")
    args = argv.format(S=store.root, I=inputs, P=not_dask_port).split()
    before = _store_state(store.root)
    t0 = time.time()
    result = CliRunner().invoke(app, args)
    seconds = time.time() - t0
    stderr = result.stderr + ("" if result.exception is None or isinstance(result.exception, SystemExit)
                              else "Traceback: " + repr(result.exception))
    outcome = classify(result.exit_code, stderr, result.stdout, _store_state(store.root) != before, fragments)
    TALLY[case_id] = outcome
    assert outcome == "clear error", (outcome, result.exit_code, stderr[-2000:], result.stdout[-500:])
    assert seconds < 20, f"{case_id} took {seconds:.1f} s to refuse"


def test_subprocess_errors_are_one_line(store, inputs):
    """The console script, as a user runs it: exit code 1, one `error:` line, no traceback, in
    seconds (no server start-up). Run side by side: each pays Python's and the imports' start-up."""
    cci = str(Path(sys.executable).parent / "cci")
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)  # a server would start if a check came too late
    cases = {
        "lineage": ([cci, "lineage", "show", "d28@v1", "--store", "/nonexistent/cci"], "/nonexistent/cci"),
        "dask": ([cci, "cluster", "d28", "--dask-address", "tcp://127.0.0.1:1", "--store", str(store.root)],
                 "tcp://127.0.0.1:1"),
        "generate": ([cci, "generate", "run1", "--dataset", "g", "--store", str(store.root)], "cci train"),
    }
    # a Prefect API that was set but is not running: refused before any flow run, not after retries
    cases["prefect-api"] = ([cci, "cluster", "d28", "--k", "3", "--store", str(store.root)], "http://127.0.0.1:1/api")
    envs = {"prefect-api": {**env, "PREFECT_API_URL": "http://127.0.0.1:1/api"}}
    before = _store_state(store.root)
    t0 = time.time()
    procs = {k: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=envs.get(k, env)) for k, (argv, _) in cases.items()}
    results = {k: p.communicate(timeout=120) for k, p in procs.items()}
    elapsed = time.time() - t0
    for key, (_stdout, stderr) in results.items():
        fragment = cases[key][1]
        assert procs[key].returncode == 1, (key, stderr)
        assert "Traceback" not in stderr and "Prefect server" not in stderr, (key, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (key, stderr)
    assert _store_state(store.root) == before
    assert elapsed < 60, f"four refusals took {elapsed:.0f} s"


def test_lineage_names_resolve_by_kind_name_and_version(store):
    """`KIND:NAME@vN` picks the record of that kind; `NAME@vN` works when only one record has it;
    a bare corpus name means its latest version."""
    from cci_core.store.corpus import open_corpus
    from cci_core.store.lineage import AmbiguousArtifactError
    from cci_core.store.runs import lineage_store
    lin = lineage_store(store)
    corpus_id = open_corpus(store, "d28").artifact_id
    assert lin.resolve("corpus:d28@v1").id == corpus_id
    assert lin.resolve("dataset:d28@v1").kind == "dataset"
    assert lin.resolve("corpus:d28").id == corpus_id  # latest version of the corpus
    with pytest.raises(AmbiguousArtifactError) as refused:
        lin.resolve("d28@v1")
    assert "corpus:d28@v1" in str(refused.value) and "dataset:d28@v1" in str(refused.value)
    assert lin.resolve("run1/clustering").kind == "clustering"
    assert lin.resolve(corpus_id[:12]).id == corpus_id  # an id prefix still works
    with pytest.raises(AmbiguousArtifactError, match="give more of the id"):
        lin.resolve("c")  # corpus-..., clustering-..., classifier...: a prefix of several ids
    result = CliRunner().invoke(__import__("flows.cli", fromlist=["app"]).app,
                                ["lineage", "show", "corpus:d28@v1", "--json", "--store", str(store.root)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["id"] == corpus_id


def test_dask_address_check_accepts_a_scheduler_and_nothing_else(not_dask_port):
    """The pre-flight check speaks Dask's handshake: a live scheduler passes at once, a port that
    only accepts TCP is refused within the timeout, a closed port at once."""
    from distributed import LocalCluster

    from flows.preflight import PreflightError, check_dask_address
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        t0 = time.time()
        check_dask_address(cluster.scheduler_address)
        assert time.time() - t0 < 2
    t0 = time.time()
    with pytest.raises(PreflightError, match="no Dask handshake"):
        check_dask_address(f"tcp://127.0.0.1:{not_dask_port}", handshake_timeout=1.0)
    assert time.time() - t0 < 5
    with pytest.raises(PreflightError, match="connection refused"):
        check_dask_address("127.0.0.1:1")  # bare host:port is read as tcp://


def _refuse(value: str) -> None:
    raise ValueError(f"value {value!r} is refused inside a task: give another")


def test_expected_error_inside_a_flow_prints_no_traceback(prefect_api, capfd):
    """The safety net behind the pre-flight checks: an expected error raised in a task on a Dask
    worker process reaches the terminal as Prefect's one-line log records and one `error:` line,
    without the 70-110 lines of logged traceback (flows.quietlog)."""
    import cloudpickle
    import typer
    from prefect import flow, task

    from flows.cli.common import run_flow
    refuse = task(_refuse, name="refuse")

    @flow(name="refusing-flow")
    def refusing_flow():
        return refuse.submit("x").result()
    from prefect.logging.configuration import setup_logging
    # Prefect may have set up its console handlers during an earlier in-process CliRunner call,
    # bound to that call's (now closed) stderr: bind them to this test's stderr
    setup_logging(incremental=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker cannot import a test module
    try:
        with pytest.raises(typer.Exit) as exited:
            run_flow(refusing_flow, None, 1)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert exited.value.exit_code == 1
    err = capfd.readouterr().err
    assert "Task run failed with exception: ValueError" in err, err[-3000:]  # logged by the worker process
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: value 'x' is refused inside a task: give another"]


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("CCI_BAD_INPUT_REPORT")
    if path and TALLY:
        counts = {k: sum(v == k for v in TALLY.values())
                  for k in ("clear error", "traceback", "silent result", "loss", "other")}
        Path(path).write_text(json.dumps({"tried": len(TALLY), **counts, "cases": TALLY}, indent=2) + "\n")
