"""The settings of ``cci train``, ``cci evaluate`` and ``cci self-condition`` (:class:`TrainParams`,
:class:`EvalParams`, :class:`SelfCondParams`), checked without torch, and the one place where a model's settings
become its configurations.

:class:`TrainParams` is the source of a trained generator's settings: :meth:`TrainParams.model_config` and
:meth:`TrainParams.train_config` build the :class:`~cci_core.generate.gan.GANConfig` (or
:class:`~cci_core.generate.vae.VAEConfig`) and the :class:`~cci_core.generate.training_loop.TrainConfig` of
one training job from it; :func:`gan_config` maps the shared capacity settings (``width``, ``z_dim``) onto a
GAN's, for the self-conditioned GAN too. This module imports no torch, so the CLI checks a request quickly.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from cci_core.generate.model_choices import D_CONDITIONS

MODELS = ("gan", "vae")
MODES = ("per-cluster", "conditional")


def gan_config(shape, *, width: int, z_dim: int, loss: str, n_classes: int = 0, d_condition: str = "concat",
               spectral_norm: bool = False):
    """The GANConfig of square ``shape`` (H, W, C) images at capacity ``width``: the generator's last and the
    discriminator's first block have ``width`` channels, D's features ``4 x width``."""
    from cci_core.generate.gan import GANConfig
    return GANConfig(image_size=shape[0], channels=shape[2], z_dim=z_dim, g_width=width, d_width=width,
                     d_features=4 * width, n_classes=n_classes, loss=loss, d_condition=d_condition,
                     spectral_norm=spectral_norm)


def mode_seeking_weight(weight: float | None, kind: str) -> float:
    """The mode-seeking weight of a ``conditional`` GAN or another kind: unset = 1 / 0."""
    if weight is not None:
        return float(weight)
    return 1.0 if kind == "conditional" else 0.0


@dataclass
class TrainParams:
    """Everything ``cci train`` depends on (recorded in each model's lineage params).

    model : ``gan`` (DCGAN-style) or ``vae``, one per cluster
    mode : ``per-cluster`` (one model per cluster) or ``conditional`` (one cluster-conditional GAN)
    steps : training steps per cluster; the conditional GAN and the baseline get
        ``steps`` x (number of trained clusters), the same total
    shared_start : per-cluster mode: the share of that total spent on one shared start, from which
        every cluster's model is fine-tuned on its own partition with the rest (``steps`` x
        (1 - shared_start) each). For a GAN the start is a cluster-conditional GAN on the pooled
        partitions, cut down to each cluster exactly (:mod:`cci_core.generate.specialise`); for a
        VAE, one VAE on the pooled partitions. 0 = every cluster from scratch. Default 1/2, chosen on
        Fashion-MNIST (``benchmarks/generate.py``)
    seconds : optional time budget per cluster (scaled the same way), summed over resumes
    batch_size, lr : optimiser
    min_size : clusters with fewer images are skipped (listed in the report with the reason)
    ema : keep an EMA of the generator weights (decay ``ema_decay``; GAN only)
    checkpoint_every : steps between checkpoints (safetensors + JSON) and sample grids
    seed : every random draw derives from it
    baseline : also train one unconditional GAN on the whole corpus with the same total steps
    width, z_dim : model capacity of the per-cluster models, their shared start and the conditional
        GAN (GAN g_width = d_width = width, d_features = 4 x width; VAE width); latent size
    baseline_width : the width of the baseline, the one big unconditional GAN on the whole corpus
    loss : GAN loss, ``hinge`` or ``ns``
    d_condition : how the conditional GAN's discriminator sees the cluster id: ``concat``
        (one-hot planes on the image) or ``projection``
    mode_seeking : weight of the mode-seeking term (MSGAN) for the GANs (0 = off); None = 1
        for the conditional GAN, whose within-cluster collapse it is for (Fashion-MNIST, 3,000
        steps: FD 4.5 -> 3.6, recall 0.82 -> 0.89), and 0 for the unconditional ones, which it
        does not help (baseline FD 9.9 -> 9.0) or hurts (per-cluster at 300 steps: 22 -> 42)
    device : None = CUDA when present, else CPU (mixed precision only on CUDA)
    """
    model: str = "gan"
    mode: str = "per-cluster"
    steps: int = 2000
    shared_start: float = 0.5
    seconds: float | None = None
    batch_size: int = 64
    lr: float | None = None
    min_size: int = 100
    ema: bool = False
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0
    baseline: bool = True
    width: int = 24
    baseline_width: int = 32
    z_dim: int = 64
    loss: str = "hinge"
    d_condition: str = "concat"
    mode_seeking: float | None = None
    device: str | None = None

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model {self.model!r}: use one of {', '.join(MODELS)}")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: use one of {', '.join(MODES)}, or self-conditioned "
                             "(`cci train --mode self-conditioned`, which runs `cci self-condition`)")
        if self.mode == "conditional" and self.model != "gan":
            raise ValueError("--mode conditional trains a cluster-conditional GAN; use --model gan with it")
        if self.d_condition not in D_CONDITIONS:
            raise ValueError(f"--d-condition {self.d_condition!r}: use one of {', '.join(D_CONDITIONS)}")
        if self.mode_seeking is not None and self.mode_seeking < 0:
            raise ValueError(f"--mode-seeking {self.mode_seeking} must be >= 0 (0 = off)")
        if mode_seeking_weight(self.mode_seeking, self.mode) and self.batch_size < 2:
            raise ValueError(f"--batch-size {self.batch_size}: mode seeking compares pairs of images; "
                             "use --batch-size 2 or more, or --mode-seeking 0")
        if self.ema and self.model != "gan":
            raise ValueError("--ema keeps an average of GAN generator weights; a VAE has none (drop --ema)")
        for name in ("steps", "batch_size", "checkpoint_every", "width", "baseline_width", "z_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive integer")
        if not 0.0 <= self.shared_start < 1.0:
            raise ValueError(f"--shared-start {self.shared_start} must lie in [0, 1): the share of the step budget "
                             "spent on the shared start (0 = every cluster from scratch)")
        if self.min_size < 1:
            raise ValueError(f"--min-size {self.min_size} must be >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"--seconds {self.seconds} must be positive")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must lie in (0, 1)")

    def is_gan(self, kind: str) -> bool:
        """Whether a job of ``kind`` (cluster, shared, conditional, baseline) trains a GAN: the baseline always
        does."""
        return kind == "baseline" or self.model == "gan"

    @property
    def shares_start(self) -> bool:
        """Whether per-cluster models are fine-tuned from a shared start."""
        return self.mode == "per-cluster" and self.shared_start > 0

    def split_budget(self, n: int) -> tuple[int, int]:
        """(shared start's steps, each cluster's steps) of ``n`` clusters' total ``steps`` x ``n``."""
        if not self.shares_start:
            return 0, self.steps
        shared = round(self.shared_start * self.steps * n)
        return shared, max(1, (self.steps * n - shared) // n)

    def model_config(self, shape, kind: str, n_clusters: int):
        """The GANConfig or VAEConfig of a job of ``kind`` on ``shape`` (H, W, C) images; the conditional
        GAN (and a GAN's shared start) is conditioned on ``n_clusters`` ids, and a cluster's GAN fine-tuned
        from that start is the start cut down to one cluster."""
        if self.is_gan(kind):
            conditional = kind == "conditional" or (kind in ("shared", "cluster") and self.shares_start)
            cfg = gan_config(shape, width=self.baseline_width if kind == "baseline" else self.width, z_dim=self.z_dim,
                             loss=self.loss, n_classes=n_clusters if conditional else 0, d_condition=self.d_condition)
            if kind == "cluster" and conditional:
                from cci_core.generate.specialise import specialised_config
                return specialised_config(cfg)
            return cfg
        from cci_core.generate.vae import VAEConfig
        return VAEConfig(image_size=shape[0], channels=shape[2], z_dim=self.z_dim, width=self.width)

    def train_config(self, kind: str, steps: int, seconds: float | None):
        """The TrainConfig of a job of ``kind`` with its own step (and time) budget (a cluster fine-tuned from a
        shared start gets its ``init_from`` from the plan)."""
        from cci_core.generate.training_loop import TrainConfig
        gan = self.is_gan(kind)
        # the shared start of GANs is a conditional GAN: it takes the conditional GAN's mode-seeking default
        seeking_kind = "conditional" if kind == "shared" else kind
        return TrainConfig(steps=steps, seconds=seconds, batch_size=self.batch_size, lr=self.lr,
                           ema_decay=self.ema_decay if (self.ema and gan) else None,
                           mode_seeking=mode_seeking_weight(self.mode_seeking, seeking_kind) if gan else 0.0,
                           checkpoint_every=min(self.checkpoint_every, steps), seed=self.seed, device=self.device)


@dataclass
class EvalParams:
    """Everything ``cci evaluate`` depends on.

    samples : generated images per cluster on average: samples x clusters in all, shared out
        in proportion to the cluster sizes (the corpus's own mixture), at least k + 2 each;
        the baseline makes the same total
    max_real : real images per cluster compared against (a seeded sample when larger);
        the whole-corpus comparison uses up to max_real x clusters
    ref_steps, ref_rows : training steps / at most this many rows for the reference CNNs (fewer when
        they would not fit the memory budget, $CCI_MEMORY_BUDGET_MB)
    k : neighbours for precision/recall/density/coverage
    kid_subsets, kid_subset_size, is_splits : KID and IS-analogue settings
    seed, device : as for training
    """
    samples: int = 500
    max_real: int = 2000
    ref_steps: int = 600
    ref_rows: int = 60000
    k: int = 5
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    is_splits: int = 10
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k} must be >= 1")
        if self.samples < self.k + 2:
            raise ValueError(f"--samples {self.samples}: at least {self.k + 2} images per cluster are "
                             f"needed for the k={self.k} nearest-neighbour measures")
        if self.max_real < self.k + 2:
            raise ValueError(f"--max-real {self.max_real} must be >= {self.k + 2}")
        for name in ("ref_steps", "ref_rows", "kid_subsets", "is_splits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.kid_subset_size < 2:
            raise ValueError(f"kid_subset_size={self.kid_subset_size} must be >= 2")

    def metric_options(self) -> dict:
        """The settings every measure of :func:`~cci_core.generate.gen_metrics.evaluate_features` takes."""
        return dict(k=self.k, kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size,
                    is_splits=self.is_splits, seed=self.seed)


INITS = ("discriminator", "parent")


@dataclass
class SelfCondParams:
    """Everything a self-conditioned GAN depends on (recorded in run.json and lineage).

    k : number of conditions; None = the parent run's number of clusters
    steps : total GAN steps; recluster_every : steps between re-clusterings
    init : ``discriminator`` (k-means on the untrained discriminator's features, as in the
        paper) or ``parent`` (start from the parent run's clusters)
    kmeans_iters : at most this many k-means passes per re-clustering (stops when no id changes)
    feature_rows : re-cluster on a seeded sample of this many rows (None = every row);
        every row is still assigned to its nearest centre
    mode_seeking : weight of the mode-seeking term (MSGAN), which keeps the generator from
        making one image per condition; 0 = off
    width, z_dim, batch_size, lr, loss, checkpoint_every, seed, device : as for ``cci train``

    The discriminator is a projection discriminator with spectral norm: its features do not
    depend on the condition, so they can be clustered to find the next conditions.
    """
    k: int | None = None
    steps: int = 2000
    recluster_every: int = 500
    init: str = "discriminator"
    kmeans_iters: int = 20
    feature_rows: int | None = None
    batch_size: int = 64
    lr: float | None = None
    width: int = 32
    z_dim: int = 64
    loss: str = "hinge"
    mode_seeking: float = 1.0
    checkpoint_every: int = 500
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        for name in ("steps", "recluster_every", "kmeans_iters", "batch_size", "width", "z_dim",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive integer")
        if self.mode_seeking < 0:
            raise ValueError(f"--mode-seeking {self.mode_seeking} must be >= 0 (0 = off)")
        if self.mode_seeking and self.batch_size < 2:
            raise ValueError(f"--batch-size {self.batch_size}: mode seeking compares pairs of images; "
                             "use --batch-size 2 or more, or --mode-seeking 0")
        if self.k is not None and self.k < 2:
            raise ValueError(f"--k {self.k}: a self-conditioned GAN needs at least 2 conditions")
        if self.init not in INITS:
            raise ValueError(f"--init {self.init!r}: use one of {', '.join(INITS)}")
        if self.feature_rows is not None and self.feature_rows < 2:
            raise ValueError(f"--feature-rows {self.feature_rows} must be >= 2 (or unset for every row)")

    def gan_config(self, shape, k: int):
        """The conditional GAN on ``shape`` (H, W, C) images with ``k`` conditions: a projection
        discriminator with spectral norm, whose features do not depend on the condition."""
        return gan_config(shape, width=self.width, z_dim=self.z_dim, loss=self.loss, n_classes=k,
                          d_condition="projection", spectral_norm=True)

    def train_config(self, end: int):
        """The TrainConfig of the phase that ends at step ``end`` (the step count runs on across phases)."""
        from cci_core.generate.training_loop import TrainConfig
        return TrainConfig(steps=end, batch_size=self.batch_size, lr=self.lr,
                           checkpoint_every=min(self.checkpoint_every, end), mode_seeking=self.mode_seeking,
                           seed=self.seed, device=self.device)


def train_params_fields() -> set[str]:
    return {f.name for f in fields(TrainParams)}


def eval_params_fields() -> set[str]:
    return {f.name for f in fields(EvalParams)}
