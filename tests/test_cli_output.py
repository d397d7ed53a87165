"""What the real `cci` console script prints: one line (or a progress bar) per stage and the
summary by default, Prefect's own lines only with --verbose, only the summary with --quiet; and
options that mean one thing across commands. (What a whole `cci run` prints: tests/test_cci_run.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

CCI = str(Path(sys.executable).parent / "cci")


def _cci(*args, env=None, timeout=600):
    return subprocess.run([CCI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def _lines(res) -> list[str]:
    return [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def store(digits28_store):
    return digits28_store("cli-output", corpus="d28")


def test_verbose_quiet_and_the_progress_bar(store, prefect_api, dask_scheduler):
    args = ["cluster", "d28", "--k", 3, "--components", 10, "--store", store.root, "--dask-address", dask_scheduler]
    # the four ways of printing, run at once (each its own run in the store): the output is what is compared
    with ThreadPoolExecutor(4) as pool:
        quiet, verbose, default, tty = pool.map(lambda a: _cci(*a[0], env=a[1]), [
            ([*args, "--quiet"], {"CCI_HEARTBEAT_S": "1"}), ([*args, "--verbose"], None),
            (args, {"CCI_HEARTBEAT_S": "1"}), (args, {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})])
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr.strip() == "" and quiet.stdout.startswith("Run ")  # the summary only
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Finished in state Completed()" in verbose.stderr and "Beginning flow run" in verbose.stderr
    assert default.returncode == 0 and "Finished in state" not in default.stderr
    assert [line for line in default.stderr.splitlines() if line.startswith("✓ cluster d28 k=3")]
    # off a terminal, a stage still running says where it is every CCI_HEARTBEAT_S (30 s by default)
    beats = [line for line in default.stderr.splitlines() if line.startswith("… cluster d28 k=3")]
    assert beats and all("% after " in line for line in beats), default.stderr
    assert "…" not in quiet.stderr + quiet.stdout
    assert len([line for line in _lines(default) if line not in beats]) < len(_lines(verbose))
    # every run is tagged with its run id (named by the command when not given) and its store
    import httpx
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [
        "stage:cluster", f"store:{store.root}"]}}}, timeout=30).json()
    printed = {res.stdout.split()[1].rstrip(":") for res in (quiet, verbose, default)}  # (tty's is in bold)
    assert printed <= {tag.removeprefix("run:") for r in runs for tag in r["tags"] if tag.startswith("run:")}
    # on a terminal (rich told so) the stage is a live bar with its task count and rate
    assert tty.returncode == 0, tty.stderr[-3000:]
    assert "━" in tty.stderr and "tasks" in tty.stderr and "cluster d28 k=3" in tty.stderr
    assert "\x1b[" in tty.stderr  # cursor movement of the live display


def test_quiet_and_verbose_exclude_each_other(store):
    res = _cci("cluster", "d28", "-q", "-v", "--store", store.root)
    assert res.returncode == 2 and "exclude each other" in res.stderr


runner = CliRunner()


def _help(*cmd: str) -> str:
    from flows.cli import app
    res = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_has_an_example_and_quiet_verbose_where_a_flow_runs():
    import typer.main

    from flows.cli import app
    group = typer.main.get_command(app)
    flow_commands = {"ingest", "cluster", "refine", "generate", "run", "refresh", "train", "evaluate", "palette",
                     "stylize", "segment", "features", "self-condition"}
    seen = set()

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            if getattr(sub, "commands", None):
                walk(sub, [*path, name])
                continue
            seen.add(name)
            text = _help(*path, name)
            assert "Example:" in text, f"cci {' '.join([*path, name])} --help has no example"
            if name in flow_commands:
                assert "--quiet" in text and "--verbose" in text, name
    walk(group, [])
    assert flow_commands <= seen


def _options(*path: str) -> dict[str, list[str]]:
    """Each parameter of ``cci PATH`` with its option strings."""
    import typer.main

    from flows.cli import app
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.name: [*p.opts, *p.secondary_opts] for p in cmd.params}


def test_one_meaning_per_option():
    palette = _options("palette")
    assert palette["colors"] == ["--colors", "-n"] and not any("-k" in o for o in palette.values())
    for cmd in ("cluster", "run", "segment", "features", "self-condition"):
        assert _options(cmd)["k"] == ["--k", "-k"], cmd
    assert "5:30" in _help("run")  # run --k takes ranges like cluster --k
    assert "per cluster" in _help("self-condition") and "per cluster" in _help("train")
    import typer.main

    from flows.cli import app
    refresh = {p.name: p for p in typer.main.get_command(app).commands["refresh"].params}
    assert refresh["run_id"].param_type_name == "argument"  # positional, like the others' runs


def test_version_and_k_spellings(store):
    from flows.cli import app
    plain = runner.invoke(app, ["corpus", "info", "d28", "--version", "1", "--json", "--store", str(store.root)])
    vee = runner.invoke(app, ["corpus", "info", "d28", "--version", "v1", "--json", "--store", str(store.root)])
    assert plain.exit_code == 0 and json.loads(plain.stdout)["version"] == 1
    assert vee.exit_code == 0 and vee.stdout == plain.stdout
    bad = runner.invoke(app, ["corpus", "info", "d28", "--version", "x1", "--store", str(store.root)])
    assert bad.exit_code == 1 and "--version 'x1'" in bad.output
    # a k range is taken by run as by cluster: parsed before anything starts (the bad dataset name shows
    # the range passed); a malformed one is refused naming --k
    ranged = runner.invoke(app, ["run", "-k", "3:5", "--dataset", "../x", "--store", str(store.root)])
    assert ranged.exit_code == 1 and "../x" in ranged.output and "--k" not in ranged.output
    broken = runner.invoke(app, ["run", "--k", "5:3", "--store", str(store.root)])
    assert broken.exit_code == 1 and "--k 5:3" in broken.output
