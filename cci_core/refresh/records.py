"""The plan of a refresh run, typed: the record a refresh starts with.

:meth:`RefreshPlan.from_parent` builds it from the run being refreshed; :meth:`RefreshPlan.to_json`
is the ``run.json`` written when the refresh starts (same keys, same order as before it was typed).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RefreshPlan:
    """The record of a refresh run when it starts: the parent's corpus grown to a new version.

    The keys taken over from the run it refreshes (``corpus`` ... ``kind``; ``classifier``,
    ``classifier_artifact_id``, ``parent_run``) are left out of :meth:`to_json` when None, as
    they are absent there; the rest are always written.
    """
    run_id: str
    store: str
    run_dir: str
    corpus_version: int
    corpus_artifact_id: str
    n_rows: int
    refreshed_from: str
    refresh_root: str
    status: str
    created_at: str
    corpus: str | None = None
    shape: Any = None
    has_labels: bool | None = None
    params: Mapping[str, Any] | None = None
    kind: str | None = None
    classifier: str | None = None
    classifier_artifact_id: str | None = None
    parent_run: str | None = None

    # run.json's key order: inherited keys, the refresh's own, then the inherited predictor
    _INHERITED = ("corpus", "shape", "has_labels", "params", "kind")
    _OWN = ("run_id", "store", "run_dir", "corpus_version", "corpus_artifact_id", "n_rows", "refreshed_from",
            "refresh_root", "status", "created_at")
    _PREDICTOR = ("classifier", "classifier_artifact_id", "parent_run")

    @classmethod
    def from_parent(cls, parent: Mapping[str, Any], **own) -> RefreshPlan:
        """The refresh of ``parent`` (its run.json): its corpus, settings and predictor, with ``own`` fields."""
        inherited = {k: parent[k] for k in cls._INHERITED if k in parent}
        predictor = {k: parent[k] for k in cls._PREDICTOR if parent.get(k)}
        return cls(**inherited, **own, **predictor)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RefreshPlan:
        return cls(**{k: d[k] for k in cls._INHERITED + cls._OWN + cls._PREDICTOR if k in d})

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self._INHERITED if getattr(self, k) is not None},
                **{k: getattr(self, k) for k in self._OWN},
                **{k: getattr(self, k) for k in self._PREDICTOR if getattr(self, k) is not None}}
