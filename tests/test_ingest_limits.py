"""Ingest inputs that used to be silently wrong or costly: value ranges of array data, label
counts, large photos, decompression bombs, size caps, symlinks, tar members, checks before start-up."""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cci_core.ingest.images import ImageRefused, image_id, open_image
from cci_core.ingest.ingest import check_ingest_request, ingest_local
from cci_core.ingest.sources import SourceError
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store

rng = np.random.default_rng(7)


def _png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes whose PNG header declares width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def _ids(store: Store, corpus: str) -> list[str]:
    return list(open_corpus(store, corpus).index()["image_id"])


# ----- value ranges ---------------------------------------------------------------------------

def test_float_values_outside_every_range_are_an_error_or_clipped_on_request(tmp_path):
    store = Store(tmp_path / "store")
    arr = rng.permutation(np.linspace(-500, 2050, 10 * 4 * 4)).reshape(10, 4, 4).astype(np.float32)
    np.save(tmp_path / "wide.npy", arr)
    with pytest.raises(ValueError, match=r"wide\.npy: float values -500\.\.2050 fit none") as e:
        ingest_local(store, str(tmp_path / "wide.npy"), "w")
    assert "--value-range" in str(e.value)
    with pytest.raises(ValueError, match=r"outside --value-range 0-255 \(0\.\.255\): pass --clip"):
        ingest_local(store, str(tmp_path / "wide.npy"), "w", value_range="0-255")
    assert store.corpora() == []
    ingest_local(store, str(tmp_path / "wide.npy"), "w", value_range="0-255", clip=True)
    px = open_corpus(store, "w").read_images()[..., 0].astype(int)
    expected = np.clip(np.rint(arr), 0, 255).astype(int)
    assert np.array_equal(px, expected)


def test_minus_one_to_one_keeps_negative_values_and_zero_to_one_scales(tmp_path):
    store = Store(tmp_path / "store")
    signed = np.array([-1.0, -0.5, 0.0, 0.5, 1.0] * 5, np.float64).reshape(1, 5, 5)
    np.save(tmp_path / "signed.npy", np.repeat(signed, 3, axis=0) * np.array([1, 0.5, 0.25])[:, None, None])
    ingest_local(store, str(tmp_path / "signed.npy"), "s")
    row0 = open_corpus(store, "s").read_images()[0, 0, :, 0]
    assert list(row0) == [0, 64, 128, 191, 255]  # (v + 1) * 127.5, rounded half to even
    unit = rng.random((4, 6, 6)).astype(np.float32)
    np.save(tmp_path / "unit.npy", unit)
    ingest_local(store, str(tmp_path / "unit.npy"), "u")
    assert np.array_equal(open_corpus(store, "u").read_images()[..., 0], np.rint(unit.astype(np.float64) * 255))


def test_value_range_is_decided_from_the_whole_source_not_per_batch(tmp_path):
    # 0..255 floats whose first 16 images hold only 0 and 1: a per-batch rule stored them as 0/255
    arr = rng.integers(0, 256, (64, 5, 5)).astype(np.float32)
    arr[:16] = rng.integers(0, 2, (16, 5, 5))
    np.save(tmp_path / "a.npy", arr)
    ids = []
    for i, bs in enumerate((16, 1000)):
        store = Store(tmp_path / f"s{i}")
        ingest_local(store, str(tmp_path / "a.npy"), "c", batch_size=bs)
        ids.append(_ids(store, "c"))
        assert open_corpus(store, "c").read_images()[:16].max() == 1
    assert ids[0] == ids[1] and len(ids[0]) == 64


def test_integer_nan_and_label_count_errors_name_the_file(tmp_path):
    store = Store(tmp_path / "store")
    np.save(tmp_path / "i16.npy", np.full((3, 4, 4), 300, np.int16))
    with pytest.raises(ValueError, match=r"i16\.npy: integer values 300\.\.300 do not fit 0\.\.255"):
        ingest_local(store, str(tmp_path / "i16.npy"), "c")
    nan = rng.random((3, 4, 4))
    nan[1, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"nan\.npy: 1 values are NaN or infinite"):
        ingest_local(store, str(tmp_path / "nan.npy"), "c")
    images = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "more.npz", images=images, labels=np.arange(100))
    with pytest.raises(SourceError, match=r"more\.npz: 40 images but 100 labels"):
        ingest_local(store, str(tmp_path / "more.npz"), "c")
    np.savez(tmp_path / "fewer.npz", images=images, labels=np.arange(10))
    with pytest.raises(SourceError, match=r"fewer\.npz: 40 images but 10 labels"):
        ingest_local(store, str(tmp_path / "fewer.npz"), "c")
    idx = tmp_path / "idx"
    idx.mkdir()
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape) + images.tobytes())
    (idx / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (39).to_bytes(4, "big") + bytes(39))
    with pytest.raises(SourceError, match=r"holds 39 labels but .*train-images-idx3-ubyte\.gz holds 40 images"):
        ingest_local(store, str(idx), "c")
    assert store.corpora() == []
    np.savez(tmp_path / "ok.npz", images=images, labels=np.arange(40).reshape(40, 1))
    ingest_local(store, str(tmp_path / "ok.npz"), "ok")
    assert list(open_corpus(store, "ok").labels()[:3]) == ["0", "1", "2"]


# ----- photos, bombs, caps, symlinks, tar -------------------------------------------------------

def test_large_photo_ingests_with_size_and_decodes_reduced(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    y, x = np.mgrid[0:4000, 0:6000]
    photo = np.dstack([(x // 24) % 256, (y // 16) % 256, ((x + y) // 40) % 256]).astype(np.uint8)
    Image.fromarray(photo).save(src / "big.jpg", quality=80)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src / "small.png")
    img = open_image(src / "big.jpg", target=(64, 64))
    assert img.size == (750, 500) and img.info["declared_size"] == (6000, 4000)  # decoded at 1/8
    store = Store(tmp_path / "store")
    s = ingest_local(store, str(src), "photos", size=(64, 64), channels=3, fit="crop")
    assert s["added"] == 2 and s["quarantined"] == 0
    idx = open_corpus(store, "photos").index()
    big = idx[idx["source"].str.endswith("big.jpg")].iloc[0]
    assert (big["orig_height"], big["orig_width"]) == (4000, 6000)
    with pytest.raises(SourceError, match="more than 4096 a side: give --size"):
        check_ingest_request(store, str(src / "big.jpg"), "other")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bomb.png").write_bytes(_png_bomb(100_000, 100_000))
    (src / "half.png").write_bytes(_png_bomb(12_000, 12_000))  # over the limit, under Pillow's 2x error
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / "ok.png")
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(src / "mid.png")
    store = Store(tmp_path / "store")
    t = time.perf_counter()
    s = ingest_local(store, str(src), "b", size=(8, 8), channels=3, max_image_pixels=5_000)
    assert time.perf_counter() - t < 20
    reasons = {Path(q["source"]).name: q["reason"] for q in s["quarantine"]}
    assert s["added"] == 1 and set(reasons) == {"bomb.png", "half.png", "mid.png"}
    assert "declares 10,000,000,000 pixels" in reasons["bomb.png"] and "--max-image-pixels" in reasons["bomb.png"]
    assert "100x100" in reasons["mid.png"]
    # the default limit keeps mid.png but still refuses both bombs
    s = ingest_local(Store(tmp_path / "s2"), str(src), "b", size=(8, 8), channels=3)
    assert s["added"] == 2 and s["quarantined"] == 2
    # palette and segment read user files through the same helper: one clear error
    from cci_core.palette.sources import read_image_file
    with pytest.raises(ValueError, match=r"cannot read image .*bomb\.png: image too large"):
        read_image_file(src / "bomb.png")
    with pytest.raises(ImageRefused, match="12000x12000"):
        open_image(src / "half.png")


def test_size_cap_symlinks_and_tar_members(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(outside)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / "a.png")
    big = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(big).save(src / "huge.png")  # about 1 MB of noise
    (src / "sub" / "escape.png").symlink_to(outside)
    (src / "sub" / "inside.png").symlink_to(src / "a.png")
    cap = 100_000
    store = Store(tmp_path / "store")
    s = ingest_local(store, str(src), "c", size=(8, 8), channels=3, max_file_bytes=cap)
    reasons = {Path(q["source"]).name: q["reason"] for q in s["quarantine"]}
    assert set(reasons) == {"huge.png", "escape.png"} and s["added"] == 1 and s["duplicates"] == 1
    assert "over the cap of 0.1 MiB" in reasons["huge.png"] and "--max-file-bytes" in reasons["huge.png"]
    assert "outside the source folder" in reasons["escape.png"] and "--follow-symlinks" in reasons["escape.png"]
    s = ingest_local(store, str(src), "c", follow_symlinks=True, max_file_bytes=cap)
    assert s["added"] == 1 and s["quarantined"] == 1  # outside.png now read; huge.png still capped

    # tar archives, plain and gzip: same rows as the folder, members over the cap quarantined
    files = sorted(p for p in src.rglob("*.png") if not p.is_symlink())
    for name, mode in (("a.tar", "w"), ("a.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tf:
            for p in files:
                tf.add(p, arcname=f"x/{p.name}")
        t = ingest_local(Store(tmp_path / f"st-{name}"), str(tmp_path / name), "t", size=(8, 8), channels=3,
                         max_file_bytes=cap, batch_size=1)
        assert t["added"] == 1 and [q["source"].rsplit("/", 1)[1] for q in t["quarantine"]] == ["huge.png"]
        assert "over the cap" in t["quarantine"][0]["reason"]
        assert _ids(Store(tmp_path / f"st-{name}"), "t") == [image_id(np.asarray(Image.open(src / "a.png")))]


def test_tar_members_are_read_by_offset_in_listing_order(tmp_path):
    n = 300
    arrays = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(n)]
    with tarfile.open(tmp_path / "m.tar", "w") as tf:
        for i in rng.permutation(n):  # archive order is not name order
            b = io.BytesIO()
            Image.fromarray(arrays[i]).save(b, "PNG")
            info = tarfile.TarInfo(f"m/{i:04d}.png")
            info.size = len(b.getvalue())
            tf.addfile(info, io.BytesIO(b.getvalue()))
    store = Store(tmp_path / "store")
    t0 = time.perf_counter()
    s = ingest_local(store, str(tmp_path / "m.tar"), "m", batch_size=64)
    elapsed = time.perf_counter() - t0
    assert s["added"] == n
    c = open_corpus(store, "m")
    assert np.array_equal(c.read_images()[..., 0], np.stack(arrays))
    assert elapsed < 30  # 300 members took ~1 s; the per-member rescans were quadratic


# ----- checks before any server -------------------------------------------------------------

def test_check_ingest_request_refuses_bad_requests_without_writing(tmp_path):
    store = Store(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(src / "a.png")
    ok = check_ingest_request(store, str(src), "c")
    assert ok["shape"] == [8, 8, 1] and ok["count"] == 1
    (tmp_path / "empty").mkdir()
    bad = [
        (dict(source=str(tmp_path / "missing")), "does not exist"),
        (dict(source=str(tmp_path / "empty")), "holds no files"),
        (dict(corpus="../x"), "invalid corpus name"),
        (dict(fit="zoom"), "--fit 'zoom'"),
        (dict(channels=2), "--channels 2"),
        (dict(size=(5000, 5000)), "out of range"),
        (dict(batch_size=0), "--batch-size 0"),
        (dict(max_file_bytes=0), "--max-file-bytes 0"),
        (dict(value_range="0-9"), "--value-range '0-9'"),
    ]
    for change, message in bad:
        args = {"source": str(src), "corpus": "c", **change}
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            check_ingest_request(store, args.pop("source"), args.pop("corpus"), **args)
    assert not store.root.exists()
    ingest_local(store, str(src), "c")
    with pytest.raises(ValueError, match=r"stores images of shape \(8, 8, 1\), not \(16, 16, 1\)"):
        check_ingest_request(store, str(src), "c", size=(16, 16))


def test_cli_ingest_bad_input_is_one_line_before_any_server(tmp_path, run_cci):
    np.save(tmp_path / "wide.npy", np.linspace(-500, 2050, 64).reshape(4, 4, 4))
    images = rng.integers(0, 256, (40, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "more.npz", images=images, labels=np.arange(100))
    store = tmp_path / "store"
    for args, message in (([tmp_path / "wide.npy"], "float values -500..2050 fit none"),
                          ([tmp_path / "more.npz"], "40 images but 100 labels"),
                          ([tmp_path / "wide.npy", "--value-range", "0-1"], "outside --value-range 0-1")):
        t = time.perf_counter()
        res = run_cci("ingest", *args, "--corpus", "c", "--store", store, timeout=120)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
        assert "Traceback" not in res.stderr and "Starting" not in res.stdout + res.stderr
        assert time.perf_counter() - t < 30  # no Prefect server start-up
    assert not store.exists()
