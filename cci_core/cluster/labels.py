"""The cluster of every corpus row: ``<run>/clustering/labels.parquet``, its one writer and reader.

Every run that labels a corpus (clustering, refined, self-conditioned, refresh) writes this
file with :func:`write_labels`: columns ``row`` (int64, sorted), ``image_id`` and ``cluster``
(the labels as given; int32 from every stage today, -1 = noise).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cci_core.store import fs
from cci_core.store.corpus import Corpus
from cci_core.store.record_check import read_table
from cci_core.store.store import atomic_write_parquet

LABELS_FILE = "labels.parquet"
RUN_FILES_FIX = "restore the run folder from a backup, or run the step again under a new --run-id"


def write_labels(cdir: str | Path, corpus: Corpus, labels: np.ndarray) -> Path:
    """Write ``cdir/labels.parquet``: one row per committed corpus row, in row order.

    Parameters
    ----------
    cdir : the run's ``clustering/`` folder (created if missing)
    corpus : the corpus version the labels belong to (its ``row`` and ``image_id``)
    labels : (n_rows,) cluster id of each row, in row order; written with its own dtype

    Returns the path written (atomically replaced).
    """
    index = corpus.index(["row", "image_id"]).sort_values("row")
    return atomic_write_parquet(fs.as_path(cdir) / LABELS_FILE, pd.DataFrame(
        {"row": index["row"].to_numpy(np.int64), "image_id": index["image_id"].to_numpy(), "cluster": labels}))


def read_labels(run_dir: str | Path) -> np.ndarray:
    """(N,) int32 cluster ids of a run's corpus rows (-1 = noise)."""
    df = read_table(fs.as_path(run_dir) / "clustering" / LABELS_FILE, RUN_FILES_FIX, columns=["cluster"])
    return df["cluster"].to_numpy(np.int32)
