"""A background sampler for the benchmarks: ``sample()`` every ``interval`` seconds in a daemon
thread while the ``with`` block runs (memory and CPU of processes, read with psutil)."""
from __future__ import annotations

import threading
import time


class Sampler:
    """Subclasses define ``sample()``; the block calls it every ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
