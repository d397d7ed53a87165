"""The refinement validation suite's labelled corpora, built deterministically and ingested.

Refinement defaults are chosen over many unlike corpora, never one (issue 29): each corpus
here differs from Fashion-MNIST in a way users meet. Every builder is a pure function of its
source files and a seed that returns the images, the true labels and a description of how it
was built (source, classes, sizes, seed, resampling); :func:`ingest` stores a corpus through
the real `cci ingest`, so its true labels sit in the corpus index exactly as the Fashion-MNIST
ingest stores them (the class id as a string: "0".."9") and benchmarks can score with them.
Labels only score: nothing in a benchmarked run reads them to choose anything.

Corpora (name: what it is):

- ``fmnist``: Fashion-MNIST, all 70,000 28x28 images, 10 balanced classes (the IDX folder
  ingested as is, the order `cci ingest` gives: t10k then train).
- ``fmnist-unbalanced``: Fashion-MNIST with class sizes falling geometrically from 7,000 to
  350 (ratio 20 over the 10 classes: 7000 * 20 ** (-i / 9), rounded); which class gets which
  size is a permutation drawn from the seed, and the rows of each class are drawn from the
  seed too (without replacement, kept in source order): 23,837 images.
- ``fmnist-lookalikes``: only the five upper-body garments that look alike, T-shirt/top (0),
  pullover (2), dress (3), coat (4) and shirt (6): 35,000 images, labels kept as the
  original class ids.
- ``digits16`` / ``digits32``: scikit-learn's digits (1,797 images, 8x8, values 0..16, about
  180 per class) scaled to 0..255 as `cci ingest builtin:digits` does, then resized to
  16x16 / 32x32 with the ingest's own resize (Pillow Lanczos, stretch).
- ``opencv-digits``: OpenCV's handwritten digits sheet (``digits.png``, 5,000 20x20
  images, 500 per class; MNIST-like handwriting at a size of its own), shipped inside the Debian
  package ``opencv-doc`` (``apt-get install opencv-doc``; /usr/share/doc/opencv-doc/examples/
  data/digits.png); labels are the sheet's layout: rows of 100 digits, 5 rows per class.

What else is installable here with its data inside the package (checked 2026-12, no download
at run time): Debian has ``dataset-fashion-mnist`` (used) and ``opencv-doc`` (its digits
sheet, used); its other image data (``visp-images-data``, OpenCV's sample pictures) are not
labelled class corpora. On PyPI, scikit-learn's digits is the only labelled image corpus found
bundled in a package: scikit-learn's Olivetti faces and LFW, torchvision, keras,
tensorflow-datasets, medmnist, emnist, ``mnist``, ``mnists``, ``quickdraw`` and the like
download their data at run time, so they cannot be used here.

    python benchmarks/corpora.py --store /tmp/suite --corpora digits16 digits32

builds and ingests corpora into a store (the suite benchmark, benchmarks/refine.py --suite,
calls :func:`ingest` itself).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cci_core.ingest.idx import read_idx  # noqa: E402
from cci_core.ingest.images import resize  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
LOOKALIKES = (0, 2, 3, 4, 6)
UNBALANCED_LARGEST, UNBALANCED_RATIO = 7000, 20
CCI = Path(sys.executable).parent / "cci"


class CorpusBuildError(RuntimeError):
    """A corpus's source files are missing or not what the builder expects."""


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        raise CorpusBuildError(f"{path} is missing: {how}")
    return path


@functools.lru_cache(maxsize=1)
def fashion_mnist(root: Path = FMNIST) -> tuple[np.ndarray, np.ndarray]:
    """All of Fashion-MNIST in the row order `cci ingest ROOT` stores it (t10k, then train);
    cached (read-only arrays: the builders index them, never write).

    Returns
    -------
    images : (70000, 28, 28) uint8
    labels : (70000,) int64, class ids 0..9
    """
    how = "install the Debian package dataset-fashion-mnist"
    parts = [(read_idx(_need(root / f"{s}-images-idx3-ubyte.gz", how)),
              read_idx(_need(root / f"{s}-labels-idx1-ubyte.gz", how))) for s in ("t10k", "train")]
    X, y = np.concatenate([p[0] for p in parts]).astype(np.uint8), np.concatenate([p[1] for p in parts]).astype(np.int64)
    X.flags.writeable = y.flags.writeable = False
    return X, y


def geometric_sizes(n_classes: int, largest: int = UNBALANCED_LARGEST, ratio: float = UNBALANCED_RATIO) -> list[int]:
    """Class sizes falling geometrically from ``largest`` to ``largest / ratio``, rounded."""
    if n_classes < 2:
        raise ValueError(f"n_classes={n_classes} must be >= 2")
    return [int(round(largest * ratio ** (-i / (n_classes - 1)))) for i in range(n_classes)]


def unbalanced(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fashion-MNIST with geometric class sizes; which class gets which size drawn from ``seed``.

    Parameters
    ----------
    images : (N, H, W) uint8;  labels : (N,) int, every class holding at least the largest size
    seed : the permutation of sizes over classes and the rows kept of each class

    Returns
    -------
    images (M, H, W), labels (M,) in source order, and the build record (sizes per class).
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    sizes = geometric_sizes(len(classes))
    order = rng.permutation(len(classes))  # classes[order[i]] gets sizes[i]
    size_of = {int(classes[order[i]]): sizes[i] for i in range(len(classes))}
    keep = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if len(rows) < size_of[int(c)]:
            raise CorpusBuildError(f"class {c} has {len(rows)} images, fewer than its size {size_of[int(c)]}")
        keep.append(rng.choice(rows, size_of[int(c)], replace=False))
    rows = np.sort(np.concatenate(keep))
    info = {"sizes": {str(c): size_of[c] for c in sorted(size_of)},
            "sizes_rule": f"{UNBALANCED_LARGEST} * {UNBALANCED_RATIO} ** (-i / 9), rounded, i = 0..9; "
                          "class for size i: a permutation drawn from the seed",
            "class_for_size": [int(classes[j]) for j in order]}
    return images[rows], labels[rows], info


def lookalikes(images: np.ndarray, labels: np.ndarray, keep: tuple[int, ...] = LOOKALIKES) -> tuple[np.ndarray, np.ndarray]:
    """Only the rows of the classes in ``keep`` (labels kept as the original ids), in source order."""
    rows = np.flatnonzero(np.isin(labels, keep))
    return images[rows], labels[rows]


def digits_resized(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits at ``size`` x ``size``: 0..16 scaled to 0..255 as ingest does, then Lanczos.

    Returns
    -------
    images : (1797, size, size) uint8;  labels : (1797,) int64, 0..9
    """
    from sklearn.datasets import load_digits
    d = load_digits()
    small = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    out = np.stack([np.asarray(resize(Image.fromarray(im, "L"), size, size, "stretch"), dtype=np.uint8)
                    for im in small])
    return out, d.target.astype(np.int64)


def opencv_digits(path: Path = OPENCV_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's digits sheet cut into its 5,000 20x20 digits; label = sheet row // 5.

    Returns
    -------
    images : (5000, 20, 20) uint8, row-major over the sheet;  labels : (5000,) int64, 0..9
    """
    sheet = np.asarray(Image.open(_need(path, "install the Debian package opencv-doc")).convert("L"))
    if sheet.shape != (1000, 2000):
        raise CorpusBuildError(f"{path}: expected a 1000x2000 sheet of 20x20 digits, got {sheet.shape}")
    tiles = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    return np.ascontiguousarray(tiles), np.repeat(np.arange(50) // 5, 100).astype(np.int64)


def _fmnist_derived(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    X, y = fashion_mnist()
    if kind == "unbalanced":
        X, y, info = unbalanced(X, y, seed)
        return X, y, {**info, "source": str(FMNIST), "classes": {str(c): FMNIST_CLASSES[c] for c in range(10)}}
    X, y = lookalikes(X, y)
    return X, y, {"source": str(FMNIST), "classes": {str(c): FMNIST_CLASSES[c] for c in LOOKALIKES}}


def _digits(size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    X, y = digits_resized(size)
    return X, y, {"source": "sklearn.datasets.load_digits (8x8, 0..16)", "classes": {str(c): str(c) for c in range(10)},
                  "resampling": f"0..16 -> 0..255 (rint(v * 255 / 16)), then 8x8 -> {size}x{size} with "
                                "cci_core.ingest.images.resize: Pillow Lanczos, stretch"}


def _opencv() -> tuple[np.ndarray, np.ndarray, dict]:
    X, y = opencv_digits()
    return X, y, {"source": f"{OPENCV_DIGITS} (Debian opencv-doc)", "classes": {str(c): str(c) for c in range(10)},
                  "layout": "1000x2000 sheet, 50 rows x 100 columns of 20x20 digits, label = row // 5"}


BUILDERS = {
    "fmnist-unbalanced": lambda seed: _fmnist_derived("unbalanced", seed),
    "fmnist-lookalikes": lambda seed: _fmnist_derived("lookalikes", seed),
    "digits16": lambda seed: _digits(16),
    "digits32": lambda seed: _digits(32),
    "opencv-digits": lambda seed: _opencv(),
}
SUITE = ("fmnist", *BUILDERS)


def build(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One derived corpus's images (N, H, W) uint8, labels (N,) int64 and build record."""
    if name not in BUILDERS:
        raise CorpusBuildError(f"unknown corpus {name!r}: the suite's corpora are {', '.join(SUITE)}")
    X, y, info = BUILDERS[name](seed)
    counts = {str(c): int(n) for c, n in zip(*np.unique(y, return_counts=True))}
    return X, y, {"name": name, "seed": seed, "shape": list(X.shape[1:]), "n": int(len(X)),
                  "class_counts": counts, **info}


def ingest(store: Path, name: str, seed: int = 0, sources: Path | None = None) -> dict:
    """Build corpus ``name`` and store it with `cci ingest` (labels in its index); its build record.

    fmnist is the IDX folder ingested as is; the others are written to ``sources``/NAME.npz
    (arrays ``images`` and ``labels``; default: a folder beside the store) and that file is
    ingested. The record adds the ingest's wall seconds and the .npz file's sha256.
    """
    if name == "fmnist":
        X = None
        info = {"name": name, "seed": seed, "source": str(FMNIST), "shape": [28, 28], "n": 70000,
                "class_counts": {str(c): 7000 for c in range(10)},
                "classes": {str(c): FMNIST_CLASSES[c] for c in range(10)}}
        src = str(_need(FMNIST, "install the Debian package dataset-fashion-mnist"))
    else:
        X, y, info = build(name, seed)
        folder = Path(sources) if sources else Path(f"{store}.sources")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.npz"
        np.savez(path, images=X, labels=y)
        info["npz_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        src = str(path)
    t = time.perf_counter()
    out = subprocess.run([str(CCI), "ingest", src, "--corpus", name, "--store", str(store), "--json", "--quiet"],
                         text=True, capture_output=True)
    if out.returncode:
        raise CorpusBuildError(f"cci ingest {src} --corpus {name} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    info["ingest_seconds"] = time.perf_counter() - t
    info["ingest_command"] = f"cci ingest {src} --corpus {name}"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--corpora", nargs="+", default=list(SUITE), choices=SUITE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in args.corpora:
        print(json.dumps(ingest(Path(args.store), name, args.seed)), flush=True)


if __name__ == "__main__":
    main()
