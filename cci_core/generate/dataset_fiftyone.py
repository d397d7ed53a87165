"""A published dataset version as a FiftyOne import folder (:mod:`cci_core.store.export_fiftyone`).

Each image is labelled with the cluster it was generated for and the manifest's ``confidence`` (the
scoring classifier's probability for ``classifier_label``, which is that cluster on accepted rows);
``classifier_label``, ``accepted``, ``image_id`` and ``index`` ride on the label as attributes. The
embedding of each image is the one of the classifier that scored it (:func:`scoring_space`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cci_core.generate.dataset_run import scoring_space
from cci_core.store import dataset_card, runs
from cci_core.store.datasets import DatasetVersion
from cci_core.store.export_fiftyone import write_fiftyone
from cci_core.store.store import Store


def export_dataset_fiftyone(store: Store, ds: DatasetVersion, out_dir: str | Path, device=None,
                            batch_size: int = 512) -> Path:
    """Write ``ds`` as a FiftyOne import folder at ``out_dir`` (new or empty); returns it.

    Needs the run that made the dataset (the card's ``run_id``) in ``store``, for its classifier.
    """
    from cci_core.generate.eval_references import space_fns
    card, m = ds.card, ds.manifest
    run_id = card.get("run_id")
    if not run_id:
        raise ValueError(f"dataset {ds.name!r} v{ds.version}: its card.json names no run_id, so there is no "
                         "classifier to embed its images with; export it with --format imagefolder or parquet")
    space, _, desc = scoring_space(store, runs.finished_run(store, run_id))
    features = space_fns(space, device)[0]
    clusters, predicted = m["cluster"].to_numpy(np.int64), m["classifier_label"].to_numpy(np.int64)
    classes = dataset_card.class_names(card, sorted({int(c) for c in np.concatenate([clusters, predicted])}))
    images = ds.images

    def embed(start: int, stop: int) -> np.ndarray:
        x = images[start:stop]
        return np.concatenate([features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    attributes = {"classifier_label": np.array([classes[c] for c in predicted], dtype=object),
                  "accepted": m["accepted"].to_numpy(bool), "image_id": m["image_id"].to_numpy(str),
                  "index": m["index"].to_numpy(np.int64)}
    notes = {"label": "the cluster the image was generated for",
             "confidence": f"the {desc}'s probability for classifier_label (the cluster itself where accepted)",
             "embedding": f"the {desc}'s embedding of the image", "dataset": f"{ds.name}@v{ds.version}"}
    return write_fiftyone(out_dir, lambda a, b: images[a:b], clusters, classes, m["confidence"].to_numpy(),
                          embed, f"{ds.name}-v{ds.version}", attributes, notes)
