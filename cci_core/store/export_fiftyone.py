"""A folder that FiftyOne imports with its own importer, written without FiftyOne (PIL, numpy, json).

Layout (``fiftyone.types.FiftyOneImageClassificationDataset`` plus two files)::

    <out>/data/<row>.png          one image per row, the row number zero-padded (sorted = row order)
    <out>/labels.json             {"classes": [cluster names], "labels": {"<row>": {"label": cluster,
                                   "confidence": c, "attributes": {...}}}}; noise rows (-1) are "noise"
    <out>/embeddings.npy          (N, D) float32, row i is data/<i>.png
    <out>/fiftyone_import.py      the import code: the folder as a FiftyOne dataset with the labels
                                   in ``cluster`` (``.confidence`` and the attributes on it), the
                                   embeddings in ``embedding`` and a ``cluster_map`` visualization
                                   for the App's embeddings panel (fiftyone-brain)

Written beside the target and renamed into place (no half folder is left there); same inputs, same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

LABEL_FIELD = "cluster"
EMBEDDING_FIELD = "embedding"
BRAIN_KEY = "cluster_map"
IMPORT_SCRIPT = "fiftyone_import.py"
BLOCK = 4096  # rows read and written at a time

IMPORT_CODE = '''"""Import this folder into FiftyOne (pip install fiftyone; umap-learn for a UMAP map, else PCA).

    python fiftyone_import.py [--app]      # or: from fiftyone_import import load; ds = load()
"""
import importlib.util
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np

NAME = {name!r}


def load(folder=Path(__file__).resolve().parent, name=NAME):
    """The folder as a FiftyOne dataset: labels in "{label}" (label, confidence, attributes),
    embeddings in "{embedding}", a "{brain}" visualization for the App's embeddings panel."""
    folder = Path(folder)
    ds = fo.Dataset.from_dir(dataset_dir=str(folder), dataset_type=fo.types.FiftyOneImageClassificationDataset,
                             label_field="{label}", name=name, overwrite=True)
    emb = np.load(folder / "embeddings.npy")
    rows = [int(Path(p).stem) for p in ds.values("filepath")]  # data/<row>.png is row <row> of embeddings.npy
    ds.set_values("{embedding}", [emb[r] for r in rows])
    method = "umap" if importlib.util.find_spec("umap") else "pca"
    fob.compute_visualization(ds, embeddings="{embedding}", brain_key="{brain}", method=method, seed=0)
    return ds


if __name__ == "__main__":
    ds = load()
    print(ds)
    if "--app" in sys.argv:
        fo.launch_app(ds).wait()
'''


def write_fiftyone(out_dir: str | Path, images: Callable[[int, int], np.ndarray], labels: np.ndarray,
                   classes: list[str], confidence: np.ndarray, embeddings: Callable[[int, int], np.ndarray],
                   name: str, attributes: dict[str, np.ndarray] | None = None, notes: dict | None = None) -> Path:
    """Write the FiftyOne import folder; returns it.

    Parameters
    ----------
    out_dir : a new or empty folder
    images : ``images(start, stop) -> (stop - start, H, W, C)`` uint8 rows (read ``BLOCK`` rows at a time)
    labels : (N,) int cluster per row, -1 for noise; ``classes[c]`` names cluster c
    confidence : (N,) float, how sure the cluster assignment is
    embeddings : ``embeddings(start, stop) -> (stop - start, D)`` rows of the embedding
    name : the FiftyOne dataset name the import script gives
    attributes : per-row values (N,) put on each label (bool, int, float or str)
    notes : what the fields mean, kept in labels.json beside ``classes`` (FiftyOne reads only
        ``classes`` and ``labels``)
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder: give a new folder for the FiftyOne export")
    labels, confidence = np.asarray(labels), np.asarray(confidence, np.float64)
    if len(labels) == 0:
        raise ValueError(f"nothing to export to {out}: 0 rows")
    if len(confidence) != len(labels):
        raise ValueError(f"{len(labels)} labels and {len(confidence)} confidences: one of each per row")
    # written beside OUT and renamed into place: an interrupted export leaves no half folder at OUT
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write(staging, images, labels, classes, confidence, embeddings, name, attributes, notes)
        os.rename(staging, out)  # onto an empty folder too (POSIX)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write(out: Path, images, labels, classes, confidence, embeddings, name, attributes, notes) -> None:
    from PIL import Image
    n = len(labels)
    (out / "data").mkdir(parents=True)
    width = max(6, len(str(max(n - 1, 0))))
    stems = [f"{i:0{width}d}" for i in range(n)]
    emb = None
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        for i, img in enumerate(np.asarray(images(start, stop)), start):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out / "data" / f"{stems[i]}.png")
        part = np.asarray(embeddings(start, stop), np.float32)
        if emb is None:
            emb = np.lib.format.open_memmap(out / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, part.shape[1]))
        emb[start:stop] = part
    emb.flush()
    del emb
    attrs = {k: np.asarray(v).tolist() for k, v in (attributes or {}).items()}
    entries = {}
    for i, stem in enumerate(stems):
        c = int(labels[i])
        entries[stem] = {"label": c if c >= 0 else "noise", "confidence": float(confidence[i]),
                         "attributes": {k: v[i] for k, v in attrs.items()}}
    doc = {"classes": list(classes), "labels": entries, "notes": notes or {}}
    (out / "labels.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / IMPORT_SCRIPT).write_text(IMPORT_CODE.format(name=name, label=LABEL_FIELD, embedding=EMBEDDING_FIELD,
                                                        brain=BRAIN_KEY))
