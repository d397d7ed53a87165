"""What the ``cci features`` steps hand each other, typed: the settings, where each space's
model is, and the plan of a comparison.

Each converts to and from the JSON dict the Prefect tasks pass (``X.from_json(d)`` /
``x.to_json()``, the same keys in the same order as before they were typed); inside
:mod:`cci_core` the steps read attributes (``X.of`` takes either form).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cci_core.common.records import JsonRecord

SPACES = ("pixels", "pca", "classifier", "discriminator", "selfcond", "vae")


@dataclass(frozen=True)
class FeatureParams:
    """Everything ``cci features`` depends on.

    spaces : the spaces to compare (None = every space whose model exists)
    k : k-means clusters (None = number of true classes when labelled, else the run's k)
    silhouette_sample : rows of the sampled silhouette
    test_fraction : held-out share of the labelled rows (seeded split)
    fractions : shares of the train split the probes are trained on
    max_train, max_test : caps on the train split (before the fractions) and on the test rows
    knn_k, forest_trees, linear_max_iter : the probes (k-NN neighbours, random-forest trees,
        logistic-regression iterations on standardised features)
    batch_size : images per batch when extracting features
    seed, device : every random draw derives from seed; device None = CUDA when present, else CPU
    """
    spaces: list[str] | None = None
    k: int | None = None
    silhouette_sample: int = 5000
    test_fraction: float = 0.2
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    max_train: int | None = None
    max_test: int | None = None
    knn_k: int = 5
    forest_trees: int = 100
    linear_max_iter: int = 500
    batch_size: int = 1024
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        for s in self.spaces or []:
            if s not in SPACES:
                raise ValueError(f"feature space {s!r} is unknown; use some of {', '.join(SPACES)}")
        if self.k is not None and self.k < 2:
            raise ValueError(f"--k {self.k} must be >= 2")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction {self.test_fraction} must lie in (0, 1)")
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"--fractions {self.fractions}: each share of the labels must lie in (0, 1]")
        for name in ("silhouette_sample", "knn_k", "forest_trees", "linear_max_iter", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("max_train", "max_test"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 2 (or None for no cap)")


@dataclass(frozen=True)
class FeatureSpace:
    """Where the model of one feature space is.

    source : how its features are read: ``corpus`` (pixels), ``pca`` (the run's embeddings),
        ``cci-classifier``, ``discriminator`` or ``vae`` (embedded with the model in ``dir``)
    artifact_id : the lineage record of the model (the corpus version for pixels)
    run_id, model : the run that holds it, and the model's name there (trained models only)
    """
    space: str
    source: str
    dir: str | None
    artifact_id: str | None
    run_id: str
    model: str | None = None
    note: str = ""

    @classmethod
    def of(cls, space: FeatureSpace | Mapping[str, Any]) -> FeatureSpace:
        """The space typed, given typed or as its JSON dict (an extraction's dict also does)."""
        return space if isinstance(space, cls) else cls(**{f.name: space[f.name] for f in fields(cls) if f.name in space})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.model is None:
            del out["model"]
        return out


@dataclass(frozen=True)
class FeaturePlan(JsonRecord):
    """A checked comparison request: the run and corpus version, k, the spaces found (each
    with its model) and those skipped, with the reason."""
    run_id: str
    store: str
    run_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str | None
    n_rows: int
    shape: tuple[int, ...]
    has_labels: bool
    n_classes: int | None
    k: int
    params: FeatureParams
    spaces: tuple[FeatureSpace, ...]
    skipped: tuple[Mapping[str, str], ...]  # {"space", "reason"}
    probe_note: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FeaturePlan:
        own = {f.name: d[f.name] for f in fields(cls)}
        return cls(**{**own, "shape": tuple(d["shape"]), "params": FeatureParams(**d["params"]),
                      "spaces": tuple(FeatureSpace.of(s) for s in d["spaces"]), "skipped": tuple(d["skipped"])})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "shape": list(self.shape), "params": asdict(self.params),
                "spaces": [s.to_json() for s in self.spaces], "skipped": [dict(s) for s in self.skipped]}
