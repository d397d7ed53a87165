"""Image sources: discover what a source holds, plan it into batches, decode one batch.

A source spec is a path or ``builtin:digits``. Supported: a folder tree of image files
(PNG, JPEG, BMP, TIFF, WebP, GIF first frame), MNIST-format IDX files (a folder of them or
one images file; ``.gz`` or raw), ``.npy`` / ``.npz`` arrays, a tar archive of images (read
in memory, never extracted) and scikit-learn's digits.

Batches are small JSON-able dicts (paths and row ranges, never pixels) so they can travel
through Prefect; :func:`load_batch` turns one into normalised pixels, index rows and
quarantine rows in whatever process runs it.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from cci_core.idx import IDXFormatError, read_idx
from cci_core.images import ImageShape, array_to_uint8, image_id, normalise, normalise_array

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
_IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images[-.]idx3-ubyte(\.gz)?$")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_ARRAY_KEYS = ("images", "x", "X", "data", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "arr_1")


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
        else:
            for part in self.parts:
                for start in range(0, part["n"], batch_size):
                    batches.append({"kind": self.kind, "part": part, "start": start,
                                    "stop": min(part["n"], start + batch_size)})
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


def open_source(spec: str, label_from_folder: bool = False) -> Source:
    """Inspect a source spec; raises :class:`SourceError` with a one-line reason."""
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
    try:
        with tarfile.open(path) as tf:
            members = [m for m in tf.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read tar archive ({exc})") from exc
    names = sorted(m.name for m in members if not PurePosixPath(m.name).name.startswith("."))
    if not names:
        raise SourceError(f"tar archive {path} holds no files")
    labels = [n.split("/", 1)[0] if label_from_folder and "/" in n and _safe_member(n) else None for n in names]
    sig = _file_sig(path)
    return Source("tar", str(path), _hash_listing([sig, *names]), len(names), files=names, labels=labels)


def _array_source(path: Path) -> Source:
    images, _ = _load_array_file(str(path))
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise SourceError(f"{path}: expected an array of shape (N, H, W) or (N, H, W, C) with N > 0, "
                          f"got {images.shape}")
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
            return z[ikey], (z[lkey] if lkey else None)
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


def first_image_shape(source: Source, channels: int | None = None) -> ImageShape:
    """Infer the corpus shape from the first decodable image of the source."""
    if source.kind in ("files", "tar"):
        for b in source.plan(64):
            for item in b["items"]:
                try:
                    img = _open_item(b, item)
                except _Quarantine:
                    continue
                c = channels or (1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3)
                return ImageShape(img.height, img.width, c)
        raise SourceError(f"source {source.uri}: every file is unreadable, nothing to ingest "
                          "(see the reasons with --verbose)")
    arr = _array_rows(source.parts[0], 0, 1)[0][0]
    c = channels or (1 if arr.ndim == 2 or arr.shape[-1] == 1 else 3)
    return ImageShape(arr.shape[0], arr.shape[1], c)


class _Quarantine(Exception):
    pass


def _open_item(batch: dict, item: str) -> Image.Image:
    """Open one file or tar member and decode it fully; raise _Quarantine(reason)."""
    if batch["kind"] == "tar":
        if not _safe_member(item):
            raise _Quarantine("unsafe member path in tar archive (absolute or '..'): not read")
        with tarfile.open(batch["root"]) as tf:
            data = tf.extractfile(item).read()
    else:
        try:
            data = (Path(batch["root"]) / item).read_bytes()
        except OSError as exc:
            raise _Quarantine(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise _Quarantine("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.seek(0)  # GIF / multi-frame TIFF: the first frame
            img.load()
    except UnidentifiedImageError:
        raise _Quarantine("not a recognised image file (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Quarantine(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _Quarantine(f"truncated or corrupt image: {exc}") from None
    return img


def _array_rows(part: dict, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
    path = part["path"]
    if path == "builtin:digits":
        images, labels = _load_digits()
    elif path.endswith((".npy", ".npz")):
        images, labels = _load_array_file(path)
    else:
        images, labels = _load_idx(path, part.get("labels"))
    return np.asarray(images[start:stop]), (None if labels is None else np.asarray(labels[start:stop]))


def load_batch(batch: dict, shape: ImageShape, fit: str = "stretch") -> BatchResult:
    """Decode and normalise one batch planned by :meth:`Source.plan`."""
    pixels, rows, quarantine = [], [], []
    if batch["kind"] in ("files", "tar"):
        for item, label in zip(batch["items"], batch["labels"]):
            uri = f"tar://{batch['root']}!{item}" if batch["kind"] == "tar" else str(Path(batch["root"]) / item)
            try:
                img = _open_item(batch, item)
                orig = (img.height, img.width, img.mode)
                try:
                    px = normalise(img, shape, fit)
                except Exception as exc:  # noqa: BLE001 - any conversion failure is quarantined
                    raise _Quarantine(f"cannot convert mode {img.mode} to the corpus shape: {exc}") from None
            except _Quarantine as q:
                quarantine.append({"source": uri, "reason": str(q), "batch": batch["batch"]})
                continue
            pixels.append(px)
            rows.append({"source": uri, "label": label, "split": None,
                         "orig_height": orig[0], "orig_width": orig[1], "orig_mode": orig[2]})
    else:
        part = batch["part"]
        images, labels = _array_rows(part, batch["start"], batch["stop"])
        images = array_to_uint8(images)
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
