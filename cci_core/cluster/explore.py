"""The cluster explorer: one self-contained HTML page per labelling run, ``reports/explore.html``.

Built from what the run already wrote (nothing is refitted): its labels, its embedding and, for a
refined run, the kept round's classifier embedding and probabilities. The page holds

- a 2-D map (the clustering space's first two dimensions; for a refined run the first two principal
  components of the classifier embedding, fitted on the sampled points), one Plotly trace per cluster:
  hovering a point shows its image, clicking a cluster in the legend hides or shows it;
- per cluster: size, the images nearest its centre, the members the model doubts most (lowest
  margin ``1 - d1/d2`` to the two nearest centres, or lowest top softmax probability) and the label mix;
- where the corpus has labels, the cluster x label table;
- where the run has trained per-cluster generators, real vs generated images per cluster with the
  cluster's FD and coverage (:mod:`cci_core.generate.explore_generated`).

The map shows a seeded sample of at most ``max_points`` rows, stratified by cluster (stated on
the page), so the page stays a few MB for any corpus size. Plotly's JavaScript is inlined: the page
opens from ``file://`` with no network. The same run gives the same bytes (fixed seed and ids).
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from cci_core.cluster.labels import read_labels
from cci_core.common.memory import memory_budget_bytes
from cci_core.store import fs, integrity, runs
from cci_core.store.corpus import open_corpus
from cci_core.store.fs import AnyPath
from cci_core.store.store import Store, atomic_write_bytes

EXPLORE_FILE = "explore.html"
MAX_POINTS = 5000
# what one map point costs while the page is built (its thumbnail, in the figure's JSON and in the page):
# the sample also fits the memory budget ($CCI_MEMORY_BUDGET_MB), so the page is never what holds a corpus
POINT_BYTES = 16 * 1024
THUMB_SIDE = 32  # hover and gallery thumbnails: at most this many pixels a side
PLOTLYJS_SLOT = "<!--plotly.js-->"
N_SHOWN = 8  # centre and doubted images per cluster
SEED = 0
CHUNK_ROWS = 65536
Section = Callable[..., str]  # (store, run_dir, k, nearest, uri_of, n_shown) -> HTML


@dataclass
class RunView:
    """What the page shows of one run: labels (N,), the space its centres live in (N, D; a Dask
    array), a lower-is-more-doubtful score per row (N,) and how to draw the map."""
    labels: np.ndarray
    space: object
    doubt: np.ndarray
    doubt_name: str
    map_space: object
    map_name: str
    fit_map: bool  # True: the map is the PCA of map_space fitted on the sampled rows


def _unit_blocks(Z):
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def _margin_block(x, centers):
    x = np.asarray(x, np.float64)
    if len(centers) < 2:
        return np.ones(len(x), np.float32)
    d = ((x ** 2).sum(1)[:, None] - 2 * x @ centers.T + (centers ** 2).sum(1)[None, :]).clip(0)
    two = np.sqrt(np.partition(d, 1, axis=1)[:, :2])
    return (1 - two[:, 0] / np.maximum(two[:, 1], 1e-12)).astype(np.float32)


def _clustering_view(run: dict, space_run: dict) -> RunView:
    """Labels of ``run`` in the clustering space of ``space_run`` (itself, or the ancestor that has one)."""
    import dask.array as da

    from cci_core.cluster.clusterers import centroids
    sdir = fs.as_path(space_run["run_dir"])
    space_name = (space_run.get("embeddings") or {}).get("space", "embeddings.zarr")
    X = da.from_zarr(integrity.open_checked(sdir / space_name, f"runs/{space_run['run_id']}/{space_name}"))
    X = X.rechunk({1: -1})
    labels = read_labels(run["run_dir"])
    if labels.size != X.shape[0]:
        raise ValueError(f"run {run['run_id']!r} labels {labels.size} rows but the clustering space of run "
                         f"{space_run['run_id']!r} has {X.shape[0]}: the explorer maps runs over the same corpus rows")
    centers = centroids(X, labels, n_clusters(labels))
    doubt = np.asarray(X.map_blocks(_margin_block, centers, drop_axis=1, dtype=np.float32).compute())
    umap = space_name != "embeddings.zarr"
    whose = "" if space_run is run else f" of run {space_run['run_id']} (an ancestor)"
    return RunView(labels, X, doubt, f"margin 1 - d1/d2 to the two nearest centres, in the clustering space{whose}", X,
                   f"{'UMAP' if umap else 'PCA'} dimensions 1-2 of the clustering space{whose}", False)


def _ancestor_with_space(store: Store, run: dict) -> dict | None:
    """The nearest run up the ``parent_run`` chain that has ``embeddings.zarr``."""
    for _ in range(32):
        if not run.get("parent_run"):
            return None
        run = runs.read_run(store, run["parent_run"])
        if (fs.as_path(run["run_dir"]) / "embeddings.zarr").exists():
            return run
    return None


def _refined_view(run: dict) -> RunView:
    import dask.array as da

    rdir = fs.as_path(run["run_dir"])
    chosen = int(run["clustering"]["chosen_round"])
    rd = rdir / "refine" / f"round-{chosen:02d}"  # refine.classifier.round_dir (cluster may not import refine)
    Z = da.from_array(fs.load_npy(rd / "embedding.npy", mmap=True), chunks=(CHUNK_ROWS, -1))
    P = da.from_array(fs.load_npy(rd / "probs.npy", mmap=True), chunks=(CHUNK_ROWS, -1))
    Z = Z.map_blocks(_unit_blocks, dtype=np.float32)  # the pictures' montages use the unit embedding too
    return RunView(read_labels(rdir), Z, np.asarray(P.max(axis=1).compute(), np.float32),
                   "the classifier's top softmax probability", Z,
                   f"principal components 1-2 of the classifier embedding (round {chosen}, fitted on the sample)", True)


def run_view(store: Store, run: dict) -> RunView:
    """The :class:`RunView` of a clustering run (``embeddings.zarr``), a refined run (``refine/round-NN``),
    or another labelling run (self-conditioned) in the clustering space of its nearest ancestor with one."""
    rdir = fs.as_path(run["run_dir"])
    if run.get("refreshed_from") and not (rdir / "refine").exists() and not (rdir / "embeddings.zarr").exists():
        raise LookupError(f"run {run['run_id']!r} is a corpus refresh of run {run['refreshed_from']!r}: its new rows "
                          f"were labelled by that run's predictor and have no embedding to map; explore "
                          f"{run['refreshed_from']!r} (cci explore {run['refreshed_from']})")
    if run.get("kind") == "refined" or (rdir / "refine").exists():
        return _refined_view(run)
    if (rdir / "embeddings.zarr").exists():
        return _clustering_view(run, run)
    ancestor = _ancestor_with_space(store, run)
    if ancestor is None:
        raise LookupError(f"run {run['run_id']!r} has no embeddings.zarr or refine/ rounds, nor an ancestor run "
                          "with embeddings.zarr: nothing to draw the map from")
    return _clustering_view(run, ancestor)


def open_run_view(store: Store, run_id: str, what: str) -> tuple[dict, object, RunView]:
    """RUN's record, its corpus and its :class:`RunView`; ValueError naming WHAT (the caller's verb)
    for a run with no clustering yet."""
    import dask
    run = runs.read_run(store, run_id)
    if not run.get("clustering"):
        raise ValueError(f"run {run_id!r} has no clustering yet (status {run.get('status')!r}): nothing to {what}; "
                         "finish the run first (run its command again)")
    corpus = open_corpus(store, run["corpus"], run["corpus_version"])
    # local threads: a refined run's arrays are memory-mapped files, never to be shipped to Dask workers
    with dask.config.set(scheduler="threads"):
        return run, corpus, run_view(store, run)


def n_clusters(labels: np.ndarray) -> int:
    """k of labels (N,) numbered 0..k-1, noise -1: the largest label + 1 (0 when all are noise)."""
    return int(labels.max()) + 1 if (labels >= 0).any() else 0


def stratified_sample(labels: np.ndarray, max_points: int, seed: int = SEED) -> np.ndarray:
    """Sorted rows: all when there are at most ``max_points``; else exactly ``max_points``, every
    non-empty cluster (noise counts as one) at least one row, the rest in proportion to cluster size
    (largest remainders, ties to the lower id), drawn without replacement with ``seed``."""
    labels = np.asarray(labels)
    n = labels.size
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    groups, counts = np.unique(labels, return_counts=True)
    quota = np.zeros(len(groups), np.int64)
    if len(groups) <= max_points:
        quota += 1
    rest = max_points - int(quota.sum())
    share = rest * (counts - quota) / max(int((counts - quota).sum()), 1)
    quota += np.floor(share).astype(np.int64)
    left = max_points - int(quota.sum())
    quota[np.lexsort((groups, -(share - np.floor(share))))[:left]] += 1
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(labels == g), q, replace=False) for g, q in zip(groups, quota) if q]
    return np.sort(np.concatenate(rows)).astype(np.int64)


def _map_xy(view: RunView, rows: np.ndarray) -> np.ndarray:
    pts = np.asarray(view.map_space[rows].compute() if hasattr(view.map_space, "compute")
                     else view.map_space[rows], np.float64)
    if view.fit_map and len(pts) > 1:
        centred = pts - pts.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]  # a fixed sign
        pts = centred @ vt[:2].T
    if pts.shape[1] < 2:
        pts = np.concatenate([pts, np.zeros((len(pts), 2 - pts.shape[1]))], 1)
    return pts[:, :2]


def thumbnail_uri(img: np.ndarray, side: int = THUMB_SIDE) -> str:
    """A small data URI of one (H, W[, C]) uint8 image: PNG for grey, JPEG for colour, at most ``side`` px."""
    from PIL import Image
    img = np.asarray(img, np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] not in (3,):
        img = img[:, :, :3] if img.shape[2] > 3 else img[:, :, 0]
    im = Image.fromarray(img)
    h, w = img.shape[:2]
    if max(h, w) > side:
        scale = side / max(h, w)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    buf = io.BytesIO()
    if im.mode == "L":
        im.save(buf, format="PNG")
        kind = "png"
    else:
        im.save(buf, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _colour(i: int, k: int) -> str:
    import plotly.colors as pc
    palette = pc.qualitative.Plotly if k <= 10 else pc.qualitative.Dark24 if k <= 24 else None
    if palette:
        return palette[i % len(palette)]
    return pc.sample_colorscale("Turbo", [i / max(k - 1, 1)])[0]


def _doubted(doubt: np.ndarray, labels: np.ndarray, k: int, n: int) -> list[np.ndarray]:
    order = np.lexsort((np.arange(labels.size), doubt))  # lowest first, ties by row
    lab = labels[order]
    return [order[lab == c][:n] for c in range(k)]


def _figure(xy, labels, rows, uris, k, map_name):
    import plotly.graph_objects as go
    fig = go.Figure()
    lab = labels[rows]
    for c in ([-1] if (lab < 0).any() else []) + list(range(k)):
        sel = np.flatnonzero(lab == c)
        if not sel.size:
            continue
        fig.add_trace(go.Scatter(
            x=np.round(xy[sel, 0], 4), y=np.round(xy[sel, 1], 4), mode="markers",
            name="noise" if c < 0 else f"cluster {c}", meta=int(c),
            marker={"size": 5, "color": "lightgrey" if c < 0 else _colour(c, k)},
            customdata=[uris[i] for i in sel], text=[f"row {rows[i]}" for i in sel],
            hovertemplate="%{text}<br>" + ("noise" if c < 0 else f"cluster {c}") + "<extra></extra>"))
    fig.update_layout(template="plotly_white", height=640, margin={"l": 40, "r": 20, "t": 30, "b": 40},
                      xaxis_title=map_name, yaxis_title="", legend={"itemsizing": "constant"})
    return fig


HOVER_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var panel = document.getElementById('hover-panel');
gd.on('plotly_hover', function (e) {
  var p = e.points[0];
  document.getElementById('hover-img').src = p.customdata;
  document.getElementById('hover-text').textContent = p.text + ', ' + p.data.name;
  panel.style.display = 'block';
});
"""

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:middle}
td.imgs{text-align:left}img.t{width:40px;height:40px;image-rendering:pixelated;margin:1px}
#hover-panel{display:none;position:fixed;bottom:1em;right:1em;background:#fff;border:1px solid #888;padding:6px;z-index:10}
#hover-img{width:128px;height:128px;image-rendering:pixelated;display:block}"""


def _imgs(rows, uri_of, note=None) -> str:
    return "".join(f'<img class="t" src="{uri_of[r]}" title="row {r}{note(r) if note else ""}">' for r in rows)


def _cluster_table(labels, k, nearest, doubted, doubt, uri_of, mix) -> str:
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    head = ("<tr><th>cluster</th><th>size</th><th>share</th><th>nearest the centre</th>"
            "<th>doubted most (score)</th>" + ("<th>label mix</th>" if mix is not None else "") + "</tr>")
    body = []
    for c in range(k):
        mixed = ""
        if mix is not None:
            top = mix.loc[c].sort_values(ascending=False, kind="stable") if c in mix.index else None
            mixed = "<td class='imgs'>" + ", ".join(
                f"{html.escape(str(lab))}: {int(v)}" for lab, v in (top.head(5).items() if top is not None else ())
                if v) + "</td>"
        body.append(f"<tr id='cluster-{c}'><td>{c}</td><td>{sizes[c]}</td><td>{sizes[c] / max(labels.size, 1):.1%}</td>"
                    f"<td class='imgs'>{_imgs(nearest[c], uri_of)}</td>"
                    f"<td class='imgs'>{_imgs(doubted[c], uri_of, lambda r: f', score {doubt[r]:.3f}')}</td>{mixed}</tr>")
    return f"<table class='clusters'>{head}{''.join(body)}</table>"


def _label_table(mix) -> str:
    cols = list(mix.columns)
    head = "<tr><th>cluster \\ label</th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>"
    body = "".join(f"<tr><th>{c}</th>" + "".join(f"<td>{int(v)}</td>" for v in mix.loc[c]) + "</tr>"
                   for c in mix.index)
    return f"<table class='labels'>{head}{body}</table>"


def explorer_path(run_dir: str | AnyPath) -> AnyPath:
    """Where a run's explorer page is: ``<run_dir>/reports/explore.html``."""
    return fs.as_path(run_dir) / "reports" / EXPLORE_FILE


def thumbnails(images, rows: np.ndarray, n_rows: int) -> dict[int, str]:
    """``{row: data URI}`` for the sorted ``rows`` of ``images`` (N, H, W[, C]), read one storage chunk
    of rows at a time: only the small thumbnails are kept, so the page costs the same memory for any
    corpus (reading all sampled rows at once held a third of a 48 MB corpus, twice)."""
    from cci_core.cluster.cluster_pictures import _fetch_images
    step = int(getattr(images, "chunks", (len(rows) or 1,))[0]) or 1
    out = {}
    for start in range(0, max(n_rows, 1), step):
        block = rows[(rows >= start) & (rows < start + step)]
        if block.size:
            out.update((int(r), thumbnail_uri(im)) for r, im in zip(block, _fetch_images(images, block, n_rows)))
    return out


def build_explorer(store: Store, run_id: str, max_points: int = MAX_POINTS, sections: Sequence[Section] = ()) -> AnyPath:
    """Write ``runs/<run_id>/reports/explore.html`` for a clustering, refined or self-conditioned run; returns its path.

    ``sections``: more of the page from higher stages (the generate stage's real vs generated table,
    :mod:`cci_core.generate.explore_generated`), each called as ``section(store, run_dir, k, nearest, uri_of,
    n_shown)`` with the rows of each cluster's centre images and their thumbnails, returning HTML.

    Raises LookupError for an unknown run or one with nothing to map, ValueError for ``max_points < 1``.
    """
    import dask
    import pandas as pd
    import plotly.io as pio

    from cci_core.cluster.cluster_pictures import nearest_to_centers
    from cci_core.cluster.clusterers import centroids
    if max_points < 1:
        raise ValueError(f"--max-points {max_points}: must be at least 1")
    max_points = max(1, min(max_points, memory_budget_bytes() // POINT_BYTES))
    run, corpus, view = open_run_view(store, run_id, "explore")
    labels = view.labels
    k = n_clusters(labels)
    with dask.config.set(scheduler="threads"):  # local threads, as in open_run_view
        nearest = nearest_to_centers(view.space, labels, centroids(view.space, labels, k), N_SHOWN) if k else []
        rows = stratified_sample(labels, max_points)
        xy = _map_xy(view, rows)
    doubted = _doubted(view.doubt, labels, k, N_SHOWN)
    wanted = np.unique(np.concatenate([rows, *nearest, *doubted])).astype(np.int64)
    uri_of = thumbnails(corpus.images(), wanted, corpus.n_rows)
    fig = _figure(xy, labels, rows, [uri_of[int(r)] for r in rows], k, view.map_name)
    plot = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id="map", post_script=HOVER_SCRIPT,
                       config={"displaylogo": False, "responsive": True})
    y = corpus.labels()
    mix = None
    if y is not None:
        keep = labels >= 0
        mix = pd.crosstab(pd.Series(labels[keep], name="cluster"), pd.Series(y[keep].astype(str), name="label"))
        mix = mix.reindex(columns=sorted(mix.columns, key=lambda s: (len(s), s)), fill_value=0)
    title = f"run {run_id}: {k} clusters of corpus {run['corpus']} v{run['corpus_version']}"
    sampled = (f"all {labels.size:,} rows" if rows.size == labels.size else
               f"a sample of {rows.size:,} of {labels.size:,} rows (stratified by cluster, seed {SEED}; "
               f"at most {max_points:,})")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>The map shows {sampled}: {html.escape(view.map_name)}. Hover a point to see its image; "
            "click a cluster in the legend to hide or show it (double-click: only it).</p>"
            "<div id='hover-panel'><img id='hover-img' alt=''><div id='hover-text'></div></div>"
            f"{PLOTLYJS_SLOT}{plot}<h2>Clusters</h2><p>Per cluster: its size, the {N_SHOWN} images nearest its centre, and the "
            f"{N_SHOWN} members the model doubts most (lowest {html.escape(view.doubt_name)}).</p>"
            f"{_cluster_table(labels, k, nearest, doubted, view.doubt, uri_of, mix)}"
            + "".join(section(store, run["run_dir"], k, nearest, uri_of, N_SHOWN) for section in sections)
            + (f"<h2>Cluster &times; label</h2>{_label_table(mix)}" if mix is not None else "")
            + "</body></html>")
    # plotly.js (4.7 MB) goes in as the package's bytes: inside a Python str its non-ASCII characters
    # made the whole page a 4-bytes-a-character string (56 MB while building a 10 MB page)
    head, tail = page.encode("utf-8").split(PLOTLYJS_SLOT.encode(), 1)
    js = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return atomic_write_bytes(explorer_path(run["run_dir"]),
                              b"".join([head, b"<script type='text/javascript'>window.PlotlyConfig = {MathJaxConfig: "
                                        b"'local'};</script><script charset='utf-8' type='text/javascript'>", js,
                                        b"</script>", tail]))
