"""What a palette SOURCE names, typed: the record the palette, stylize and segment steps read.

It converts to and from the JSON dict that ``resolve_source`` and the check tasks hand on
(:meth:`PaletteSource.to_json`: the keys of its kind only, in the order they had before it was
typed); inside :mod:`cci_core` the steps read attributes (:meth:`PaletteSource.of`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cci_core.common.records import JsonRecord

# What identifies the source inside the store, in the order the palette's metadata lists it.
_IDS = ("corpus", "corpus_version", "run_id", "cluster", "dataset", "dataset_version")


@dataclass(frozen=True)
class PaletteSource(JsonRecord):
    """One SOURCE: a corpus version, one cluster of a run, a dataset version or an image file.

    kind : ``corpus``, ``partition``, ``dataset`` or ``file``
    source, canonical, label : as given; its canonical spelling (recorded in lineage); a short
        label for artifact names
    run_id, cluster, corpus, corpus_version, dataset, dataset_version, path : those that apply
        to its kind, else None
    shape, n_images : the image shape (H, W, C) and the number of images
    inputs : ``(artifact id, role)`` pairs, the lineage inputs of what is made from it
    """
    kind: str
    source: str
    canonical: str
    label: str
    run_id: str | None = None
    cluster: int | None = None
    corpus: str | None = None
    corpus_version: int | None = None
    dataset: str | None = None
    dataset_version: int | None = None
    path: str | None = None
    shape: tuple[int, ...] = ()
    n_images: int = 0
    inputs: tuple[tuple[str, str], ...] = ()

    @property
    def channels(self) -> int:
        return self.shape[-1]

    def ids(self) -> dict[str, Any]:
        """The store ids of the source that apply (corpus, run, cluster, dataset and versions)."""
        return {k: getattr(self, k) for k in _IDS if getattr(self, k) is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PaletteSource:
        own = {f.name: d.get(f.name) for f in fields(cls) if f.name in d}
        return cls(**{**own, "shape": tuple(d["shape"]), "inputs": tuple((i, r) for i, r in d.get("inputs", ()))})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(shape=list(self.shape), inputs=list(self.inputs))
        return {k: v for k, v in out.items() if v is not None}
