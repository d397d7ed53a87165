"""Image sources: discover what a source holds and plan it into batches; read array sources.

A source spec is a path or ``builtin:digits``. Supported: a folder tree of image files
(PNG, JPEG, BMP, TIFF, WebP, GIF first frame), MNIST-format IDX files (a folder of them or
one images file; ``.gz`` or raw), ``.npy`` / ``.npz`` arrays, a tar archive of images (read
member by member, never extracted) and scikit-learn's digits. A ``.npy`` / ``.npz`` array may
also be an fsspec URL (``s3://bucket/x.npy``), which every worker reaches; it is read whole
(memory-mapped only locally).

Batches are small JSON-able dicts (paths, member offsets and row ranges, never pixels) so
they can travel through Prefect; :func:`cci_core.ingest.batches.load_batch` turns one into
normalised pixels, index rows and quarantine rows in whatever process runs it. Array sources
get their value range decided once, from a first pass over all of them
(:func:`cci_core.ingest.images.decide_value_range`), and every batch carries it, so a value
maps to the same byte whatever the batch size.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from cci_core.ingest.idx import IDXFormatError, read_idx
from cci_core.ingest.images import decide_value_range
from cci_core.store import fs

_IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images[-.]idx3-ubyte(\.gz)?$")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_ARRAY_KEYS = ("images", "x", "X", "data", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "arr_1")
_STATS_ROWS = 8192  # rows per step of the value-range pass over an array source


class SourceError(ValueError):
    """The source cannot be ingested at all (missing, empty, unreadable)."""


@dataclass
class Source:
    """What a source holds: its kind, canonical URI, parts and a hash of its listing."""
    kind: str                       # files | tar | idx | npy | digits
    uri: str
    listing_hash: str
    count: int
    parts: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)    # files / tar members (relative)
    labels: list[str | None] = field(default_factory=list)
    members: list[list[int]] = field(default_factory=list)  # uncompressed tar: [data offset, size] per file
    repeated: list[str] = field(default_factory=list)  # tar: later members of a name already listed (not read)
    value_range: str | None = None  # array sources: decided from all values by open_source

    def plan(self, batch_size: int) -> list[dict]:
        """Split into batches: dicts of paths or row ranges, small enough for Prefect."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        batches: list[dict] = []
        if self.kind in ("files", "tar"):
            for start in range(0, len(self.files), batch_size):
                batches.append({"kind": self.kind, "root": self.uri,
                                "items": self.files[start:start + batch_size],
                                "labels": self.labels[start:start + batch_size]})
                if self.members:
                    batches[-1]["members"] = self.members[start:start + batch_size]
            if self.repeated and batches:  # quarantined once, with the first batch
                batches[0]["repeated"] = list(self.repeated)
        else:
            for part in self.parts:
                for start in range(0, part["n"], batch_size):
                    batches.append({"kind": self.kind, "part": part, "start": start,
                                    "stop": min(part["n"], start + batch_size), "value_range": self.value_range})
        for i, b in enumerate(batches):
            b["batch"] = i
        return batches


def _hash_listing(entries) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(repr(e).encode())
    return h.hexdigest()


def _file_sig(path: Path) -> tuple:
    st = path.stat()
    return (path.name, st.st_size, st.st_mtime_ns if fs.is_local(path) else st.st_mtime)


def open_source(spec: str, label_from_folder: bool = False, value_range: str = "auto",
                clip: bool = False) -> Source:
    """Inspect a source spec; raises :class:`SourceError` with a one-line reason.

    For array sources (IDX, .npy/.npz, digits) this reads every value once to decide the
    value range (see :func:`cci_core.ingest.images.decide_value_range`); ``clip`` allows values
    outside an explicit range.
    """
    src = _open_source(spec, label_from_folder)
    if src.kind not in ("files", "tar"):
        src.value_range = _source_value_range(src, value_range, clip)
    elif value_range not in ("auto", "0-1", "0-255", "-1-1"):
        decide_value_range(value_range, np.dtype(np.uint8), 0, 0, 0, clip, spec)  # the message for a bad name
    return src


def _source_value_range(src: Source, requested: str, clip: bool) -> str:
    """One pass over all values of an array source: min, max, NaN/inf count -> its value range
    (no pass for ``auto`` on uint8 or bool arrays: their dtype decides)."""
    lo, hi, bad = np.inf, -np.inf, 0
    arrays = [part_arrays(part)[0] for part in src.parts]
    dtypes = {np.dtype(images.dtype) for images in arrays}
    where = ", ".join(p["path"] for p in src.parts)
    if requested == "auto" and len(dtypes) == 1 and dtypes <= {np.dtype(np.uint8), np.dtype(bool)}:
        return decide_value_range(requested, dtypes.pop(), 0, 1, 0, clip, where)  # the dtype decides: no pass
    for images in arrays:
        for start in range(0, len(images), _STATS_ROWS):
            block = _rows(images, start, start + _STATS_ROWS)
            if block.dtype.kind == "f":
                finite = np.isfinite(block)
                bad += int(block.size - np.count_nonzero(finite))
                block = block[finite]
            if block.size:
                lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    kinds = {d.kind for d in dtypes}
    dtype = np.result_type(*dtypes) if len(kinds) == 1 else np.dtype(np.float64)
    if lo > hi:  # nothing finite at all
        lo = hi = 0.0
    return decide_value_range(requested, dtype, lo, hi, bad, clip, where)


def _open_source(spec: str, label_from_folder: bool) -> Source:
    if spec == "builtin:digits":
        return Source("digits", spec, _hash_listing(["sklearn-digits-1797"]), 1797,
                      parts=[{"path": spec, "n": 1797, "split": None}])
    if spec.startswith("builtin:"):
        raise SourceError(f"unknown built-in corpus {spec!r}: the built-in corpus is 'builtin:digits'")
    if fs.is_url(spec):
        return _url_source(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"source {spec!r} does not exist: give a folder of images, IDX/.npy/.npz/tar "
                          "files, or builtin:digits")
    path = path.resolve()
    if path.is_dir():
        idx = _idx_parts(sorted(path.iterdir()))
        if idx:
            return Source("idx", str(path), _hash_listing(_file_sig(Path(p["path"])) for p in idx),
                          sum(p["n"] for p in idx), parts=idx)
        return _folder_source(path, label_from_folder)
    name = path.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        return _tar_source(path, label_from_folder)
    if name.endswith((".npy", ".npz")):
        return _array_source(path)
    if _IDX_IMAGES.match(path.name):
        parts = _idx_parts([path] + sorted(path.parent.iterdir()), only=path)
        return Source("idx", str(path), _hash_listing(_file_sig(path) for _ in [0]),
                      parts[0]["n"], parts=parts)
    # a single image file is a one-image folder source
    return Source("files", str(path.parent), _hash_listing([_file_sig(path)]), 1,
                  files=[path.name], labels=[None])


def _idx_parts(paths: list[Path], only: Path | None = None) -> list[dict]:
    by_name = {p.name: p for p in paths}
    parts = []
    for p in paths:
        m = _IDX_IMAGES.match(p.name)
        if not m or (only is not None and p != only) or any(q["path"] == str(p) for q in parts):
            continue
        stem = m.group("stem")
        labels = next((str(by_name[n]) for n in (f"{stem}-labels-idx1-ubyte.gz", f"{stem}-labels-idx1-ubyte",
                                                f"{stem}-labels.idx1-ubyte") if n in by_name), None)
        n = _idx_count(p)
        if labels is not None and _idx_count(Path(labels)) != n:
            raise SourceError(f"{labels} holds {_idx_count(Path(labels)):,} labels but {p} holds {n:,} images: "
                              "give the labels file that belongs to these images, or remove it")
        split = "train" if stem.startswith("train") else "test" if stem.startswith(("t10k", "test")) else stem
        parts.append({"path": str(p), "labels": labels, "n": n, "split": split})
    parts.sort(key=lambda q: (q["split"] != "train", q["path"]))  # train rows first
    return parts


def _idx_count(path: Path) -> int:
    import gzip
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read IDX header ({exc})") from exc
    if len(head) < 8 or head[:2] != b"\x00\x00":
        raise SourceError(f"{path}: not an IDX file (bad magic number)")
    return int.from_bytes(head[4:8], "big")


def _folder_source(root: Path, label_from_folder: bool) -> Source:
    files, labels, sigs = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            files.append(rel)
            labels.append(rel.split("/", 1)[0] if label_from_folder and "/" in rel else None)
            st = p.stat()
            sigs.append((rel, st.st_size, st.st_mtime_ns))
    if not files:
        raise SourceError(f"source folder {root} holds no files: put images in it (PNG, JPEG, BMP, TIFF, WebP, GIF)")
    return Source("files", str(root), _hash_listing(sigs), len(files), files=files, labels=labels)


def safe_member(name: str) -> bool:
    """A tar member name that stays inside the archive (relative, no '..')."""
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and not name.startswith("/")


def _tar_source(path: Path, label_from_folder: bool) -> Source:
    """List a tar archive in one pass. For an uncompressed archive each member's data offset
    and size are kept, so a batch reads its members by seeking, never by scanning."""
    try:
        try:
            with tarfile.open(path, "r:") as tf:
                members, compressed = tf.getmembers(), False
        except tarfile.ReadError:
            with tarfile.open(path, "r:*") as tf:
                members, compressed = tf.getmembers(), True
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read tar archive ({exc})") from exc
    # one rule whatever the compression: the first member of a name is read, later ones are quarantined
    by_name: dict[str, tarfile.TarInfo] = {}
    repeated = []
    for m in members:
        if not m.isfile() or PurePosixPath(m.name).name.startswith("."):
            continue
        if m.name in by_name:
            repeated.append(m.name)
        else:
            by_name[m.name] = m
    names = sorted(by_name)
    if not names:
        raise SourceError(f"tar archive {path} holds no files")
    labels = [n.split("/", 1)[0] if label_from_folder and "/" in n and safe_member(n) else None for n in names]
    sig = _file_sig(path)
    offsets = [] if compressed else [[by_name[n].offset_data, by_name[n].size] for n in names]
    return Source("tar", str(path), _hash_listing([sig, *names]), len(names), files=names, labels=labels,
                  members=offsets, repeated=repeated)


def _url_source(spec: str) -> Source:
    """A ``.npy`` / ``.npz`` array at a URL (other kinds of source are read from local files)."""
    path = fs.as_path(spec)
    if not path.name.lower().endswith((".npy", ".npz")):
        raise SourceError(f"source {spec!r}: from a URL only .npy/.npz arrays are read; copy image folders, "
                          "IDX and tar files to a local folder first")
    try:
        found = path.exists()
    except OSError as exc:
        raise SourceError(f"source {spec!r} cannot be reached ({exc}): check the URL and its credentials") from exc
    if not found:
        raise SourceError(f"source {spec!r} does not exist")
    return _array_source(path)


def _array_source(path: Path) -> Source:
    images, labels = _load_array_file(str(path))
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise SourceError(f"{path}: expected an array of shape (N, H, W) or (N, H, W, C) with N > 0, "
                          f"got {images.shape}")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        raise SourceError(f"{path}: {len(images):,} images but {len(labels) if labels.ndim else 0:,} labels "
                          f"(labels shape {labels.shape}): give exactly one label per image, or drop the labels")
    return Source("npy", str(path), _hash_listing([_file_sig(path)]), int(images.shape[0]),
                  parts=[{"path": str(path), "n": int(images.shape[0]), "split": None}])


@functools.lru_cache(maxsize=4)
def _load_array_file(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.endswith(".npy"):
            return fs.load_npy(path, mmap=True), None
        if fs.is_url(path):
            return _npz_arrays(path, fs.load_npz(path))
        with np.load(path, allow_pickle=False) as z:
            return _npz_arrays(path, z)
    except (ValueError, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{path}: cannot read array file ({exc}); object arrays are refused "
                          "(no pickle): save plain numeric arrays") from exc


def _npz_arrays(path: str, z) -> tuple[np.ndarray, np.ndarray | None]:
    """The images and labels (None if none) of an .npz archive's arrays, chosen by name."""
    keys = list(z.keys())
    ikey = next((k for k in _ARRAY_KEYS if k in keys), keys[0] if keys else None)
    if ikey is None:
        raise SourceError(f"{path}: the .npz archive is empty")
    lkey = next((k for k in _LABEL_KEYS if k in keys and k != ikey), None)
    labels = z[lkey] if lkey else None
    if labels is not None and labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # a column vector of labels
    return z[ikey], labels


@functools.lru_cache(maxsize=4)
def _load_idx(images_path: str, labels_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        images = read_idx(images_path)
        labels = read_idx(labels_path) if labels_path else None
    except IDXFormatError as exc:
        raise SourceError(str(exc)) from exc
    return images, labels


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return images, d.target


def part_arrays(part: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """All images (memory-mapped for .npy) and labels of one array part."""
    path = part["path"]
    if path == "builtin:digits":
        return _load_digits()
    if path.endswith((".npy", ".npz")):
        return _load_array_file(path)
    return _load_idx(path, part.get("labels"))


def array_rows(part: dict, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and labels (None when unlabelled) of rows ``start:stop`` of one array part."""
    images, labels = part_arrays(part)
    return _rows(images, start, stop), (None if labels is None else np.asarray(labels[start:stop]))


def _rows(images: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an array part. A memory-mapped .npy is read with a plain file read:
    pages read through the map stay in the process's resident memory, so the value-range pass and
    the decode tasks of a 784 MB source each held up to all of it."""
    if isinstance(images, np.memmap) and images.filename and images.flags.c_contiguous:
        stop = min(stop, len(images))
        per_row = int(np.prod(images.shape[1:]))
        with open(images.filename, "rb") as fh:
            fh.seek(images.offset + start * per_row * images.dtype.itemsize)
            got = np.fromfile(fh, images.dtype, max(0, stop - start) * per_row)
        return got.reshape((max(0, stop - start),) + images.shape[1:])
    return np.asarray(images[start:stop])


