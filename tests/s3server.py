"""A real S3 API on 127.0.0.1 for tests: the moto server, started and stopped by the test."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

S3_ENV = {"AWS_ACCESS_KEY_ID": "cci-test", "AWS_SECRET_ACCESS_KEY": "cci-test",
          "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_dir: Path):
    """Yield the environment (credentials + AWS_ENDPOINT_URL) of a fresh moto S3 server."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    port = _free_port()
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: see {log_dir / 'moto.log'}") from None
                time.sleep(0.2)
        yield {**S3_ENV, "AWS_ENDPOINT_URL": url}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def s3_env(env: dict):
    """Set the S3 variables in this process (and forget cached filesystems) for the block."""
    import fsspec
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fsspec.filesystem("s3").clear_instance_cache()


def make_bucket(name: str) -> str:
    import fsspec
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"
