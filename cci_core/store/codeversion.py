"""The code version recorded with every artifact: package version + git commit."""
from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    try:
        version = metadata.version("cci")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    commit = os.environ.get("CCI_GIT_COMMIT")
    if not commit:
        try:
            out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                 text=True, timeout=5, cwd=Path(__file__).resolve().parent)
            commit = out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return f"{version}+g{commit}" if commit else version
