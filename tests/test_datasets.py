"""Dataset versions: committed last, readable with plain zarr + pyarrow, never half visible."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from cci_core.store.datasets import (
    DatasetWriter,
    UnknownDatasetError,
    dataset_versions,
    export_parquet,
    export_png,
    list_datasets,
    open_dataset,
)
from cci_core.store.store import Store


def _publish(store, name, n, seed=0, card=None):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    with DatasetWriter(store, name, (8, 8, 1), chunk_rows=16) as w:
        for start in range(0, n, 7):
            part = imgs[start:start + 7]
            w.append(part, pd.DataFrame({"image_id": [f"id{start + i}" for i in range(len(part))],
                                         "cluster": (np.arange(start, start + len(part)) % 3).astype(np.int32)}))
        return w.commit(card or {"source": "test"}), imgs


def test_versions_commit_and_latest_moves(tmp_path):
    store = Store(tmp_path)
    v1, imgs1 = _publish(store, "gen", 20)
    v2, imgs2 = _publish(store, "gen", 30, seed=1)
    assert (v1.version, v2.version) == (1, 2) and dataset_versions("gen", store) == [1, 2]
    assert open_dataset("gen", store=store).version == 2
    old = open_dataset("gen", "v1", store=store)
    assert np.array_equal(old.images[:], imgs1) and len(old) == 20
    m = open_dataset("gen", 2, store=store).manifest
    assert list(m["index"]) == list(range(30)) and m["image_id"][29] == "id29"
    assert open_dataset(store.dataset_dir("gen")).version == 2  # by folder path too
    assert list_datasets(store) == ["gen"] and v2.card["n_images"] == 30 and v2.card["source"] == "test"
    x, row = v2.torch()[3]
    assert tuple(x.shape) == (1, 8, 8) and float(x.max()) <= 1.0 and row["image_id"] == "id3"


def test_plain_zarr_and_pyarrow_read_a_version_without_the_project(tmp_path):
    store = Store(tmp_path)
    v, imgs = _publish(store, "plain", 12)
    code = textwrap.dedent(f"""
        import sys, zarr, pyarrow.parquet as pq, numpy as np
        images = zarr.open_array({str(v.path / 'images.zarr')!r}, mode='r')
        manifest = pq.read_table({str(v.path / 'manifest.parquet')!r}).to_pandas()
        assert not any(m.startswith(('cci_core', 'torch', 'prefect')) for m in sys.modules)
        print(images.shape, len(manifest), int(images[:].astype(np.int64).sum()), manifest['image_id'][11])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(12,", "8,", "8,", "1)", "12", str(int(imgs.astype(np.int64).sum())), "id11"]


def test_failed_or_partial_versions_are_never_visible(tmp_path):
    store = Store(tmp_path)
    _publish(store, "gen", 10)
    with pytest.raises(RuntimeError):
        with DatasetWriter(store, "gen", (8, 8, 1)) as w:
            w.append(np.zeros((4, 8, 8, 1), np.uint8), pd.DataFrame({"image_id": list("abcd")}))
            raise RuntimeError("interrupted")
    assert dataset_versions("gen", store) == [1]
    assert not list(store.dataset_dir("gen").glob(".staging-*"))
    # a version folder without its marker (a crash between rename and marker) does not exist
    (store.dataset_dir("gen") / "v2").mkdir()
    with pytest.raises(UnknownDatasetError, match="no commit marker"):
        open_dataset("gen", 2, store=store)
    assert open_dataset("gen", store=store).version == 1
    v, _ = _publish(store, "gen", 5)  # and the next commit takes that number cleanly
    assert v.version == 2 and len(open_dataset("gen", store=store)) == 5


def test_bad_input(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(UnknownDatasetError, match="no dataset 'nope'"):
        open_dataset("nope", store=store)
    _publish(store, "gen", 3)
    with pytest.raises(UnknownDatasetError, match="committed versions: v1"):
        open_dataset("gen", 7, store=store)
    with pytest.raises(ValueError, match="give a number"):
        open_dataset("gen", "seven", store=store)
    with DatasetWriter(store, "x", (8, 8, 1)) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.append(np.zeros((2, 8, 8, 3), np.uint8), pd.DataFrame({"a": [1, 2]}))
        with pytest.raises(ValueError, match="2 images but 1 manifest rows"):
            w.append(np.zeros((2, 8, 8, 1), np.uint8), pd.DataFrame({"a": [1]}))
        with pytest.raises(ValueError, match="0 images"):
            w.commit({})
    with pytest.raises(ValueError, match="invalid dataset name"):
        DatasetWriter(store, "../evil", (8, 8, 1))


def test_exports(tmp_path):
    store = Store(tmp_path)
    v, imgs = _publish(store, "gen", 9)
    out = export_png(v, tmp_path / "png")
    assert len(list(out.glob("*.png"))) == 9
    meta = pd.read_csv(out / "metadata.csv")
    assert list(meta.columns[:2]) == ["file_name", "index"] and all((out / f).exists() for f in meta["file_name"])
    assert list(meta["cluster_name"][:4]) == ["cluster-0", "cluster-1", "cluster-2", "cluster-0"]
    path = export_parquet(v, tmp_path / "x.parquet")
    df = pd.read_parquet(path)
    from io import BytesIO

    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(BytesIO(df["image"][4]["bytes"]))), imgs[4, ..., 0])
    assert pd.read_parquet(v.path / "data.parquet")["image"][4] == df["image"][4]  # the published copy
    card = (v.path / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n") and str(tmp_path) not in card + (v.path / "card.json").read_text()


def test_accepted_configuration_holds_only_the_accepted_rows(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (9, 8, 8, 1), dtype=np.uint8)
    ok = np.array([True, False, True, True, False, False, True, False, True])
    with DatasetWriter(store, "acc", (8, 8, 1), chunk_rows=4) as w:
        w.append(imgs, pd.DataFrame({"image_id": [f"id{i}" for i in range(9)], "cluster": np.arange(9) % 2,
                                     "accepted": ok}))
        v = w.commit({"source": "test"})
    acc = pd.read_parquet(v.path / "accepted.parquet")
    assert list(acc["index"]) == list(np.flatnonzero(ok)) and acc["accepted"].all()
    assert list(acc["image"].map(lambda d: d["bytes"])) == list(pd.read_parquet(v.path / "data.parquet")["image"]
                                                               .map(lambda d: d["bytes"])[ok])
    readme = (v.path / "README.md").read_text()
    assert "- config_name: all\n  data_files: data.parquet\n  default: true\n" in readme
    assert "- config_name: accepted\n  data_files: accepted.parquet\n" in readme
    assert v.card["files"]["accepted"] == "accepted.parquet"
    without, _ = _publish(store, "plain", 5)  # no accepted column: no accepted configuration
    assert "accepted" not in without.card["files"] and not (without.path / "accepted.parquet").exists()
