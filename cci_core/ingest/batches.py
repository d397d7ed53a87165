"""Reading one batch of a source: file and tar items under the read limits, decoded and
normalised to the corpus shape, with a quarantine row for every item that cannot be.

A batch is what :meth:`cci_core.ingest.sources.Source.plan` made: paths of files or tar
members (with their offsets in an uncompressed archive), or a row range of an array part.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.common.shapes import ImageShape
from cci_core.ingest.images import (
    ImageRefused,
    image_id,
    normalise,
    normalise_array,
    open_image,
    oversize_reason,
    read_capped,
    to_uint8,
)
from cci_core.ingest.records import ReadLimits
from cci_core.ingest.sources import Source, SourceError, array_rows, safe_member


@dataclass
class BatchResult:
    """Decoded batch: pixels (n, H, W, C) uint8, one index row per image (``ROW_COLUMNS``),
    quarantined items."""
    pixels: np.ndarray
    rows: pd.DataFrame
    quarantine: list[dict]


ROW_COLUMNS = ["image_id", "source", "label", "split", "orig_height", "orig_width", "orig_mode", "batch"]


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
    arr = array_rows(source.parts[0], 0, 1)[0][0]
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


DUPLICATE_MEMBER = "duplicate member name: a later tar member of a name already read (the first one is ingested)"


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
        if safe_member(item):
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
        for item in batch.get("repeated", ()):
            quarantine.append({"source": f"tar://{batch['root']}!{item}", "batch": batch["batch"],
                               "reason": DUPLICATE_MEMBER})
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
        images, labels = array_rows(part, batch["start"], batch["stop"])
        # decided once for the whole source (open_source), never from this batch alone
        images = to_uint8(images, batch.get("value_range") or "0-255")
        if images.shape[1:] in (shape.hwc, shape.hwc[:2] if shape.channels == 1 else None):
            return _fitting_array_batch(batch, images, labels, shape)
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
    return BatchResult(stacked, pd.DataFrame(rows, columns=ROW_COLUMNS), quarantine)


def _fitting_array_batch(batch: dict, images: np.ndarray, labels, shape: ImageShape) -> BatchResult:
    """An array batch whose images already have the corpus shape: the same rows as the
    per-image path (nothing to convert or quarantine), built without a per-image conversion
    (a million-row source spent most of its decode time there)."""
    part, start, n = batch["part"], batch["start"], len(images)
    pixels = np.ascontiguousarray(images.reshape(n, *shape.hwc))
    h, w = images.shape[1:3]
    mode = "L" if images.ndim == 3 or images.shape[-1] == 1 else f"C{images.shape[-1]}"
    rows = pd.DataFrame({
        "image_id": [image_id(px) for px in pixels],
        "source": [f"{part['path']}#{i}" for i in range(start, start + n)],
        "label": [None] * n if labels is None else [str(v) for v in labels],
        "split": [part.get("split")] * n, "orig_height": h, "orig_width": w, "orig_mode": mode,
        "batch": batch["batch"]}, columns=ROW_COLUMNS)
    return BatchResult(pixels, rows, [])
