"""What the refine stage hands on: the plan of a refined run, typed.

The plan is the refined run's ``run.json`` as :func:`cci_core.store.runs.start_derived_run`
writes it; the Prefect tasks pass it on as that dict. :meth:`RefinePlan.from_json` reads it once
at the top of a step and :meth:`RefinePlan.to_json` gives the same dict back (same keys, same
order), so the JSON on disk and between tasks does not change.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cci_core.common.records import JsonRecord
from cci_core.refine.config import RefineConfig


@dataclass(frozen=True)
class RefinePlan(JsonRecord):
    """The plan of a refined run (``kind == "refined"``): where it lives, what it reads, its settings.

    params : the :class:`RefineConfig` as a dict (``dataclasses.asdict``), as recorded in run.json
    extra : every other key of the record (step results such as ``clustering``), kept as is
    Optional keys (``n_rows`` ... ``created_at``) are left out of :meth:`to_json` when None.
    """
    run_id: str
    store: str
    run_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str
    parent_run: str
    parent_clustering_artifact_id: str
    params: Mapping[str, Any]
    n_rows: int | None = None
    shape: Any = None
    has_labels: bool | None = None
    kind: str | None = None
    status: str | None = None
    writer: Mapping[str, Any] | None = None
    created_at: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # run.json's key order (runs.start_derived_run); required keys are always written
    _ORDER = ("corpus", "corpus_version", "corpus_artifact_id", "n_rows", "shape", "has_labels", "run_id", "kind",
              "store", "run_dir", "parent_run", "parent_clustering_artifact_id", "params", "status", "writer",
              "created_at")
    _REQUIRED = ("run_id", "store", "run_dir", "corpus", "corpus_version", "corpus_artifact_id", "parent_run",
                 "parent_clustering_artifact_id", "params")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RefinePlan:
        missing = [k for k in cls._REQUIRED if k not in d]
        if missing:
            raise KeyError(f"refine plan {d.get('run_id')!r} lacks {', '.join(missing)}")
        known = {k: d[k] for k in cls._ORDER if k in d}
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls._ORDER})

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._ORDER
               if k in self._REQUIRED or getattr(self, k) is not None}
        out.update(self.extra)
        return out

    @property
    def config(self) -> RefineConfig:
        """The refinement settings (``params``) as a :class:`RefineConfig`."""
        return RefineConfig(**self.params)
