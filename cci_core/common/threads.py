"""How many CPU threads compute code uses: a fixed count for torch, BLAS and numba together
(:func:`compute_threads`), and torch's count kept across numba's kernels (:func:`torch_threads_kept`).

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


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Torch, BLAS (threadpoolctl) and numba on ``n`` threads inside the block; restored afterwards.

    CPU results depend on the count (reductions split differently), so a result records it.
    """
    import numba
    import torch
    from threadpoolctl import threadpool_limits
    if n < 1:
        raise ValueError(f"threads={n} must be >= 1")
    with torch_threads_kept(), threadpool_limits(limits=n):
        numba_before = numba.get_num_threads()  # (starting numba's pool can change libgomp's count)
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        torch.set_num_threads(n)
        try:
            yield
        finally:
            numba.set_num_threads(numba_before)
