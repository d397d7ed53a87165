"""`cci ingest`: a source of images into a new corpus version."""
from __future__ import annotations

from typing import Optional

import typer

from cci_core.ingest.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from flows.cli.common import err, lit, out, parse_size, print_json, run_flow, run_guarded
from flows.cli.options import DaskOpt, JsonOpt, QuietOpt, StoreOpt, VerboseOpt, WorkersOpt


def ingest(
    source: str = typer.Argument(..., help="Folder of images (recursive), IDX file/folder (MNIST format, "
                                           ".gz or raw), .npy/.npz array, tar archive, or builtin:digits."),
    corpus: str = typer.Option(..., "--corpus", "-c", help="Corpus name in the store (created if new)."),
    size: Optional[str] = typer.Option(None, "--size", help="Image size HxW (e.g. 28x28); default: the first image's."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (gray) or 3 (RGB); default: from the first image."),
    fit: str = typer.Option("stretch", "--fit", help="How to resize to --size: stretch, crop (centre) or pad."),
    label_from_folder: bool = typer.Option(False, "--label-from-folder",
                                           help="Use each file's first folder level as its label."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                             help="Images per parallel task (default 512 files; array rows: 16384, "
                                                  "or more small images up to 64 MiB of pixels)."),
    value_range: str = typer.Option("auto", "--value-range",
                                    help="Array sources: the values that map to 0..255: 0-1, 0-255 or -1-1; auto "
                                         "decides from the whole source (integers 0-255; floats 0-1, -1-1 or 0-255)."),
    clip: bool = typer.Option(False, "--clip", help="Clip array values outside --value-range instead of refusing."),
    max_file_bytes: int = typer.Option(DEFAULT_MAX_FILE_BYTES, "--max-file-bytes",
                                       help="Largest file or tar member read; larger ones are quarantined."),
    max_image_pixels: int = typer.Option(DEFAULT_MAX_IMAGE_PIXELS, "--max-image-pixels",
                                         help="Most pixels one image may decode to (decompression-bomb guard)."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks",
                                         help="Read file symlinks that point outside the source folder."),
    store: Optional[str] = StoreOpt, dask_address: Optional[str] = DaskOpt, workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, verbose: bool = VerboseOpt,
):
    """Ingest SOURCE into a corpus: a new version holding only images not stored yet.

    Corrupt or unreadable files are quarantined (listed with reasons), not fatal.

    Example: cci ingest /usr/share/datasets/fashion-mnist --corpus fmnist
    """
    from cci_core.ingest.ingest import check_ingest_request
    shape = parse_size(size)
    from flows.preflight import new_store
    store_obj = run_guarded(new_store, store)  # a URL: lineage database and bucket checked
    options = dict(size=shape, channels=channels, fit=fit, label_from_folder=label_from_folder,
                   batch_size=batch_size, value_range=value_range, clip=clip, max_file_bytes=max_file_bytes,
                   max_image_pixels=max_image_pixels, follow_symlinks=follow_symlinks)
    # everything checkable is checked here, before a server or a cluster is started
    run_guarded(check_ingest_request, store_obj, source, corpus, **options)
    from flows.ingest import ingest_flow  # after the checks: importing the flow (Prefect) takes seconds
    from flows.settings import IngestSettings
    summary = run_flow(ingest_flow, dask_address, workers,
                       IngestSettings(source, corpus, store_root=str(store_obj.root), **options))
    if as_json:
        print_json(summary)
        return
    for q in summary["quarantine"]:
        err.print(f"[yellow]quarantined[/] {lit(q['source'])}: {lit(q['reason'])}", highlight=False)
    if summary["changed"]:
        out.print(f"Corpus [bold]{lit(corpus)}[/] v{summary['version']}: added {summary['added']:,} images "
                  f"({summary['duplicates']:,} duplicates skipped, {summary['quarantined']} quarantined); "
                  f"now {summary['n_rows']:,} images {'x'.join(map(str, summary['shape']))}.")
    else:
        out.print(f"Nothing new: corpus [bold]{lit(corpus)}[/] stays at v{summary['version']} "
                  f"({summary['n_rows']:,} images; {summary['duplicates']:,} already stored, "
                  f"{summary['quarantined']} quarantined).")
    out.print(f"  lineage id: {summary['artifact_id']}\n  store: {summary['store']}\n"
              f"  next: cci corpus info {corpus}   |   cci lineage show {summary['artifact_id']}", highlight=False, markup=False)
