"""What the clustering stage hands on, typed: its settings, the plan of a run and the results of its steps.

Each record converts to and from the JSON dict that ``run.json`` holds and that the Prefect
tasks pass (``X.from_json(d)`` / ``x.to_json()``, same keys in the same order as before they
were typed); inside :mod:`cci_core` the steps read attributes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cci_core.cluster.choices import ALGORITHMS, PCA_FIT_ROWS, SOLVERS, parse_k_range
from cci_core.common.records import JsonRecord
from cci_core.store import fs

EMBEDDINGS = ("pca", "umap")


@dataclass(frozen=True)
class ClusterParams:
    """Everything a clustering run depends on (recorded in run.json and in lineage).

    k : number of clusters, or a range ``"a:b"`` / ``"a:b:step"`` / ``"3,5,8"`` to choose from
    algorithm : kmeans, gmm, dbscan, hdbscan or agglomerative
    embedding : ``pca`` (cluster the PCA projections) or ``umap`` (UMAP of them first)
    n_components : PCA components (int) or explained-variance ratio (float in (0, 1))
    whiten : scale the PCA projections to unit variance
    solver : PCA solver (auto: cov up to 64x64 grey, randomized above; cov, randomized, full, tsqr)
    pca_fit_rows : rows the PCA is fitted on: a corpus larger than this is fitted on evenly spaced
        whole blocks holding about that many rows (0 = every row); the projection covers every row
    umap_dim, umap_neighbors, umap_min_dist, umap_sample : the manifold stage
    sample_size : rows the sample-based algorithms (and the choice of k) are fitted on
    silhouette_sample : rows the sampled silhouette is computed on
    k_criterion : silhouette or elbow, when k is a range
    eps, min_samples, min_cluster_size : dbscan / hdbscan (None = their defaults)
    seed : every random draw derives from it
    montage_size : images per cluster montage
    """
    k: int | str = 10
    algorithm: str = "kmeans"
    embedding: str = "pca"
    n_components: int | float = 50
    whiten: bool = False
    solver: str = "auto"
    pca_fit_rows: int = PCA_FIT_ROWS
    umap_dim: int = 10
    umap_neighbors: int = 20
    umap_min_dist: float = 0.0
    umap_sample: int = 100000
    sample_size: int = 20000
    silhouette_sample: int = 10000
    k_criterion: str = "silhouette"
    eps: float | None = None
    min_samples: int | None = None
    min_cluster_size: int | None = None
    seed: int = 0
    montage_size: int = 16

    def ks(self) -> list[int] | None:
        """The candidate ks when k is a range, else None."""
        if isinstance(self.k, str) and not self.k.strip().isdigit():
            return parse_k_range(self.k)
        return None

    def fixed_k(self) -> int | None:
        return None if self.ks() is not None or self.k is None else int(self.k)

    def algorithm_params(self) -> dict:
        """The density algorithms' settings that were given (dbscan: eps, min_samples; hdbscan:
        min_samples, min_cluster_size); empty for the others."""
        extra = {"eps": self.eps, "min_samples": self.min_samples, "min_cluster_size": self.min_cluster_size}
        if self.algorithm == "dbscan":
            extra.pop("min_cluster_size")
        elif self.algorithm == "hdbscan":
            extra.pop("eps")
        else:
            extra = {}
        return {k: v for k, v in extra.items() if v is not None}

    def validate(self, n_rows: int, n_features: int | None = None) -> None:
        """Check every parameter against the corpus size; one clear ValueError per problem."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"--embedding {self.embedding!r}: use one of {', '.join(EMBEDDINGS)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"--solver {self.solver!r}: use one of {', '.join(SOLVERS)}")
        if n_rows < 2:
            raise ValueError(f"the corpus has {n_rows} image(s); clustering needs at least 2")
        if self.algorithm in ("dbscan", "hdbscan"):
            if self.ks() is not None:
                raise ValueError(f"{self.algorithm} finds its own number of clusters; "
                                 "a k range only applies to kmeans, gmm and agglomerative")
        else:
            ks = self.ks() or [self.fixed_k()]
            if min(ks) < 2:
                raise ValueError(f"k must be >= 2, got {min(ks)}")
            if max(ks) > n_rows:
                raise ValueError(f"k={max(ks)} is more than the corpus's {n_rows} images; use k <= {n_rows}")
        nc = self.n_components
        if isinstance(nc, float) and not nc.is_integer():
            if not 0 < nc < 1:
                raise ValueError(f"--components {nc}: a variance ratio must lie in (0, 1)")
        elif not 1 <= int(nc) <= min(n_rows, n_features or int(nc)):
            raise ValueError(f"--components {nc}: use 1..{min(n_rows, n_features or n_rows)} components "
                             "(at most the number of images and of pixel values), or a ratio in (0, 1)")
        if self.pca_fit_rows != 0 and self.pca_fit_rows < 1000:
            raise ValueError(f"--pca-fit-rows {self.pca_fit_rows}: use 0 (every row) or at least 1000")
        if self.sample_size < 2 or self.silhouette_sample < 2:
            raise ValueError("--sample-size and the silhouette sample must be >= 2")
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"--eps {self.eps}: the DBSCAN radius must be > 0")
        for flag, value, low in (("--min-samples", self.min_samples, 1), ("--min-cluster-size", self.min_cluster_size, 2),
                                 ("--umap-dim", self.umap_dim, 1), ("--umap-neighbors", self.umap_neighbors, 2),
                                 ("--umap-sample", self.umap_sample, 2)):
            if value is not None and value < low:
                raise ValueError(f"{flag} {value}: must be at least {low}")


@dataclass(frozen=True)
class ClusterPlan(JsonRecord):
    """The plan of a clustering run: what ``start_run`` wrote to ``run.json`` and every step reads."""
    run_id: str
    store: str
    run_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str | None
    n_rows: int
    shape: tuple[int, ...]
    has_labels: bool
    params: ClusterParams
    status: str
    writer: Mapping[str, Any] | None
    created_at: str

    @property
    def dir(self):
        """The run folder: a Path, or a UPath in a store on an object store."""
        return fs.as_path(self.run_dir)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClusterPlan:
        own = {f.name: d.get(f.name) for f in fields(cls)}
        return cls(**{**own, "shape": tuple(d.get("shape") or ()), "params": ClusterParams(**d.get("params") or {})})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "shape": list(self.shape), "params": asdict(self.params)}


@dataclass(frozen=True)
class EmbeddingsSummary(JsonRecord):
    """What ``fit_embeddings`` made: the PCA and its projections (and their UMAP with ``embedding="umap"``).

    space : the file the clustering runs on, ``embeddings.zarr`` or ``space.zarr`` (the UMAP)
    pca_fit_rows : rows the PCA was fitted on (None in runs made before it was recorded: every row)
    umap_note, umap_seconds : only with the UMAP (absent from the JSON otherwise)
    """
    pca_artifact_id: str
    embeddings_artifact_id: str
    n_components: int
    explained_variance: float
    pca_seconds: float
    space: str = "embeddings.zarr"
    pca_fit_rows: int | None = None
    umap_note: str | None = None
    umap_seconds: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EmbeddingsSummary:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.umap_seconds is None:
            del out["umap_note"], out["umap_seconds"]
        return out


@dataclass(frozen=True)
class ClusteringSummary:
    """What ``cluster_step`` made (``run.json``'s ``clustering``): the clustering artifact and its headline.

    k : the k asked for (None for the density algorithms); n_clusters : the clusters found
    sizes : rows per cluster; report : path of ``reports/metrics.json``; metrics : its headline numbers
    extension : how a sample-fitted model was extended to every row ("" when fitted on all)
    """
    clustering_artifact_id: str
    k: int | None
    n_clusters: int
    n_noise: int
    sizes: list[int]
    report: str
    metrics: Mapping[str, float]
    extension: str
    fit_seconds: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClusteringSummary:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class LabelledRun:
    """The part of any labelling run's plan (clustering, refined, self-conditioned, refresh) that its
    partitions are recorded with; ``params`` are that run's own settings, as recorded."""
    run_id: str
    run_dir: str
    corpus: str
    corpus_version: int
    corpus_artifact_id: str | None
    params: Mapping[str, Any]

    @classmethod
    def of(cls, plan) -> LabelledRun:
        """From a plan of any stage: typed (anything with ``to_json``) or its JSON dict (run.json does too)."""
        d = plan.to_json() if hasattr(plan, "to_json") else plan
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})
