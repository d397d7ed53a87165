"""Paths inside a store that is a local folder or an fsspec URL (``s3://bucket/prefix``).

A local root gives :class:`pathlib.Path` objects and every function here does what the
standard library does, so a local store behaves byte for byte as before. A URL root gives
:class:`upath.UPath` objects (the same ``/``, ``exists``, ``open``, ``read_text``, ``iterdir``,
``glob`` API over fsspec); what has no portable spelling is wrapped here:

- whole files are written with one PUT, which an object store makes visible atomically, so
  "temp file + rename" is not needed there;
- folders are moved by copy then delete (readers never see a folder before its commit marker);
- exclusive creation and locks use a conditional put (``If-None-Match: *``): AWS S3, MinIO and
  moto refuse the second writer of a key. A lock object names its writer; one whose writer is
  gone (same host) or older than ``$CCI_LOCK_STALE_S`` (default 600 s) is broken by the next writer.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from cci_core.store.writers import process_identity, writer_alive

# Several processes write one store: a listing cached in one of them would hide the others' files.
fsspec.config.conf.setdefault("s3", {}).setdefault("use_listings_cache", False)

AnyPath = Any  # Path | upath.UPath


def is_url(p: Any) -> bool:
    """True for ``proto://...`` strings and UPath objects of a non-local filesystem."""
    if isinstance(p, PurePath) and not hasattr(p, "protocol"):
        return False
    if hasattr(p, "protocol"):
        return p.protocol not in ("", "file", "local")
    s = str(p)
    return "://" in s and not s.startswith("file://")


def is_local(p: Any) -> bool:
    return not is_url(p)


def as_path(p: Any) -> AnyPath:
    """A store path from a string, Path or UPath: a UPath for URLs, else a Path."""
    if is_url(p):
        from upath import UPath
        return p if isinstance(p, UPath) else UPath(str(p))
    return p if isinstance(p, Path) else Path(p)


def zarr_url(p: Any) -> str:
    """What ``zarr.open_array`` and ``dask.array.from_zarr`` accept for a local path or a URL."""
    return str(as_path(p))


def ensure_parent(path: AnyPath) -> None:
    if is_local(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def makedirs(path: Any) -> AnyPath:
    """Make a folder and its parents (existing is fine). An object store has no folders: a
    prefix exists once a file is written under it, so nothing is done there."""
    path = as_path(path)
    if is_local(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def unlink(path: Any, missing_ok: bool = False) -> None:
    """Delete one file (not a folder)."""
    path = as_path(path)
    if is_local(path):
        path.unlink(missing_ok=missing_ok)
        return
    fs, p = _fs_and_path(path)
    try:
        fs.rm_file(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def mtime(path: Any) -> float:
    """Last modification time (seconds since the epoch). A folder on an object store has none of
    its own: the newest file under it counts (0 when it holds none)."""
    path = as_path(path)
    if is_local(path):
        return path.stat().st_mtime
    fs, p = _fs_and_path(path)
    infos = fs.find(p, detail=True).values() if fs.isdir(p) else [fs.info(p)]
    stamps = [i.get("LastModified") or i.get("mtime") for i in infos]
    return max((s.timestamp() if hasattr(s, "timestamp") else float(s) for s in stamps if s), default=0.0)


def tmp_sibling(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (for write + ``os.replace``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(path: Any, data: bytes) -> AnyPath:
    """Write a whole object on a URL (one PUT is atomic); local callers use store.atomic_write_bytes."""
    path = as_path(path)
    with path.open("wb") as fh:
        fh.write(data)
    return path


def read_bytes(path: Any) -> bytes:
    """A whole file. On an object store one GET, so a file replaced meanwhile gives the old or
    the new bytes (an open file object would fail with ``FileExpired`` instead)."""
    path = as_path(path)
    if is_local(path):
        return path.read_bytes()
    fs, p = _fs_and_path(path)
    return fs.cat_file(p)


def _write_with(path: Any, write) -> AnyPath:
    """``write(target)`` into a local file (parent folders made), or into a buffer PUT as one object."""
    path = as_path(path)
    if is_local(path):
        ensure_parent(path)
        try:
            write(path)
        except BaseException:  # a full disk: no part of a file stays where a whole one is expected
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise
        return path
    buf = io.BytesIO()
    write(buf)
    return write_bytes(path, buf.getvalue())


def save_npy(path: Any, arr: np.ndarray) -> AnyPath:
    return _write_with(path, lambda f: np.save(f, arr, allow_pickle=False))


def load_npy(path: Any, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` (never pickles). ``mmap`` maps a local file; a remote one is read whole."""
    path = as_path(path)
    if is_local(path):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    with path.open("rb") as fh:
        return np.load(io.BytesIO(fh.read()), allow_pickle=False)


def load_npz(path: Any) -> dict[str, np.ndarray]:
    path = as_path(path)
    with path.open("rb") as fh:
        with np.load(io.BytesIO(fh.read()), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def save_npz(path: Any, **arrays: np.ndarray) -> AnyPath:
    return _write_with(path, lambda f: np.savez(f, **arrays))


def read_parquet(path: Any, **kw) -> pd.DataFrame:
    path = as_path(path)
    return pd.read_parquet(path if is_local(path) else str(path), **kw)


def write_parquet(path: Any, df: pd.DataFrame, **kw) -> AnyPath:
    """Write a parquet file (not atomic locally: use store.atomic_write_parquet for shared files)."""
    kw.setdefault("index", False)
    return _write_with(path, lambda f: df.to_parquet(f, **kw))


def _fs_and_path(path: AnyPath):
    return path.fs, path.path


def rmtree(path: Any, ignore_errors: bool = False) -> None:
    path = as_path(path)
    if is_local(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    fs, p = _fs_and_path(path)
    try:
        fs.rm(p, recursive=True)
    except FileNotFoundError:
        if not ignore_errors:
            raise
    except OSError:
        if not ignore_errors:
            raise


def copyfile(src: Any, dst: Any) -> AnyPath:
    src, dst = as_path(src), as_path(dst)
    if is_local(src) and is_local(dst):
        return Path(shutil.copyfile(src, dst))
    with src.open("rb") as fh:
        return write_bytes(dst, fh.read())


def copytree(src: Any, dst: Any, dirs_exist_ok: bool = False) -> AnyPath:
    src, dst = as_path(src), as_path(dst)
    if is_local(src) and is_local(dst):
        return Path(shutil.copytree(src, dst, dirs_exist_ok=dirs_exist_ok))
    if not dirs_exist_ok and dst.exists():
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    fs, s = _fs_and_path(src)
    _, d = _fs_and_path(dst)
    for f in fs.find(s):
        fs.copy(f, d + f[len(s):])
    return dst


def move(src: Any, dst: Any, last: tuple[str, ...] = ()) -> AnyPath:
    """Rename a file or folder: ``os.replace`` locally; copy then delete on an object store, where
    the caller's commit marker (written after) is what makes it visible.

    last : paths relative to ``src`` copied after every other file on an object store (the
        record that readers take as "this folder is complete").
    """
    src, dst = as_path(src), as_path(dst)
    if is_local(src):
        os.replace(src, dst)
        return dst
    fs, s = _fs_and_path(src)
    _, d = _fs_and_path(dst)
    if fs.isdir(s):
        files = sorted(fs.find(s), key=lambda f: (f[len(s):].lstrip("/") in last, f))
        for f in files:
            fs.copy(f, d + f[len(s):])
    else:
        fs.copy(s, d)
    fs.rm(s, recursive=True)
    return dst


def create_exclusive(path: Any, data: bytes = b"") -> bool:
    """Create ``path`` holding ``data`` only if it does not exist; False if it already did."""
    path = as_path(path)
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    fs, p = _fs_and_path(path)
    try:
        fs.pipe_file(p, data, mode="create")
    except (FileExistsError, OSError) as e:
        if isinstance(e, FileExistsError) or "Precondition" in str(e) or "412" in str(e):
            return False
        raise
    return True


def _lock_stale(owner: dict) -> bool:
    limit = float(os.environ.get("CCI_LOCK_STALE_S", 600))
    return (not writer_alive(owner, max_age_s=limit)) or time.time() - float(owner.get("taken", 0)) > limit


@contextlib.contextmanager
def lock(path: Any, poll_s: float = 0.05, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock named by ``path`` for a short read-check-write.

    Locally an OS file lock (released when the block ends or the process dies). On an object
    store a lock object created by conditional put, holding its writer's identity; it is deleted
    when the block ends, and broken by the next writer once its writer is gone or it is stale.
    """
    path = as_path(path)
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    start = time.monotonic()
    while True:
        owner = {**process_identity(), "taken": time.time()}
        if create_exclusive(path, json.dumps(owner).encode()):
            break
        try:
            held = json.loads(read_bytes(path))
        except (OSError, ValueError):  # released (or replaced) between our put and this read
            held = None
        if held is not None and _lock_stale(held):
            rmtree(path, ignore_errors=True)
            continue
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"lock {path} is held by {held}; remove it if that writer is gone")
        time.sleep(poll_s)
    try:
        yield
    finally:
        rmtree(path, ignore_errors=True)


def save_tensors(path: Any, tensors: dict, metadata: dict | None = None) -> AnyPath:
    """safetensors file (atomically locally, one PUT remotely)."""
    from safetensors.torch import save, save_file
    path = as_path(path)
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(path)
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return path
    return write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path: Any, device: str = "cpu") -> dict:
    from safetensors.torch import load, load_file
    path = as_path(path)
    if is_local(path):
        return load_file(str(path), device=str(device))
    tensors = load(path.read_bytes())
    return tensors if str(device) == "cpu" else {k: v.to(device) for k, v in tensors.items()}


def savefig(fig, path: Any, **kw) -> AnyPath:
    path = as_path(path)
    if is_local(path):
        fig.savefig(path, **kw)
        return path
    buf = io.BytesIO()
    kw.setdefault("format", path.suffix.lstrip(".") or "png")
    fig.savefig(buf, **kw)
    return write_bytes(path, buf.getvalue())
