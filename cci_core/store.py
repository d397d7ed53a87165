"""The artifact store: one root folder holding corpora, runs, datasets and the lineage DB.

Layout (DESIGN.md)::

    <root>/lineage.db
    <root>/corpora/<name>/images.zarr, index.parquet, corpus.json, quarantine.parquet
    <root>/runs/<run-id>/...
    <root>/datasets/<name>/<version>/...

Every file another process may read is written atomically (temp file + rename).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_ROOT = "./cci-store"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Names become folder names: letters, digits, '.', '_', '-' only."""
    if not _NAME_RE.match(name or "") or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit)")
    return name


class Store:
    """Paths inside one artifact store root (a local folder).

    The root comes from the argument, else ``$CCI_STORE``, else ``./cci-store``.
    The lineage database URL comes from ``$CCI_LINEAGE_URL``, else SQLite in the root.
    """

    def __init__(self, root: str | Path | None = None, lineage_url: str | None = None):
        self.root = Path(root or os.environ.get("CCI_STORE") or DEFAULT_ROOT).resolve()
        self.lineage_url = (lineage_url or os.environ.get("CCI_LINEAGE_URL")
                            or f"sqlite:///{self.root / 'lineage.db'}")

    def ensure(self) -> "Store":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def corpus_dir(self, name: str) -> Path:
        return self.root / "corpora" / validate_name(name, "corpus name")

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / validate_name(run_id, "run id")

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / validate_name(name, "dataset name")

    def corpora(self) -> list[str]:
        base = self.root / "corpora"
        return sorted(p.name for p in base.iterdir() if (p / "corpus.json").exists()) if base.exists() else []

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second: the timestamp of every JSON record."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_write_parquet(path: str | Path, df: pd.DataFrame) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
