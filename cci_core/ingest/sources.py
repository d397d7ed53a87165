"""Image sources: discover what a source holds, plan it into batches, decode one batch.

A source spec is a path or ``builtin:digits``. Supported: a folder tree of image files
(PNG, JPEG, BMP, TIFF, WebP, GIF first frame), MNIST-format IDX files (a folder of them or
one images file; ``.gz`` or raw), ``.npy`` / ``.npz`` arrays, a tar archive of images (read
member by member, never extracted) and scikit-learn's digits.

Batches are small JSON-able dicts (paths, member offsets and row ranges, never pixels) so
they can travel through Prefect; :func:`load_batch` turns one into normalised pixels, index
rows and quarantine rows in whatever process runs it. Array sources get their value range
decided once, from a first pass over all of them (:func:`decide_value_range`), and every
batch carries it, so a value maps to the same byte whatever the batch size.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from cci_core.common.shapes import ImageShape
from cci_core.ingest.idx import IDXFormatError, read_idx
from cci_core.ingest.images import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageRefused,
    decide_value_range,
    image_id,
    normalise,
    normalise_array,
    open_image,
    oversize_reason,
    read_capped,
    to_uint8,
)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
_IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images[-.]idx3-ubyte(\.gz)?$")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_ARRAY_KEYS = ("images", "x", "X", "data", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "arr_1")


_STATS_ROWS = 8192  # rows per step of the value-range pass over an array source


class SourceError(ValueError):
    """The source cannot be ingested at all (missing, empty, unreadable)."""


@dataclass(frozen=True)
class ReadLimits:
    """What one image file or tar member may cost, and whether symlinks may leave the folder."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    follow_symlinks: bool = False

    def __post_init__(self):
        for name in ("max_file_bytes", "max_image_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive number")

    def asdict(self) -> dict:
        return asdict(self)


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
    return (path.name, st.st_size, st.st_mtime_ns)


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
    """One pass over all values of an array source: min, max, NaN/inf count -> its value range."""
    lo, hi, bad, dtypes = np.inf, -np.inf, 0, set()
    for part in src.parts:
        images, _ = _part_arrays(part)
        dtypes.add(np.dtype(images.dtype))
        for start in range(0, len(images), _STATS_ROWS):
            block = np.asarray(images[start:start + _STATS_ROWS])
            if block.dtype.kind == "f":
                finite = np.isfinite(block)
                bad += int(block.size - np.count_nonzero(finite))
                block = block[finite]
            if block.size:
                lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    where = ", ".join(p["path"] for p in src.parts)
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


def _safe_member(name: str) -> bool:
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
    by_name = {m.name: m for m in members if m.isfile()}  # a later member of one name replaces an earlier
    names = sorted(n for n in by_name if not PurePosixPath(n).name.startswith("."))
    if not names:
        raise SourceError(f"tar archive {path} holds no files")
    labels = [n.split("/", 1)[0] if label_from_folder and "/" in n and _safe_member(n) else None for n in names]
    sig = _file_sig(path)
    offsets = [] if compressed else [[by_name[n].offset_data, by_name[n].size] for n in names]
    return Source("tar", str(path), _hash_listing([sig, *names]), len(names), files=names, labels=labels,
                  members=offsets)


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
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            ikey = next((k for k in _ARRAY_KEYS if k in keys), keys[0] if keys else None)
            if ikey is None:
                raise SourceError(f"{path}: the .npz archive is empty")
            lkey = next((k for k in _LABEL_KEYS if k in keys and k != ikey), None)
            labels = z[lkey] if lkey else None
            if labels is not None and labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]  # a column vector of labels
            return z[ikey], labels
    except (ValueError, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{path}: cannot read array file ({exc}); object arrays are refused "
                          "(no pickle): save plain numeric arrays") from exc


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


@dataclass
class BatchResult:
    """Decoded batch: pixels (n, H, W, C) uint8, one index row per image, quarantined items."""
    pixels: np.ndarray
    rows: list[dict]
    quarantine: list[dict]


def first_image_shape(source: Source, channels: int | None = None, size: tuple[int, int] | None = None,
                      limits: ReadLimits | None = None) -> ImageShape:
    """The corpus shape: ``size`` and ``channels`` where given, the rest from the first
    decodable image of the source (decoded for ``size`` when given, so a large photo is cheap)."""
    if size and channels:
        return ImageShape(*size, channels)
    if source.kind in ("files", "tar"):
        limits = limits or ReadLimits()
        for b in source.plan(64):
            for _, got in _read_items(b, limits):
                if isinstance(got, _Quarantine):
                    continue
                try:
                    img = open_image(got, max_pixels=limits.max_image_pixels, target=size)
                except ImageRefused:
                    continue
                c = channels or (1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3)
                h, w = size or (img.height, img.width)
                if max(h, w) > 4096:
                    raise SourceError(f"the first image of {source.uri} is {w}x{h} pixels, more than 4096 a side: "
                                      "give --size HxW (e.g. --size 64x64) for the corpus shape")
                return ImageShape(h, w, c)
        raise SourceError(f"source {source.uri}: every file is unreadable, nothing to ingest "
                          f"(the first: {_first_reason(source, limits)})")
    arr = _array_rows(source.parts[0], 0, 1)[0][0]
    c = channels or (1 if arr.ndim == 2 or arr.shape[-1] == 1 else 3)
    h, w = size or arr.shape[:2]
    if max(h, w) > 4096:
        raise SourceError(f"the images of {source.uri} are {w}x{h} pixels, more than 4096 a side: "
                          "give --size HxW for the corpus shape")
    return ImageShape(h, w, c)


def _first_reason(source: Source, limits: ReadLimits) -> str:
    batch = source.plan(1)[0]
    for _, got in _read_items(batch, limits):
        if isinstance(got, _Quarantine):
            return f"{batch['items'][0]}: {got}"
        try:
            open_image(got, max_pixels=limits.max_image_pixels)
        except ImageRefused as exc:
            return f"{batch['items'][0]}: {exc}"
    return "?"


class _Quarantine(Exception):
    pass


def _read_items(batch: dict, limits: ReadLimits):
    """Yield ``(i, bytes or _Quarantine)`` for the items of a files/tar batch, each read once
    with the size cap: files by path, tar members by offset, or in one streaming pass of a
    compressed archive. Items may come out of order."""
    items, cap = batch["items"], limits.max_file_bytes
    if batch["kind"] == "files":
        root = Path(batch["root"])
        for i, item in enumerate(items):
            path = root / item
            target = path.resolve()
            if not limits.follow_symlinks and not target.is_relative_to(root):
                yield i, _Quarantine(f"symlink to {target}, outside the source folder {root}: not read "
                                     "(--follow-symlinks reads it)")
                continue
            try:
                yield i, read_capped(path, cap)
            except ImageRefused as exc:
                yield i, _Quarantine(str(exc))
        return
    todo = {}
    for i, item in enumerate(items):
        if _safe_member(item):
            todo[item] = i
        else:
            yield i, _Quarantine("unsafe member path in tar archive (absolute or '..'): not read")
    try:
        if "members" in batch:  # uncompressed: seek to each member's data
            with open(batch["root"], "rb") as fh:
                for item, i in list(todo.items()):
                    del todo[item]
                    offset, size = batch["members"][i]
                    if size > cap:
                        yield i, _Quarantine(oversize_reason(size, cap))
                        continue
                    fh.seek(offset)
                    yield i, fh.read(size)
            return
        with tarfile.open(batch["root"], "r|*") as tf:  # compressed: one pass, stops when all are read
            for m in tf:
                i = todo.pop(m.name, None)
                if i is not None and m.isfile():
                    yield i, (_Quarantine(oversize_reason(m.size, cap)) if m.size > cap else tf.extractfile(m).read())
                if not todo:
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        for i in todo.values():
            yield i, _Quarantine(f"cannot read tar member: {exc}")
        return
    for i in todo.values():
        yield i, _Quarantine("member not found in the tar archive (it changed since it was listed)")


def _part_arrays(part: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """All images (memory-mapped for .npy) and labels of one array part."""
    path = part["path"]
    if path == "builtin:digits":
        return _load_digits()
    if path.endswith((".npy", ".npz")):
        return _load_array_file(path)
    return _load_idx(path, part.get("labels"))


def _array_rows(part: dict, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
    images, labels = _part_arrays(part)
    return np.asarray(images[start:stop]), (None if labels is None else np.asarray(labels[start:stop]))


def load_batch(batch: dict, shape: ImageShape, fit: str = "stretch", limits: ReadLimits | None = None) -> BatchResult:
    """Decode and normalise one batch planned by :meth:`Source.plan` (``limits``: per-file caps)."""
    pixels, rows, quarantine = [], [], []
    if batch["kind"] in ("files", "tar"):
        limits = limits or ReadLimits()
        done: dict[int, tuple] = {}
        for i, got in _read_items(batch, limits):
            try:
                if isinstance(got, _Quarantine):
                    raise got
                try:
                    img = open_image(got, max_pixels=limits.max_image_pixels, target=(shape.height, shape.width))
                except ImageRefused as exc:
                    raise _Quarantine(str(exc)) from None
                w, h = img.info.get("declared_size", img.size)
                try:
                    done[i] = (normalise(img, shape, fit), (h, w, img.mode))
                except Exception as exc:  # noqa: BLE001 - any conversion failure is quarantined
                    raise _Quarantine(f"cannot convert mode {img.mode} to the corpus shape: {exc}") from None
            except _Quarantine as q:
                done[i] = (None, str(q))
        for i, (item, label) in enumerate(zip(batch["items"], batch["labels"])):  # in listing order
            uri = f"tar://{batch['root']}!{item}" if batch["kind"] == "tar" else str(Path(batch["root"]) / item)
            px, orig = done[i]
            if px is None:
                quarantine.append({"source": uri, "reason": orig, "batch": batch["batch"]})
                continue
            pixels.append(px)
            rows.append({"source": uri, "label": label, "split": None,
                         "orig_height": orig[0], "orig_width": orig[1], "orig_mode": orig[2]})
    else:
        part = batch["part"]
        images, labels = _array_rows(part, batch["start"], batch["stop"])
        # decided once for the whole source (open_source), never from this batch alone
        images = to_uint8(images, batch.get("value_range") or "0-255")
        for i, arr in enumerate(images):
            row = batch["start"] + i
            uri = f"{part['path']}#{row}"
            try:
                px = normalise_array(arr, shape, fit)
            except ValueError as exc:
                quarantine.append({"source": uri, "reason": str(exc), "batch": batch["batch"]})
                continue
            pixels.append(px)
            rows.append({"source": uri, "label": None if labels is None else str(labels[i]),
                         "split": part.get("split"), "orig_height": int(arr.shape[0]),
                         "orig_width": int(arr.shape[1]),
                         "orig_mode": "L" if arr.ndim == 2 or arr.shape[-1] == 1 else f"C{arr.shape[-1]}"})
    stacked = np.stack(pixels) if pixels else np.zeros((0, *shape.hwc), np.uint8)
    for r, px in zip(rows, stacked):
        r["image_id"] = image_id(px)
        r["batch"] = batch["batch"]
    return BatchResult(stacked, rows, quarantine)
