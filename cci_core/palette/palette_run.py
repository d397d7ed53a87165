"""Palettes, stylised datasets and segmentations in the store: the pure steps behind
``cci palette``, ``cci stylize`` and ``cci segment``.

Each reads a SOURCE (a corpus version, one cluster of a run, a dataset version or an image
file: :mod:`cci_core.palette.sources`).

Store layout::

    palettes/<palette-id>/palette.json   colours (sRGB, Lab, feature centre), shares, inertia, source
                         swatch.png      the colours, and a strip as wide as their pixel shares
                         montage.png     sample images of the source before (top) and after (bottom)
    segments/<segmentation-id>/labels.zarr (N, H, W) uint8, segments.json, overlay.png (corpus)
    datasets/<name>/v<N>/                a stylised corpus (cci_core.store.datasets)

Every palette, stylised dataset version and segmentation is a lineage record whose inputs are
what it was made from (corpus version, partition, image file, palette).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from cci_core.common.imagegrid import make_grid, save_png
from cci_core.palette.palette import Palette, check_k, learn_palette
from cci_core.palette.records import PaletteSource
from cci_core.palette.render import MODES, check_channels, match_colors, render
from cci_core.palette.sources import palette_source, read_image_file, source_images
from cci_core.store import fs, relpaths
from cci_core.store.lineage import artifact_id
from cci_core.store.runs import lineage_store
from cci_core.store.store import Store, atomic_write_json, publish_dir, staging

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class UnknownPaletteError(LookupError):
    pass


def palettes_dir(store: Store) -> Path:
    return store.root / "palettes"


# ----- palettes ----------------------------------------------------------------------------------

def known_palettes(store: Store) -> list[str]:
    base = palettes_dir(store)
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and (p / "palette.json").exists()) \
        if base.exists() else []


def palette_path(store: Store, palette_id: str) -> Path:
    """The folder of a palette by id or unique id prefix; one-line error when unknown.

    A palette id is a name inside the store (no path): anything else is refused, so a palette
    is always one this store made and recorded.
    """
    base = palettes_dir(store)
    if palette_id and not _NAME_RE.match(palette_id):
        raise ValueError(f"palette id {palette_id!r} is not a palette id (letters, digits, '.', '_', '-'; "
                         f"no path): give an id from `cci palette` in {store.root}")
    if palette_id and (base / palette_id / "palette.json").exists():
        found = (base / palette_id).resolve()
        if not found.is_relative_to(base.resolve()):
            raise ValueError(f"palette {palette_id!r} resolves to {found}, outside {base}; "
                             "learn the palette in this store with `cci palette SOURCE`")
        return base / palette_id
    hits = [p for p in known_palettes(store) if palette_id and p.startswith(palette_id)] if palette_id else []
    if len(hits) == 1:
        return base / hits[0]
    known = known_palettes(store)
    more = (f" (known: {', '.join(known[-5:])})" if known else "")
    raise UnknownPaletteError(f"no palette {palette_id!r} in {store.root}{more}; "
                              "learn one with `cci palette SOURCE --colors K`"
                              if len(hits) < 2 else f"palette id {palette_id!r} is ambiguous: {', '.join(hits)}")


def load_palette(store: Store, palette_id: str) -> Palette:
    return Palette.load(palette_path(store, palette_id))


def _sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    if n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def before_after(before: np.ndarray, after: np.ndarray, path: str | Path, max_side: int = 768) -> str:
    """A montage: the source images on top, the rendered ones below (one image: side by side)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape[-1] != after.shape[-1]:  # gray source in a colour palette
        before, after = [np.repeat(x, 3, -1) if x.shape[-1] == 1 else x for x in (before, after)]
    if len(before) == 1:
        grid = make_grid(np.stack([before[0], after[0]]), ncols=2)
    else:
        cols = min(len(before), 8)
        grid = np.concatenate([make_grid(before, ncols=cols), make_grid(after, ncols=cols)], axis=0)
    scale = max(1, min(8, max_side // max(grid.shape[:2])))
    return str(save_png(grid, path, scale=scale))


def learn_palette_step(store: Store, source: str, colors: int, space: str | None = None, method: str = "auto",
                       seed: int = 0, producer: dict | None = None, log: Callable[[str], None] | None = None,
                       montage: int = 16) -> dict:
    """Learn a palette from every pixel of SOURCE and publish it under ``palettes/<id>/``."""
    log = log or (lambda msg: None)
    check_k(colors)
    store.ensure()
    info = palette_source(store, source)
    images, _rows, _ids = source_images(store, info)
    if images.shape[0] == 0:
        raise ValueError(f"SOURCE {source!r} has no images")
    messages: list[str] = []

    def note(msg):
        messages.append(msg)
        log(msg)
    pal = learn_palette(images, colors, space=space, method=method, seed=seed, log=note)
    pal.meta.update(source=info.canonical, source_kind=info.kind, **info.ids(),
                    n_images=int(images.shape[0]), colors_requested=int(colors))
    params = {"colors": int(colors), "k": pal.k, "space": pal.space, "method": method, "seed": int(seed),
              "source": info.canonical}
    chash = pal.content_hash()
    pid = artifact_id("palette", chash, params, list(info.inputs))
    pal.meta["palette_id"] = pid
    pdir = palettes_dir(store) / pid
    metrics = {"inertia": pal.inertia, "mse": pal.inertia / max(1, pal.n_pixels), "k": pal.k,
               "n_pixels": pal.n_pixels}
    with staging(palettes_dir(store)) as stage:
        paths = pal.save(stage)
        paths["montage"] = None
        if montage > 0:
            sample = _sample_rows(int(images.shape[0]), montage if info.kind != "file" else 1, seed)
            before = np.asarray(images[sample].compute())
            paths["montage"] = before_after(before, render(before, pal), stage / "montage.png")
        art = lineage_store(store).record("palette", f"{info.label}/k{pal.k}-{pal.space}", str(pdir), chash,
                                          size=fs.as_path(paths["json"]).stat().st_size, params=params, metrics=metrics,
                                          producer=producer, inputs=list(info.inputs), aid=pid)
        publish_dir(stage, pdir)  # visible only now, after its lineage record
    paths = {key: str(pdir / fs.as_path(v).name) if v else v for key, v in paths.items()}
    return {"palette_id": art.id, "palette_dir": str(pdir), **paths, "source": source, "source_kind": info.kind,
            "k": pal.k, "colors_requested": int(colors), "space": pal.space, "method": pal.meta.get("method"),
            "inertia": pal.inertia, "mse": metrics["mse"], "n_pixels": pal.n_pixels,
            "n_images": int(images.shape[0]), "colors": pal.describe(), "messages": messages,
            "inputs": [{"id": i, "role": r} for i, r in info.inputs]}


# ----- stylised datasets --------------------------------------------------------------------------

def check_stylize(store: Store, source: str, palette_id: str, dataset: str, mode: str = "nearest") -> dict:
    """Everything checkable before any work: one-line errors. Returns the resolved source (its JSON dict)."""
    return _checked_source(store, source, palette_id, dataset, mode).to_json()


def _checked_source(store: Store, source: str, palette_id: str, dataset: str, mode: str) -> PaletteSource:
    from cci_core.store.store import validate_name
    validate_name(dataset, "dataset name")
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    pal_dir = palette_path(store, palette_id)
    pal = Palette.load(pal_dir)
    if lineage_store(store).find(pal_dir.name) is None:  # the dataset's lineage could not name it
        raise LookupError(f"palette {pal_dir.name!r} has no lineage record in {store.lineage_url}; "
                          "learn it again with `cci palette SOURCE`")
    info = palette_source(store, source)
    check_channels(pal, info.channels)
    return info


def _render_block(block, palette: Palette, dither: bool, via: Palette | None, mapping):
    return render(np.asarray(block), palette, dither=dither, via=via, mapping=mapping)


def stylize_step(store: Store, source: str, palette_id: str, dataset: str, mode: str = "nearest",
                 dither: bool = False, seed: int = 0, producer: dict | None = None,
                 log: Callable[[str], None] | None = None, rows_per_task: int = 4096, montage: int = 16) -> dict:
    """Render SOURCE in a palette and publish it as a new version of dataset ``dataset``.

    mode : ``nearest`` (each pixel its nearest palette colour) or a transfer matching,
        ``hungarian`` / ``lightness``: a palette with as many colours is learned on SOURCE
        (recorded too) and its colours are matched one to one onto the palette's.
    """
    from cci_core.store.datasets import DatasetWriter
    log = log or (lambda msg: None)
    info = _checked_source(store, source, palette_id, dataset, mode)
    pal_dir = palette_path(store, palette_id)
    pal = Palette.load(pal_dir)
    pid = pal_dir.name
    images, rows, ids = source_images(store, info)
    n = int(images.shape[0])
    if n == 0:
        raise ValueError(f"SOURCE {source!r} has no images")
    via, mapping, src_pal = None, None, None
    if mode != "nearest":
        src_space = "gray" if info.channels == 1 else ("rgb" if pal.space == "rgb" else "lab")
        src_pal = learn_palette_step(store, source, pal.k, space=src_space, seed=seed, producer=producer, log=log,
                                     montage=0 if info.kind != "file" else 1)
        via = load_palette(store, src_pal["palette_id"])
        mapping = match_colors(via, pal, mode)
    out_c = pal.channels
    h, w = info.shape[:2]
    images = images.rechunk({0: rows_per_task})
    out = images.map_blocks(_render_block, pal, dither, via, mapping, dtype=np.uint8,
                            chunks=(images.chunks[0], (h,), (w,), (out_c,)))
    blocks = out.to_delayed().ravel()
    group = 4
    out_hash = hashlib.sha256()
    with DatasetWriter(store, dataset, (h, w, out_c)) as writer:
        start = 0
        for g in range(0, len(blocks), group):
            for arr in dask.compute(*blocks[g:g + group]):
                m = len(arr)
                rendered_ids = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arr]
                for r in rendered_ids:
                    out_hash.update(r.encode())
                writer.append(arr, pd.DataFrame({
                    "image_id": rendered_ids, "source_image_id": ids[start:start + m],
                    "source_row": rows[start:start + m].astype(np.int64), "palette_id": pid, "mode": mode,
                    "dither": bool(dither)}))
                start += m
            log(f"rendered {start}/{n} images")
        inputs = [(pid, "palette"), *info.inputs]
        if src_pal:
            inputs.append((src_pal["palette_id"], "source_palette"))
        params = {"dataset": dataset, "palette_id": pid, "mode": mode, "dither": bool(dither), "source": info.canonical,
                  "seed": int(seed)}
        chash = out_hash.hexdigest()
        shown = Path(source).name if info.kind == "file" else source  # no producer path in the card
        card = {"kind": "stylized", "source": shown, "source_kind": info.kind, "palette_id": pid,
                "description": f"{shown} rendered in palette {pid} ({mode}{', dithered' if dither else ''})",
                "license_note": f"The terms of the source images ({shown}) apply.",
                "mode": mode, "dither": bool(dither), "colors": pal.describe(),
                "mapping": None if mapping is None else [int(x) for x in mapping],
                "source_palette_id": src_pal["palette_id"] if src_pal else None,
                "lineage_inputs": [{"id": i, "role": r} for i, r in inputs],
                "lineage": {"inputs": [{"id": i, "role": r} for i, r in inputs]}}
        sample = _sample_rows(n, montage, seed)
        before = np.asarray(images[sample].compute())
        after = np.asarray(writer.images.get_orthogonal_selection((sample,)))
        before_after(before, after, writer.staging / "before-after.png")

        def record(path: Path, number: int) -> str:  # before the version is visible (publish last)
            size = sum(f.stat().st_size for f in writer.staging.rglob("*") if f.is_file())
            art = lineage_store(store).record("dataset", f"{dataset}@v{number}", str(path), chash, size=size,
                                              params={**params, "version": number}, metrics={"n_images": n},
                                              producer=producer, inputs=inputs)
            atomic_write_json(writer.staging / "lineage.json", {"artifact_id": art.id, "inputs": card["lineage_inputs"]})
            return art.id
        version = writer.commit(card, record=record)
    return {"dataset": dataset, "version": version.version, "path": str(version.path), "n_images": n,
            "shape": [h, w, out_c], "palette_id": pid, "mode": mode, "dither": bool(dither),
            "artifact_id": version.card["lineage"]["artifact_id"], "source": source,
                    "montage": str(version.path / "before-after.png"),
            "source_palette_id": src_pal["palette_id"] if src_pal else None,
            "mapping": card["mapping"], "colors": pal.describe()}


# ----- segmentation ---------------------------------------------------------------------------------

def segment_file(path: str | Path, k: int = 5, out_dir: str | Path | None = None, space: str | None = None,
                 position_weight: float = 0.0, standardize: bool = True, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> dict:
    """Segment one image file: ``<stem>-labels.png`` (uint8 labels), ``<stem>-overlay.png``,
    ``<stem>-segments.json`` in ``out_dir`` (default: next to the image)."""
    from cci_core.palette.segment import overlay, segment_image
    path = Path(path)
    img = read_image_file(path)
    labels, summary = segment_image(img, k, space=space, position_weight=position_weight,
                                    standardize=standardize, seed=seed, log=log)
    out = Path(out_dir) if out_dir else path.parent
    out.mkdir(parents=True, exist_ok=True)
    lab_png = save_png(labels, out / f"{path.stem}-labels.png")
    ov_png = save_png(overlay(img, labels), out / f"{path.stem}-overlay.png")
    js = atomic_write_json(out / f"{path.stem}-segments.json",
                           {**summary, "image": str(path.resolve()), "labels": str(lab_png), "overlay": str(ov_png)})
    return {**summary, "image": str(path.resolve()), "labels": str(lab_png), "overlay": str(ov_png),
            "json": str(js)}


def segment_corpus_step(store: Store, source: str, k: int = 5, space: str | None = None,
                        position_weight: float = 0.0, standardize: bool = True, seed: int = 0,
                        producer: dict | None = None, rows_per_task: int = 1024) -> dict:
    """Per-image k-means over a corpus / partition / dataset: ``segments/<id>/labels.zarr``
    (N, H, W) uint8 written block-wise, an overlay montage and a lineage record."""
    import zarr
    from zarr.codecs import BloscCodec

    from cci_core.palette.segment import check_k as seg_k
    from cci_core.palette.segment import overlay, segment_images
    from cci_core.store import integrity
    seg_k(k)
    info = palette_source(store, source)
    images, _rows, _ids = source_images(store, info)
    n, h, w, _c = (int(s) for s in images.shape)
    opts = {"space": space, "position_weight": position_weight, "standardize": standardize, "seed": seed}
    params = {"k": int(k), **opts, "source": info.canonical}
    images = images.rechunk({0: rows_per_task})
    labels = images.map_blocks(lambda b: segment_images(np.asarray(b), k, **opts), dtype=np.uint8,
                               drop_axis=3, chunks=(images.chunks[0], (h,), (w,)))
    base = store.root / "segments"
    with staging(base) as tmp:
        arr = zarr.create_array(fs.zarr_url(tmp / "labels.zarr"), shape=(n, h, w), chunks=(rows_per_task, h, w),
                                dtype="uint8", compressors=integrity.compressors(BloscCodec(cname="zstd", clevel=5)),
                                overwrite=True)
        labels.store(arr, lock=False)
        chash = hashlib.sha256()
        for s in range(0, n, rows_per_task):
            chash.update(np.ascontiguousarray(arr[s:s + rows_per_task]).tobytes())
        sid = artifact_id("segmentation", chash.hexdigest(), params, list(info.inputs))
        final = base / sid
        sample = _sample_rows(n, 16, seed)
        imgs = np.asarray(images[sample].compute())
        ov = np.stack([overlay(i, arr[r]) for i, r in zip(imgs, sample)])
        save_png(make_grid(ov, ncols=min(8, len(ov))), tmp / "overlay.png", scale=max(1, min(8, 256 // max(h, w))))
        mont = str(final / "overlay.png")
        relpaths.write_record(store.root, tmp / "segments.json", {**params, "n_images": n, "source_rows": "see source",
                                                  "labels": str(final / "labels.zarr"), "overlay": mont})
        art = lineage_store(store).record("segmentation", f"{info.label}/k{k}", str(final), chash.hexdigest(),
                                          params=params, metrics={"n_images": n}, producer=producer,
                                          inputs=list(info.inputs), aid=sid)
        publish_dir(tmp, final)  # visible only now, after its lineage record
    return {"segmentation_id": art.id, "dir": str(final), "labels": str(final / "labels.zarr"), "overlay": mont,
            "n_images": n, "k": int(k), "source": source}

