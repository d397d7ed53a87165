"""Start-up cost of a command: `cci cluster fmnist -k 10` cold vs warm -> benchmarks/results/startup.json.

Fashion-MNIST (70k, Debian's dataset-fashion-mnist) is ingested once into a store of its own.
Then, through the real console script,

- cold: no ``PREFECT_API_URL``, no warm server: the command starts a temporary Prefect server
  and a LocalCluster, runs the flow, stops both;
- warm: after ``cci server start`` (its own start-up is timed once), the same command uses the
  warm server and cluster (``--repeat`` times, the median counts).

The flow's own work is what Prefect recorded for the flow run (its total run time, printed on
the command's ``✓`` stage line). Phases are timed on their own as well: importing the command
and the cluster flow (a fresh interpreter), starting a temporary Prefect server, starting a
LocalCluster. The machine load (``os.getloadavg``) before and after is recorded: the box is
shared, and the ratio warm wall / flow work is what the target (<= 1.5) is about.

Run: python benchmarks/startup.py [--workers 2] [--repeat 2] [--store DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FASHION = "/usr/share/datasets/fashion-mnist"
STAGE = re.compile(r"✓ cluster \S+ k=\S+\s+(?P<work>[\d.]+) s")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "CCI_DASK_ADDRESS")}
    return {**env, "COLUMNS": "200", "OMP_NUM_THREADS": "1", **extra}


def _timed(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{res.stderr[-3000:]}")
    return wall, res


def _cluster(store: Path, env: dict, workers: int) -> dict:
    wall, res = _timed([str(BIN / "cci"), "cluster", "fmnist", "-k", "10", "--store", str(store),
                        "--workers", str(workers)], env)
    match = STAGE.search(res.stderr)
    work = float(match["work"]) if match else None
    return {"wall_s": round(wall, 2), "flow_work_s": work,
            "overhead_s": round(wall - work, 2) if work else None,
            "ratio": round(wall / work, 3) if work else None,
            "warm_server_used": "Using the warm server" in res.stderr,
            "temporary_server": "temporary Prefect server" in res.stderr}


def _phase(code: str, env: dict) -> float:
    """Seconds a fresh interpreter takes to run ``code`` (which prints its own measure)."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    return round(float(res.stdout.strip().splitlines()[-1]), 2)


PHASES = {
    "python_start_and_cli_import_s": "import time; t=time.perf_counter(); import flows.cli; "
                                     "print(time.perf_counter()-t)",
    "cluster_flow_import_s": "import time; import flows.cli; t=time.perf_counter(); import flows.cluster; "
                             "print(time.perf_counter()-t)",
    "temporary_prefect_server_start_s": "import time; from prefect.server.api.server import SubprocessASGIServer; "
                                        "s=SubprocessASGIServer(); t=time.perf_counter(); s.start(timeout=120); "
                                        "d=time.perf_counter()-t; s.stop(); print(d)",
}


def _cluster_start(workers: int) -> str:
    return ("import time, logging; from distributed import LocalCluster; t=time.perf_counter(); "
            f"c=LocalCluster(n_workers={workers}, threads_per_worker=1, host='127.0.0.1', "
            "dashboard_address='127.0.0.1:0', silence_logs=logging.WARNING); d=time.perf_counter()-t; "
            "c.close(); print(d)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--store", default=None, help="Store with fmnist ingested (default: a temporary one).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="cci-startup-")
    store = Path(args.store or Path(tmp.name) / "store")
    env = _env(PREFECT_HOME=str(Path(tmp.name) / "prefect-home"))
    load_before = os.getloadavg()
    if not (store / "corpora" / "fmnist").exists():
        wall, _ = _timed([str(BIN / "cci"), "ingest", FASHION, "--corpus", "fmnist", "--store", str(store),
                          "--workers", str(args.workers)], env)
        print(f"ingested fmnist in {wall:.1f} s", flush=True)
    phases = {name: _phase(code, env) for name, code in PHASES.items()}
    phases["local_cluster_start_s"] = _phase(_cluster_start(args.workers), env)
    print("phases:", phases, flush=True)

    cold = _cluster(store, env, args.workers)
    print("cold:", cold, flush=True)
    t0 = time.perf_counter()
    _timed([str(BIN / "cci"), "server", "start", "--store", str(store), "--workers", str(args.workers)], env)
    server_start = round(time.perf_counter() - t0, 2)
    try:
        warm_runs = [_cluster(store, env, args.workers) for _ in range(args.repeat)]
    finally:
        _timed([str(BIN / "cci"), "server", "stop", "--store", str(store)], env)
    print("warm:", warm_runs, flush=True)
    warm = {key: statistics.median(r[key] for r in warm_runs) for key in ("wall_s", "flow_work_s", "overhead_s")}
    warm["ratio"] = round(warm["wall_s"] / warm["flow_work_s"], 3)
    result = {
        "command": f"cci cluster fmnist -k 10 --workers {args.workers}",
        "corpus": "Fashion-MNIST 70,000 x 28x28 (train + test)",
        "cold": cold, "warm_runs": warm_runs, "warm_median": warm,
        "warm_server_start_s": server_start, "phases": phases,
        "target": "warm wall <= 1.5 x the flow's own work", "target_met": warm["ratio"] <= 1.5,
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
