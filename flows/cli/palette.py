"""`cci palette`, `cci stylize` and `cci segment`: colour palettes, stylised datasets, segmentation."""
from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.common import err, fail, lit, out, print_json, read_store, run_flow, run_guarded
from flows.cli.options import DaskOpt, JsonOpt, QuietOpt, SeedOpt, StoreOpt, VerboseOpt, WorkersOpt


def palette(
    source: str = typer.Argument(..., help="A corpus (NAME or NAME@V), one cluster of a run (RUN_ID:C), "
                                           "a dataset (dataset:NAME[@vN]) or an image file."),
    colors: int = typer.Option(8, "--colors", "-n", help="Palette size: number of colours (2..256; clamped to the "
                                                          "distinct colours)."),
    space: str | None = typer.Option(None, "--space", help="gray (1-channel), lab (RGB default) or rgb."),
    method: str = typer.Option("auto", "--method",
                               help="auto, histogram (exact k-means on the distinct colours) or pixels "
                                    "(mini-batch k-means + Lloyd passes over the Dask pixel array)."),
    seed: int = SeedOpt,
    store: str | None = StoreOpt, dask_address: str | None = DaskOpt, workers: int | None = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Learn a K-colour palette from every pixel of SOURCE; writes palettes/<id>/ (palette.json,
    swatch.png, montage.png) with lineage.

    Example: cci palette fmnist --colors 8
    """
    from cci_core.palette.palette import METHODS, check_k
    from cci_core.palette.sources import resolve_source
    from flows.preflight import new_store
    # an image file may start a new store; a corpus, run or dataset must be in an existing one
    store_obj = run_guarded(new_store, store) if Path(source).is_file() else read_store(store)
    run_guarded(check_k, colors)
    if method not in METHODS:
        fail(f"--method {method!r}: use one of {', '.join(METHODS)}")
    info = run_guarded(resolve_source, store_obj, source)
    from cci_core.palette.colorspace import check_space
    run_guarded(check_space, space, info["shape"][-1])
    from flows.palette import palette_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import PaletteSettings
    res = run_flow(palette_flow, dask_address, workers,
                   PaletteSettings(source, colors, store_root=str(store_obj.root), space=space, method=method,
                                   seed=seed))
    if as_json:
        print_json(res)
        return
    for msg in res["messages"]:
        err.print(f"[yellow]note:[/] {lit(msg)}", highlight=False)
    out.print(f"Palette [bold]{lit(res['palette_id'])}[/]: {res['k']} colours in {res['space']} from "
              f"{res['n_pixels']:,} pixels of {lit(source)} ({res['method']}), mse {res['mse']:.4g}", highlight=False)
    for c in res["colors"]:
        out.print(f"  [{c['hex']}]██[/] {c['hex']}  share {c['share']:.3f}", highlight=False)
    out.print(f"  folder: {res['palette_dir']}\n  next: cci stylize CORPUS --palette {res['palette_id']} "
              f"--dataset NAME   |   cci lineage show {res['palette_id']}", highlight=False, markup=False)


def stylize(
    source: str = typer.Argument(..., help="A corpus, RUN_ID:C (one cluster) or dataset:NAME to render."),
    palette_id: str = typer.Option(..., "--palette", "-p", help="Palette id (or a unique prefix)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name: a new version is published."),
    mode: str = typer.Option("nearest", "--mode",
                             help="nearest (nearest palette colour), hungarian or lightness (learn SOURCE's own "
                                  "palette and match its colours one to one: Lab distance / lightness order)."),
    dither: bool = typer.Option(False, "--dither/--no-dither", help="Floyd-Steinberg error diffusion."),
    seed: int = SeedOpt,
    store: str | None = StoreOpt, dask_address: str | None = DaskOpt, workers: int | None = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Render SOURCE in a palette (a new style) as a new dataset version, with lineage.

    Example: cci stylize fmnist --palette PALETTE_ID --dataset fmnist-styled
    """
    from cci_core.palette import palette_run as pr
    store_obj = read_store(store)
    run_guarded(pr.check_stylize, store_obj, source, palette_id, dataset, mode)
    from flows.palette import stylize_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import StylizeSettings
    res = run_flow(stylize_flow, dask_address, workers,
                   StylizeSettings(source, palette_id, dataset, store_root=str(store_obj.root), mode=mode,
                                   dither=dither, seed=seed))
    if as_json:
        print_json(res)
        return
    out.print(f"Dataset [bold]{lit(dataset)}[/] v{res['version']}: {res['n_images']:,} images of {lit(source)} in palette "
              f"{lit(res['palette_id'])} ({mode}{', dithered' if dither else ''})\n  path: {lit(res['path'])}\n"
              f"  montage: {lit(res['montage'])}\n  lineage id: {res['artifact_id']}\n"
              f"  next: cci lineage show {res['artifact_id']}", highlight=False)


def segment(
    image: str = typer.Argument(..., help="An image file, or a corpus / RUN_ID:C / dataset:NAME."),
    k: int = typer.Option(5, "--k", "-k", help="Segments per image (2..255)."),
    space: str | None = typer.Option(None, "--space", help="gray (1-channel), lab (RGB default) or rgb."),
    position_weight: float = typer.Option(0.0, "--position-weight",
                                          help="Weight of the standardised (x, y) position (0: colour only)."),
    standardize: bool = typer.Option(True, "--standardize/--no-standardize",
                                     help="Standardise each feature before k-means."),
    out_dir: str | None = typer.Option(None, "--out", help="Folder for the PNGs of one image "
                                                             "(default: next to the image)."),
    seed: int = SeedOpt,
    store: str | None = StoreOpt, dask_address: str | None = DaskOpt, workers: int | None = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Per-image k-means segmentation: a uint8 label map and a coloured overlay PNG for one image
    (runs here, no server); label maps as Zarr for every image of a corpus (a flow).

    Example: cci segment photo.jpg -k 5 --out ./seg
    """
    from cci_core.palette import palette_run as pr
    from cci_core.palette.segment import check_k
    from cci_core.palette.sources import resolve_source
    run_guarded(check_k, k)
    if Path(image).is_file():
        res = run_guarded(pr.segment_file, image, k, out_dir=out_dir, space=space,
                          position_weight=position_weight, standardize=standardize, seed=seed,
                          log=lambda m: err.print(f"[yellow]note:[/] {lit(m)}", highlight=False))
        if as_json:
            print_json(res)
            return
        out.print(f"Segmented {image} into {res['k']} segments (sizes {res['sizes']})\n"
                  f"  labels: {res['labels']}\n  overlay: {res['overlay']}", highlight=False, markup=False)
        return
    from cci_core.palette.colorspace import check_space
    from flows.palette import segment_flow
    store_obj = read_store(store)
    info = run_guarded(resolve_source, store_obj, image)
    run_guarded(check_space, space, info["shape"][-1])
    from flows.settings import SegmentSettings
    res = run_flow(segment_flow, dask_address, workers,
                   SegmentSettings(image, k, store_root=str(store_obj.root), space=space,
                                   position_weight=position_weight, standardize=standardize, seed=seed))
    if as_json:
        print_json(res)
        return
    out.print(f"Segmentation [bold]{lit(res['segmentation_id'])}[/]: {res['n_images']:,} images of {lit(image)}, k={k}\n"
              f"  labels: {lit(res['labels'])}\n  overlays: {lit(res['overlay'])}", highlight=False)
