"""Ingest as plain steps: plan -> decode batches -> select new images -> write -> commit.

The Prefect flow runs :func:`decode_batch` and :func:`write_segments` as parallel tasks;
:func:`ingest_local` runs the same steps in one process. The steps pass the plan
(:class:`cci_core.ingest.records.IngestPlan`, as its JSON dict between tasks) and small dicts
of paths and numbers. Decoded pixels go to a staging folder as ``.npy`` files; the corpus
version becomes visible only when :func:`commit_ingest` writes ``corpus.json``.

One writer per corpus: :func:`plan_ingest` takes the corpus lock *before* it reads
``corpus.json``, and the array resize and the commit compare-and-swap on it (the version
this ingest extends must still be the latest, else :class:`CorpusChangedError` and nothing
is written). :func:`check_ingest_request` runs every check that needs no server.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.common.shapes import ImageShape
from cci_core.ingest.batches import first_image_shape, load_batch
from cci_core.ingest.images import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, FITS
from cci_core.ingest.records import IngestPlan, ReadLimits
from cci_core.ingest.sources import Source, SourceError, open_source
from cci_core.store import fs
from cci_core.store.corpus import (
    CORPUS_FIX,
    INDEX_COLUMNS,
    chunk_rows,
    commit_version,
    ensure_images_array,
    read_manifest,
    write_rows,
)
from cci_core.store.fs import AnyPath
from cci_core.store.lineage import LineageStore
from cci_core.store.record_check import read_table
from cci_core.store.store import Store, file_lock, pid_alive, utc_now, validate_name

ARRAY_BATCH_BYTES = 192 << 20  # pixels per decode task of an array source (a default, not a cap)
WRITE_TASK_BYTES = 192 << 20  # pixels one write task copies into the corpus (whole chunks)


def default_batch_size(kind: str, shape: ImageShape | None = None, count: int | None = None) -> int:
    """Items per decode task: 512 files; for arrays, equal batches of whole 16,384-row units
    holding about ``ARRAY_BATCH_BYTES`` each. Every batch is a task with a fixed cost (a Prefect
    task run on a Dask worker, about half a second here), which dominated a million 28x28 images
    in 62 batches."""
    if kind not in ("idx", "npy", "digits"):
        return 512
    unit = 16384
    per_image = shape.height * shape.width * shape.channels if shape else ARRAY_BATCH_BYTES
    if not count:
        return unit * max(1, ARRAY_BATCH_BYTES // (unit * per_image))
    n_batches = -(-count * per_image // ARRAY_BATCH_BYTES)
    return unit * max(1, -(-count // (n_batches * unit)))


class CorpusChangedError(ValueError):
    """The corpus got a new version after this ingest planned: it commits nothing."""


def _check_options(corpus: str, size, channels, fit: str, batch_size, limits: dict) -> ReadLimits:
    """The checks on the options alone (no file read)."""
    validate_name(corpus, "corpus name")
    if fit not in FITS:
        raise ValueError(f"--fit {fit!r} is not one of {', '.join(FITS)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"--channels {channels} is not supported: use 1 or 3")
    if size is not None:
        ImageShape(*size, channels or 1)  # the corpus shape's own limits (1..4096 a side)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be at least 1")
    return ReadLimits(**limits)


def _corpus_shape(src: Source, manifest: dict | None, corpus: str, size, channels,
                  limits: ReadLimits) -> ImageShape:
    """The shape new rows get: the corpus's own, or (new corpus) the options and the first image."""
    if not manifest:
        return first_image_shape(src, channels, size, limits)
    shape = ImageShape(*manifest["shape"])
    wanted = tuple(size or (shape.height, shape.width)) + (channels or shape.channels,)
    if wanted != shape.hwc:
        raise ValueError(f"corpus {corpus!r} stores images of shape {shape.hwc}, not {wanted}: "
                         "drop --size/--channels or ingest into a new corpus")
    return shape


def check_ingest_request(store: Store, source: str, corpus: str, *, size: tuple[int, int] | None = None,
                         channels: int | None = None, fit: str = "stretch", label_from_folder: bool = False,
                         batch_size: int | None = None, value_range: str = "auto", clip: bool = False,
                         max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                         max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, follow_symlinks: bool = False) -> dict:
    """Every ingest check that needs no server, in seconds: options, the corpus name, the
    source (exists, not empty, labels match, value range of array data), the shape against an
    existing corpus. Raises ValueError / SourceError with one line; returns what it found.
    Reads nothing it writes: the store is not created."""
    limits = _check_options(corpus, size, channels, fit, batch_size,
                            dict(max_file_bytes=max_file_bytes, max_image_pixels=max_image_pixels,
                                 follow_symlinks=follow_symlinks))
    src = open_source(source, label_from_folder=label_from_folder, value_range=value_range, clip=clip)
    cdir = store.corpus_dir(corpus)
    held = _holder(_lock_path(cdir))
    if held is not None:  # the plan checks again under the lock; this only says it sooner
        raise _busy(cdir, held)
    shape = _corpus_shape(src, read_manifest(cdir), corpus, size, channels, limits)
    return {"source": src.uri, "kind": src.kind, "count": src.count, "shape": list(shape.hwc),
            "value_range": src.value_range}


def plan_ingest(store: Store, source: str, corpus: str, *, size: tuple[int, int] | None = None,
                channels: int | None = None, fit: str = "stretch", label_from_folder: bool = False,
                batch_size: int | None = None, value_range: str = "auto", clip: bool = False,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                follow_symlinks: bool = False) -> dict:
    """Inspect the source, lock the corpus, then read it: decide the shape and the batches.

    The lock is taken before ``corpus.json`` is read, so the version this plan extends
    cannot change under it; a failed plan releases the lock. Returns the plan's JSON dict
    (:meth:`IngestPlan.to_json`), what the Prefect tasks pass.
    """
    limits = _check_options(corpus, size, channels, fit, batch_size,
                            dict(max_file_bytes=max_file_bytes, max_image_pixels=max_image_pixels,
                                 follow_symlinks=follow_symlinks))
    src = open_source(source, label_from_folder=label_from_folder, value_range=value_range, clip=clip)
    cdir = store.corpus_dir(corpus)
    ingest_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    acquire_lock(cdir, ingest_id)
    try:
        manifest = read_manifest(cdir)
        shape = _corpus_shape(src, manifest, corpus, size, channels, limits)
        if manifest:
            n0, version = manifest["versions"][-1]["n_rows"], len(manifest["versions"]) + 1
            previous = manifest["versions"][-1]["artifact_id"]
            fit = manifest.get("fit", fit)
        else:
            n0, version, previous = 0, 1, None
        batch_size = batch_size or default_batch_size(src.kind, shape, src.count)
        return IngestPlan(
            corpus=corpus, corpus_dir=str(cdir), source=src.uri, source_kind=src.kind,
            source_count=src.count, listing_hash=src.listing_hash, shape=shape,
            fit=fit, label_from_folder=label_from_folder, n0=n0, version=version,
            previous_artifact_id=previous, ingest_id=ingest_id,
            value_range=src.value_range, clip=clip, limits=limits,
            staging_dir=str(cdir / "_staging" / ingest_id),
            batch_size=batch_size, batches=tuple(src.plan(batch_size)),
        ).to_json()
    except BaseException:
        _release(cdir, ingest_id)
        raise


def check_still_latest(plan: IngestPlan | dict) -> None:
    """Compare-and-swap guard: the corpus's latest version is still the one this plan extends."""
    plan = IngestPlan.of(plan)
    manifest = read_manifest(plan.cdir)
    versions = manifest["versions"] if manifest else []
    latest = versions[-1]["artifact_id"] if versions else None
    if len(versions) != plan.version - 1 or latest != plan.previous_artifact_id:
        by = versions[-1].get("ingest_id") if versions else None
        raise CorpusChangedError(
            f"corpus {plan.corpus!r} is at v{len(versions)} (written by ingest {by}) but this ingest "
            f"({plan.ingest_id}) planned to extend v{plan.version - 1}: nothing was committed; "
            "run the same cci ingest again to add this source's new images")


def _lock_path(cdir: AnyPath) -> AnyPath:
    return fs.as_path(cdir) / ".ingest.lock"


def acquire_lock(cdir: AnyPath, ingest_id: str) -> None:
    """One writer per corpus: new rows go straight into the image array beyond the committed
    ones, so a second concurrent ingest would tear them. A lock left by a process that is
    gone (same host) is taken over."""
    path = _lock_path(cdir)
    fs.makedirs(path.parent)
    me = {"ingest_id": ingest_id, "pid": os.getpid(), "host": socket.gethostname(),
          "since": utc_now()}
    with file_lock(fs.as_path(cdir) / ".ingest.lock.guard"):  # two takeovers of one stale lock cannot interleave
        _acquire(path, me, cdir)


def _holder(path: AnyPath) -> dict | None:
    """Who holds the lock at ``path``: its record, or None when there is no lock or its
    process is gone (same host: a crashed ingest, whose lock may be taken over)."""
    try:
        held = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        held = {}
    if held.get("host") == socket.gethostname() and held.get("pid") and not pid_alive(int(held["pid"])):
        return None
    return held


def _busy(cdir: AnyPath, held: dict) -> ValueError:
    return ValueError(f"corpus {fs.as_path(cdir).name!r} is being written by another ingest "
                      f"({held.get('ingest_id')}, pid {held.get('pid')} on {held.get('host')} since "
                      f"{held.get('since')}); wait for it to finish, or delete {_lock_path(cdir)} if no ingest "
                      "is running")


def _acquire(path: AnyPath, me: dict, cdir: AnyPath) -> None:
    for _ in range(2):
        if fs.create_exclusive(path, json.dumps(me).encode()):
            return
        held = _holder(path)
        if held is None:
            fs.unlink(path, missing_ok=True)  # its process is gone: a crashed ingest
            continue
        raise _busy(cdir, held)


def release_lock(plan: IngestPlan | dict) -> None:
    """Drop the corpus lock if this ingest holds it (after commit, or when the ingest fails), and this
    ingest's staging folder: after a failure (a full disk, an unreachable object store) its decoded
    batches are half of nothing and would only hold the space; a commit has removed it already."""
    plan = IngestPlan.of(plan)
    with contextlib.suppress(Exception):  # a failed removal must not hide why the ingest failed
        fs.rmtree(plan.staging_dir, ignore_errors=True)
        staging_root = fs.as_path(plan.staging_dir).parent
        if fs.is_local(staging_root) and staging_root.is_dir() and not any(staging_root.iterdir()):
            staging_root.rmdir()
    _release(plan.cdir, plan.ingest_id)


def _release(cdir: AnyPath, ingest_id: str) -> None:
    path = _lock_path(cdir)
    try:
        if json.loads(path.read_text()).get("ingest_id") == ingest_id:
            fs.unlink(path, missing_ok=True)
    except (OSError, ValueError):
        pass


def decode_batch(plan: IngestPlan | dict, batch: dict) -> dict:
    """Decode one batch into the staging folder; return paths and counts (no pixels)."""
    plan = IngestPlan.of(plan)
    result = load_batch(batch, plan.shape, plan.fit, plan.limits)
    staging = fs.makedirs(plan.staging)
    stem = staging / f"batch-{batch['batch']:06d}"
    fs.save_npy(f"{stem}.npy", result.pixels)
    fs.write_parquet(f"{stem}.parquet", result.rows, index=None)
    return {"batch": batch["batch"], "pixels": f"{stem}.npy", "rows": f"{stem}.parquet",
            "n": len(result.rows), "quarantine": result.quarantine}


def select_new(plan: IngestPlan | dict, decoded: list[dict]) -> dict:
    """Drop images already in the corpus (or earlier in this run); assign the new rows.

    Returns the new index rows' file, the duplicate count, quarantine entries and the
    write segments ``{pixels, keep, lo, hi, dst}`` (rows ``keep[lo:hi]`` of ``pixels``
    go to rows ``dst..``).
    """
    plan = IngestPlan.of(plan)
    decoded = sorted(decoded, key=lambda d: d["batch"])
    quarantine = [q for d in decoded for q in d["quarantine"]]
    if not any(d["n"] for d in decoded):
        reasons = "; ".join(f"{Path(q['source']).name}: {q['reason']}" for q in quarantine[:3])
        raise SourceError(f"every file in source {plan.source} is unreadable ({len(quarantine)} files: "
                          f"{reasons}{' …' if len(quarantine) > 3 else ''}); nothing was ingested")
    batches = [(d, fs.read_parquet(d["rows"])) for d in decoded if d["n"]]
    ids = pd.concat([rows["image_id"] for _, rows in batches], ignore_index=True)
    repeated = ids.duplicated(keep="first").to_numpy()  # earlier in this run
    if plan.n0:
        idx = read_table(plan.cdir / "index.parquet", CORPUS_FIX, columns=["row", "image_id"])
        repeated = repeated | ids.isin(idx.loc[idx["row"] < plan.n0, "image_id"]).to_numpy()  # already stored
    now = datetime.now(timezone.utc)
    new_rows, segments, dst, offset = [], [], plan.n0, 0
    for d, rows in batches:
        keep = np.flatnonzero(~repeated[offset:offset + len(rows)])
        offset += len(rows)
        if not len(keep):
            continue
        keep_path = d["pixels"].replace(".npy", ".keep.npy")
        fs.save_npy(keep_path, keep.astype(np.int64))
        kept = rows.iloc[keep].copy()
        kept["row"] = np.arange(dst, dst + len(keep))
        kept["batch"] = f"{plan.ingest_id}/" + kept["batch"].astype(str)
        new_rows.append(kept)
        segments.append({"pixels": d["pixels"], "keep": keep_path, "lo": 0, "hi": len(keep), "dst": dst})
        dst += len(keep)
    duplicates = int(repeated.sum())
    new_index = pd.concat(new_rows) if new_rows else pd.DataFrame(columns=INDEX_COLUMNS)
    new_index["version"] = plan.version
    new_index["ingested_at"] = now
    rows_path = plan.staging / "new-index.parquet"
    fs.write_parquet(rows_path, new_index[INDEX_COLUMNS], index=None)
    return {"n_new": dst - plan.n0, "n1": dst, "duplicates": duplicates, "quarantine": quarantine,
            "segments": segments, "new_index": str(rows_path)}


def plan_writes(plan: IngestPlan | dict, selection: dict, chunks_per_task: int | None = None) -> list[list[dict]]:
    """Group the segments by destination chunk ranges so no two groups touch one chunk; a group
    spans ``chunks_per_task`` chunks (default: ``WRITE_TASK_BYTES`` of pixels, at least 4 chunks)."""
    plan = IngestPlan.of(plan)
    rows = chunk_rows(plan.shape)
    if chunks_per_task is None:
        chunks_per_task = max(4, WRITE_TASK_BYTES // (rows * plan.shape.height * plan.shape.width * plan.shape.channels))
    step = rows * chunks_per_task
    n0, n1 = plan.n0, selection["n1"]
    bounds = [n0] + list(range((n0 // step + 1) * step, n1, step)) + [n1]
    groups = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        group = []
        for s in selection["segments"]:
            s_lo, s_hi = s["dst"], s["dst"] + s["hi"] - s["lo"]
            lo, hi = max(a, s_lo), min(b, s_hi)
            if lo < hi:
                group.append({"pixels": s["pixels"], "keep": s["keep"], "lo": s["lo"] + lo - s_lo,
                              "hi": s["lo"] + hi - s_lo, "dst": lo})
        if group:
            groups.append(group)
    return groups


def write_segments(plan: IngestPlan | dict, segments: list[dict]) -> int:
    """Copy staged pixels into the corpus image array; returns rows written."""
    images_path = IngestPlan.of(plan).cdir / "images.zarr"
    written = 0
    for s in segments:
        pixels = fs.load_npy(s["pixels"], mmap=True)  # mapped locally, read whole from an object store
        keep = fs.load_npy(s["keep"])[s["lo"]:s["hi"]]
        write_rows(images_path, s["dst"], np.asarray(pixels[keep]))
        written += len(keep)
    return written


def prepare_array(plan: IngestPlan | dict, selection: dict) -> None:
    """Create or resize the image array to hold the new rows (before the parallel writes).

    Checks first that no other ingest committed since the plan: resizing would cut its rows."""
    plan = IngestPlan.of(plan)
    check_still_latest(plan)
    ensure_images_array(plan.cdir, plan.shape, selection["n1"])


def commit_ingest(store: Store, plan: IngestPlan | dict, selection: dict, producer: dict | None = None) -> dict:
    """Record lineage, then publish the version (``corpus.json`` last). Returns a summary."""
    plan = IngestPlan.of(plan)
    cdir, shape = plan.cdir, list(plan.shape.hwc)
    summary = {"corpus": plan.corpus, "store": str(store.root), "source": plan.source,
               "added": selection["n_new"], "duplicates": selection["duplicates"],
               "quarantined": len(selection["quarantine"]), "quarantine": selection["quarantine"],
               "shape": shape}
    if selection["n_new"] == 0:
        fs.rmtree(plan.staging_dir, ignore_errors=True)
        return {**summary, "version": plan.version - 1, "n_rows": plan.n0, "changed": False,
                "artifact_id": plan.previous_artifact_id}
    old_index = (read_table(cdir / "index.parquet", CORPUS_FIX) if plan.n0 else pd.DataFrame(columns=INDEX_COLUMNS))
    old_index = old_index[old_index["row"] < plan.n0]
    new_index = fs.read_parquet(selection["new_index"])
    index = pd.concat([old_index, new_index], ignore_index=True) if plan.n0 else new_index
    old_q = read_table(cdir / "quarantine.parquet", CORPUS_FIX) if (cdir / "quarantine.parquet").exists() and plan.n0 else None
    new_q = pd.DataFrame(selection["quarantine"], columns=["source", "reason", "batch"]).drop(columns="batch")
    new_q["version"] = plan.version
    quarantine = (pd.concat([old_q, new_q]) if old_q is not None else new_q).drop_duplicates("source", keep="first")

    check_still_latest(plan)  # before the lineage record: a refused commit records nothing
    content = hashlib.sha256(("x".join(map(str, shape)) + "|" + "".join(index["image_id"])).encode()).hexdigest()
    lineage = LineageStore(store.lineage_url)
    src = lineage.record("source", plan.source, plan.source, plan.listing_hash,
                         size=plan.source_count, params={"kind": plan.source_kind})
    inputs = [(src.id, "source")] + ([(plan.previous_artifact_id, "previous")] if plan.previous_artifact_id else [])
    params = {"shape": shape, "fit": plan.fit, "label_from_folder": plan.label_from_folder,
              "batch_size": plan.batch_size, "version": plan.version, "n_rows": len(index),
              "value_range": plan.value_range, "clip": plan.clip}
    art = lineage.record("corpus", f"{plan.corpus}@v{plan.version}", cdir.as_uri(), content,
                         size=len(index), params=params, producer=producer,
                         metrics={"added": selection["n_new"], "duplicates": selection["duplicates"],
                                  "quarantined": len(selection["quarantine"])}, inputs=inputs)
    manifest = read_manifest(cdir) or {"name": plan.corpus, "shape": shape, "fit": plan.fit,
                                       "created_at": datetime.now(timezone.utc).isoformat(), "versions": []}
    manifest["chunk_rows"] = chunk_rows(plan.shape)
    manifest["versions"] = manifest["versions"][: plan.version - 1] + [{
        "version": plan.version, "n_rows": len(index), "added": selection["n_new"],
        "duplicates": selection["duplicates"], "quarantined": len(selection["quarantine"]),
        "source": plan.source, "listing_hash": plan.listing_hash, "artifact_id": art.id,
        "ingest_id": plan.ingest_id, "created_at": datetime.now(timezone.utc).isoformat()}]
    with file_lock(cdir / ".commit.lock"):  # compare-and-swap: check and publish as one step
        check_still_latest(plan)
        commit_version(cdir, manifest, index, quarantine)
    fs.rmtree(cdir / "_staging", ignore_errors=True)  # this run's and any abandoned runs'
    return {**summary, "version": plan.version, "n_rows": len(index), "changed": True, "artifact_id": art.id}


def ingest_local(store: Store, source: str, corpus: str, producer: dict | None = None, **options) -> dict:
    """All ingest steps in this process, in order (no Prefect, no Dask)."""
    plan = IngestPlan.from_json(plan_ingest(store, source, corpus, **options))
    try:
        decoded = [decode_batch(plan, b) for b in plan.batches]
        selection = select_new(plan, decoded)
        if selection["n_new"]:
            prepare_array(plan, selection)
            for group in plan_writes(plan, selection):
                write_segments(plan, group)
        return commit_ingest(store, plan, selection, producer)
    finally:
        release_lock(plan)
