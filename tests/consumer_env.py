"""A plain virtual environment that has what a dataset consumer has, and not the project.

``consumer_python()`` builds it once per machine (cached under ``~/.cache/cci-consumer-venv/<hash>``,
the hash of the interpreter version and the requirements) and returns its interpreter. No system
site-packages, no project, no prefect, no torch: what a consumer installs from PyPI. If the build
fails, it raises with pip's last lines (a test using it fails, it does not skip).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

REQUIREMENTS = ["datasets", "duckdb", "pyarrow", "pillow"]


def _key(requirements: list[str]) -> str:
    blob = f"{sys.version_info[:3]}|{' '.join(requirements)}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def consumer_python(requirements: list[str] = REQUIREMENTS) -> Path:
    """The interpreter of the cached consumer venv, built on first use (about a minute)."""
    base = Path(os.environ.get("CCI_CONSUMER_VENV_CACHE", Path.home() / ".cache" / "cci-consumer-venv"))
    final = base / _key(requirements)
    python = final / "bin" / "python"
    if (final / ".complete").exists():
        return python
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".build-{uuid.uuid4().hex[:8]}"
    try:
        # a venv made from this (project) venv's interpreter is still a plain one: no --system-site-packages
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, text=True)
        pip = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
                             capture_output=True, text=True, timeout=900)
        if pip.returncode != 0:
            raise RuntimeError(f"cannot build the consumer venv ({' '.join(requirements)} from PyPI): "
                               + (pip.stderr or pip.stdout)[-1500:])
        (tmp / ".complete").write_text(" ".join(requirements) + "\n")
        try:
            os.rename(tmp, final)  # another process may have won: then use its copy
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (final / ".complete").exists():
        raise RuntimeError(f"the consumer venv {final} was not built")
    return python
