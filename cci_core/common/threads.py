"""Keep torch's intra-op thread count across code that runs numba's parallel kernels.

UMAP and pynndescent run numba ``parallel=True`` kernels; numba's OpenMP layer shares the
``libgomp`` that torch loaded and sets its thread count to ``NUMBA_NUM_THREADS`` (every
core). Torch's next convolution then runs on that many threads, reduces in another order,
and training after the first UMAP of a process differs from training before it: a resumed
refinement would not equal an uninterrupted one.
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
