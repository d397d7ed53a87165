"""One PNG with the per-round curves of a refinement (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cci_core.store import fs  # noqa: E402

CURVES = ("acc", "nmi", "ari", "pred_nmi", "silhouette", "selection_score", "knn_consistency",
          "trusted", "agreement")


def plot_rounds(history: list[dict], path: str | Path) -> Path:
    """Plot every metric in ``CURVES`` present in ``history`` against the round number."""
    path = fs.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in CURVES:
        pts = [(h["round"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
    ax.set_xlabel("round")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fs.savefig(fig, path, dpi=100)
    plt.close(fig)
    return path
