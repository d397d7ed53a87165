"""The palette, stylize and segment flows under a real Prefect API (one on a Dask LocalCluster):
palette artifacts (colour table, swatch, before/after montage) in Prefect, a stylised dataset
version with lineage, and the `palette` / `stylize` / `segment` commands registered on a Typer app."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
import zarr
from PIL import Image
from typer.testing import CliRunner

from cci_core.ingest.ingest import ingest_local
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("palette-flow") / "store")
    ingest_local(s, "builtin:digits", "digits")
    return s


def test_palette_and_stylize_flows_publish_artifacts_and_lineage(store, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.palette import palette_flow, segment_flow, stylize_flow
    from flows.runtime import dask_task_runner
    from flows.settings import PaletteSettings, SegmentSettings, StylizeSettings
    flow = palette_flow.with_options(task_runner=dask_task_runner(n_workers=1))
    pal = flow(PaletteSettings("digits", 5, store_root=str(store.root)))
    assert pal["k"] == 5 and pal["space"] == "gray" and pal["n_pixels"] == 1797 * 64
    lin = LineageStore(store.lineage_url)
    art = lin.get(pal["palette_id"])
    assert art.kind == "palette" and art.producer["flow_name"] == "cci-palette"
    assert art.producer["task_name"] == "learn-palette" and [r for _, r in art.inputs] == ["corpus"]

    st = stylize_flow(StylizeSettings("digits", pal["palette_id"], "digits-posterised", store_root=str(store.root)))
    assert st["version"] == 1 and st["n_images"] == 1797
    assert zarr.open_array(str(Path(st["path"]) / "images.zarr"), mode="r").shape == (1797, 8, 8, 1)
    assert {r for _, r in lin.get(st["artifact_id"]).inputs} == {"palette", "corpus"}

    seg = segment_flow(SegmentSettings("digits", 3, store_root=str(store.root)))
    labels = zarr.open_array(seg["labels"], mode="r")
    assert labels.shape == (1797, 8, 8) and labels.dtype == np.uint8 and labels[:].max() <= 2

    key = f"palette-{pal['palette_id']}"
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"{key}-colors", f"{key}-pictures",
                                        f"stylize-digits-posterised-v{st['version']}-montage"])))}
    assert len(arts) == 3
    assert "share" in str(arts[f"{key}-colors"].data) and "#" in str(arts[f"{key}-colors"].data)
    assert str(arts[f"{key}-pictures"].data).count("data:image/png;base64,") == 2  # swatch + montage


def test_commands_register_and_fail_in_one_line(store, tmp_path):
    from flows.cli import register
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    for args, message in [(["palette", "digits", "--colors", "1"], "--colors must be an integer >= 2"),
                          (["palette", "nope"], "no corpus named 'nope'"),
                          (["palette", "digits", "--space", "lab"], "the source is 1-channel"),
                          (["stylize", "digits", "--palette", "palette-0000", "--dataset", "x"], "no palette"),
                          (["segment", "digits", "--k", "0"], "--k must be an integer >= 2")]:
        res = runner.invoke(app, [*args, "--store", str(store.root)])
        assert res.exit_code == 1, (args, res.output)
        assert message in res.output.replace("\n", " ") or message in (res.stderr or ""), res.output
    rgb = np.zeros((24, 36, 3), np.uint8)
    rgb[:, 12:24] = (250, 200, 0)
    rgb[:, 24:] = (0, 90, 200)
    Image.fromarray(rgb).save(tmp_path / "flag.png")
    res = runner.invoke(app, ["segment", str(tmp_path / "flag.png"), "--k", "3", "--out", str(tmp_path / "o"),
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["sizes"] == [24 * 12] * 3 and Path(out["overlay"]).exists()
