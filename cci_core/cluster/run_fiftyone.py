"""A labelling run as a FiftyOne import folder (:mod:`cci_core.store.export_fiftyone`): every corpus
row's image, its cluster, the run's confidence in it and the run's embedding, as the explorer reads
them (:func:`cci_core.cluster.explore.run_view`): a clustering run's space and margin ``1 - d1/d2``, a
refined run's unit classifier embedding and top softmax probability. Where the corpus has labels,
each row's ``source_label`` rides on its cluster label."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.cluster.explore import n_clusters, open_run_view
from cci_core.store.export_fiftyone import write_fiftyone
from cci_core.store.store import Store


def export_run_fiftyone(store: Store, run_id: str, out_dir: str | Path) -> Path:
    """Write run ``run_id`` as a FiftyOne import folder at ``out_dir`` (new or empty); returns it."""
    import dask
    run, corpus, view = open_run_view(store, run_id, "export")
    labels = view.labels
    k = n_clusters(labels)
    images = corpus.images()

    def embed(start: int, stop: int) -> np.ndarray:
        with dask.config.set(scheduler="threads"):
            return np.asarray(view.space[start:stop].compute())

    y = corpus.labels()
    attributes = None if y is None else {"source_label": np.array(["" if pd.isna(v) else str(v) for v in y], dtype=object)}
    notes = {"label": "the run's cluster (noise: -1)", "confidence": view.doubt_name,
             "embedding": ("the kept round's classifier embedding, unit length" if view.fit_map
                           else "the clustering space the run's centres live in"),
             "run": run_id}
    return write_fiftyone(out_dir, lambda a, b: images[a:b], labels, [f"cluster-{c}" for c in range(k)], view.doubt,
                          embed, f"run-{run_id}", attributes, notes)
