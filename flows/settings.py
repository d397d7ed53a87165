"""What each stage flow takes: one frozen settings object, its single parameter.

Whoever starts a flow builds and checks its settings once: the CLI command (before a server
or a cluster starts), or the pipeline and the refresh flow from their own (deployment)
parameters. The flow runs them as given; it does not rebuild or re-check them.

Prefect validates a dataclass parameter with pydantic: a settings object passes through as it
is, and the JSON dict of one (an API call's parameters) becomes one, nested records included.
The flow run's parameters hold it as that JSON dict, which is what the UI shows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass

from cci_core.cluster.records import ClusterParams
from cci_core.features.records import FeatureParams
from cci_core.generate.settings import EvalParams, SelfCondParams, TrainParams
from cci_core.ingest.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from cci_core.refine.config import RefineConfig


def as_dict(settings) -> dict:
    """SETTINGS (an object, or the JSON dict of one) as a dict, nested records as dicts."""
    return asdict(settings) if is_dataclass(settings) else dict(settings or {})


@dataclass(frozen=True)
class IngestSettings:
    """``cci-ingest``: SOURCE into CORPUS, and how its images are read."""
    source: str
    corpus: str
    store_root: str | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    fit: str = "stretch"
    label_from_folder: bool = False
    batch_size: int | None = None
    value_range: str = "auto"
    clip: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    follow_symlinks: bool = False

    def options(self) -> dict:
        """How the images are read: the keyword arguments of the ingest plan."""
        out = {k: v for k, v in asdict(self).items() if k not in ("source", "corpus", "store_root")}
        out["size"] = tuple(self.size) if self.size else None
        return out


@dataclass(frozen=True)
class ClusterSettings:
    """``cci-cluster``: a new run clustering CORPUS (VERSION, default the latest) with PARAMS."""
    corpus: str
    store_root: str | None = None
    params: ClusterParams = field(default_factory=ClusterParams)
    version: int | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class RefineSettings:
    """``cci-refine``: RUN_ID's clustering refined with CONFIG into NEW_RUN_ID (default RUN-refined)."""
    run_id: str
    store_root: str | None = None
    config: RefineConfig = field(default_factory=RefineConfig)
    new_run_id: str | None = None


@dataclass(frozen=True)
class TrainSettings:
    """``cci-train``: the generators of RUN_ID; ``gpu_resource`` None = ask Dask for a ``GPU``
    resource only when the workers advertise one."""
    run_id: str
    store_root: str | None = None
    params: TrainParams = field(default_factory=TrainParams)
    gpu_resource: bool | None = None


@dataclass(frozen=True)
class EvaluateSettings:
    """``cci-evaluate``: the generators of RUN_ID measured with PARAMS."""
    run_id: str
    store_root: str | None = None
    params: EvalParams = field(default_factory=EvalParams)


@dataclass(frozen=True)
class GenerateSettings:
    """``cci-generate``: PER_CLUSTER images per cluster of RUN_ID as a new version of DATASET."""
    run_id: str
    dataset: str
    store_root: str | None = None
    per_cluster: int = 100
    threshold: float = 0.5
    seed: int = 0
    models: str | None = None


@dataclass(frozen=True)
class FeaturesSettings:
    """``cci-features``: the feature spaces of RUN_ID compared with PARAMS; VAE_STEPS first
    trains the whole-corpus VAE."""
    run_id: str
    store_root: str | None = None
    params: FeatureParams = field(default_factory=FeatureParams)
    vae_steps: int | None = None


@dataclass(frozen=True)
class SelfCondSettings:
    """``cci-self-condition``: a self-conditioned GAN from RUN_ID, published as NEW_RUN_ID
    (default RUN-selfcond)."""
    run_id: str
    store_root: str | None = None
    params: SelfCondParams = field(default_factory=SelfCondParams)
    new_run_id: str | None = None


@dataclass(frozen=True)
class PaletteSettings:
    """``cci-palette``: a COLORS-colour palette of SOURCE (corpus, RUN:CLUSTER, dataset:NAME, file)."""
    source: str
    colors: int = 8
    store_root: str | None = None
    space: str | None = None
    method: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class StylizeSettings:
    """``cci-stylize``: SOURCE rendered in palette PALETTE_ID as a new version of DATASET."""
    source: str
    palette_id: str
    dataset: str
    store_root: str | None = None
    mode: str = "nearest"
    dither: bool = False
    seed: int = 0


@dataclass(frozen=True)
class SegmentSettings:
    """``cci-segment``: per-image k-means segmentation of SOURCE."""
    source: str
    k: int = 5
    store_root: str | None = None
    space: str | None = None
    position_weight: float = 0.0
    standardize: bool = True
    seed: int = 0
