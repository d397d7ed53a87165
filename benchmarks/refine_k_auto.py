"""`cci refine --k auto` on Fashion-MNIST 70k against the known-k refinement -> results/refine-k-auto.json.

Per seed ``s``, through the CLI a user runs:

    cci cluster fmnist --k 10 --seed s --run-id fm-k10-s<s>
    cci refine fm-k10-s<s> --seed s --k auto

The refinement chooses k after round 0 without labels (``cci_core/refine/choose_k.py``); labels only
score. Reported per seed: the chosen k and the scores per candidate k the choice read, ACC/NMI/ARI of
the kept round, the wall time of the whole `cci refine`, and, beside them, the known-k refinement of
the same seed (``cci refine RUN --seed s``, k = 10) from ``results/refine.json`` (its commit is named:
run ``benchmarks/refine.py`` again on the same machine to compare at one commit). The issue's check:
chosen k within +-2 of 10, NMI within 0.02 of the known-k result.

    python benchmarks/refine_k_auto.py [--seeds 0] [--store /tmp/refine-k-auto]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.corpora import ingest  # noqa: E402
from benchmarks.refine import RESULT as KNOWN_K  # noqa: E402
from benchmarks.refine import _git, cci, machine_facts, refined_scores, score  # noqa: E402
from cci_core.cluster.labels import read_labels  # noqa: E402
from cci_core.store.corpus import open_corpus  # noqa: E402
from cci_core.store.store import Store  # noqa: E402

OUT = Path(__file__).parent / "results" / "refine-k-auto.json"
TRUE_K, K_TOLERANCE, NMI_TOLERANCE = 10, 2, 0.02


def known_k(seed: int) -> dict | None:
    """The known-k refinement of SEED from results/refine.json, with where it comes from."""
    if not KNOWN_K.exists():
        return None
    known = json.loads(KNOWN_K.read_text())
    row = next((r for r in known["per_seed"] if r["seed"] == seed), None)
    if row is None:
        return None
    return {m: row["refined"][m] for m in ("acc", "nmi", "ari", "wall_seconds")} | {
        "source": f"benchmarks/results/refine.json, committed in {_git('log', '-1', '--format=%h', '--', str(KNOWN_K))}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--store", default="/tmp/refine-k-auto", help="a new store folder")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    store = Path(args.store)
    if store.exists():
        raise SystemExit(f"error: {store} exists: give a new --store")
    res = {"benchmark": "cci refine --k auto on Fashion-MNIST 70k (issue 29 item 5)", "machine": machine_facts(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_at_start": os.getloadavg(),
           "check": f"chosen k within +-{K_TOLERANCE} of {TRUE_K}, NMI within {NMI_TOLERANCE} of the known-k refinement",
           "corpus": ingest(store, "fmnist"), "per_seed": []}
    y = pd.factorize(open_corpus(Store(str(store)), "fmnist").labels())[0]
    for seed in args.seeds:
        run = f"fm-k10-s{seed}"
        before = os.getloadavg()
        cci(store, "cluster", "fmnist", "--k", str(TRUE_K), "--seed", str(seed), "--run-id", run)
        kmeans = score(y, read_labels(store / "runs" / run))
        out, seconds = cci(store, "refine", run, "--seed", str(seed), "--run-id", f"{run}-kauto", "--k", "auto")
        run_json = json.loads((store / "runs" / out["run_id"] / "run.json").read_text())
        choice = run_json["clustering"]["k_choice"]
        refined = {**refined_scores(store, out["run_id"]), "wall_seconds": seconds}
        known = known_k(seed)
        row = {"seed": seed, "load_before": before, "load_after": os.getloadavg(), "kmeans_pca50": kmeans,
               "k_auto": {**refined, "k_chosen": choice["k"], "k_choice": choice}, "known_k": known,
               "k_within_tolerance": abs(choice["k"] - TRUE_K) <= K_TOLERANCE,
               "nmi_minus_known_k": None if known is None else refined["nmi"] - known["nmi"]}
        res["per_seed"].append(row)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"seed {seed}: chose k = {choice['k']}, nmi {refined['nmi']:.4f} acc {refined['acc']:.4f} "
              f"({seconds:.0f} s); known k: {known and round(known['nmi'], 4)}", flush=True)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["load_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
