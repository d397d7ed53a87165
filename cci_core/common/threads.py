"""Keep torch's intra-op thread count across code that runs numba's parallel kernels.

UMAP and pynndescent run numba ``parallel=True`` kernels, and numba's OpenMP layer shares the
``libgomp`` that torch loaded. Under ``OMP_NUM_THREADS=1`` (as Dask workers and the test command
run) torch's count went from 1 to every core after a process's first UMAP. Torch then reduces
in another order, so training after that UMAP differed from training before it: a resumed
refinement did not equal an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count (when torch is loaded) after the block."""
    torch = sys.modules.get("torch")  # not imported here: clustering alone never loads it
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None:
            torch.set_num_threads(before)
