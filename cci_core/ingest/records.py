"""What the ingest steps hand each other, typed: the read limits and the plan of one ingest.

The plan travels through Prefect as its JSON dict (:meth:`IngestPlan.to_json`, the same keys
in the same order as before it was typed); inside :mod:`cci_core` the steps read attributes
(:meth:`IngestPlan.of` takes either form).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cci_core.common.records import JsonRecord
from cci_core.common.shapes import ImageShape
from cci_core.ingest.images import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from cci_core.store import fs
from cci_core.store.fs import AnyPath


@dataclass(frozen=True)
class ReadLimits:
    """What one image file or tar member may cost, and whether symlinks may leave the folder."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    follow_symlinks: bool = False

    def __post_init__(self):
        for name in ("max_file_bytes", "max_image_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive number")

    def asdict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IngestPlan(JsonRecord):
    """One ingest, decided under the corpus lock: where the source's images go and how.

    n0 : committed rows of the version this ingest extends (0 for a new corpus)
    version, previous_artifact_id : the version it will commit, and the one it extends
    batches : the source's batches (:meth:`cci_core.ingest.sources.Source.plan`); None when the
        plan travels without them (the flow hands each batch to its own task)
    """
    corpus: str
    corpus_dir: str
    source: str
    source_kind: str
    source_count: int
    listing_hash: str
    shape: ImageShape
    fit: str
    label_from_folder: bool
    n0: int
    version: int
    previous_artifact_id: str | None
    ingest_id: str
    value_range: str | None
    clip: bool
    limits: ReadLimits
    staging_dir: str
    batch_size: int
    batches: tuple[dict, ...] | None = None

    @property
    def cdir(self) -> AnyPath:
        return fs.as_path(self.corpus_dir)

    @property
    def staging(self) -> AnyPath:
        return fs.as_path(self.staging_dir)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> IngestPlan:
        own = {f.name: d.get(f.name) for f in fields(cls)}
        batches = d.get("batches")
        return cls(**{**own, "shape": ImageShape(*d["shape"]), "limits": ReadLimits(**d["limits"]),
                      "value_range": d.get("value_range"), "clip": d.get("clip", False),
                      "batches": None if batches is None else tuple(batches)})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(shape=list(self.shape.hwc), limits=self.limits.asdict())
        if self.batches is None:
            del out["batches"]
        else:
            out["batches"] = list(self.batches)
        return out
