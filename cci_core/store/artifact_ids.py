"""Lineage record ids: derived from what an artifact is and where it lies (issue 28, item 4).

The id hashes the kind, the content hash, the parameters, the inputs and the recorded (store-
relative) URI. Recording the same artifact again gives the same id (idempotent re-runs); two runs
that made the same content get a record each, pointing at their own files, with the same
``content_hash``. A folder named by its content (a palette, a segmentation) takes the id of the
content alone, as did every record written before the URI was part of the id:
:func:`earlier_record` finds such a record of the same place, so an older database keeps one
record per artifact.
"""
from __future__ import annotations

import hashlib
import json


def artifact_id(kind: str, content_hash: str, params: dict, inputs: list[tuple[str, str]],
                uri: str | None = None) -> str:
    """The id of a record: the same kind, content, parameters, inputs and (given) recorded URI give
    the same id; without ``uri``, the id of the content alone."""
    parts = [kind, content_hash, params, sorted(inputs)] + ([uri] if uri is not None else [])
    blob = json.dumps(parts, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def earlier_record(lineage, kind: str, content_hash: str, params: dict, inputs: list[tuple[str, str]],
                   stored_uri: str):
    """The record of this very artifact written under its content-only id (same content, same
    place) by a version that did not put the URI in the id, else None. ``lineage``: a
    :class:`~cci_core.store.lineage.LineageStore`."""
    old = lineage.find(artifact_id(kind, content_hash, params, inputs))
    if old is not None and stored_uri in (old.stored_uri, lineage.portable_uri(old.stored_uri)):
        return old
    return None
