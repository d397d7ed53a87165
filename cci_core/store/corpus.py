"""A corpus in the store: a Zarr v3 image array plus a Parquet index, in committed versions.

``corpus.json`` is written last, atomically, and is the only thing that says which rows are
committed: rows of ``images.zarr`` or ``index.parquet`` beyond the latest version's
``n_rows`` belong to an unfinished ingest and are never read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from cci_core.common.shapes import ImageShape
from cci_core.store import fs, integrity
from cci_core.store.fs import AnyPath
from cci_core.store.record_check import RecordError, check_fields, read_record, read_table
from cci_core.store.store import Store, atomic_write_json, atomic_write_parquet

CHUNK_BYTES = 4 << 20  # chunks of 2-4 MiB along N
INDEX_COLUMNS = ["row", "image_id", "source", "label", "split", "orig_height", "orig_width",
                 "orig_mode", "batch", "version", "ingested_at"]
CORPUS_FIX = ("restore the corpus folder from a backup, or ingest the source again into a new corpus "
              "(`cci ingest SOURCE --corpus NEW`)")
# corpus.json's typed shape (checked once when read: read_manifest)
MANIFEST_FIELDS = {"name": str, "shape": list, "versions": list}
MANIFEST_OPTIONAL = {"chunk_rows": int, "fit": str, "created_at": str}
VERSION_FIELDS = {"version": int, "n_rows": int}
VERSION_OPTIONAL = {"artifact_id": str, "added": int, "duplicates": int, "quarantined": int, "source": str,
                    "listing_hash": str, "ingest_id": str, "created_at": str}


class UnknownCorpusError(LookupError):
    def __init__(self, name: str, store: Store):
        self.name, self.store = name, store

    def __str__(self) -> str:
        known = ", ".join(self.store.corpora()) or "none yet"
        return (f"no corpus named {self.name!r} in store {self.store.root} (known: {known}); "
                f"create it with `cci ingest SOURCE --corpus {self.name}`")


def chunk_rows(shape: ImageShape) -> int:
    """Rows per chunk: the largest power of two whose chunk stays within CHUNK_BYTES."""
    per_image = shape.height * shape.width * shape.channels
    rows = max(1, CHUNK_BYTES // per_image)
    return 1 << (rows.bit_length() - 1)


@dataclass
class Corpus:
    """A read-only view of the latest (or a chosen) committed version of a corpus."""
    name: str
    dir: AnyPath
    manifest: dict
    version: int

    @property
    def versions(self) -> list[dict]:
        return self.manifest["versions"]

    @property
    def meta(self) -> dict:
        return self.versions[self.version - 1] if self.version else {}

    @property
    def n_rows(self) -> int:
        return self.meta.get("n_rows", 0)

    @property
    def shape(self) -> ImageShape:
        return ImageShape(*self.manifest["shape"])

    @property
    def artifact_id(self) -> str | None:
        return self.meta.get("artifact_id")

    @property
    def images_path(self) -> AnyPath:
        return self.dir / "images.zarr"

    def images(self) -> zarr.Array:
        """The image array, opened read-only. Only rows ``[0, n_rows)`` are committed. A damaged
        chunk is a :class:`~cci_core.store.integrity.ChunkDamagedError` when read, a missing one
        (it would read as zeros) when opened."""
        return integrity.open_complete(self.images_path, f"corpora/{self.name}/images.zarr", self.n_rows)

    def read_images(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Pixels of committed rows, (n, H, W, C) uint8."""
        arr = self.images()
        if rows is None:
            return arr[: self.n_rows]
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.n_rows)
            return arr[start:stop]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"corpus {self.name!r} v{self.version} has rows 0..{self.n_rows - 1}")
        return arr.get_orthogonal_selection((rows,)) if rows.size else np.zeros((0, *self.shape.hwc), np.uint8)

    def index(self, columns: list[str] | None = None) -> pd.DataFrame:
        path = self.dir / "index.parquet"
        if not path.exists() or not self.n_rows:
            return pd.DataFrame(columns=columns or INDEX_COLUMNS)
        df = read_table(path, CORPUS_FIX, columns=columns if columns is None or "row" in columns else ["row", *columns])
        df = df[df["row"] < self.n_rows]
        return df if columns is None else df[columns]

    def labels(self) -> np.ndarray | None:
        """True labels as strings (object array), or None when the corpus has none."""
        lab = self.index(["label"])["label"]
        return None if lab.isna().all() else lab.to_numpy(dtype=object)

    def quarantine(self) -> pd.DataFrame:
        path = self.dir / "quarantine.parquet"
        return read_table(path, CORPUS_FIX) if path.exists() else pd.DataFrame(columns=["source", "reason", "version"])

    def info(self) -> dict:
        """Summary for ``cci corpus info``: plain JSON-able values."""
        idx = self.index(["label", "split"])
        return {
            "name": self.name, "path": str(self.dir), "version": self.version,
            "n_rows": self.n_rows, "shape": list(self.shape.hwc),
            "chunk_rows": self.manifest.get("chunk_rows"), "artifact_id": self.artifact_id,
            "label_counts": {str(k): int(v) for k, v in idx["label"].value_counts().sort_index().items()},
            "split_counts": {str(k): int(v) for k, v in idx["split"].value_counts().sort_index().items()},
            "duplicates": sum(v.get("duplicates", 0) for v in self.versions[: self.version]),
            "quarantined": int(len(self.quarantine())),
            "versions": self.versions[: self.version],
        }


def open_corpus(store: Store, name: str, version: int | None = None) -> Corpus:
    """Open a committed corpus version (the latest by default)."""
    cdir = store.corpus_dir(name)
    manifest = read_manifest(cdir, store.root)
    if manifest is None:
        raise UnknownCorpusError(name, store)
    latest = len(manifest["versions"])
    if version is None:
        version = latest
    if not 1 <= version <= latest:
        raise ValueError(f"corpus {name!r} has versions 1..{latest}, not {version}")
    return Corpus(name, cdir, manifest, version)


def read_manifest(cdir: AnyPath, root: AnyPath | None = None) -> dict | None:
    """The corpus.json of the corpus folder CDIR checked against its typed shape (None when there
    is no corpus): one that cannot be read, or a folder with an index but no corpus.json, is a
    RecordError naming it, never taken for a new corpus (an ingest would write over its rows)."""
    path = fs.as_path(cdir) / "corpus.json"
    if not path.exists():
        if (fs.as_path(cdir) / "index.parquet").exists():  # committed rows whose record is gone: not a new corpus
            raise RecordError(f"corpora/{fs.as_path(cdir).name} holds index.parquet but no corpus.json: its record is "
                              "lost (or its first ingest was killed while committing), so it is neither read nor "
                              "written; restore corpus.json from a backup, or move the folder away and ingest again")
        return None
    manifest = read_record(path, CORPUS_FIX, MANIFEST_FIELDS, MANIFEST_OPTIONAL, root=root)
    shape = manifest["shape"]
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise RecordError(f"corpora/{fs.as_path(cdir).name}/corpus.json: field 'shape' is {shape!r}, expected "
                          f"[height, width, channels] as positive integers; {CORPUS_FIX}")
    for i, v in enumerate(manifest["versions"]):
        check_fields(v, path, CORPUS_FIX, VERSION_FIELDS, VERSION_OPTIONAL, prefix=f"versions[{i}].", root=root)
        if v["version"] != i + 1:
            raise RecordError(f"corpora/{fs.as_path(cdir).name}/corpus.json: field 'versions[{i}].version' is "
                              f"{v['version']!r}, expected {i + 1}; {CORPUS_FIX}")
    return manifest


def ensure_images_array(cdir: AnyPath, shape: ImageShape, n_total: int) -> zarr.Array:
    """Create ``images.zarr`` or resize it to ``n_total`` rows (rows < committed n never change)."""
    path = fs.as_path(cdir) / "images.zarr"
    if path.exists():
        arr = zarr.open_array(fs.zarr_url(path), mode="r+")
        if tuple(arr.shape[1:]) != shape.hwc:
            raise ValueError(f"{path} holds images of shape {arr.shape[1:]}, not {shape.hwc}")
        if arr.shape[0] != n_total:
            arr.resize((n_total, *shape.hwc))
        return arr
    rows = chunk_rows(shape)
    return zarr.create_array(
        store=fs.zarr_url(path), shape=(n_total, *shape.hwc), chunks=(rows, *shape.hwc), dtype="uint8",
        # zstd level 1: twice as fast to write as level 3 on image data, files ~1% larger
        compressors=integrity.compressors(BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")), fill_value=0,
        dimension_names=["n", "y", "x", "c"])


def write_rows(images_path: AnyPath | str, start: int, pixels: np.ndarray) -> None:
    """Write pixels into rows ``[start, start + len(pixels))`` of an existing image array."""
    # write_empty_chunks: an image chunk is almost never all zeros, so skip zarr's per-chunk check
    arr = zarr.open_array(fs.zarr_url(images_path), mode="r+").with_config({"write_empty_chunks": True})
    arr[start:start + len(pixels)] = pixels


def commit_version(cdir: AnyPath, manifest: dict, index: pd.DataFrame, quarantine: pd.DataFrame) -> None:
    """Publish a version: index and quarantine first, ``corpus.json`` last (the commit point)."""
    cdir = fs.as_path(cdir)
    atomic_write_parquet(cdir / "index.parquet", index[INDEX_COLUMNS])
    atomic_write_parquet(cdir / "quarantine.parquet", quarantine)
    atomic_write_json(cdir / "corpus.json", manifest)
