"""The explorer's "real vs generated" section, for a run with trained per-cluster generators.

Per cluster: the real images nearest its centre (those the cluster table shows) beside images drawn from
that cluster's generator (``models/cluster-<k>``) while the page is built, on CPU with a fixed seed, and
the cluster's FD and coverage from ``reports/generation.json`` (the ``per_cluster`` group, every feature
space the report measured in). A cluster reads "not evaluated" when there is no report, or when the report
measured another model than the one now in ``models/cluster-<k>`` (the run was trained again since).
"""
from __future__ import annotations

import html

import numpy as np

from cci_core.cluster.explore import MAX_POINTS, build_explorer, thumbnail_uri
from cci_core.common.threads import compute_threads
from cci_core.generate.records import read_training
from cci_core.generate.sampling import generate, load_generator
from cci_core.store import fs, relpaths, runs
from cci_core.store.fs import AnyPath
from cci_core.store.store import Store

SEED = 0  # cluster k's images are drawn with seed SEED + k


def trained_generators(store: Store, run_dir) -> tuple[dict[int, dict], dict[int, str]]:
    """The run's per-cluster generators ``{cluster: model record}`` (``models/training.json``'s records
    whose ``generator.safetensors`` exists) and the clusters training skipped ``{cluster: reason}``;
    both empty when the run has no training report."""
    path = fs.as_path(run_dir) / "models" / "training.json"
    if not path.exists():
        return {}, {}
    training = read_training(store, path)
    models = {int(m["cluster"]): m for m in training["models"]
              if m["kind"] == "cluster" and (fs.as_path(m["dir"]) / "generator.safetensors").exists()}
    skipped = {int(s["cluster"]): s["reason"] for s in training.get("skipped") or () if int(s["cluster"]) not in models}
    return models, skipped


def read_generation(store: Store, run_dir) -> dict | None:
    """``reports/generation.json`` of the run, or None when it was never evaluated."""
    path = fs.as_path(run_dir) / "reports" / "generation.json"
    return relpaths.read_record(store.root, path) if path.exists() else None


def cluster_measures(report: dict | None, models: dict[int, dict]) -> dict[int, dict[str, dict] | str]:
    """Per trained cluster: ``{feature space: generation.json's per-cluster entry of the per-cluster
    generators}`` (fid, coverage, ... or ``skipped``), or a str saying why there is none."""
    out: dict[int, dict[str, dict] | str] = {}
    measured = ((report or {}).get("models") or {}).get("per_cluster") or {}
    for k, m in models.items():
        if report is None or m["name"] not in measured:
            out[k] = "not evaluated (run `cci evaluate RUN`)"
        elif measured[m["name"]] != m.get("artifact_id"):
            out[k] = "not evaluated: generation.json measured an earlier model (run `cci evaluate RUN` again)"
        else:
            out[k] = {space: groups["per_cluster"][str(k)] for space, groups in report["per_cluster"].items()
                      if str(k) in (groups.get("per_cluster") or {})}
    return out


def draw(models: dict[int, dict], n: int) -> dict[int, np.ndarray]:
    """``{cluster: (n, H, W, C) uint8}``: ``n`` images from each generator, on CPU, seed ``SEED + cluster``."""
    with compute_threads(1):  # the same pixels whatever the machine's core count: the page's bytes stay fixed
        return {k: generate(load_generator(m["dir"], "cpu"), n, seed=SEED + k) for k, m in sorted(models.items())}


def _measures_cell(measures) -> str:
    if isinstance(measures, str):
        return f"<td class='measures'>{html.escape(measures)}</td>"
    lines = []
    for space, e in measures.items():
        if "fid" in e:
            lines.append(f"{html.escape(space)}: FD <span class='fd' data-space='{html.escape(space)}'>{e['fid']:.4g}"
                         f"</span>, coverage <span class='coverage' data-space='{html.escape(space)}'>"
                         f"{e['coverage']:.3f}</span> ({e['n_fake']} generated, {e['n_real']} real)")
        else:
            lines.append(f"{html.escape(space)}: not measured ({html.escape(str(e.get('skipped', '')))})")
    return f"<td class='measures'>{'<br>'.join(lines) or 'not evaluated'}</td>"


def generated_section(store: Store, run_dir, k: int, real: list[np.ndarray], uri_of: dict[int, str],
                      n: int) -> str:
    """The page's "Real vs generated" section (HTML), or "" when the run has no per-cluster generator.

    Parameters
    ----------
    k : the number of clusters (rows of the table)
    real : k arrays, each (<= n,): the rows of the cluster's real images shown
    uri_of : ``{row: thumbnail data URI}`` holding those rows
    n : images drawn per generator
    """
    models, skipped = trained_generators(store, run_dir)
    if not models:
        return ""
    report = read_generation(store, run_dir)
    measures = cluster_measures(report, models)
    drawn = draw(models, n)
    rows = []
    for c in range(k):
        real_imgs = "".join(f'<img class="t" src="{uri_of[int(r)]}" title="row {r}">' for r in real[c])
        if c in models:
            m = models[c]
            gen = "".join(f'<img class="t g" src="{thumbnail_uri(im)}" title="generated {i}">'
                          for i, im in enumerate(drawn[c]))
            cells = (f"<td class='imgs generated' title='{html.escape(m['name'])}, step {m.get('steps')}'>{gen}</td>"
                     + _measures_cell(measures[c]))
        else:
            cells = f"<td class='imgs'>no generator</td><td class='measures'>{html.escape(skipped.get(c, 'not trained'))}</td>"
        rows.append(f"<tr id='generated-{c}'><td>{c}</td><td class='imgs'>{real_imgs}</td>{cells}</tr>")
    spaces = ((report or {}).get("feature_spaces") or {})
    about = "; ".join(f"{html.escape(s)}: {html.escape(str(i.get('note', '')))}" for s, i in spaces.items())
    return ("<h2>Real vs generated</h2>"
            f"<p>Per cluster: the {n} real images nearest its centre beside {n} images drawn from its generator "
            f"(<code>models/cluster-&lt;k&gt;</code>) when this page was built (CPU, seed {SEED} + cluster id), and "
            "the cluster's FD (lower: closer to its real images) and coverage (share of real images with a generated "
            "one closer than their k-th nearest real neighbour) from <code>reports/generation.json</code>"
            + (f" (feature spaces: {about})" if about else "") + ".</p>"
            "<table class='generated'><tr><th>cluster</th><th>real</th><th>generated</th><th>FD, coverage</th></tr>"
            + "".join(rows) + "</table>")


def explore_with_generators(store: Store, run_id: str, max_points: int = MAX_POINTS) -> AnyPath:
    """RUN's explorer page (:func:`cci_core.cluster.explore.build_explorer`) with its real vs generated section."""
    return build_explorer(store, run_id, max_points, sections=(generated_section,))


def rebuild_explorer(store: Store, run_id: str) -> AnyPath | None:
    """Rebuild RUN's page after training or evaluation added to it; None, and nothing written, for a
    corpus refresh run (its new rows have no embedding to map: see :func:`cci_core.cluster.explore.run_view`)."""
    if runs.read_run(store, run_id).get("refreshed_from"):
        return None
    return explore_with_generators(store, run_id)
