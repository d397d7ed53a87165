"""Palette benchmark, one run on this machine -> benchmarks/results/palette.json.

Part 1, scikit-learn's two sample photographs (china.jpg, flower.jpg) at 16 and 64 colours:
  mean CIEDE2000 (scikit-image) and PSNR (dB, RGB) of the rendered image against the original,
  and wall time (learn + render; best of ``--reps``) for
  * this project: ``cci_core.palette.palette.learn_palette`` (k-means in CIELAB over every pixel; by
    default the exact histogram path on the distinct colours, and ``method="pixels"``: mini-batch
    k-means + Lloyd passes over the Dask pixel array) + ``cci_core.palette.render.render``;
  * Pillow ``Image.quantize``: median cut and fast octree;
  * scikit-learn's colour-quantisation recipe: KMeans fitted on 1,000 random pixels (RGB in
    [0, 1], random_state=0), predict every pixel.
Part 2, the palette (k = 8) over every pixel of Fashion-MNIST 70k (train + test, 54.9 M pixels)
  stored as a Zarr corpus: pixels/s and peak memory (ru_maxrss of a fresh subprocess that only
  imports the library, opens the corpus and learns the palette (VmHWM); the peak right after the imports
  is reported too), for the default (exact 256-bin histogram) path and for the all-pixel path
  (mini-batch k-means + Lloyd passes over the Dask pixel array).

Run: python benchmarks/palette.py [--reps 3] [--skip-fmnist]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402  (after the sys.path line above)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
OUT = ROOT / "benchmarks" / "results" / "palette.json"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def quality(img, out, ref_lab):
    from skimage.color import deltaE_ciede2000, rgb2lab
    return {"ciede2000": round(float(deltaE_ciede2000(ref_lab, rgb2lab(out)).mean()), 3),
            "psnr": round(psnr(img, out), 3), "n_colors": len(np.unique(out.reshape(-1, 3), axis=0))}


def ours(img, k, method="auto"):
    from cci_core.palette.palette import learn_palette
    from cci_core.palette.render import render
    pal = learn_palette(img, k, method=method)
    return render(img, pal), {"path": pal.meta["method"], "n_bins": pal.meta.get("n_bins")}


def pillow(img, k, method):
    from PIL import Image
    m = {"mediancut": Image.Quantize.MEDIANCUT, "fastoctree": Image.Quantize.FASTOCTREE}[method]
    return np.asarray(Image.fromarray(img).quantize(k, method=m).convert("RGB")), {}


def sklearn_recipe(img, k):
    from sklearn.cluster import KMeans
    from sklearn.utils import shuffle
    x = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
    sample = shuffle(x, random_state=0, n_samples=1000)
    km = KMeans(n_clusters=k, random_state=0).fit(sample)
    lab = km.predict(x)
    return np.clip(np.rint(km.cluster_centers_[lab] * 255), 0, 255).astype(np.uint8).reshape(img.shape), {}


def photos(reps: int) -> list[dict]:
    from skimage.color import rgb2lab
    from sklearn.datasets import load_sample_image
    methods = {"cci (k-means, Lab, all pixels)": ours,
               "cci --method pixels (Dask pixel array)": lambda i, k: ours(i, k, "pixels"),
               "pillow median cut": lambda i, k: pillow(i, k, "mediancut"),
               "pillow fast octree": lambda i, k: pillow(i, k, "fastoctree"),
               "sklearn recipe (KMeans on 1,000 px)": sklearn_recipe}
    rows = []
    for name in ("china.jpg", "flower.jpg"):
        img = load_sample_image(name)
        ref = rgb2lab(img)
        for k in (16, 64):
            for label, fn in methods.items():
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    out, extra = fn(img, k)
                    times.append(time.perf_counter() - t0)
                row = {"image": name, "colors": k, "method": label, "seconds": round(min(times), 3),
                       **quality(img, out, ref), **{k2: v for k2, v in extra.items() if v is not None}}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


CHILD = r"""
import json, sys, time


def hwm_mb():  # peak resident set of this process (VmHWM starts afresh at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
sys.path.insert(0, {root!r})
import dask.array as da
from cci_core.store.corpus import open_corpus
from cci_core.palette.palette import learn_palette
from cci_core.store.store import Store
rss0 = hwm_mb()
c = open_corpus(Store({store!r}), "fmnist")
t0 = time.perf_counter()
pal = learn_palette(da.from_zarr(c.images())[: c.n_rows], 8, method={method!r})
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "n_pixels": pal.n_pixels, "peak_rss_mb": hwm_mb(),
                  "rss_after_imports_mb": rss0, "method": pal.meta["method"], "meta": pal.meta,
                  "colors": [int(c[0]) for c in pal.colors], "shares": [round(float(s), 4) for s in pal.shares],
                  "mse": pal.inertia / pal.n_pixels}}))
"""


def fmnist(reps: int) -> list[dict]:
    from cci_core.ingest.idx import read_idx
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        imgs = np.concatenate([read_idx(FMNIST / "train-images-idx3-ubyte.gz"),
                               read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")])
        np.save(Path(tmp) / "fm.npy", imgs)
        store = Store(Path(tmp) / "store")
        t0 = time.perf_counter()
        ingest_local(store, str(Path(tmp) / "fm.npy"), "fmnist")
        print(f"ingested {len(imgs)} images in {time.perf_counter() - t0:.1f} s (not timed below)", flush=True)
        for method in ("auto", "pixels"):
            runs = []
            for _ in range(reps):
                res = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), store=str(store.root),
                                                                         method=method)],
                                     capture_output=True, text=True, check=False,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
                if res.returncode:
                    raise RuntimeError(res.stderr[-3000:])
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["seconds"])
            row = {"dataset": "fashion-mnist 70k", "colors": 8, "method": best["method"],
                   "n_pixels": best["n_pixels"], "seconds": round(best["seconds"], 3),
                   "seconds_all_runs": [round(r["seconds"], 3) for r in runs],
                   "pixels_per_s": round(best["n_pixels"] / best["seconds"]),
                   "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                   "rss_after_imports_mb": round(best["rss_after_imports_mb"], 1),
                   "colors_gray": best["colors"], "shares": best["shares"], "mse": round(best["mse"], 3),
                   "details": best["meta"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-fmnist", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.time()
    result = {"benchmark": "palette", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                  "python": platform.python_version(),
                                                  "loadavg_at_start": [round(x, 2) for x in load0]},
              "photos": photos(args.reps)}
    if not args.skip_fmnist and FMNIST.exists():
        result["fmnist"] = fmnist(args.reps)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.time() - t0, 1)
    result["note"] = ("Timings are wall-clock on a 2-core machine shared with other CPU-heavy jobs (see loadavg); "
                      "quality numbers are deterministic.")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
