"""The settings of a CCI refinement (:class:`RefineConfig`), validated when built."""
from __future__ import annotations

from dataclasses import dataclass

RECLUSTER = ("kmeans", "umap_gmm")
START = ("contrastive", "autoencoder", "given")


@dataclass
class RefineConfig:
    """Every knob of a refinement; the defaults are the Fashion-MNIST benchmark recipe.

    rounds : rounds after round 0 (round 0 = start clustering + first training)
    k : the number of clusters. None: the given clustering's; ``auto``: chosen without
        labels on round 0's clustering space among 4..20 (:mod:`cci_core.refine.choose_k`:
        the BIC of GMMs, least or its elbow), ``LOW:HIGH`` among those, ``K`` that k; needs
        a pre-training ``start``
    start : how round 0 finds its clustering. ``contrastive``: pre-train the CNN with
        SimCLR (NT-Xent on two augmented views) for ``cl_epochs``, then cluster its
        embedding; ``autoencoder``: pre-train it as a convolutional autoencoder for
        ``ae_epochs`` (N2D-style), then cluster its code; ``given``: keep the clustering
        it was given, with a randomly initialised CNN
    cl_epochs, cl_lr, cl_temperature : contrastive pre-training (epochs may be fractional)
    cl_min_steps : the contrastive pre-training takes at least this many steps, however
        small the corpus (10 epochs of 1,797 digits are only 70 steps)
    ae_epochs, ae_lr, ae_shift : autoencoder pre-training epochs, optimiser rate and input
        shift (fraction of the side)
    warmup_steps, steps : training steps in round 0 / in each later round, at most
        ``round_epochs`` passes' worth of the corpus (so a small corpus is not trained on
        hundreds of times over)
    batch_size, lr, weight_decay : optimiser (AdamW, fresh each round, cosine decay)
    lam : weight of the k-means term (embedding distance to its cluster centre)
    label_smoothing : for the cross-entropy term
    trust_quantile : fraction of each cluster trusted for training, most consistent first
    knn : neighbours for the neighbourhood-consistency trust score and for the SCAN heads
    ema : decay of the teacher weights used to embed and predict
    recluster : ``umap_gmm`` (UMAP + full-covariance GMM) or ``kmeans`` (PCA-whitened)
    gmm_inits : GMM restarts (k-means starts), the best likelihood kept
    gmm_from_previous : start the GMM from the previous round's clusters (shares, means,
        covariances) instead
    scan_heads : with ``umap_gmm``, this many SCAN heads (linear, neighbour-consistent,
        size-balanced; :mod:`cci_core.refine.scan`) are fitted on the clustering space and
        the partition is the k-means consensus of their votes and the GMM's (0 = the GMM
        alone). The GMM finds the natural groups and merges look-alike classes; SCAN's
        entropy term keeps clusters of similar size and splits them; their consensus
        keeps most of both
    gmm_votes : the GMM partition counts as this many heads in the consensus
    gmm_polish : with ``scan_heads``, a full-covariance GMM started from the consensus
        clusters (their shares, means and covariances) and run to convergence gives the
        labels: the consensus picks the basin (no merged look-alike classes), EM places
        the boundaries (Fashion-MNIST seed 0, round 2: ACC 0.748 -> 0.755, NMI 0.687 ->
        0.699; digits 0.955 -> 0.959)
    pca_dim : whitened dimensions before k-means (and the trust space without UMAP)
    pixel_dim : principal components of the pixels joined (unit rows, equal weight) to
        the unit embedding before re-clustering; pixel neighbourhoods correct the
        embedding's where they agree (0 = the embedding alone)
    umap_neighbors, umap_dim, umap_sample : manifold stage (fitted on ``umap_sample``
        rows, the others transformed; the recipe fits all rows)
    shift, scale, flip, erase : augmentation of the classifier's training images
    silhouette_sample : rows for the sampled silhouette (reported, not used to select)
    width, depth, embed_dim : CNN shape
    seed : everything random derives from it (per round), so resume is exact on CPU
    device : None = CUDA when present, else CPU
    threads : CPU threads for torch, BLAS and numba in the refinement. None = the Dask
        worker's own threads (its ``nthreads``; a ``cci refine`` LocalCluster of one worker
        has every core), or this process's torch setting outside a worker; never the host's
        core count on a shared worker. The count used is recorded in the run: CPU results
        depend on it, so pin it to repeat a run on another cluster layout
    """
    rounds: int = 2
    k: str | None = None
    start: str = "contrastive"
    cl_epochs: float = 10.0
    cl_lr: float = 2e-3
    cl_temperature: float = 0.2
    cl_min_steps: int = 500
    ae_epochs: float = 4.0
    ae_lr: float = 2e-3
    ae_shift: float = 0.08
    warmup_steps: int = 1000
    steps: int = 800
    round_epochs: float = 20.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lam: float = 0.1
    label_smoothing: float = 0.1
    trust_quantile: float = 0.5
    knn: int = 20
    ema: float = 0.99
    recluster: str = "umap_gmm"
    gmm_inits: int = 3
    gmm_from_previous: bool = False
    scan_heads: int = 16
    gmm_votes: float = 4.0
    gmm_polish: bool = True
    pca_dim: int = 32
    pixel_dim: int = 50
    umap_neighbors: int = 20
    umap_dim: int = 10
    umap_sample: int = 70000
    shift: float = 0.12
    scale: tuple = (0.85, 1.15)
    flip: bool = True
    erase: float = 0.0
    silhouette_sample: int = 5000
    width: int = 16
    depth: int = 3
    embed_dim: int = 64
    seed: int = 0
    device: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        self.scale = tuple(self.scale)
        if self.k is not None:  # as typed (auto, 5:20) or an int; checked here, kept as text
            from cci_core.refine.choose_k import parse_k_option
            self.k = str(self.k).strip().lower()
            parse_k_option(self.k)
            if self.start == "given":
                raise ValueError(f"k={self.k} needs a pre-training start (contrastive or autoencoder): "
                                 "start=given keeps the given clustering and its k")
        checks = [
            (self.rounds >= 0, f"rounds={self.rounds} must be >= 0"),
            (self.threads is None or self.threads >= 1, f"threads={self.threads} must be >= 1"),
            (self.start in START, f"start={self.start!r}: use one of {START}"),
            (self.start != "contrastive" or self.cl_epochs > 0,
             f"cl_epochs={self.cl_epochs} must be > 0 for start=contrastive (or use start=given)"),
            (self.start != "autoencoder" or self.ae_epochs > 0,
             f"ae_epochs={self.ae_epochs} must be > 0 for start=autoencoder (or use start=given)"),
            (self.cl_min_steps >= 0, f"cl_min_steps={self.cl_min_steps} must be >= 0"),
            (self.cl_temperature > 0, f"cl_temperature={self.cl_temperature} must be > 0"),
            (self.pixel_dim >= 0, f"pixel_dim={self.pixel_dim} must be >= 0"),
            (self.warmup_steps >= 1 and self.steps >= 1,
             f"warmup_steps={self.warmup_steps}, steps={self.steps} must be >= 1"),
            (self.round_epochs > 0, f"round_epochs={self.round_epochs} must be > 0"),
            (self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2"),
            (self.lr > 0 and self.ae_lr > 0 and self.cl_lr > 0,
             f"lr={self.lr}, ae_lr={self.ae_lr}, cl_lr={self.cl_lr} must be > 0"),
            (self.lam >= 0, f"lam={self.lam} must be >= 0"),
            (0 < self.trust_quantile <= 1, f"trust_quantile={self.trust_quantile} must be in (0, 1]"),
            (self.knn >= 1, f"knn={self.knn} must be >= 1"),
            (0 <= self.ema < 1, f"ema={self.ema} must be in [0, 1)"),
            (self.recluster in RECLUSTER, f"recluster={self.recluster!r}: use one of {RECLUSTER}"),
            (self.gmm_inits >= 1, f"gmm_inits={self.gmm_inits} must be >= 1"),
            (self.scan_heads >= 0, f"scan_heads={self.scan_heads} must be >= 0"),
            (self.gmm_votes >= 0, f"gmm_votes={self.gmm_votes} must be >= 0"),
            (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1],
             f"scale={self.scale} must be (low, high) with 0 < low <= high"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
