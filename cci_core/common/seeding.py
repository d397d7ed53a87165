"""Seeded model construction that other threads of the same process cannot disturb.

Layer initialisation draws from torch's process-wide RNG. Two trainings running as threads of
one process (a Dask worker with several threads, a thread-pool task runner) would interleave
their draws after each one's ``torch.manual_seed``, so a model's initial weights, and
everything trained from them, would depend on thread timing.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG with ``seed`` and hold it for this block alone.

    Build models inside the block (and draw nothing else from the global RNG after it): every
    other ``seeded`` block of the process waits, so the weights depend on ``seed`` only.
    """
    with _LOCK:
        torch.manual_seed(seed)
        yield
