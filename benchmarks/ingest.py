"""Ingest throughput: Fashion-MNIST 70k and a folder of 10,000 PNG files made here.

Runs the real `cci ingest` (Prefect flow on a LocalCluster, temporary Prefect server included)
and, for comparison, the same steps in one process (`ingest_local`). Writes
benchmarks/results/ingest.json.

    python benchmarks/ingest.py [--pngs 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cci_core.ingest.ingest import ingest_local
from cci_core.store.store import Store

FMNIST = "/usr/share/datasets/fashion-mnist"


def timed_cli(source: str, corpus: str, store: Path) -> float:
    cci = Path(sys.executable).parent / "cci"
    t0 = time.perf_counter()
    subprocess.run([str(cci), "ingest", source, "--corpus", corpus, "--store", str(store)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pngs", type=int, default=10000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = ap.parse_args()
    results = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        png_dir = tmp / "pngs"
        for i in range(args.pngs):
            sub = png_dir / f"class{i % 10}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"{i:06d}.png")
        for name, source, n in (("fashion_mnist_70k", FMNIST, 70000), (f"png_{args.pngs}", str(png_dir), args.pngs)):
            t0 = time.perf_counter()
            ingest_local(Store(tmp / f"lib-{name}"), source, "c")
            lib = time.perf_counter() - t0
            first = timed_cli(source, "c", tmp / f"cli-{name}")
            second = timed_cli(source, "c", tmp / f"cli-{name}")
            results[name] = {"n_images": n, "library_seconds": round(lib, 2),
                             "library_images_per_s": round(n / lib), "cli_seconds": round(first, 2),
                             "cli_images_per_s": round(n / first), "cli_second_run_seconds": round(second, 2)}
            print(name, results[name], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
