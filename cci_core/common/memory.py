"""The memory budget (the most bytes of corpus pixels one process holds at once), and a task's peak memory.

One setting, ``$CCI_MEMORY_BUDGET_MB`` (megabytes, default 2048), read here and nowhere else.
A step that reads a corpus keeps all of its rows in memory only when they fit the budget, and
otherwise reads them from Zarr a batch or a window at a time:

* :class:`cci_core.common.torch_data.CorpusImages` (refinement, the autoencoder, embedding a corpus,
  assigning with a classifier) caches the rows only when they fit;
* :class:`cci_core.generate.image_batches.RowSource` (GAN and VAE training) reads a window of
  rows no larger than the budget, and draws batches from it.

Per-row results (embeddings, labels, probabilities) are not pixels and are not counted. Dask
workers read the variable from their own environment: set it where the workers start (for the
warm cluster, before ``cci server start``).
"""
from __future__ import annotations

import math
import os
import threading

ENV = "CCI_MEMORY_BUDGET_MB"
DEFAULT_MB = 2048


def memory_budget_bytes() -> int:
    """The budget in bytes, from ``$CCI_MEMORY_BUDGET_MB`` (2048 MB when unset or empty).

    Raises ValueError naming the variable when it is not a positive number.
    """
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MB * 2**20
    try:
        mb = float(raw)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise ValueError(f"${ENV}={raw!r} is not a positive number of megabytes: set it to e.g. 2048 "
                         f"(the default), or unset it")
    return max(1, int(mb * 2**20))


class PeakRSS:
    """The peak resident memory of this process while the ``with`` block runs, in ``.mb`` (megabytes),
    sampled every ``interval`` seconds by a daemon thread (a task's own peak, which ``ru_maxrss``, the
    process's lifetime peak, is not inside a long-lived worker)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.mb = interval, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil
        proc, last = psutil.Process(), False
        while True:  # one more sample once stopped: the block's end counts too
            self.mb = max(self.mb, proc.memory_info().rss / 2**20)
            if last:
                return
            last = self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
