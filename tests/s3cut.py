"""An object store that stops answering mid-run, at a known request: a TCP proxy in front of the
moto server (tests/s3server.py) that forwards everything until a request names a chosen key,
then closes every connection and stops listening, as an endpoint that went away does.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class CutProxy:
    """Forward 127.0.0.1:<port> to ``upstream`` (host, port) until a request line holds ``cut_at``."""

    def __init__(self, upstream: tuple[str, int], cut_at: bytes):
        self.upstream, self.cut_at = upstream, cut_at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and self.cut_at in data:
                    self.stop()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Go away: refuse new connections and drop the open ones."""
        self.cut.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()


@contextlib.contextmanager
def cut_proxy(endpoint: str, cut_at: str) -> Iterator[CutProxy]:
    """A :class:`CutProxy` in front of ``endpoint`` (``http://127.0.0.1:PORT``), stopped at the end."""
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    proxy = CutProxy((host, int(port)), cut_at.encode())
    try:
        yield proxy
    finally:
        proxy.stop()
