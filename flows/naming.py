"""What a flow run is called and tagged with, read from its inputs.

Flow run names are callables for ``@flow(flow_run_name=...)`` (Prefect calls them in the
run with :data:`prefect.runtime.flow_run.parameters`: a stage flow's one ``settings`` object
(:mod:`flows.settings`), or its JSON dict). Tags have to exist when the run is
created, so whoever starts a flow enters :func:`run_tags` first (``with prefect.tags(...)``):
the CLI for its top-level run, the pipeline and the refresh for their subflows.
Every CCI run carries the tag :data:`RUN_TAG`; the crash automation
(:mod:`deployments.automations`) watches the heartbeats of runs tagged with it.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

RUN_TAG = "cci"


def _settings(parameters: dict) -> dict:
    """A stage flow's ``settings`` (object or JSON dict) as a dict; other flows' parameters as they are."""
    from flows.settings import as_dict
    return as_dict(parameters["settings"]) if "settings" in parameters else dict(parameters)


def _params() -> dict:
    from prefect.runtime import flow_run
    return _settings(dict(flow_run.parameters or {}))


def _short(source: str) -> str:
    """A source as a person names it: ``builtin:digits``, a folder's or file's last part."""
    if ":" in source.split("/")[0]:
        return source
    return Path(source.rstrip("/")).name or source


def _name(fn: Callable[[dict], str]) -> Callable[[], str]:
    def name() -> str:
        try:
            return fn(_params())
        except (KeyError, TypeError, ValueError):  # a name must never fail a run
            return "cci run"
    return name


ingest_name = _name(lambda p: f"ingest {p['corpus']} from {_short(str(p['source']))}")
cluster_name = _name(lambda p: f"cluster {p['corpus']} k={p['params'].get('k', 10)}"
                     + ("" if p["params"].get("algorithm", "kmeans") == "kmeans" else f" {p['params']['algorithm']}")
                     + ("" if p["params"].get("embedding", "pca") == "pca" else f" on {p['params']['embedding']}"))
refine_name = _name(lambda p: f"refine {p['run_id']}")
train_name = _name(lambda p: f"train {p['run_id']} ({p['params'].get('model', 'gan')}, "
                   f"{p['params'].get('steps', 2000)} steps)")
evaluate_name = _name(lambda p: f"evaluate {p['run_id']}")
generate_name = _name(lambda p: f"generate {p['dataset']} from {p['run_id']}")
features_name = _name(lambda p: f"features {p['run_id']}")
selfcond_name = _name(lambda p: f"self-condition {p['run_id']}")
palette_name = _name(lambda p: f"palette {_short(str(p['source']))} {p.get('colors', 8)} colours")
stylize_name = _name(lambda p: f"stylize {_short(str(p['source']))} into {p['dataset']}")
segment_name = _name(lambda p: f"segment {_short(str(p['source']))} k={p.get('k', 5)}")

# flow name -> stage tag; the argument naming the corpus / the run, where the flow has one
STAGES = {"cci-ingest": "ingest", "cci-cluster": "cluster", "cci-refine": "refine", "cci-train": "train",
          "cci-evaluate": "evaluate", "cci-generate": "generate", "cci-pipeline": "pipeline",
          "cci-refresh": "refresh", "cci-features": "features", "cci-self-condition": "self-condition",
          "cci-palette": "palette", "cci-stylize": "stylize", "cci-segment": "segment"}


def run_tags(stage: str, corpus: str | None = None, run_id: str | None = None,
             dataset: str | None = None, store: str | None = None) -> list[str]:
    """``cci``, ``stage:…`` and, where known, ``corpus:…``, ``run:…``, ``dataset:…``, ``store:…``."""
    tags = [RUN_TAG, f"stage:{stage}"]
    tags += [f"{key}:{value}" for key, value in (("corpus", corpus), ("run", run_id), ("dataset", dataset),
                                                 ("store", store)) if value]
    return tags


def _run_corpus(store_root: str | None, run_id: str) -> str | None:
    """The corpus of RUN from its run.json (None when it cannot be read)."""
    from cci_core.store.runs import read_run
    from cci_core.store.store import Store
    try:
        return read_run(Store(store_root), run_id).get("corpus")
    except (LookupError, OSError, ValueError):
        return None


def flow_tags(flow, *args, **kwargs) -> list[str]:
    """The tags of a run of FLOW called with these arguments (see :func:`run_tags`)."""
    try:
        bound = inspect.signature(flow.fn).bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = dict(kwargs)
    bound = _settings(bound)
    stage = STAGES.get(flow.name, flow.name.removeprefix("cci-"))
    run_id = bound.get("run_id") if isinstance(bound.get("run_id"), str) else None
    corpus = bound.get("corpus") if isinstance(bound.get("corpus"), str) else None
    if corpus is None and run_id:
        corpus = _run_corpus(bound.get("store_root"), run_id)
    dataset = bound.get("dataset") if isinstance(bound.get("dataset"), str) else None
    store = bound.get("store_root") if isinstance(bound.get("store_root"), str) else None
    return run_tags(stage, corpus=corpus, run_id=run_id, dataset=dataset, store=store)


@contextlib.contextmanager
def tagged(flow, *args, **kwargs) -> Iterator[None]:
    """Flow runs (and their task runs) created in this block carry :func:`flow_tags`.

    The tags replace the ones around (Prefect's ``tags()`` adds): a subflow of the pipeline
    is tagged with its own stage, not with ``stage:pipeline`` too.
    """
    from prefect.context import TagsContext
    with TagsContext(current_tags=set(flow_tags(flow, *args, **kwargs))):
        yield


def call_tagged(flow, *args, return_state: bool = False, **kwargs):
    """Call FLOW (a subflow, usually) inside :func:`tagged`."""
    with tagged(flow, *args, **kwargs):
        return flow(*args, return_state=return_state, **kwargs)
