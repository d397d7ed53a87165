"""Published image datasets: versioned, committed last, readable with plain zarr + pyarrow.

Layout (one folder per version)::

    datasets/<name>/v<N>/images.zarr       (n, H, W, C) uint8, Zarr v3, Blosc-zstd
                         manifest.parquet  one row per image (image_id, ... provenance)
                         data.parquet      the images as PNG bytes + the manifest, with Hugging Face
                                           ``datasets`` features (Image, ClassLabel clusters)
                         accepted.parquet  the same, only the rows the classifier accepted (the
                                           ``accepted`` configuration of README.md; ``all`` is data.parquet)
                         card.json         schema, sources, metrics, lineage ids, how to read it
                         README.md         the same card for people and the Hub (YAML front matter)
                         _COMMITTED        written last: a version without it does not exist
    datasets/<name>/latest.json            {"version": N}, replaced atomically after the commit

A version is written in a hidden staging folder (which names its writer process), its lineage
record is written (with the final URI), then it is renamed into place and the marker written
last: readers only see versions with the marker, so they never see half a version nor one
without its lineage. Commits of one dataset are serialised with a lock file, so two writers
get two versions. Staging folders of killed writers are removed when the next writer starts.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec

from cci_core.store import dataset_card, fs, integrity
from cci_core.store.fs import AnyPath
from cci_core.store.record_check import RecordError, read_record, read_table, shown
from cci_core.store.store import (
    OWNER_FILE,
    Store,
    atomic_write_bytes,
    atomic_write_json,
    discard_staging,
    make_staging,
    remove_stale_staging,
    utc_now,
    validate_name,
)

MARKER = "_COMMITTED"
_VERSION_RE = re.compile(r"^v(\d+)$")
READ_ME = ("paths relative to the version folder: import zarr, pyarrow.parquet as pq; "
           "images = zarr.open_array('images.zarr', mode='r'); "
           "manifest = pq.read_table('manifest.parquet').to_pandas()  # row i of manifest is images[i]; "
           "or datasets.load_dataset('parquet', data_files='data.parquet') (see README.md)")


class UnknownDatasetError(LookupError):
    pass


VERSION_FIX = "restore the version folder from a backup, or publish a new version"
LATEST_FIX = "restore it from a backup, or delete it (the newest committed version is then read)"
# card.json's and latest.json's typed shapes (checked once when read)
CARD_FIELDS = {"name": str, "version": int, "n_images": int, "shape": list, "how_to_read": str}
CARD_OPTIONAL = {"dtype": str, "created_at": str, "files": dict, "lineage": dict, "clusters": dict,
                 "description": str, "license": str, "manifest_columns": dict, "schema": dict, "metrics": dict,
                 "params": dict, "models": dict, "source_corpus": dict, "run_id": str}
LATEST_FIELDS = {"version": int}


def read_card(path: AnyPath, root: AnyPath | None = None) -> dict:
    """The card.json at PATH checked against its typed shape (a RecordError naming it otherwise)."""
    return read_record(path, VERSION_FIX, CARD_FIELDS, CARD_OPTIONAL, root=root)


def latest_version(ddir: AnyPath, versions: list[int], root: AnyPath | None = None) -> int:
    """The version latest.json names (checked), else the newest committed one. A latest.json that
    names a version without its commit marker means that version was committed and lost its marker
    (the marker is written before latest.json): an error, not a silent fall-back to an older one."""
    path = fs.as_path(ddir) / "latest.json"
    if not path.exists():
        return versions[-1]
    v = read_record(path, LATEST_FIX, LATEST_FIELDS, root=root)["version"]
    if v not in versions and v > versions[-1]:
        raise RecordError(f"{shown(path, root)}: field 'version' is {v}, but {shown(fs.as_path(ddir) / f'v{v}', root)} "
                          f"has no commit marker ({MARKER}); restore that version folder from a backup")
    return v if v in versions else versions[-1]


def _versions(ddir: AnyPath) -> list[int]:
    ddir = fs.as_path(ddir)
    if not ddir.exists():
        return []
    found = []
    for p in ddir.iterdir():
        m = _VERSION_RE.match(p.name)
        if m and (p / MARKER).exists():
            found.append(int(m.group(1)))
    return sorted(found)


def _lock(ddir: AnyPath):
    """Commits of one dataset, one at a time (:func:`cci_core.store.fs.lock`)."""
    return fs.lock(fs.as_path(ddir) / ".lock")


class DatasetWriter:
    """Write one new version of a dataset batch by batch; nothing is visible until :meth:`commit`.

    Parameters
    ----------
    store : the artifact store
    name : dataset name (letters, digits, '.', '_', '-')
    shape : (H, W, C) of every image
    chunk_rows : rows per Zarr chunk

    Use as a context manager: leaving the block without ``commit`` (an error, an interrupt)
    removes the staging folder and leaves every existing version as it was.
    """

    def __init__(self, store: Store, name: str, shape: tuple[int, int, int], chunk_rows: int = 4096):
        self.store, self.name = store, validate_name(name, "dataset name")
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be (H, W, C), got {shape}")
        self.dir = store.dataset_dir(name)
        _check_latest(self.dir, store.root)  # before any work: a damaged latest.json is refused, not replaced
        remove_stale_staging(self.dir)
        self.staging = make_staging(self.dir)
        try:
            self._images = zarr.create_array(
                fs.zarr_url(self.staging / "images.zarr"), shape=(0, *self.shape), chunks=(chunk_rows, *self.shape),
                dtype="uint8", compressors=integrity.compressors(BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")))
        except BaseException:  # a full disk: no `with` block runs abort() for a writer never made
            self.abort()
            raise
        self._rows: list[pd.DataFrame] = []
        self.n = 0
        self.committed: DatasetVersion | None = None

    def append(self, images: np.ndarray, manifest: pd.DataFrame) -> None:
        """Add images (n, H, W, C) uint8 and their n manifest rows."""
        images = np.asarray(images)
        if images.ndim == 3 and self.shape[2] == 1:
            images = images[..., None]
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images must be uint8 (n, {', '.join(map(str, self.shape))}), "
                             f"got {images.dtype} {images.shape}")
        if len(manifest) != len(images):
            raise ValueError(f"{len(images)} images but {len(manifest)} manifest rows")
        self._images.resize((self.n + len(images), *self.shape))
        self._images[self.n:self.n + len(images)] = images
        self._rows.append(manifest.reset_index(drop=True))
        self.n += len(images)

    @property
    def images(self) -> zarr.Array:
        """The images written so far (the staging array), to read back before the commit."""
        return self._images

    def commit(self, card: dict, record: Callable[[AnyPath, int], str | None] | None = None) -> "DatasetVersion":
        """Write manifest and card, record lineage, move the version into place, write the marker,
        move ``latest``.

        record : ``record(final_path, version) -> artifact id``, called once the version number is
            taken and before anything is visible: it writes the lineage record (with the final
            URI; its parameters should hold the version, so that each version has a record of
            its own even when two versions hold the same images). Its id goes into the card as
            ``lineage.artifact_id``. If it raises, nothing is
            published (the staging folder is removed on leaving the ``with`` block).
        """
        if self.n == 0:
            raise ValueError(f"dataset {self.name!r}: nothing to publish (0 images)")
        manifest = pd.concat(self._rows, ignore_index=True)
        manifest.insert(0, "index", np.arange(self.n, dtype=np.int64))
        fs.write_parquet(self.staging / "manifest.parquet", manifest, index=False)
        clusters = sorted(int(c) for c in manifest["cluster"].unique()) if "cluster" in manifest else []
        write_hf_parquet(self._images, manifest, self.staging / "data.parquet",
                         dataset_card.class_names(card, clusters) if clusters else None)
        files = {"images": "images.zarr", "manifest": "manifest.parquet", "data": "data.parquet"}
        if "accepted" in manifest:
            files["accepted"] = "accepted.parquet"
            write_accepted_parquet(self.staging / "data.parquet", self.staging / "accepted.parquet")
        with _lock(self.dir):
            _check_latest(self.dir, self.store.root)
            version = (_versions(self.dir) or [0])[-1] + 1
            final = self.dir / f"v{version}"
            if final.exists():  # a version folder left without its marker by a crash: never visible
                _clear_uncommitted(self.dir, version, self.store.root)
                fs.rmtree(final)
            card = {"name": self.name, "version": version, "n_images": self.n, "shape": list(self.shape),
                    "dtype": "uint8", "created_at": utc_now(),
                    "files": {**files, "card": "README.md"},
                    "manifest_columns": {c: str(t) for c, t in manifest.dtypes.items()},
                    "how_to_read": READ_ME, "license": "other", "intended_use": dataset_card.INTENDED_USE,
                    "limitations": dataset_card.LIMITATIONS, **card}
            if record is not None:
                aid = record(final, version)
                card["lineage"] = {**(card.get("lineage") or {}), "artifact_id": aid,
                                   "show": f"cci lineage show {aid}"}
            atomic_write_json(self.staging / "card.json", card)
            atomic_write_bytes(self.staging / "README.md", dataset_card.readme(card).encode())
            fs.unlink(self.staging / OWNER_FILE, missing_ok=True)
            fs.move(self.staging, final)  # on an object store a copy: invisible until the marker
            atomic_write_bytes(final / MARKER, (card["created_at"] + "\n").encode())
            atomic_write_json(self.dir / "latest.json", {"version": version})
        self.committed = open_dataset(self.name, version, store=self.store)
        return self.committed

    def abort(self) -> None:
        discard_staging(self.staging)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.committed is None:
            self.abort()


@dataclass
class DatasetVersion:
    """One committed version: ``images`` (zarr, read lazily), ``manifest``, ``card``."""
    name: str
    version: int
    path: AnyPath

    @property
    def images(self) -> zarr.Array:
        return integrity.open_checked(self.path / "images.zarr", f"datasets/{self.name}/v{self.version}/images.zarr")

    @property
    def manifest(self) -> pd.DataFrame:
        return read_table(self.path / "manifest.parquet", VERSION_FIX)

    @property
    def card(self) -> dict:
        return read_card(self.path / "card.json")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def torch(self, transform=None):
        """A torch Dataset: ``ds[i]`` -> (float tensor (C, H, W) in [0, 1], manifest row i as a dict)."""
        return TorchDataset(self, transform)


class TorchDataset:
    """torch.utils.data.Dataset adapter over a dataset version (images read on demand)."""

    def __init__(self, version: DatasetVersion, transform=None):
        self.images, self.rows, self.transform = version.images, version.manifest.to_dict("records"), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float() / 255.0
        return (self.transform(x) if self.transform else x), self.rows[i]


def _check_latest(ddir: AnyPath, root: AnyPath) -> None:
    """A dataset's latest.json, if there is one, is readable: a commit replaces it, and a record that
    cannot be read is never overwritten."""
    latest = fs.as_path(ddir) / "latest.json"
    if latest.exists():
        read_record(latest, LATEST_FIX, LATEST_FIELDS, root=root)


def _clear_uncommitted(ddir: AnyPath, version: int, root: AnyPath) -> None:
    """Before a left-over ``v<version>`` folder without marker is removed (under the dataset's lock,
    so its writer is gone): refuse when latest.json names it, i.e. it was committed and its marker
    is lost, not a crash between the move and the marker."""
    latest = fs.as_path(ddir) / "latest.json"
    if latest.exists() and read_record(latest, LATEST_FIX, LATEST_FIELDS, root=root)["version"] >= version:
        raise RecordError(f"{shown(fs.as_path(ddir) / f'v{version}', root)} has no commit marker ({MARKER}) but "
                          f"{shown(latest, root)} names version {version}: it was committed, so it is left as it is; "
                          "restore its marker or the folder from a backup")


def _dataset_dir(name_or_path: str | Path, store: Store | None) -> AnyPath:
    """A dataset's folder: a ``str`` is a name, resolved only inside the store (a path-like name is
    refused, never read from wherever it points); a ``Path`` is a version-holding folder a program
    opens directly."""
    if isinstance(name_or_path, str):
        if "/" in name_or_path or "\\" in name_or_path or name_or_path in (".", ".."):
            raise ValueError(f"dataset name {name_or_path!r} is a path: give the name of a dataset of the store "
                             "(`cci datasets list`)")
        return (store or Store()).dataset_dir(name_or_path)
    return fs.as_path(name_or_path)


def dataset_versions(name: str | Path, store: Store | None = None) -> list[int]:
    """Committed versions of a dataset, oldest first."""
    return _versions(_dataset_dir(name, store))


def open_dataset(name_or_path: str | Path, version: int | str = "latest", store: Store | None = None) -> DatasetVersion:
    """Open a committed version of a dataset by name (in ``store``) or by its folder path.

    version : an int, ``"v3"``, or ``"latest"``. A version without its commit marker
    (being written, or left by a crash) is reported as not existing.
    """
    ddir = _dataset_dir(name_or_path, store)
    versions = _versions(ddir)
    if not versions:
        known = list_datasets(store) if store else []
        raise UnknownDatasetError(f"no dataset {str(name_or_path)!r}" + (f" in {store.root}" if store else "")
                                  + (f" (known: {', '.join(known)})" if known else "")
                                  + "; publish one with `cci generate RUN --dataset NAME`")
    if version == "latest":
        v = latest_version(ddir, versions, store.root if store else None)
    else:
        m = _VERSION_RE.match(str(version))
        try:
            v = int(m.group(1)) if m else int(version)
        except ValueError:
            raise ValueError(f"version {version!r}: give a number, v<N> or 'latest'") from None
        if v not in versions:
            partial = (ddir / f"v{v}").exists()
            raise UnknownDatasetError(
                f"dataset {ddir.name!r} has no committed version {v}"
                + (" (its folder exists but has no commit marker: it is partial and is ignored)" if partial else "")
                + f"; committed versions: {', '.join(f'v{x}' for x in versions)}")
    return DatasetVersion(ddir.name, v, ddir / f"v{v}")


def list_datasets(store: Store) -> list[str]:
    base = store.root / "datasets"
    return sorted(p.name for p in base.iterdir() if _versions(p)) if base.exists() else []


def _png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


_HF_VALUE = [(pa.types.is_boolean, "bool"), (pa.types.is_int8, "int8"), (pa.types.is_int16, "int16"),
             (pa.types.is_int32, "int32"), (pa.types.is_int64, "int64"), (pa.types.is_float32, "float32"),
             (pa.types.is_float64, "float64"), (pa.types.is_string, "string"), (pa.types.is_large_string, "large_string")]


def hf_features(schema: pa.Schema, class_names: list[str] | None) -> dict:
    """Hugging Face ``datasets`` features (``Features.to_dict()`` form) of a data.parquet schema."""
    feats: dict = {}
    for f in schema:
        if f.name == "image":
            feats[f.name] = {"_type": "Image"}
        elif f.name == "cluster" and class_names is not None:
            feats[f.name] = {"names": list(class_names), "_type": "ClassLabel"}
        else:
            dtype = next((d for test, d in _HF_VALUE if test(f.type)), "string")
            feats[f.name] = {"dtype": dtype, "_type": "Value"}
    return feats


def write_hf_parquet(images: zarr.Array, manifest: pd.DataFrame, path: str | Path,
                     class_names: list[str] | None = None, block: int = 4096) -> AnyPath:
    """One Parquet file that ``datasets.load_dataset("parquet", ...)`` reads as images with named clusters.

    The ``image`` column is a struct {bytes: PNG, path: null}, the way ``datasets`` stores an
    ``Image`` feature, followed by the manifest columns (``cluster`` as int64, a ``ClassLabel``
    with ``class_names``). The features go in the schema metadata under ``huggingface``, where
    ``datasets`` looks for them; pyarrow, pandas and DuckDB read the file as plain columns.
    Written in row groups of ``block`` images (never all images in memory).
    """
    manifest = manifest.reset_index(drop=True)
    if class_names is not None and "cluster" in manifest:
        manifest = manifest.assign(cluster=manifest["cluster"].astype(np.int64))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    first = pa.Table.from_pandas(manifest.iloc[:0], preserve_index=False)
    schema = pa.schema([pa.field("image", image_type), *first.schema])
    meta = {"huggingface": json.dumps({"info": {"features": hf_features(schema, class_names)}})}
    schema = schema.with_metadata(meta)
    path = fs.as_path(path)
    fs.makedirs(path.parent)
    with _parquet_sink(path) as sink, pq.ParquetWriter(sink, schema) as out:
        for start in range(0, len(manifest), block):
            pngs = [_png(img) for img in images[start:start + block]]
            part = pa.Table.from_pandas(manifest.iloc[start:start + len(pngs)], schema=first.schema, preserve_index=False)
            col = pa.array([{"bytes": b, "path": None} for b in pngs], type=image_type)
            out.write_table(pa.Table.from_arrays([col, *part.columns], schema=schema), row_group_size=block)
    return path


def write_accepted_parquet(data: AnyPath, path: AnyPath) -> AnyPath:
    """The rows of ``data`` (a :func:`write_hf_parquet` file) whose ``accepted`` is true, with the same
    schema and features, read and written one row group at a time."""
    path = fs.as_path(path)
    reading = contextlib.nullcontext(data) if fs.is_local(data) else fs.as_path(data).open("rb")
    with reading as src, pq.ParquetFile(src) as source, _parquet_sink(path) as sink, \
            pq.ParquetWriter(sink, source.schema_arrow) as out:
        for i in range(source.num_row_groups):
            group = source.read_row_group(i)
            out.write_table(group.filter(group["accepted"]))
    return path


def _parquet_sink(path: AnyPath):
    """Where a ParquetWriter writes: the local path itself, or a file object on an object store
    (written as one object when it closes)."""
    return contextlib.nullcontext(path) if fs.is_local(path) else path.open("wb")


def export_png(ds: DatasetVersion, out_dir: str | Path) -> Path:
    """Every image as ``<index>-<image_id[:12]>.png`` plus ``metadata.csv``, the ``imagefolder`` layout.

    ``metadata.csv`` has ``file_name`` first, then the manifest columns and, where the dataset has
    clusters, ``cluster_name``: ``datasets.load_dataset("imagefolder", data_dir=...)`` keeps them.
    """
    from PIL import Image
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ds.manifest
    images = ds.images
    names = []
    for start in range(0, len(manifest), 4096):
        block = images[start:start + 4096]
        for i, img in enumerate(block):
            row = manifest.iloc[start + i]
            names.append(f"{int(row['index']):06d}-{str(row.get('image_id', ''))[:12]}.png")
            Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(out / names[-1])
    meta = manifest.copy()
    meta.insert(0, "file_name", names)
    if "cluster" in meta:
        labels = dataset_card.class_names(ds.card, sorted(int(c) for c in meta["cluster"].unique()))
        meta.insert(meta.columns.get_loc("cluster") + 1, "cluster_name", [labels[int(c)] for c in meta["cluster"]])
    meta.to_csv(out / "metadata.csv", index=False)
    return out


def export_parquet(ds: DatasetVersion, path: str | Path) -> Path:
    """One Parquet file: an ``image`` column (PNG bytes, Hugging Face ``Image`` feature) and the manifest."""
    m = ds.manifest
    names = (dataset_card.class_names(ds.card, sorted(int(c) for c in m["cluster"].unique()))
             if "cluster" in m else None)
    return write_hf_parquet(ds.images, m, path, names)
