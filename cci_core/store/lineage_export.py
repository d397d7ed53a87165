"""The lineage graph in standard forms: OpenLineage run events, W3C PROV-JSON, Graphviz DOT.

:func:`closure` picks the artifacts (one artifact's ancestry, or the whole store); the three
writers turn them into documents other tools read. URIs are the store-relative ones
(``store://...``), so an export describes the store wherever it lies.
"""
from __future__ import annotations

import json
import uuid
from collections import defaultdict

from cci_core.store.lineage import Artifact, LineageStore

NAMESPACE = "cci"
PRODUCER = "https://github.com/cci-pipeline/cci"
RUN_EVENT_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
VERSION_FACET_SCHEMA = ("https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json"
                        "#/$defs/DatasetVersionDatasetFacet")
FORMATS = ("openlineage", "prov", "dot")


def closure(lin: LineageStore, ref: str | None = None, downstream: bool = False) -> list[Artifact]:
    """The artifacts to export, each once, oldest first: everything ``ref`` was made from (or,
    ``downstream``, everything made from it) with ``ref`` itself; without ``ref``, the whole store."""
    if ref is None:
        arts = lin.list(limit=10**9)
    else:
        start = lin.resolve(ref)
        seen, todo, arts = {start.id}, [start], []
        while todo:
            art = todo.pop()
            arts.append(art)
            nxt = [c for c, _ in lin.outputs_of(art.id)] if downstream else [i for i, _ in art.inputs]
            for n in nxt:
                if n not in seen:
                    seen.add(n)
                    todo.append(lin.get(n))
    return sorted(arts, key=lambda a: (a.created_at, a.id))


def run_key(art: Artifact) -> str:
    """The run that produced an artifact, as a UUID: its Prefect task run, else its flow run, else
    one derived from the artifact (a run outside Prefect)."""
    p = art.producer or {}
    for key in ("task_run_id", "flow_run_id"):
        try:
            return str(uuid.UUID(str(p.get(key))))
        except ValueError:
            continue
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cci:{art.id}"))


def dataset_name(art: Artifact) -> str:
    """An OpenLineage dataset name: kind and name (two corpus versions share a folder, not a name)."""
    return f"{art.kind}/{art.name}"


def _ol_dataset(art: Artifact, side: str) -> dict:
    """An input (``side="input"``) or output dataset; its version facet holds the artifact id."""
    return {"namespace": NAMESPACE, "name": dataset_name(art),
            "facets": {"version": {"_producer": PRODUCER, "_schemaURL": VERSION_FACET_SCHEMA,
                                   "datasetVersion": art.id}}, f"{side}Facets": {}}


def openlineage_events(lin: LineageStore, arts: list[Artifact]) -> list[dict]:
    """One COMPLETE RunEvent per producing run: its outputs, and the inputs they were made from
    (outputs of the same run are not listed as its inputs)."""
    runs: dict[str, list[Artifact]] = defaultdict(list)
    for a in arts:
        runs[run_key(a)].append(a)
    events = []
    for rid, outs in runs.items():
        out_ids = {a.id for a in outs}
        in_ids = sorted({i for a in outs for i, _ in a.inputs} - out_ids)
        p = outs[0].producer or {}
        job = p.get("task_name") or p.get("flow_name") or f"{outs[0].kind}-local"
        events.append({
            "eventType": "COMPLETE", "eventTime": max(a.created_at for a in outs).isoformat(),
            "producer": PRODUCER, "schemaURL": RUN_EVENT_SCHEMA,
            "run": {"runId": rid, "facets": {}}, "job": {"namespace": NAMESPACE, "name": job, "facets": {}},
            "inputs": [_ol_dataset(lin.get(i), "input") for i in in_ids],
            "outputs": [_ol_dataset(a, "output") for a in outs]})
    return sorted(events, key=lambda e: (e["eventTime"], e["run"]["runId"]))


def prov_document(arts: list[Artifact]) -> dict:
    """A W3C PROV-JSON document: artifacts are entities, producing runs activities; ``used``,
    ``wasGeneratedBy`` and ``wasDerivedFrom`` (with the role) link them."""
    doc: dict = {"prefix": {"cci": "urn:cci:artifact:", "run": "urn:cci:run:", "ccis": "urn:cci:schema:"},
                 "entity": {}, "activity": {}, "used": {}, "wasGeneratedBy": {}, "wasDerivedFrom": {}}
    for a in arts:
        rid = run_key(a)
        doc["entity"][f"cci:{a.id}"] = {"prov:type": f"ccis:{a.kind}", "prov:label": a.name,
                                         "ccis:uri": a.stored_uri or a.uri, "ccis:content_hash": a.content_hash,
                                         "prov:generatedAtTime": a.created_at.isoformat()}
        doc["activity"].setdefault(f"run:{rid}", {"prov:label": (a.producer or {}).get("task_name")
                                                  or (a.producer or {}).get("flow_name") or f"{a.kind}-local"})
        doc["wasGeneratedBy"][f"_:gen-{a.id}"] = {"prov:entity": f"cci:{a.id}", "prov:activity": f"run:{rid}"}
        for i, role in a.inputs:
            doc["used"][f"_:use-{a.id}-{i}"] = {"prov:activity": f"run:{rid}", "prov:entity": f"cci:{i}",
                                                "prov:role": role}
            doc["wasDerivedFrom"][f"_:der-{a.id}-{i}"] = {"prov:generatedEntity": f"cci:{a.id}",
                                                          "prov:usedEntity": f"cci:{i}", "prov:role": role}
    return doc


def dot_graph(arts: list[Artifact]) -> str:
    """A Graphviz digraph: one box per artifact (kind, name, id), an arrow from each input labelled
    with its role. Render with ``dot -Tsvg lineage.dot -o lineage.svg``."""
    colours = {"corpus": "lightblue", "dataset": "palegreen", "clustering": "khaki", "partition": "lightyellow",
               "model": "plum", "classifier": "lightpink"}
    ids = {a.id for a in arts}
    lines = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for a in arts:
        label = f"{a.kind}\\n{a.name}\\n{a.id}".replace('"', "'")
        lines.append(f'  "{a.id}" [label="{label}", fillcolor="{colours.get(a.kind, "white")}"];')
    for a in arts:
        for i, role in a.inputs:
            if i in ids:
                lines.append(f'  "{i}" -> "{a.id}" [label="{role}"];')
    return "\n".join(lines + ["}"]) + "\n"


def export(lin: LineageStore, fmt: str, ref: str | None = None, downstream: bool = False) -> str:
    """The export of ``ref``'s lineage (or the whole store) in ``fmt`` as text.

    openlineage : JSON Lines, one RunEvent per line (what OpenLineage's file transport writes)
    prov : one PROV-JSON document; dot : a Graphviz digraph
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    arts = closure(lin, ref, downstream)
    if fmt == "openlineage":
        return "".join(json.dumps(e, sort_keys=True) + "\n" for e in openlineage_events(lin, arts))
    if fmt == "prov":
        return json.dumps(prov_document(arts), indent=2, sort_keys=True) + "\n"
    return dot_graph(arts)
