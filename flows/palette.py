"""Palette flows: learn a palette from every pixel of a source, render a corpus in it as a new
dataset version, segment a corpus. Each shows a before/after montage and a table of the palette
colours and shares as Prefect artifacts."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from cci_core.store.store import Store
from flows import naming
from flows.common import artifact_key, png_markdown
from flows.settings import PaletteSettings, SegmentSettings, StylizeSettings
from tasks.palette import (
    check_stylize_task,
    dataset_asset,
    learn_palette_task,
    palette_asset,
    segment_corpus_task,
    stylize_task,
)


def _color_table(colors: list[dict]) -> list[dict]:
    return [{"index": c["index"], "hex": c["hex"], "srgb": " ".join(map(str, c["srgb"])),
             "lab": " ".join(f"{v:.1f}" for v in c["lab"]), "share": round(c["share"], 4), "pixels": c["pixels"]}
            for c in colors]


@flow(name="cci-palette", log_prints=True, flow_run_name=naming.palette_name)
def palette_flow(settings: PaletteSettings) -> dict:
    """Learn a ``colors``-colour palette from every pixel of the source (corpus, RUN:CLUSTER, dataset:NAME, file)."""
    log = get_run_logger()
    source, colors, space = settings.source, settings.colors, settings.space
    store_root = str(Store(settings.store_root).ensure().root)
    progress = create_progress_artifact(0.0, description=f"palette of {source}, {colors} colours")
    out = learn_palette_task.with_options(assets=[palette_asset(source, colors, space)]).submit(
        store_root, source, colors, space=space, method=settings.method, seed=settings.seed).result()
    update_progress_artifact(progress, 100.0)
    for msg in out["messages"]:
        log.warning(msg)
    log.info("Palette %s: %d colours (%s, %s) over %d pixels, mse %.4g", out["palette_id"], out["k"],
             out["space"], out["method"], out["n_pixels"], out["mse"])
    key = artifact_key("palette", out["palette_id"])
    create_table_artifact(key=f"{key}-colors", table=_color_table(out["colors"]),
                          description=f"palette {out['palette_id']} of {source}: colours and pixel shares")
    md = f"# Palette `{out['palette_id']}`\n\nsource: `{source}`, {out['k']} colours in {out['space']}\n\n"
    md += png_markdown(out["swatch"], "swatch")
    if out.get("montage"):
        md += png_markdown(out["montage"], "before (top) / after (bottom)")
    create_markdown_artifact(key=f"{key}-pictures", markdown=md, description=f"palette {out['palette_id']}")
    return out


@flow(name="cci-stylize", log_prints=True, flow_run_name=naming.stylize_name)
def stylize_flow(settings: StylizeSettings) -> dict:
    """Render the source in the palette (nearest colour, or a one-to-one transfer) as a new
    version of the dataset."""
    log = get_run_logger()
    source, palette_id, dataset = settings.source, settings.palette_id, settings.dataset
    mode, dither = settings.mode, settings.dither
    store_root = str(Store(settings.store_root).ensure().root)
    check_stylize_task(store_root, source, palette_id, dataset, mode)
    progress = create_progress_artifact(0.0, description=f"stylize {source} with {palette_id}")
    out = stylize_task.with_options(assets=[dataset_asset(dataset)]).submit(
        store_root, source, palette_id, dataset, mode=mode, dither=dither, seed=settings.seed).result()
    update_progress_artifact(progress, 100.0)
    log.info("Dataset %s v%d: %d images in palette %s (%s%s) -> %s", dataset, out["version"], out["n_images"],
             out["palette_id"], mode, ", dithered" if dither else "", out["path"])
    key = artifact_key("stylize", dataset, f"v{out['version']}")
    create_table_artifact(key=f"{key}-colors", table=_color_table(out["colors"]),
                          description=f"palette {out['palette_id']} used for {dataset} v{out['version']}")
    create_markdown_artifact(key=f"{key}-montage", description=f"{dataset} v{out['version']} before/after",
                             markdown=f"# `{dataset}` v{out['version']}\n\n`{out['path']}`\n\n"
                                      + png_markdown(out["montage"], "before (top) / after (bottom)"))
    return out


@flow(name="cci-segment", log_prints=True, flow_run_name=naming.segment_name)
def segment_flow(settings: SegmentSettings) -> dict:
    """Per-image k-means segmentation of every image of the source (label maps as Zarr)."""
    s = settings
    source, k = s.source, s.k
    store_root = str(Store(s.store_root).ensure().root)
    out = segment_corpus_task.submit(store_root, source, k, space=s.space, position_weight=s.position_weight,
                                     standardize=s.standardize, seed=s.seed).result()
    create_markdown_artifact(key=artifact_key("segment", out["segmentation_id"]),
                             markdown=f"# Segmentation `{out['segmentation_id']}`\n\n`{out['labels']}`\n\n"
                                      + png_markdown(out["overlay"], "overlays"),
                             description=f"segmentation of {source}, k={k}")
    return out
