"""A million images through the CLI, as a user runs it -> benchmarks/results/scale.json.

Part 1: ``--n`` (1,000,000) grey 28x28 images with known structure (100 prototypes, each
shifted by up to 1 pixel, plus noise), saved as one ``.npy``. Then the real ``cci ingest``
and ``cci cluster --k 100`` (subprocesses of this venv's ``cci``), twice:

* cold: each command starts its own temporary Prefect server and LocalCluster;
* warm: ``cci server start`` first (a Prefect server and a Dask LocalCluster kept between
  commands), then the same two commands on a fresh store, which use it.

For every command: wall time, and the peak RSS of every process taking part (the ``cci``
client with its children: temporary Prefect server, Dask workers; in the warm case also the
warm server's processes: Prefect server, the process holding the Dask scheduler and its
workers), sampled every 0.2 s with psutil. Warm runs also list the Prefect task runs (where
the time went). The clustering is checked against the known prototypes (ACC, NMI), and the
library-only figure of ``benchmarks/cluster.py`` (``results/cluster.json``) is put beside it.
Then ``cci explore RUN`` rebuilds the warm clustering run's explorer page (``gray.explore``: its
bytes, under 20 MB for 1M images, its build time and peak RSS).

Part 2 (unless ``--skip-rgb``): ``--rgb-n`` (200,000) RGB 32x32 images (10 prototypes),
warm: ``cci ingest``, ``cci cluster --k 10``, ``cci refine`` (round 0 only, short settings) and
``cci train --mode conditional`` (short; the CLI has no subsample option: the GAN draws its
batches from all rows of the clusters, so its cost is set by steps x batch, not by N).

Then the fixed cost of a command (warm ingest + cluster of 2,000 images: what Prefect, Dask and the
imports cost when the work is small), and per-core unit costs (``unit_costs``: the corpus codec,
PCA's covariance pass, the projection, UMAP fit and transform), which docs/scaling.md extrapolates
from. CPU seconds are recorded beside wall times: on a shared machine they move much less.

Run: nice -n 10 python benchmarks/scale.py [--n 100000] [--rgb-n 20000] [--skip-rgb]
     [--skip-cold] [--skip-units] [--workers 2] [--out benchmarks/results/scale.json]
     python benchmarks/scale.py --units-only   (fixed and unit costs into an existing --out)
     python benchmarks/scale.py --explore-only --n 20000 --out /tmp/explore.json
                                               (warm ingest + cluster + explore only: a check)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from benchmarks.sampling import Sampler  # noqa: E402
from cci_core.cluster.cluster_metrics import cluster_acc  # noqa: E402

CCI = Path(sys.executable).parent / "cci"
BLOCK = 50_000  # rows generated at a time (memory stays small at any --n)


# ----- data with known structure ------------------------------------------------------


def prototypes(n_proto: int, side: int, channels: int, seed: int) -> np.ndarray:
    """Smooth random patterns on a black background, like MNIST's (about half the pixels 0):
    7x7 noise blown up to ``side``, lightly blurred, its darker half set to 0; uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n_proto, 7, 7, channels)).astype(np.float32)
    rep = -(-side // 7)
    big = coarse.repeat(rep, 1).repeat(rep, 2)[:, :side, :side]
    for axis in (1, 2):  # a 3-tap box blur along each side
        big = (big + np.roll(big, 1, axis) + np.roll(big, -1, axis)) / 3
    grey = big.mean(-1, keepdims=True)
    big = np.where(grey > np.median(grey, axis=(1, 2, 3), keepdims=True), big, 0)
    return np.clip(big, 0, 255).astype(np.uint8)


def make_images(path: Path, n: int, side: int, channels: int, n_proto: int, seed: int) -> np.ndarray:
    """``n`` images (a prototype shifted by -1..1 px each way, plus noise on its foreground) as
    one .npy at ``path``; returns the true prototype of each row."""
    protos = prototypes(n_proto, side, channels, seed)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    shifted = np.stack([np.roll(protos, s, axis=(1, 2)) for s in shifts], 1).astype(np.int16)
    shape = (n, side, side) if channels == 1 else (n, side, side, channels)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    labels = np.empty(n, np.int32)
    rng = np.random.default_rng(seed + 1)
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        which, shift = rng.integers(0, n_proto, m), rng.integers(0, len(shifts), m)
        base = shifted[which, shift]
        noise = rng.normal(0, 25, (m, side, side, channels)).astype(np.int16)
        block = np.clip(np.where(base > 0, base + noise, 0), 0, 255).astype(np.uint8)
        out[start:start + m] = block[..., 0] if channels == 1 else block
        labels[start:start + m] = which
    out.flush()
    del out
    return labels


# ----- processes and their memory ------------------------------------------------------


def role(proc: psutil.Process, client_pid: int, warm: dict) -> str:
    """What a process is, from where it sits and its command line."""
    if proc.pid == client_pid:
        return "cci client" + ("" if warm else " (+ Dask scheduler and nannies of its LocalCluster)")
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        cmd = ""
    if warm and proc.pid == warm.get("dask"):
        return "warm Dask scheduler (+ nannies)"
    if warm and proc.pid == warm.get("prefect"):
        return "warm Prefect server (CLI)"
    if "uvicorn" in cmd or "prefect" in cmd and "server" in cmd:
        return "Prefect server"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "Dask worker"
    return cmd[:80] or "?"


class TreeMemory(Sampler):
    """Peak RSS of every process under the given roots, sampled every ``interval`` seconds."""

    def __init__(self, roots: list[int], client_pid: int, warm: dict, started: float, interval: float = 0.2):
        super().__init__(interval)
        self.roots, self.client_pid, self.warm = roots, client_pid, warm
        self.peaks: dict[int, dict] = {}
        self.t0 = started  # time.time() when the command started: older processes count CPU from then
        self.total_peak = 0

    def sample(self) -> None:
        procs = []
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                procs += [root] + root.children(recursive=True)
            except psutil.Error:
                continue
        total = 0
        for p in procs:
            try:
                rss, cpu = p.memory_info().rss, p.cpu_times()
            except psutil.Error:
                continue
            total += rss
            rec = self.peaks.get(p.pid)
            if rec is None:
                rec = self.peaks[p.pid] = {"pid": p.pid, "role": role(p, self.client_pid, self.warm), "peak_rss": 0,
                                           "cpu0": cpu.user + cpu.system, "before": p.create_time() < self.t0}
            rec["peak_rss"] = max(rec["peak_rss"], rss)
            rec["cpu"] = cpu.user + cpu.system
        self.total_peak = max(self.total_peak, total)

    def report(self) -> dict:
        procs = sorted(self.peaks.values(), key=lambda r: -r["peak_rss"])
        # CPU seconds used while the command ran (a process already running when sampling
        # started, e.g. a warm worker, counts from the first sample)
        cpu = {r["pid"]: r["cpu"] - (r["cpu0"] if r["before"] else 0.0) for r in procs}
        return {"peak_rss_gb_by_process": [{"role": r["role"], "pid": r["pid"],
                                            "peak_rss_gb": round(r["peak_rss"] / 2**30, 3),
                                            "cpu_seconds": round(cpu[r["pid"]], 2)} for r in procs],
                "max_process_peak_rss_gb": round(max((r["peak_rss"] for r in procs), default=0) / 2**30, 3),
                "sum_peak_rss_gb": round(self.total_peak / 2**30, 3),
                "cpu_seconds": round(sum(cpu.values()), 2)}


def run_cci(args: list[str], log: Path, warm: dict | None = None) -> dict:
    """One ``cci`` command with ``--json``: wall time, the processes' peak memory, its JSON result."""
    warm = warm or {}
    t0, started = time.perf_counter(), time.time()
    with open(log, "ab") as err:
        err.write(f"\n$ cci {' '.join(args)}\n".encode())
        err.flush()
        proc = subprocess.Popen([str(CCI), *args, "--json"], stdout=subprocess.PIPE, stderr=err)
        with TreeMemory([proc.pid, *warm.values()], proc.pid, warm, started - 0.5) as mem:
            stdout, _ = proc.communicate()
        mem.sample()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cci {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return {"command": "cci " + " ".join(args), "wall_seconds": round(wall, 2), **mem.report(),
            "result": json.loads(stdout)}


def task_runs(api_url: str, since: str) -> list[dict]:
    """Prefect task runs started after ``since`` on this API, totalled by task name."""
    import httpx
    body = {"task_runs": {"start_time": {"after_": since}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200}
    runs = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=30).json()
    by_name: dict[str, dict] = {}
    for r in runs:
        name = r["name"].rsplit("-", 1)[0]
        row = by_name.setdefault(name, {"task": name, "runs": 0, "seconds": 0.0, "max_seconds": 0.0})
        row["runs"] += 1
        row["seconds"] = round(row["seconds"] + (r.get("total_run_time") or 0.0), 2)
        row["max_seconds"] = round(max(row["max_seconds"], r.get("total_run_time") or 0.0), 2)
    return sorted(by_name.values(), key=lambda r: -r["seconds"])


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def score(store: Path, run_id: str, truth: np.ndarray) -> dict:
    """ACC and NMI of a run's labels against the known prototypes, and the stage times it recorded."""
    labels = pd.read_parquet(store / "runs" / run_id / "clustering" / "labels.parquet", columns=["row", "cluster"])
    pred = labels.sort_values("row")["cluster"].to_numpy()
    run = json.loads((store / "runs" / run_id / "run.json").read_text())
    return {"acc": round(cluster_acc(truth, pred), 4), "nmi": round(float(normalized_mutual_info_score(truth, pred)), 4),
            "pca_and_embeddings_seconds": run.get("embeddings", {}).get("pca_seconds"),
            "kmeans_fit_seconds": run.get("clustering", {}).get("fit_seconds")}


# ----- the parts -----------------------------------------------------------------------


def start_warm(store: Path, workers: int, log: Path) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([str(CCI), "server", "start", "--store", str(store), "--workers", str(workers), "--json"],
                         check=True, capture_output=True, text=True)
    state = json.loads(out.stdout)
    state["start_wall_seconds"] = round(time.perf_counter() - t0, 2)
    return state


def stop_warm(store: Path) -> None:
    subprocess.run([str(CCI), "server", "stop", "--store", str(store)], check=False, capture_output=True)


def gray_part(tmp: Path, n: int, workers: int, skip_cold: bool, log: Path) -> dict:
    t0 = time.perf_counter()
    source = tmp / "gray.npy"
    truth = make_images(source, n, 28, 1, 100, seed=0)
    res = {"n_images": n, "shape": [28, 28, 1], "source": "one .npy, 100 prototypes + shifts + noise",
           "make_data_seconds": round(time.perf_counter() - t0, 1)}
    modes = ["warm"] if skip_cold else ["cold", "warm"]
    for mode in modes:
        store = tmp / f"store-gray-{mode}"
        warm = {}
        out: dict = {}
        if mode == "warm":
            state = start_warm(store, workers, log)
            warm = state["pids"]
            out["server_start_seconds"] = state["start_wall_seconds"]
        try:
            since = now_iso()
            out["ingest"] = run_cci(["ingest", str(source), "--corpus", "gray", "--store", str(store),
                                     "--workers", str(workers)], log, warm)
            out["ingest"]["result"] = {k: out["ingest"]["result"][k] for k in ("version", "n_rows", "added")}
            out["cluster"] = run_cci(["cluster", "gray", "--k", "100", "--store", str(store),
                                      "--workers", str(workers)], log, warm)
            summary = out["cluster"].pop("result")
            out["cluster"]["run_id"] = summary["run_id"]
            out["cluster"]["quality"] = score(store, summary["run_id"], truth)
            if mode == "warm":
                out["task_runs"] = task_runs(state["api_url"], since)
        finally:
            if mode == "warm":
                stop_warm(store)
        if mode == modes[-1]:
            res["explore"] = explore_step(store, summary["run_id"], log)
        out["ingest_plus_cluster_wall_seconds"] = round(out["ingest"]["wall_seconds"] + out["cluster"]["wall_seconds"], 2)
        out["max_process_peak_rss_gb"] = max(out["ingest"]["max_process_peak_rss_gb"],
                                             out["cluster"]["max_process_peak_rss_gb"])
        out["store_gb"] = round(sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30, 3)
        res[mode] = out
        print(mode, json.dumps({k: v for k, v in out.items() if k != "task_runs"}, indent=1), flush=True)
        shutil.rmtree(store, ignore_errors=True)
    source.unlink()
    return res


def explore_step(store: Path, run_id: str, log: Path) -> dict:
    """``cci explore RUN`` (no server: it reads the run's files): the page's size and build time."""
    res = run_cci(["explore", run_id, "--store", str(store)], log)
    page = Path(res.pop("result")["explore"])
    size = page.stat().st_size
    return {**res, "run_id": run_id, "page_bytes": size, "page_mb": round(size / 2**20, 2),
            "target": "page under 20 MB (20 * 2**20 bytes)", "under_target": size < 20 * 2**20}


def fixed_part(tmp: Path, n: int, workers: int, log: Path) -> dict:
    """The fixed cost of a command: warm ingest + cluster of ``n`` images, where the work is small."""
    source = tmp / "fixed.npy"
    make_images(source, n, 28, 1, 100, seed=2)
    store = tmp / "store-fixed"
    state = start_warm(store, workers, log)
    try:
        common = ["--store", str(store), "--workers", str(workers)]
        res = {"n_images": n, "ingest": run_cci(["ingest", str(source), "--corpus", "f", *common], log, state["pids"]),
               "cluster": run_cci(["cluster", "f", "--k", "100", *common], log, state["pids"])}
    finally:
        stop_warm(store)
    for cmd in ("ingest", "cluster"):
        res[cmd].pop("result")
    shutil.rmtree(store, ignore_errors=True)
    source.unlink()
    return res


def rgb_part(tmp: Path, n: int, workers: int, log: Path) -> dict:
    t0 = time.perf_counter()
    source = tmp / "rgb.npy"
    truth = make_images(source, n, 32, 3, 10, seed=1)
    res = {"n_images": n, "shape": [32, 32, 3], "source": "one .npy, 10 prototypes + shifts + noise",
           "make_data_seconds": round(time.perf_counter() - t0, 1)}
    store = tmp / "store-rgb"
    state = start_warm(store, workers, log)
    warm = state["pids"]
    res["server_start_seconds"] = state["start_wall_seconds"]
    common = ["--store", str(store), "--workers", str(workers)]
    try:
        since = now_iso()
        res["ingest"] = run_cci(["ingest", str(source), "--corpus", "rgb", *common], log, warm)
        res["ingest"].pop("result")
        res["cluster"] = run_cci(["cluster", "rgb", "--k", "10", *common], log, warm)
        run_id = res["cluster"].pop("result")["run_id"]
        res["cluster"]["quality"] = score(store, run_id, truth)
        # one refinement round (round 0 only), short: 0.05 autoencoder epochs, 100 training steps,
        # k-means re-clustering; every row is still embedded twice and its k-NN consistency scored
        refine_sets = ["cl_epochs=0.05", "cl_min_steps=0", "warmup_steps=100", "recluster=kmeans", "silhouette_sample=2000"]
        res["refine"] = run_cci(["refine", run_id, "--rounds", "0", "--batch-size", "128",
                                 "--device", "cpu", *[a for s in refine_sets for a in ("--set", s)], *common], log, warm)
        refined = res["refine"].pop("result")["run_id"]
        res["refine"]["settings"] = {"rounds": 0, "batch_size": 128, "set": refine_sets}
        res["refine"]["quality"] = score(store, refined, truth)
        # a short conditional GAN: 20 steps x 10 clusters = 200 steps of batch 64, no baseline
        res["train"] = run_cci(["train", refined, "--mode", "conditional", "--steps", "20", "--no-baseline",
                                "--checkpoint-every", "100", "--device", "cpu", *common], log, warm)
        res["train"].pop("result")
        res["train"]["settings"] = {"mode": "conditional", "steps_per_cluster": 20, "batch_size": 64,
                                    "note": "cci train has no subsample option; the GAN draws batches from all rows"}
        res["task_runs"] = task_runs(state["api_url"], since)
    finally:
        stop_warm(store)
    res["max_process_peak_rss_gb"] = max(res[c]["max_process_peak_rss_gb"]
                                         for c in ("ingest", "cluster", "refine", "train"))
    print("rgb", json.dumps({k: v for k, v in res.items() if k != "task_runs"}, indent=1), flush=True)
    shutil.rmtree(store, ignore_errors=True)
    source.unlink()
    return res


def unit_costs() -> dict:
    """Per-core costs that docs/scaling.md extrapolates from, measured here on this machine: the
    corpus codec, the PCA's covariance pass and projection, and UMAP fit and transform."""
    import numcodecs
    from threadpoolctl import threadpool_limits

    from cci_core.cluster.manifold import umap_embed
    out = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp) / "u.npy", 16384, 28, 1, 100, seed=0)
        block = np.load(Path(tmp) / "u.npy")
    codec = numcodecs.Blosc("zstd", 1, numcodecs.Blosc.NOSHUFFLE)  # the corpus codec (store/corpus.py)
    t = time.process_time()
    enc = [codec.encode(block) for _ in range(3)][0]
    enc_s = (time.process_time() - t) / 3
    t = time.process_time()
    for _ in range(3):
        codec.decode(enc)
    dec_s = (time.process_time() - t) / 3
    out["corpus_codec"] = {"codec": "blosc zstd level 1, no shuffle", "compress_mb_per_cpu_s": round(block.nbytes / enc_s / 1e6),
                           "decompress_mb_per_cpu_s": round(block.nbytes / dec_s / 1e6),
                           "ratio_on_this_data": round(block.nbytes / len(enc), 2)}
    with threadpool_limits(1, user_api="blas"):
        for d in (784, 3072):
            x = rng.random((4096, d), dtype=np.float32)
            t = time.process_time()
            xc = x - x.mean(0)
            _ = xc.T @ xc  # what PCA's cov solver does per block (pca._block_moments)
            out[f"pca_cov_pass_cpu_s_per_1m_rows_d{d}"] = round((time.process_time() - t) * 1e6 / 4096, 1)
        x, w = rng.random((16384, 784), dtype=np.float32), rng.random((784, 50), dtype=np.float32)
        t = time.process_time()
        _ = x @ w
        out["pca_projection_cpu_s_per_1m_rows_d784_to_50"] = round((time.process_time() - t) * 1e6 / 16384, 2)
    # UMAP (10 dims, 20 neighbours) on 50-dim rows with 100 groups: fit on 20,000, then transform more
    centres = rng.normal(0, 3, (100, 50))
    X = (centres[rng.integers(0, 100, 60000)] + rng.normal(0, 1, (60000, 50))).astype(np.float32)
    umap_embed(X[:2000], sample_size=2000)[1].transform(X[2000:4000])  # numba compiles once
    t = time.perf_counter()
    _, model, _ = umap_embed(X[:20000], sample_size=20000)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    model.transform(X[20000:])  # what umap_embed does with the rows outside its sample
    transform_s = time.perf_counter() - t
    out["umap"] = {"fit_rows": 20000, "fit_seconds": round(fit_s, 1),
                   "transform_rows_per_s": round(40000 / transform_s),
                   "note": "wall seconds, UMAP with n_jobs=1 as cci runs it"}
    return out


def library_figure() -> dict | None:
    """The library-only 1M figure of benchmarks/cluster.py, if it was run."""
    path = ROOT / "benchmarks" / "results" / "cluster.json"
    try:
        syn = json.loads(path.read_text())["synthetic"]
    except (OSError, KeyError, ValueError):
        return None
    return {"from": "benchmarks/results/cluster.json (benchmarks/cluster.py, part 2: PCA50 + k-means100 "
                    "on a Zarr corpus, in one process with a 2-worker LocalCluster)",
            **{k: syn[k] for k in ("n_images", "total_seconds", "peak_rss_gb", "pca_fit_seconds",
                                   "embed_write_seconds", "kmeans_seconds") if k in syn}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="grey 28x28 images")
    ap.add_argument("--rgb-n", type=int, default=200_000, help="RGB 32x32 images")
    ap.add_argument("--skip-rgb", action="store_true")
    ap.add_argument("--skip-gray", action="store_true")
    ap.add_argument("--skip-cold", action="store_true", help="only the warm runs")
    ap.add_argument("--skip-units", action="store_true", help="skip the per-core unit costs")
    ap.add_argument("--units-only", action="store_true",
                    help="measure only the fixed cost (2,000 images) and the unit costs, into an existing --out")
    ap.add_argument("--explore-only", action="store_true",
                    help="a check of the explorer step: warm ingest + cluster of --n grey images, then cci explore "
                         "(as --skip-cold --skip-rgb --skip-units, without the fixed cost), written into --out's "
                         "gray.explore, the other figures there kept; needs another --out unless --n is 1,000,000")
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    ap.add_argument("--tmp", default=None, help="folder for the data and stores (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "cci-scale.log"),
                    help="where the commands' stderr goes")
    args = ap.parse_args()
    if args.explore_only:
        if Path(args.out).resolve() == (ROOT / "benchmarks" / "results" / "scale.json") and args.n != 1_000_000:
            raise SystemExit(f"--explore-only --n {args.n} is a check, not the benchmark: pass --out "
                             "/tmp/explore.json (benchmarks/results/scale.json holds the 1M figures)")
        args.skip_cold = args.skip_rgb = args.skip_units = True
    if args.units_only:
        result = json.loads(Path(args.out).read_text())
        started, load = now_iso(), [round(x, 2) for x in os.getloadavg()]
        with tempfile.TemporaryDirectory() as tmp:
            result["fixed_cost"] = fixed_part(Path(tmp), 2000, args.workers, Path(args.log))
        result["unit_costs"] = unit_costs()
        result["units_rerun"] = {"started_at": started, "load_avg_at_start": load}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["unit_costs"], indent=1))
        return
    result = {"machine": {"cpus": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
                          "python": platform.python_version(),
                          "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "started_at": now_iso(), "workers": args.workers,
              "targets": "1M ingest + cluster --k 100 <= 60 s wall warm on 2 cores; no process above 2 GB"}
    base = Path(args.tmp) if args.tmp else None
    if base:
        base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        tmp = Path(tmp)
        log = Path(args.log)
        log.write_text("")
        if not args.skip_gray:
            result["gray"] = gray_part(tmp, args.n, args.workers, args.skip_cold, log)
            result["gray"]["library_only"] = library_figure()
            if not args.explore_only:
                result["fixed_cost"] = fixed_part(tmp, 2000, args.workers, log)
        if not args.skip_rgb:
            result["rgb"] = rgb_part(tmp, args.rgb_n, args.workers, log)
    if not args.skip_units:
        result["unit_costs"] = unit_costs()
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.explore_only and Path(args.out).exists():
        # the explorer step measured on its own: into the existing figures, the rest of them kept
        merged = json.loads(Path(args.out).read_text())
        merged.setdefault("gray", {})["explore"] = result["gray"]["explore"]
        merged["explore_rerun"] = {"started_at": result["started_at"], "n_images": args.n,
                                   "ingest_plus_cluster_wall_seconds":
                                       result["gray"]["warm"]["ingest_plus_cluster_wall_seconds"],
                                   "load_avg_at_start": result["machine"]["load_avg_at_start"],
                                   "load_avg_at_end": result["machine"]["load_avg_at_end"]}
        result = merged
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} (command stderr in {log})")


if __name__ == "__main__":
    main()
