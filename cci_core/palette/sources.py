"""What a palette SOURCE names, and its images.

A SOURCE is one of:

* a corpus name, ``NAME`` (latest committed version) or ``NAME@V``;
* one cluster's partition of a finished run, ``RUN_ID:C`` or ``RUN_ID/cluster-C``;
* a published dataset, ``dataset:NAME`` or ``dataset:NAME@vN``;
* an image file on disk (any Pillow format; RGBA is composited on white, P-mode converted).

:func:`palette_source` resolves one to a :class:`cci_core.palette.records.PaletteSource`
(an image file is recorded in lineage, so what is made from it can name it);
:func:`source_images` reads its images as a Dask array.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import dask.array as da
import numpy as np

from cci_core.palette.records import PaletteSource
from cci_core.store import runs
from cci_core.store.corpus import open_corpus
from cci_core.store.runs import lineage_store
from cci_core.store.store import Store

_PARTITION_RE = re.compile(r"^(?P<run>[A-Za-z0-9][A-Za-z0-9._-]*?)(?::|/cluster-)(?P<c>\d+)$")
_CORPUS_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*?)(?:@v?(?P<v>\d+))?$")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def read_image_file(path: str | Path) -> np.ndarray:
    """One image file -> (H, W, 1 or 3) uint8; RGBA over white, P-mode and 16-bit converted."""
    from cci_core.ingest.images import ImageRefused, open_image, to_mode
    path = Path(path)
    try:
        with open_image(path) as img:  # size cap and decompression-bomb limit before decoding
            mode = img.mode
            if mode == "P":  # a paletted image is gray when every palette entry is
                pal = np.asarray(img.convert("RGB"))
                channels = 1 if (pal[..., 0] == pal[..., 1]).all() and (pal[..., 1] == pal[..., 2]).all() else 3
            else:
                channels = 1 if mode in GRAY_MODES else 3
            arr = np.asarray(to_mode(img, channels), dtype=np.uint8)
    except ImageRefused as exc:
        if not path.exists():
            raise FileNotFoundError(f"no image file {path}") from None
        raise ValueError(f"cannot read image {path}: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_source(store: Store, source: str) -> dict:
    """What SOURCE names, as the JSON dict the command line and the check tasks hand on
    (:meth:`PaletteSource.to_json`); one-line errors when it names nothing."""
    return palette_source(store, source).to_json()


def palette_source(store: Store, source: str) -> PaletteSource:
    """What SOURCE names: kind, label, corpus / run / dataset, shape and lineage inputs."""
    if not source:
        raise ValueError("empty SOURCE: give a corpus name, RUN_ID:CLUSTER, dataset:NAME or an image file")
    p = Path(source)
    if p.is_file():
        img = read_image_file(p)
        lin = lineage_store(store.ensure())
        h = _file_hash(p)
        art = lin.record("image_file", p.name, str(p.resolve()), h, size=p.stat().st_size,
                         params={"shape": list(img.shape)})
        return PaletteSource("file", source, str(p.resolve()), p.stem, path=str(p.resolve()), shape=img.shape,
                             n_images=1, inputs=((art.id, "image"),))
    if source.startswith("dataset:"):
        from cci_core.store.datasets import open_dataset
        spec = source[len("dataset:"):]
        name, _, ver = spec.partition("@")
        ds = open_dataset(name, ver or "latest", store=store)
        art = lineage_store(store).by_uri(str(ds.path), kind="dataset")  # the record of this version
        return PaletteSource("dataset", source, f"dataset:{ds.name}@v{ds.version}", f"{ds.name}-v{ds.version}",
                             dataset=ds.name, dataset_version=ds.version, path=str(ds.path),
                             shape=ds.images.shape[1:], n_images=len(ds),
                             inputs=((art.id, "dataset"),) if art else ())
    m = _PARTITION_RE.match(source)
    if m and runs.run_file(store, m["run"]).exists():
        run, c = runs.finished_run(store, m["run"]), int(m["c"])  # an unfinished run is not a source
        parts = {int(q["cluster"]): q for q in run.get("partitions") or []}
        if c not in parts:
            raise LookupError(f"run {m['run']!r} has no partition for cluster {c} "
                              f"(clusters: {', '.join(map(str, sorted(parts))) or 'none; is the run finished?'})")
        corpus = open_corpus(store, run["corpus"], run["corpus_version"])
        return PaletteSource("partition", source, f"{m['run']}:{c}", f"{m['run']}-c{c}", run_id=m["run"], cluster=c,
                             corpus=corpus.name, corpus_version=corpus.version, shape=corpus.shape.hwc,
                             n_images=int(parts[c]["count"]),
                             inputs=((parts[c]["artifact_id"], "partition"),)
                             + (((corpus.artifact_id, "corpus"),) if corpus.artifact_id else ()))
    m = _CORPUS_RE.match(source)
    if m is None:
        raise ValueError(f"SOURCE {source!r}: give a corpus name (NAME or NAME@V), RUN_ID:CLUSTER, "
                         "dataset:NAME or an existing image file")
    if _PARTITION_RE.match(source) and not (store.corpus_dir(m["name"]) / "corpus.json").exists():
        raise LookupError(f"no run {source.split(':')[0].split('/')[0]!r} in {store.root}")
    corpus = open_corpus(store, m["name"], int(m["v"]) if m["v"] else None)
    return PaletteSource("corpus", source, f"{corpus.name}@{corpus.version}", f"{corpus.name}-v{corpus.version}",
                         corpus=corpus.name, corpus_version=corpus.version, shape=corpus.shape.hwc,
                         n_images=corpus.n_rows,
                         inputs=((corpus.artifact_id, "corpus"),) if corpus.artifact_id else ())


def source_images(store: Store, info: PaletteSource | dict) -> tuple[da.Array, np.ndarray, np.ndarray]:
    """(images (N, H, W, C) uint8 Dask array, source rows (N,), source image ids (N,))."""
    info = PaletteSource.of(info)
    if info.kind == "file":
        img = read_image_file(info.path)
        return da.from_array(img[None], chunks=(1, -1, -1, -1)), np.array([0]), \
            np.array([hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()], dtype=object)
    if info.kind == "dataset":
        from cci_core.store.datasets import open_dataset
        ds = open_dataset(info.dataset, info.dataset_version, store=store)
        man = ds.manifest
        ids = man["image_id"].to_numpy(dtype=object) if "image_id" in man else man["index"].astype(str).to_numpy(object)
        return da.from_zarr(ds.images), np.arange(len(ds)), ids
    corpus = open_corpus(store, info.corpus, info.corpus_version)
    arr = da.from_zarr(corpus.images())[: corpus.n_rows]
    idx = corpus.index(["row", "image_id"]).set_index("row")["image_id"]
    if info.kind == "partition":
        from cci_core.cluster.cluster_run import partition_rows
        rows = partition_rows(store, info.run_id, info.cluster)
        arr = arr[rows] if len(rows) else arr[:0]
    else:
        rows = np.arange(corpus.n_rows)
    return arr, rows, idx.reindex(rows).to_numpy(dtype=object)
