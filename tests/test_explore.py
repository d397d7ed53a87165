"""The cluster explorer page (``reports/explore.html``): written by clustering and refined runs and by
`cci explore`, self-contained, deterministic, its map holding the stratified sample; for a run with
per-cluster generators (rebuilt by training and evaluation), real vs generated images per cluster with
generation.json's FD and coverage; and in headless Chromium from ``file://``: no console error, no
network, hovering shows an image, the legend filters, the generated images decode."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMEDRIVER, CHROMIUM, headless_chromium

from cci_core.cluster.cluster_run import ClusterParams
from cci_core.cluster.explore import build_explorer, explorer_path, stratified_sample, thumbnail_uri
from cci_core.cluster.labels import read_labels
from tests.faults import invoke


@pytest.fixture(scope="module")
def store(digits28_store):
    """Corpus ``d28`` (1,797 digits, labelled), clustering run ``km`` (k=5) and its refined run ``ref``."""
    from cci_core.refine import refine_run as rr
    s = digits28_store("explore", corpus="d28", km=ClusterParams(k=5, n_components=20))
    rr.refine_local(s, "km", rr.config_from_options({"rounds": 1, "warmup_steps": 20, "steps": 20, "batch_size": 64,
                                                    "width": 8, "start": "given", "recluster": "kmeans"}),
                    new_run_id="ref", log=lambda _: None)
    return s


def figure_traces(page: str) -> list[dict]:
    """The traces of the page's Plotly figure, as embedded in the HTML."""
    start = page.index('Plotly.newPlot(')
    start = page.index("[", page.index('"map"', start))
    traces, _ = json.JSONDecoder().raw_decode(page[start:])
    return traces


def expected_counts(labels: np.ndarray, max_points: int) -> dict[str, int]:
    rows = stratified_sample(labels, max_points)
    got, counts = np.unique(labels[rows], return_counts=True)
    return {("noise" if c < 0 else f"cluster {c}"): int(n) for c, n in zip(got, counts)}


def test_the_runs_write_the_page_and_it_holds_the_stratified_sample(store):
    for run in ("km", "ref"):
        path = explorer_path(store.run_dir(run))
        assert path.exists(), f"run {run} wrote no {path}"
        page = path.read_text()
        assert path.stat().st_size < 20 << 20
        assert not re.search(r"<script[^>]*\bsrc=", page), "every script is inline"
        assert "<table class='labels'>" in page and "cluster &times; label" in page.lower()
        traces = figure_traces(page)
        labels = read_labels(store.run_dir(run))
        assert {t["name"]: len(t["text"]) for t in traces} == expected_counts(labels, 5000)
        assert all(u.startswith("data:image/png;base64,") for t in traces for u in t["customdata"])
    assert "softmax" in explorer_path(store.run_dir("ref")).read_text()
    assert "margin 1 - d1/d2" in explorer_path(store.run_dir("km")).read_text()


def test_a_sample_is_stratified_seeded_and_stated(store):
    labels = read_labels(store.run_dir("km"))
    path = build_explorer(store, "km", max_points=300)
    page = path.read_text()
    assert "a sample of 300 of 1,797 rows" in page
    counts = expected_counts(labels, 300)
    assert sum(counts.values()) == 300 and len(counts) == 5
    sizes = np.bincount(labels)
    for c, n in enumerate(sizes):  # in proportion to the cluster's size, every cluster shown
        assert abs(counts[f"cluster {c}"] - 300 * n / labels.size) <= 1
    assert {t["name"]: len(t["text"]) for t in figure_traces(page)} == counts
    first = path.read_bytes()
    assert build_explorer(store, "km", max_points=300).read_bytes() == first, "the same run gives the same bytes"
    small = stratified_sample(np.array([0] * 1000 + [1] * 3 + [-1] * 2), 10)
    assert len(small) == 10 and set(np.array([0] * 1000 + [1] * 3 + [-1] * 2)[small]) == {0, 1, -1}


def test_cci_explore_rebuilds_the_page(store):
    path = explorer_path(store.run_dir("ref"))
    path.unlink()
    ran = invoke("explore", "ref", "--max-points", "400", "--store", store.root)
    assert ran.exit_code == 0, ran.stderr
    assert str(path) in ran.stdout.replace("\n", "") and path.exists()
    assert sum(len(t["text"]) for t in figure_traces(path.read_text())) == 400
    bad = invoke("explore", "nope", "--store", store.root)
    assert bad.exit_code == 1 and "no run 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def decode_png(uri: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_real_vs_generated_per_trained_cluster(published_store):
    """Run ``ref`` of tests/tiny_run.py, trained then evaluated: the evaluation rebuilt its page, which shows
    per trained cluster its 8 centre images beside 8 images of that cluster's generator (seed = cluster id)
    and generation.json's per-cluster FD and coverage in every feature space it measured."""
    from cci_core.generate import explore_generated as eg
    from cci_core.generate.sampling import generate, load_generator
    s = published_store
    page = explorer_path(s.run_dir("ref")).read_text()  # written by evaluate_local, not by this test
    models, _ = eg.trained_generators(s, s.run_dir("ref"))
    report = eg.read_generation(s, s.run_dir("ref"))
    assert sorted(models) == report["trained_clusters"] and len(models) == 3
    assert "<h2>Real vs generated</h2>" in page
    for k, m in models.items():
        row = page[page.index(f"<tr id='generated-{k}'>"):]
        row = row[:row.index("</tr>")]
        real = re.findall(r'<img class="t" src="([^"]+)" title="row \d+"', row)
        made = re.findall(r'<img class="t g" src="([^"]+)"', row)
        assert len(real) == 8 and len(made) == 8
        want = generate(load_generator(m["dir"], "cpu"), 8, seed=k)[..., 0]  # 28 px: stored losslessly
        assert np.array_equal(np.stack([decode_png(u) for u in made]), want)
        for space, groups in report["per_cluster"].items():
            entry = groups["per_cluster"][str(k)]
            fd = float(re.search(rf"<span class='fd' data-space='{space}'>([^<]+)<", row).group(1))
            cov = float(re.search(rf"<span class='coverage' data-space='{space}'>([^<]+)<", row).group(1))
            assert fd == pytest.approx(entry["fid"], rel=5e-4) and cov == pytest.approx(entry["coverage"], abs=5e-4)
    first = explorer_path(s.run_dir("ref")).read_bytes()
    assert eg.explore_with_generators(s, "ref").read_bytes() == first, "the same run gives the same bytes"
    assert "<h2>Real vs generated</h2>" not in explorer_path(s.run_dir("km")).read_text()  # km trained nothing

    assert set(eg.cluster_measures(None, models).values()) == {"not evaluated (run `cci evaluate RUN`)"}
    retrained = {**models, 0: {**models[0], "artifact_id": "model-0000000000000000"}}
    assert eg.cluster_measures(report, retrained)[0].startswith("not evaluated: generation.json measured an earlier")
    assert eg.cluster_measures(report, retrained)[1] == eg.cluster_measures(report, models)[1] != {}


@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 28), (24, 40, 3), (64, 64, 3), (5, 90, 1), (64, 48, 4)])
def test_thumbnails_of_every_image_shape(shape):
    import base64
    import io

    from PIL import Image
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    uri = thumbnail_uri(img)
    kind, data = uri.split(";base64,")
    im = Image.open(io.BytesIO(base64.b64decode(data)))
    assert max(im.size) <= 32 and im.size[0] >= 1 and im.size[1] >= 1
    assert kind == ("data:image/png" if len(shape) == 2 or shape[2] == 1 else "data:image/jpeg")


def test_an_rgb_corpus_of_odd_size_gets_a_page(tmp_path):
    from cci_core.cluster import cluster_run as cr
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    s = Store(tmp_path / "rgb")
    ingest_local(s, "builtin:digits", "rgb", size=(24, 40), channels=3)
    cr.run_local(s, "rgb", cr.ClusterParams(k=3, n_components=8), run_id="rgb-km")
    page = explorer_path(s.run_dir("rgb-km")).read_text()
    assert "data:image/jpeg;base64," in page
    assert {t["name"]: len(t["text"]) for t in figure_traces(page)} == expected_counts(read_labels(s.run_dir("rgb-km")),
                                                                                     5000)


NO_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(), reason="no /usr/bin/chromium "
                                 "or /usr/bin/chromedriver: apt-get install chromium chromium-driver")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One headless Chromium (selenium) for this module's browser tests; its console log is kept."""
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"), window="1400,1000")
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path) -> None:
    """Load the page from ``file://`` (a fresh console log) and wait for the map to be drawn."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(path.as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "var g = document.getElementById('map'); return !!(g && g._fullLayout && g.data);"))


def assert_no_error_nor_network(driver) -> None:
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));")
    assert fetched == [], f"the page fetched {fetched}"
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors


@NO_CHROMIUM
def test_the_page_in_headless_chromium(store, chromium):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = build_explorer(store, "km", max_points=600)
    counts = expected_counts(read_labels(store.run_dir("km")), 600)
    driver = chromium
    open_page(driver, path)
    shown = driver.execute_script("return document.getElementById('map')._fullData.map(t => [t.name, t._length]);")
    assert dict(shown) == counts
    n_points = driver.execute_script("return document.querySelectorAll('#map .scatterlayer .point').length;")
    assert n_points == 600

    # the mouse over a point (Plotly.Fx.hover called from a script emits no plotly_hover)
    point = driver.find_elements(By.CSS_SELECTOR, "#map .scatterlayer .trace")[1].find_element(By.CSS_SELECTOR,
                                                                                              ".point")
    ActionChains(driver).move_to_element(point).perform()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "hover-panel").is_displayed())
    src = driver.find_element(By.ID, "hover-img").get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert driver.execute_script("return document.getElementById('hover-img').naturalWidth;") > 0
    assert re.search(r"row \d+, cluster \d", driver.find_element(By.ID, "hover-text").text)

    driver.find_elements(By.CSS_SELECTOR, "#map .legend .traces")[0].click()  # hide cluster 0
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return document.getElementById('map').data[0].visible === 'legendonly';"))
    left = driver.execute_script("return document.querySelectorAll('#map .scatterlayer .point').length;")
    assert left == 600 - counts["cluster 0"]
    visible = driver.execute_script(
        "return document.getElementById('map').data.filter(t => t.visible !== 'legendonly').length;")
    assert visible == len(counts) - 1
    assert_no_error_nor_network(driver)


@NO_CHROMIUM
def test_the_generated_section_in_headless_chromium(published_store, chromium):
    """Every image of the real vs generated section decodes in the browser; no console error, no network."""
    open_page(chromium, explorer_path(published_store.run_dir("ref")))
    sizes = chromium.execute_script(
        "return Array.from(document.querySelectorAll('table.generated img')).map(i => [i.classList.contains('g'), "
        "i.complete && i.naturalWidth]);")
    assert sorted(g for g, _ in sizes) == [False] * 24 + [True] * 24 and all(w == 28 for _, w in sizes)
    assert chromium.find_element("css selector", "table.generated").is_displayed()
    assert_no_error_nor_network(chromium)


def test_the_doubted_members_are_those_with_the_lowest_margin(store):
    """Recomputed here with numpy from the run's embeddings: each cluster's doubted cell lists its
    rows of lowest margin 1 - d1/d2 (to the two nearest cluster means), lowest first."""
    import zarr
    X = np.asarray(zarr.open_array(store.run_dir("km") / "embeddings.zarr", mode="r")[:], np.float64)
    labels = read_labels(store.run_dir("km"))
    centres = np.stack([X[labels == c].mean(0) for c in range(labels.max() + 1)])
    d = np.sort(np.sqrt(((X[:, None, :] - centres[None]) ** 2).sum(-1)), axis=1)
    margin = 1 - d[:, 0] / d[:, 1]
    page = build_explorer(store, "km").read_text()
    for c in range(labels.max() + 1):
        row = page[page.index(f"<tr id='cluster-{c}'>"):]
        cells = row[:row.index("</tr>")].split("<td class='imgs'>")
        doubted = [(int(r), float(s)) for r, s in re.findall(r'title="row (\d+), score ([\d.]+)"', cells[2])]
        members = np.flatnonzero(labels == c)
        lowest = members[np.argsort(margin[members], kind="stable")[:8]]
        assert [r for r, _ in doubted] == lowest.tolist()
        assert np.allclose([s for _, s in doubted], margin[lowest], atol=1e-3)
        assert len(re.findall(r'title="row \d+"', cells[1])) == 8  # the centre images


def test_a_self_conditioned_run_is_mapped_in_its_parents_space(store):
    from cci_core.generate import selfcond as sc
    params = sc.SelfCondParams(steps=4, recluster_every=2, width=8, z_dim=16, batch_size=32, checkpoint_every=4,
                               device="cpu")
    sc.selfcond_local(store, "km", params, new_run_id="sc", log=lambda *a: None)
    page = explorer_path(store.run_dir("sc")).read_text()
    assert "clustering space of run km (an ancestor)" in page
    assert {t["name"]: len(t["text"]) for t in figure_traces(page)} == expected_counts(read_labels(store.run_dir("sc")),
                                                                                     5000)
