"""What the flows share: the keys and text of their Prefect artifacts (figures to 4 significant
digits, links to folders and runs, pictures embedded in markdown) and the check of a flow's options."""
from __future__ import annotations

import base64
import math
from pathlib import Path

from cci_core.store import fs


def artifact_key(*parts) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    text = "-".join(str(p) for p in parts).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")[:120]


def checked_options(what: str, options: dict | None, known: set[str]) -> dict:
    """A copy of a flow's OPTIONS, refused (ValueError) when one is not among KNOWN."""
    unknown = set(options or {}) - known
    if unknown:
        raise ValueError(f"unknown {what} option(s) {sorted(unknown)}; known: {sorted(known)}")
    return dict(options or {})


def fig(value, digits: int = 4):
    """VALUE rounded to DIGITS significant digits (ints, text and None unchanged)."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value) or value == 0:
        return value
    places = digits - 1 - math.floor(math.log10(abs(value)))
    return round(value, places) if places > 0 else int(round(value, places))  # 65030, not 65030.0


def fig_row(row: dict, digits: int = 4) -> dict:
    """A table row with every float rounded by :func:`fig`."""
    return {k: fig(v, digits) for k, v in row.items()}


def file_link(path: str | Path, text: str | None = None) -> str:
    """A markdown link to a local file or folder (``file://`` URI), shown as its path; a path in
    an object store links to its URL (``s3://...``)."""
    if fs.is_url(path):
        return f"[{text or path}]({fs.as_path(path)})"
    p = Path(path).resolve()
    return f"[{text or p}]({p.as_uri()})"


def png_markdown(path: str, title: str) -> str:
    """A PNG embedded in markdown under a heading, with a link to its file (local or in an object store)."""
    data = base64.b64encode(fs.as_path(path).read_bytes()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n{file_link(path)}\n"


def ui_url() -> str | None:
    """The Prefect UI's address (derived from ``PREFECT_API_URL`` when not set)."""
    from prefect.settings import PREFECT_UI_URL
    try:
        url = PREFECT_UI_URL.value()
    except Exception:  # noqa: BLE001 - no UI known: links are left out
        return None
    return url.rstrip("/") if url else None


def run_link(flow_run_id, text: str) -> str:
    """A markdown link to a flow run's page in the Prefect UI (the text alone without a UI)."""
    base = ui_url()
    return f"[{text}]({base}/runs/flow-run/{flow_run_id})" if base and flow_run_id else text


def metrics_text(metrics: dict, keys=("acc", "nmi", "ari", "silhouette", "fid", "kid", "coverage")) -> str:
    """``acc 0.6123, nmi 0.5901`` from the headline KEYS present in METRICS."""
    return ", ".join(f"{k} {fig(float(metrics[k]))}" for k in keys
                     if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool))
