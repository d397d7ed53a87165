"""Palettes, rendering, transfer and segmentation: flat colours come back exactly, rendering is
idempotent, palette JSON round-trips, the gray histogram path equals the all-pixel path, a
partition-level palette on builtin digits, a stylised dataset readable with plain zarr + pyarrow
whose lineage leads back to the palette and the corpus, and one-line errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image

from cci_core.cluster import cluster_run as cr
from cci_core.ingest.ingest import ingest_local
from cci_core.palette import palette_run as pr
from cci_core.palette import sources as ps
from cci_core.palette.colorspace import lab_to_srgb, srgb_to_lab
from cci_core.palette.palette import Palette, feature_array, learn_palette, pixel_array
from cci_core.palette.pixel_kmeans import kmeans_1d_optimal, lloyd_pixels, weighted_kmeans
from cci_core.palette.render import match_colors, render, transfer
from cci_core.palette.segment import overlay, segment_image
from cci_core.store.lineage import LineageStore
from cci_core.store.store import Store

FLAT = np.array([[200, 30, 30], [20, 180, 40], [30, 40, 220], [250, 250, 240], [10, 10, 10]], np.uint8)


def _flat_image(colors=FLAT, h=40, w=60, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(colors), size=(h // 4, w // 4)).repeat(4, 0).repeat(4, 1)
    lab.flat[: len(colors)] = np.arange(len(colors))  # every colour present
    return colors[lab]


def _photo(size=96) -> np.ndarray:
    from sklearn.datasets import load_sample_image
    return load_sample_image("china.jpg")[100:100 + size, 200:200 + size]


@pytest.mark.parametrize("space,method", [("lab", "histogram"), ("lab", "pixels"), ("rgb", "auto")])
def test_k_flat_colours_come_back_exactly(space, method):
    img = _flat_image()
    pal = learn_palette(img, len(FLAT), space=space, method=method)
    assert {tuple(c) for c in pal.colors} == {tuple(c) for c in FLAT}
    assert pal.inertia < 1e-6 and pal.n_pixels == img.shape[0] * img.shape[1]
    assert np.array_equal(render(img, pal), img)  # zero error
    assert pal.shares.sum() == pytest.approx(1.0)


def test_rendering_a_rendered_image_changes_nothing():
    img = _photo()
    for space in ("lab", "rgb"):
        pal = learn_palette(img, 12, space=space)
        once = render(img, pal)
        assert len(np.unique(once.reshape(-1, 3), axis=0)) <= 12
        assert np.array_equal(render(once, pal), once)
        dithered = render(img, pal, dither=True)
        assert np.array_equal(render(dithered, pal), dithered)  # dithered pixels are palette colours too
        assert {tuple(c) for c in np.unique(dithered.reshape(-1, 3), axis=0)} <= {tuple(c) for c in pal.colors}


def test_palette_json_round_trip(tmp_path):
    pal = learn_palette(_photo(), 6, seed=3)
    pal.meta["palette_id"] = "palette-test"
    paths = pal.save(tmp_path / "p")
    back = Palette.load(tmp_path / "p")
    assert back.to_dict() == pal.to_dict()
    assert np.array_equal(back.colors, pal.colors) and np.allclose(back.centers, pal.centers)
    assert np.allclose(back.shares, pal.shares) and back.inertia == pal.inertia and back.space == "lab"
    d = json.loads(Path(paths["json"]).read_text())
    assert {"srgb", "lab", "share", "hex"} <= set(d["colors"][0]) and d["inertia"] > 0
    assert Image.open(paths["swatch"]).size[0] == 6 * 48


def test_lab_conversion_matches_scikit_image():
    skcolor = pytest.importorskip("skimage.color")
    img = _photo(64)
    assert np.abs(srgb_to_lab(img, np.float64) - skcolor.rgb2lab(img)).max() < 1e-3
    assert np.abs(lab_to_srgb(skcolor.rgb2lab(img)) - img).max() < 1e-6


def test_gray_histogram_path_equals_all_pixel_path():
    from sklearn.datasets import load_digits
    imgs = np.rint(load_digits().images[:600] * (255 / 16)).astype(np.uint8)[..., None]
    imgs = np.clip(imgs.astype(int) + np.random.default_rng(0).integers(-20, 20, imgs.shape), 0, 255).astype(np.uint8)
    px = pixel_array(imgs).rechunk({0: 5000})
    # the same Lloyd iterations from the same start: on 256 weighted bins and on every pixel
    hist = np.bincount(imgs.ravel(), minlength=256)
    vals = np.flatnonzero(hist)
    c0 = np.array([[10.0], [90.0], [160.0], [240.0]])
    hc, _, hin, hcnt = weighted_kmeans(vals[:, None].astype(float), hist[vals], 4, init=c0)
    with dask.config.set(scheduler="threads"):
        pc, pcnt, pin, _ = lloyd_pixels(feature_array(px, "gray"), c0, max_passes=300, tol=0)
    assert np.allclose(hc, pc, atol=1e-9) and np.array_equal(hcnt, pcnt) and hin == pytest.approx(pin, rel=1e-9)
    # and the two learners agree
    a = learn_palette(imgs, 4, method="histogram")
    b = learn_palette(imgs, 4, method="pixels", tol=0, max_passes=200)  # Lloyd to its fixed point
    assert a.meta["method"] == "histogram" and b.meta["method"] == "pixels"
    # the gray histogram path is the global optimum; the pixel path reaches a Lloyd fixed point
    # next to it: same colours within a few gray levels, inertia within 0.1 %
    assert np.abs(a.centers - b.centers).max() < 3.0 and np.abs(a.shares - b.shares).max() < 0.01
    assert a.inertia <= b.inertia * (1 + 1e-12) and b.inertia == pytest.approx(a.inertia, rel=1e-3)
    assert a.n_pixels == b.n_pixels == imgs.size and a.counts.sum() == b.counts.sum() == imgs.size


def test_gray_1d_kmeans_is_the_global_optimum():
    from itertools import combinations
    rng = np.random.default_rng(2)
    vals = np.sort(rng.choice(256, 9, replace=False)).astype(float)
    w = rng.integers(1, 50, 9).astype(float)
    _, _, best, _ = kmeans_1d_optimal(vals, w, 3)

    def cost(seg):
        mu = np.average(vals[seg], weights=w[seg])
        return float((w[seg] * (vals[seg] - mu) ** 2).sum())
    brute = min(cost(slice(0, a)) + cost(slice(a, b)) + cost(slice(b, 9)) for a, b in combinations(range(1, 9), 2))
    assert best == pytest.approx(brute, rel=1e-12)
    assert best <= weighted_kmeans(vals[:, None], w, 3, n_init=5)[2] * (1 + 1e-12)


def test_bad_input_is_one_clear_line(tmp_path):
    img = _flat_image()
    with pytest.raises(ValueError, match="--colors must be an integer >= 2"):
        learn_palette(img, 1)
    notes = []
    pal = learn_palette(img, 9, log=notes.append)  # only 5 distinct colours: clamped
    assert pal.k == 5 and "using 5" in notes[0]
    with pytest.raises(ValueError, match="single colour|only 1 distinct"):
        learn_palette(np.zeros((8, 8, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="--space gray: the source is RGB"):
        learn_palette(img, 3, space="gray")
    gray_pal = learn_palette(img[..., :1], 3)
    with pytest.raises(ValueError, match="has 1 channel .*the images have 3"):
        render(img, gray_pal)
    store = Store(tmp_path / "s")
    with pytest.raises(pr.UnknownPaletteError, match="no palette 'palette-nope'"):
        pr.load_palette(store, "palette-nope")


def test_rgba_and_paletted_files(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 15:, 3] = 255  # left half transparent: white after compositing
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = ps.read_image_file(tmp_path / "a.png")
    assert arr.shape == (20, 30, 3) and tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[0, 29]) == (255, 0, 0)
    Image.fromarray(_flat_image()).quantize(5).save(tmp_path / "p.png")  # P mode, colour
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert ps.read_image_file(tmp_path / "p.png").shape[-1] == 3
    Image.fromarray(np.tile(np.arange(0, 250, 50, dtype=np.uint8), (10, 2))).convert("P").save(tmp_path / "g.png")
    assert ps.read_image_file(tmp_path / "g.png").shape[-1] == 1
    store = Store(tmp_path / "s")
    out = pr.learn_palette_step(store, str(tmp_path / "a.png"), 4, log=lambda m: None)
    assert out["k"] == 2 and out["messages"]  # two colours only: clamped with a message
    assert Path(out["montage"]).exists() and Path(out["swatch"]).exists()
    assert LineageStore(store.lineage_url).get(out["palette_id"]).inputs[0][1] == "image"


def test_colour_matching_one_to_one():
    img = _flat_image()
    pal = learn_palette(img, 5)
    perm = np.array([3, 0, 4, 1, 2])
    shuffled = Palette("lab", pal.centers[perm], pal.counts[perm], 0.0, 1)
    assert np.array_equal(match_colors(shuffled, pal, "hungarian"), perm)
    assert np.array_equal(match_colors(shuffled, pal, "lightness"), perm)
    # an image drawn in another palette of 5, transferred: one colour for one
    other = learn_palette(255 - img, 5)
    out = transfer(255 - img, pal, other, "lightness")
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 5
    assert {tuple(c) for c in np.unique(out.reshape(-1, 3), axis=0)} == {tuple(c) for c in pal.colors}


def test_segmentation_finds_flat_regions(tmp_path):
    rng = np.random.default_rng(1)
    img = np.zeros((30, 45, 3), np.uint8)
    img[:, :15], img[:, 15:30], img[:, 30:] = (200, 40, 40), (40, 200, 40), (40, 40, 200)
    noisy = np.clip(img.astype(int) + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)
    labels, info = segment_image(noisy, 3)
    assert labels.dtype == np.uint8 and labels.shape == (30, 45)
    assert all(len(np.unique(labels[:, a:a + 15])) == 1 for a in (0, 15, 30))
    assert len(np.unique(labels)) == 3 and sum(info["sizes"]) == 30 * 45
    lab_pos, _ = segment_image(noisy[..., :1], 3, position_weight=2.0)
    assert lab_pos.shape == (30, 45)
    assert overlay(noisy, labels).shape == (30, 45, 3)
    Image.fromarray(noisy).save(tmp_path / "n.png")
    out = pr.segment_file(tmp_path / "n.png", 3, out_dir=tmp_path / "seg")
    assert np.array_equal(np.asarray(Image.open(out["labels"])), labels)
    assert Image.open(out["overlay"]).size == (45, 30)
    with pytest.raises(ValueError, match="--k must be an integer >= 2"):
        segment_image(noisy, 1)


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("palette") / "store")
    ingest_local(store, "builtin:digits", "digits")
    run = cr.run_local(store, "digits", cr.ClusterParams(k=3, n_components=20), run_id="digits-km")
    return store, run


def test_partition_palette_and_stylised_dataset_with_lineage(digits_store):
    store, run = digits_store
    lin = LineageStore(store.lineage_url)
    part0 = run["partitions"][0]
    pa = pr.learn_palette_step(store, "digits-km:0", 4)
    assert pa["source_kind"] == "partition" and pa["space"] == "gray" and pa["method"] == "histogram"
    assert pa["n_images"] == part0["count"] and pa["n_pixels"] == part0["count"] * 64
    roles = {r: i for i, r in lin.get(pa["palette_id"]).inputs}
    assert roles["partition"] == part0["artifact_id"] and "corpus" in roles
    assert pr.learn_palette_step(store, "digits-km/cluster-0", 4)["palette_id"] == pa["palette_id"]  # idempotent

    # the palette of cluster 0 on the images of cluster 1, colours matched by Hungarian
    st = pr.stylize_step(store, "digits-km:1", pa["palette_id"][:14], "digits-style", mode="hungarian")
    images = zarr.open_array(str(Path(st["path"]) / "images.zarr"), mode="r")
    manifest = pq.read_table(Path(st["path"]) / "manifest.parquet").to_pandas()
    assert images.shape == (run["partitions"][1]["count"], 8, 8, 1) and len(manifest) == images.shape[0]
    assert set(np.unique(images[:])) <= set(Palette.load(pa["palette_dir"]).colors.ravel())
    assert {"source_image_id", "palette_id", "mode", "dither", "source_row"} <= set(manifest.columns)
    assert (manifest["palette_id"] == pa["palette_id"]).all() and (manifest["mode"] == "hungarian").all()
    up = lin.upstream(st["artifact_id"])
    found = set()

    def walk(node):
        found.add((node["artifact"].kind, node["artifact"].id))
        for ch in node["inputs"]:
            walk(ch)
    walk(up)
    corpus_id = next(i for i, r in lin.get(pa["palette_id"]).inputs if r == "corpus")
    assert ("palette", pa["palette_id"]) in found and ("corpus", corpus_id) in found
    assert lin.get(st["artifact_id"]).kind == "dataset"

    # the whole corpus, nearest colour, dithered: a second version of the same dataset
    st2 = pr.stylize_step(store, "digits", pa["palette_id"], "digits-style", dither=True)
    assert st2["version"] == st["version"] + 1 and st2["n_images"] == 1797
    # a published dataset is a source too: rendering the rendered corpus again changes nothing
    st3 = pr.stylize_step(store, f"dataset:digits-style@v{st2['version']}", pa["palette_id"], "digits-again")
    again = zarr.open_array(str(Path(st3["path"]) / "images.zarr"), mode="r")[:]
    assert np.array_equal(again, zarr.open_array(str(Path(st2["path"]) / "images.zarr"), mode="r")[:])
    assert {r: i for i, r in lin.get(st3["artifact_id"]).inputs}["dataset"] == st2["artifact_id"]
    with pytest.raises(ValueError, match="--mode 'median'"):
        pr.check_stylize(store, "digits", pa["palette_id"], "x", mode="median")
    with pytest.raises(LookupError, match="no partition for cluster 7"):
        ps.resolve_source(store, "digits-km:7")
