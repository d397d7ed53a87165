"""The ``cci features`` report: one row per feature space (k-means scores and probe accuracies),
as ``runs/<run>/reports/features.json`` with a markdown table and ``features.png``, recorded
as a ``report`` artifact and linked from the run record.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from cci_core.features.probes import PROBES, pct
from cci_core.features.records import FeaturePlan
from cci_core.store import fs, relpaths, runs
from cci_core.store.store import Store, hash_files, utc_now


def table_rows(results: list[dict], fractions) -> list[dict]:
    """One flat row per space: what the Prefect table artifact and the README show."""
    rows = []
    for r in results:
        row = {"space": r["space"], "dim": r["dim"], "acc": _r(r["acc"]), "nmi": _r(r["nmi"]), "ari": _r(r["ari"]),
               "silhouette": _r(r["silhouette"])}
        for probe in PROBES:
            for f in fractions:
                cell = (r["probes"] or {}).get(probe, {}).get(pct(f)) if r["probes"] else None
                row[f"{probe}_{pct(f)}"] = _r(cell["acc"]) if cell else None
        row["seconds"] = r["seconds"]
        rows.append(row)
    return rows


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no feature space)"
    cols = list(rows[0])
    fmt = lambda v: "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def save_chart(results: list[dict], path: str | Path) -> Path:
    """PNG: k-means NMI / ACC per space, and each probe's accuracy with all the labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    path = fs.as_path(path)
    fs.ensure_parent(path)
    names = [r["space"] for r in results]
    x = np.arange(len(names))
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    for i, m in enumerate(("acc", "nmi", "ari", "silhouette")):
        ax.bar(x + (i - 1.5) * 0.2, [r[m] or 0.0 for r in results], 0.2, label=m)
    ax.set_xticks(x, names, rotation=20)
    ax.set_title("k-means on each space")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    for i, probe in enumerate(PROBES):
        vals = []
        for r in results:
            cells = (r["probes"] or {}).get(probe) or {}
            last = cells[max(cells, key=lambda c: float(c.rstrip('%')))] if cells else None
            vals.append((last or {}).get("acc") or 0.0)
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=probe)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title("probe accuracy, largest label share" if any(r["probes"] for r in results)
                 else "probes: no labels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fs.savefig(fig, path, dpi=100)


def write_report(store: Store, plan: FeaturePlan | dict, results: list[dict], producer: dict | None = None) -> dict:
    """``reports/features.json`` + ``features.png``, recorded as a ``report`` artifact."""
    plan = FeaturePlan.of(plan)
    order = [s.space for s in plan.spaces]
    results = sorted(results, key=lambda r: order.index(r["space"]))
    rdir = fs.as_path(plan.run_dir) / "reports"
    rows = table_rows(results, plan.params.fractions)
    chart = save_chart(results, rdir / "features.png")
    md = [f"# Feature spaces of run `{plan.run_id}`",
          f"corpus {plan.corpus} v{plan.corpus_version}, {plan.n_rows} images; k-means with k={plan.k}",
          "", markdown_table(rows)]
    skipped, params = [dict(s) for s in plan.skipped], asdict(plan.params)
    if skipped:
        md += ["", "not compared:"] + [f"- {s['space']}: {s['reason']}" for s in skipped]
    if plan.probe_note:
        md += ["", plan.probe_note]
    report = {"run_id": plan.run_id, "corpus": plan.corpus, "corpus_version": plan.corpus_version,
              "created_at": utc_now(), "k": plan.k, "params": params, "spaces": results, "table": rows,
              "skipped": skipped, "probe_note": plan.probe_note, "chart": str(chart),
              "markdown": "\n".join(md)}
    path = relpaths.write_record(store.root, rdir / "features.json", report)
    inputs = [(plan.corpus_artifact_id, "corpus")]
    inputs += [(r["embeddings_artifact_id"], "features") for r in results if r.get("embeddings_artifact_id")]
    metrics = {f"{r['space']}_{m}": r[m] for r in results for m in ("acc", "nmi", "ari", "silhouette")
               if isinstance(r[m], (int, float))}
    art = runs.lineage_store(store).record(
        "report", f"{plan.run_id}/features", str(path), hash_files([path]), size=path.stat().st_size,
        params={"run_id": plan.run_id, **params, "spaces": order}, metrics=metrics, producer=producer,
        inputs=list(dict.fromkeys(inputs)))
    runs.update_run(store, plan.run_id, features={"report": str(path), "report_artifact_id": art.id,
                                                  "chart": str(chart), "finished_at": report["created_at"]})
    return {"run_id": plan.run_id, "report": str(path), "report_artifact_id": art.id, "chart": str(chart),
            "table": rows, "skipped": skipped, "probe_note": plan.probe_note, "markdown": report["markdown"],
            "spaces": results}
