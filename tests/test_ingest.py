"""Ingest through the library: real files of many formats, bad files, IDX, digits, increments."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cci_core.common.shapes import ImageShape
from cci_core.ingest.idx import read_idx
from cci_core.ingest.images import normalise
from cci_core.ingest.ingest import decode_batch, ingest_local, plan_ingest, plan_writes, prepare_array, select_new, write_segments
from cci_core.ingest.sources import SourceError
from cci_core.store.corpus import UnknownCorpusError, open_corpus
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store

FMNIST = Path("/usr/share/datasets/fashion-mnist")
rng = np.random.default_rng(0)


def _rgb(h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "src"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "deep").mkdir(parents=True)
    Image.fromarray(_rgb(16, 16)).save(root / "cats" / "a.png")
    Image.fromarray(_rgb(20, 12)).save(root / "cats" / "b.jpg", quality=90)
    Image.fromarray(_rgb(16, 16)).save(root / "dogs" / "c.bmp")
    Image.fromarray(_rgb(16, 16)[..., 0]).save(root / "dogs" / "gray.png")
    Image.fromarray(np.dstack([_rgb(16, 16), np.full((16, 16, 1), 128, np.uint8)])).save(root / "dogs" / "rgba.png")
    Image.fromarray(_rgb(16, 16)).convert("P").save(root / "dogs" / "deep" / "pal.gif")
    Image.fromarray(_rgb(16, 16)).convert("CMYK").save(root / "dogs" / "cmyk.tif")
    Image.fromarray((rng.integers(0, 65536, (16, 16))).astype(np.uint16)).save(root / "dogs" / "i16.png")
    Image.fromarray(_rgb(16, 16)).save(root / "dogs" / "w.webp", lossless=True)
    # bad ones
    (root / "cats" / "zero.png").write_bytes(b"")
    (root / "cats" / "text.png").write_text("this is not an image")
    good = root / "dogs" / "trunc.jpg"
    Image.fromarray(_rgb(64, 64)).save(good, quality=95)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    return root


def test_folder_ingest_quarantines_bad_files_and_keeps_good(tmp_path, image_tree):
    store = Store(tmp_path / "store")
    s = ingest_local(store, str(image_tree), "mixed", size=(16, 16), channels=3, label_from_folder=True,
                     batch_size=3)
    assert s["added"] == 9 and s["quarantined"] == 4
    reasons = {Path(q["source"]).name: q["reason"] for q in s["quarantine"]}
    assert set(reasons) == {"zero.png", "text.png", "trunc.jpg", "corrupt.png"}
    assert "empty" in reasons["zero.png"] and "not a recognised image" in reasons["text.png"]
    c = open_corpus(store, "mixed")
    assert c.n_rows == 9 and c.shape.hwc == (16, 16, 3)
    idx = c.index()
    assert list(idx["row"]) == list(range(9))
    assert set(idx["label"]) == {"cats", "dogs"}
    assert len(c.quarantine()) == 4
    # lossless formats round-trip exactly
    px = c.read_images()
    for name in ("a.png", "c.bmp", "w.webp"):
        row = idx.index[idx["source"].str.endswith(name)][0]
        src = next(image_tree.rglob(name))
        assert np.array_equal(px[row], np.asarray(Image.open(src).convert("RGB"))), name
    # RGBA composited over white: a half-transparent pixel is lighter than the original
    rgba_row = idx.index[idx["source"].str.endswith("rgba.png")][0]
    orig = np.asarray(Image.open(next(image_tree.rglob("rgba.png"))))[..., :3].astype(int)
    assert (px[rgba_row].astype(int) >= orig - 1).all()
    assert idx.loc[idx["source"].str.endswith("i16.png"), "orig_mode"].iloc[0].startswith("I")


def test_second_run_adds_nothing_and_grown_source_appends(tmp_path, image_tree):
    store = Store(tmp_path / "store")
    first = ingest_local(store, str(image_tree), "c", size=(16, 16), channels=3)
    before = open_corpus(store, "c").read_images().copy()
    again = ingest_local(store, str(image_tree), "c")
    assert again["changed"] is False and again["added"] == 0 and again["duplicates"] == first["added"]
    assert open_corpus(store, "c").version == 1
    Image.fromarray(_rgb(16, 16)).save(image_tree / "new.png")
    Image.fromarray(np.asarray(Image.open(image_tree / "cats" / "a.png"))).save(image_tree / "copy_of_a.png")
    grown = ingest_local(store, str(image_tree), "c")
    assert grown["added"] == 1 and grown["version"] == 2 and grown["duplicates"] == first["added"] + 1
    c = open_corpus(store, "c")
    assert c.n_rows == first["added"] + 1
    assert np.array_equal(c.read_images()[: len(before)], before)  # earlier rows never change
    assert open_corpus(store, "c", version=1).n_rows == first["added"]


def test_interrupted_ingest_leaves_last_version_and_rerun_completes(tmp_path):
    store = Store(tmp_path / "store")
    images = rng.integers(0, 256, (300, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images[:100])
    ingest_local(store, str(tmp_path / "a.npy"), "npy", batch_size=40)
    v1 = open_corpus(store, "npy").read_images().copy()
    np.save(tmp_path / "b.npy", images)  # grown source
    # run every step of a second ingest except the commit: the "crash"
    plan = plan_ingest(store, str(tmp_path / "b.npy"), "npy", batch_size=64)
    sel = select_new(plan, [decode_batch(plan, b) for b in plan["batches"]])
    prepare_array(plan, sel)
    groups = plan_writes(plan, sel)
    write_segments(plan, groups[0])
    c = open_corpus(store, "npy")
    assert c.version == 1 and c.n_rows == 100 and np.array_equal(c.read_images(), v1)
    assert len(c.index()) == 100
    # while the writer is alive, a second ingest into the corpus is refused, not interleaved
    with pytest.raises(ValueError, match="being written by another ingest"):
        ingest_local(store, str(tmp_path / "b.npy"), "npy", batch_size=64)
    # the writer dies (its pid no longer exists): its lock is stale and the re-run takes over
    lock = c.dir / ".ingest.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "pid": dead.pid}))
    done = ingest_local(store, str(tmp_path / "b.npy"), "npy", batch_size=64)
    assert not lock.exists()
    assert done["added"] == 200 and done["duplicates"] == 100
    c = open_corpus(store, "npy")
    assert c.n_rows == 300 and c.index()["image_id"].is_unique
    assert np.array_equal(c.read_images()[..., 0], images)
    assert not (c.dir / "_staging").exists()


def test_fashion_mnist_subset_idx_with_labels_and_splits(tmp_path):
    src = tmp_path / "fm"
    src.mkdir()
    for split, n in (("train", 300), ("t10k", 100)):
        for kind, ndim in (("images", 3), ("labels", 1)):
            arr = read_idx(FMNIST / f"{split}-{kind}-idx{ndim}-ubyte.gz")[:n]
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            opener = gzip.open if kind == "images" else open  # one gzip, one raw
            with opener(src / f"{split}-{kind}-idx{ndim}-ubyte{'.gz' if kind == 'images' else ''}", "wb") as fh:
                fh.write(header + arr.tobytes())
    store = Store(tmp_path / "store")
    s = ingest_local(store, str(src), "fm", batch_size=128)
    c = open_corpus(store, "fm")
    assert s["added"] == 400 and c.shape.hwc == (28, 28, 1)
    info = c.info()
    assert info["split_counts"] == {"test": 100, "train": 300}
    labels = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")[:300]
    assert list(c.labels()[:300]) == [str(v) for v in labels]
    assert np.array_equal(c.read_images(slice(0, 300))[..., 0], read_idx(FMNIST / "train-images-idx3-ubyte.gz")[:300])


def test_builtin_digits_and_lineage(tmp_path):
    store = Store(tmp_path / "store")
    s = ingest_local(store, "builtin:digits", "digits")
    c = open_corpus(store, "digits")
    assert c.shape.hwc == (8, 8, 1) and s["n_rows"] == c.n_rows
    assert c.n_rows == 1797 and s["duplicates"] == 0 and c.read_images().max() == 255
    lin = LineageStore(store.lineage_url)
    art = lin.get(c.artifact_id)
    assert art.kind == "corpus" and art.size == c.n_rows and art.code_version
    (src_id, role), = art.inputs
    assert role == "source" and lin.get(src_id).uri == "builtin:digits"
    assert lin.outputs_of(src_id) == [(art.id, "source")]
    assert lin.upstream(art.id[:14])["inputs"][0]["artifact"].id == src_id


def test_tar_archive_never_reads_unsafe_members(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(_rgb(8, 8)).save(img)
    tar_path = tmp_path / "a.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(img, arcname="cls/x.png")
        tf.add(img, arcname="../escape.png")
    store = Store(tmp_path / "store")
    s = ingest_local(store, str(tar_path), "t", label_from_folder=True)
    assert s["added"] == 1 and s["quarantined"] == 1
    assert "unsafe" in s["quarantine"][0]["reason"]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path.parent / "escape.png").exists()


def test_clear_errors(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(SourceError, match="does not exist"):
        ingest_local(store, str(tmp_path / "missing"), "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files"):
        ingest_local(store, str(tmp_path / "empty"), "c")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("nope")
    (bad / "b.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match="every file"):
        ingest_local(store, str(bad), "c")
    with pytest.raises(UnknownCorpusError, match="cci ingest"):
        open_corpus(store, "c")
    with pytest.raises(ValueError, match="corpus name"):
        ingest_local(store, "builtin:digits", "../evil")


def test_modes_convert_correctly():
    shape = ImageShape(4, 4, 3)
    p = Image.new("P", (4, 4))
    p.putpalette([255, 0, 0] * 256)
    assert (normalise(p, shape) == [255, 0, 0]).all()
    la = Image.new("LA", (4, 4), (0, 0))  # fully transparent black -> white background
    assert (normalise(la, ImageShape(4, 4, 1)) == 255).all()
    i16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert (normalise(i16, ImageShape(4, 4, 1)) == 255).all()
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    px = normalise(cmyk, shape)
    assert px[0, 0, 0] > 200 and px[0, 0, 1] < 50
    big = Image.fromarray(np.tile(np.array([[0, 255]], np.uint8), (64, 32)))
    small = normalise(big, ImageShape(8, 8, 1))  # antialiased: stripes average out to gray
    assert 100 < small.mean() < 155 and small.std() < 40
