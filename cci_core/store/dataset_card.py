"""What a published dataset says about itself: cluster names, license, evaluation, README.md card.

A version folder holds ``card.json`` (for programs) and ``README.md`` (a Hugging Face style dataset
card with YAML front matter, for people and the Hub). Both are built from the same card dict, and
every path in them is relative to the version folder, so a copied folder still reads right.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cci_core.store.record_check import read_table

PARTITION_FIX = "restore the run folder from a backup, or run the step again under a new --run-id"

# The class names of Fashion-MNIST, in label order (the idx files store 0..9).
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
# Licenses of the sources the project knows; anything else is "other" (the source's own terms).
KNOWN_LICENSES = {"fashion-mnist": "mit", "builtin:digits": "cc-by-4.0"}
INTENDED_USE = ("Research and testing of clustering, image generation and data pipelines; augmenting or "
                "probing classifiers on the source corpus's domain.")
LIMITATIONS = ("Images are synthetic or derived and inherit the biases and the license of the source corpus. "
               "Cluster ids come from unsupervised clustering: they are not ground-truth classes; the cluster "
               "names give the most common source label and its share (purity) where the corpus has labels. "
               "Generated images were scored by a classifier trained on the same clusters, so 'accepted' "
               "measures agreement with that classifier, not correctness.")


def source_license(source: str | None) -> str:
    """The license identifier (Hub style) of a known source, else ``other``."""
    s = (source or "").lower()
    return next((lic for key, lic in KNOWN_LICENSES.items() if key in s), "other")


def label_names(source: str | None) -> dict[str, str]:
    """Readable names of a known source's labels ({"7": "Sneaker"}), else {}."""
    if "fashion" in (source or "").lower():
        return {str(i): n for i, n in enumerate(FASHION_MNIST_CLASSES)}
    return {}


def cluster_profile(partitions: list[dict], labels: np.ndarray | None, names: dict[str, str] | None = None) -> dict:
    """Per cluster: size, and where the corpus has labels its majority label and purity.

    partitions : the run's partitions (``cluster``, ``count``, ``path`` of a Parquet file with ``row``)
    labels : the corpus's label per row (strings, None where unknown), or None
    Returns ``{"3": {"size": 7012, "majority_label": "Sneaker", "purity": 0.91,
    "name": "cluster-3 (mostly Sneaker, 0.91)"}, ...}``.
    """
    names = names or {}
    out = {}
    for p in sorted(partitions, key=lambda p: int(p["cluster"])):
        c = int(p["cluster"])
        entry: dict = {"size": int(p["count"]), "name": f"cluster-{c}"}
        if labels is not None:
            rows = read_table(p["path"], PARTITION_FIX, columns=["row"])["row"].to_numpy(np.int64)
            lab = pd.Series(labels[rows[rows < len(labels)]]).dropna().astype(str)
            if len(lab):
                counts = lab.value_counts()
                top = str(counts.index[0])
                entry.update(majority_label=names.get(top, top), purity=round(float(counts.iloc[0] / len(lab)), 3),
                             labelled=int(len(lab)))
                entry["name"] = f"cluster-{c} (mostly {entry['majority_label']}, {entry['purity']:.2f})"
        out[str(c)] = entry
    return out


def evaluation_summary(report: dict, group: str) -> dict:
    """What ``cci evaluate`` measured of one model group (``reports/generation.json``), rounded, for the card:
    the headline in the classifier's feature space (FD, KID, precision/recall/density/coverage, fidelity),
    the real-vs-real floor of each measure, the unconditional baseline's figures beside them, every sample
    size, and per cluster FD and coverage; {} when that group was not evaluated."""
    space = "classifier"
    rep = (report.get("reports") or {}).get(space, {}).get(group)
    if not rep:
        return {}
    keep = ("fid", "kid", "precision", "recall", "density", "coverage", "fidelity")

    def figures(r: dict) -> dict:
        return {m: round(float(r[m]), 4) for m in keep if isinstance(r.get(m), (int, float))}

    info = (report.get("feature_spaces") or {}).get(space, {})
    out = {"feature_space": space, "feature_space_note": info.get("note"), "group": group,
           "n_real": rep.get("n_real"), "n_fake": rep.get("n_fake"), **figures(rep)}
    floor = (report.get("floor") or {}).get(space)
    if floor:
        out["floor"] = {"n_real": floor.get("n_real"), "n_fake": floor.get("n_fake"), **figures(floor)}
    base = (report.get("reports") or {}).get(space, {}).get("baseline")
    if base and group != "baseline":
        out["baseline"] = {"n_real": base.get("n_real"), "n_fake": base.get("n_fake"), **figures(base)}
    per = ((report.get("per_cluster") or {}).get(space) or {}).get(group) or {}
    if per:
        out["per_cluster"] = {k: {m: (round(float(e[m]), 4) if m not in ("n_real", "n_fake") else e[m])
                                  for m in ("fid", "coverage", "precision", "recall", "n_real", "n_fake")
                                  if isinstance(e.get(m), (int, float))}
                              for k, e in sorted(per.items(), key=lambda kv: int(kv[0]))}
    return out


def _local_partitions(store, run: dict) -> list[dict]:
    """The run's partitions with their paths in this store (a run dict not read through ``runs.read_run``
    may hold the writer's absolute ones)."""
    rdir = store.run_dir(run["run_id"]) / "partitions"
    return [{**p, "path": str(rdir / f"cluster-{int(p['cluster']):03d}.parquet")}
            if (rdir / f"cluster-{int(p['cluster']):03d}.parquet").exists() else p for p in run["partitions"]]


def generated_card_fields(store, run: dict, kind: str) -> dict:
    """Card fields of a dataset generated from ``run``'s models of ``kind`` (``cluster`` or ``conditional``):
    license of the source corpus, the clusters (named by majority source label and purity where the
    corpus has labels), and the evaluation's FD/coverage when ``cci evaluate`` has run on it."""
    from cci_core.store.corpus import open_corpus
    from cci_core.store.store import read_json
    corpus = open_corpus(store, run["corpus"], run["corpus_version"])
    source = " ".join(str(v.get("source", "")) for v in corpus.versions[: corpus.version])
    fields = {"license": source_license(source),
              "clusters": cluster_profile(_local_partitions(store, run), corpus.labels(), label_names(source)),
              "reproducibility": "On CPU the same seed, models and classifier give byte-identical images and "
                                 "manifest (each cluster's draw has its own recorded seed). On a GPU, "
                                 "non-deterministic kernels can change pixels between runs."}
    if fields["license"] == "other":
        fields["license_note"] = f"The terms of the source images ({source}) apply."
    report = store.run_dir(run["run_id"]) / "reports" / "generation.json"
    if report.exists():
        ev = evaluation_summary(read_json(report), "per_cluster" if kind == "cluster" else "conditional")
        if ev:
            fields["evaluation"] = ev
    return fields


def class_names(card: dict, clusters: list[int]) -> list[str]:
    """ClassLabel names for cluster ids 0..max: the card's cluster names, else ``cluster-<k>``."""
    known = card.get("clusters") or {}
    top = max(clusters) if clusters else -1
    return [known.get(str(c), {}).get("name", f"cluster-{c}") for c in range(top + 1)]


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def readme(card: dict) -> str:
    """The README.md dataset card of a version (YAML front matter, then Markdown)."""
    lic = card.get("license", "other")
    front = ["---", f"license: {lic}", "task_categories:", "- image-classification",
             "- unconditional-image-generation", "tags:", "- synthetic", "- cci", f"pretty_name: {card['name']}",
             "size_categories:", f"- {_size_category(card['n_images'])}", "configs:", "- config_name: all",
             "  data_files: data.parquet", "  default: true"]
    if "accepted" in (card.get("files") or {}):
        front += ["- config_name: accepted", f"  data_files: {card['files']['accepted']}"]
    front += ["---", ""]
    lineage = card.get("lineage") or {}
    lines = [f"# {card['name']} v{card['version']}", "", card.get("description", ""), "",
             f"{card['n_images']:,} images, {'x'.join(map(str, card['shape']))} uint8, created {card['created_at']}.",
             f"Lineage id: `{lineage.get('artifact_id')}` (`cci lineage show {lineage.get('artifact_id')}`).", "",
             "## Intended use", "", card.get("intended_use", INTENDED_USE), "",
             "## Limitations", "", card.get("limitations", LIMITATIONS), ""]
    if lic == "other":
        lines += ["## License", "", card.get("license_note", "The terms of the source corpus apply."), ""]
    clusters = card.get("clusters") or {}
    if clusters:
        lines += ["## Clusters", "", "| cluster | name | source cluster size | majority source label | purity |",
                  "|---|---|---|---|---|"]
        for c, e in clusters.items():
            lines.append(f"| {c} | {e['name']} | {e['size']:,} | {e.get('majority_label', '')} | "
                         + (f"{e['purity']:.2f}" if "purity" in e else "") + " |")
        lines.append("")
    ev = card.get("evaluation") or {}
    if ev:
        lines += _quality_section(ev)
    if card.get("reproducibility"):
        lines += ["## Reproducibility", "", card["reproducibility"], ""]
    lines += ["## Files", "", "- `data.parquet`: one row per image, an `image` column (PNG bytes) with Hugging Face "
              "`datasets` features (`Image`, `ClassLabel` clusters) and the manifest columns (configuration `all`)",
              *(["- `accepted.parquet`: the same, only the images the classifier accepted (configuration "
                 "`accepted`)"] if "accepted" in (card.get("files") or {}) else []),
              "- `images.zarr`: all images as one (n, H, W, C) uint8 Zarr v3 array; row i is manifest row i",
              "- `manifest.parquet`: one row per image (provenance)", "- `card.json`: this card, for programs", "",
              "## How to read it", "", "Paths are relative to this folder.", "", "```python", *how_to_read(), "```", ""]
    if card.get("schema"):
        lines += ["## Manifest columns", ""] + [f"- `{k}`: {v}" for k, v in card["schema"].items()] + [""]
    return "\n".join(front + lines)


def _quality_section(ev: dict) -> list[str]:
    """The card's "Generation quality" section: the headline, the floor and the baseline, per cluster."""
    shown = ("fid", "kid", "coverage", "precision", "recall", "fidelity")
    cols = [m for m in shown if m in ev]
    rows = [("these images' models", ev)] + [(name, ev[key]) for key, name in
                                            (("baseline", "one unconditional GAN (baseline)"),
                                             ("floor", "real vs real (the floor)")) if key in ev]
    out = ["## Generation quality", "",
           f"Measured by `cci evaluate` before publishing, in the {ev.get('feature_space')} feature space"
           + (f" ({ev['feature_space_note']})" if ev.get("feature_space_note") else "")
           + ". FD is the Fréchet distance on those features (not FID: no Inception network), lower is better; "
             "KID is x1000.", "",
           "| | generated / real images | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, r in rows:
        out.append(f"| {name} | {r.get('n_fake')} / {r.get('n_real')} | "
                   + " | ".join(f"{r[m]:.4g}" if m in r else "" for m in cols) + " |")
    per = ev.get("per_cluster") or {}
    if per:
        out += ["", "Per cluster (the images made for a cluster against that cluster's real images):", "",
                "| cluster | generated / real images | FD | coverage |", "|---|---|---|---|"]
        out += [f"| {k} | {e.get('n_fake')} / {e.get('n_real')} | "
                + " | ".join(f"{e[m]:.4g}" if m in e else "–" for m in ("fid", "coverage")) + " |"
                for k, e in per.items()]
    return out + [""]


def how_to_read() -> list[str]:
    """Reading recipes, paths relative to the version folder."""
    return ['import datasets; ds = datasets.load_dataset("parquet", data_files="data.parquet")["train"]',
            'accepted = datasets.load_dataset(".", "accepted", split="train")  # only accepted images',
            'ds.features["cluster"].names  # cluster names; ds[0]["image"] is a PIL image',
            'import zarr, pyarrow.parquet as pq; images = zarr.open_array("images.zarr", mode="r")',
            'manifest = pq.read_table("manifest.parquet").to_pandas()  # row i describes images[i]',
            'import duckdb; duckdb.sql("SELECT cluster, count(*) FROM \'manifest.parquet\' GROUP BY cluster")']
