"""A tiny trained run for tests that need generators: digits at 28x28, k-means k=3, a short
refinement (the CCI classifier that scores generated images), tiny per-cluster GANs."""
from __future__ import annotations


def train_tiny(store, corpus: str = "d28"):
    """Ingest, cluster (run ``km``), refine (run ``ref``) and train generators on ``ref``; returns ``store``."""
    from cci_core.cluster import cluster_run as cr
    from cci_core.generate.settings import TrainParams
    from cci_core.generate.training_run import train_local
    from cci_core.ingest.ingest import ingest_local
    from cci_core.refine import refine_run as rr
    ingest_local(store, "builtin:digits", corpus, size=(28, 28))
    cr.run_local(store, corpus, cr.ClusterParams(k=3, n_components=20), run_id="km")
    rr.refine_local(store, "km", rr.config_from_options({"rounds": 1, "warmup_steps": 20, "steps": 20,
                                                        "batch_size": 64, "width": 8, "start": "given",
                                                        "recluster": "kmeans"}),
                    new_run_id="ref", log=lambda _: None)
    train_local(store, "ref", TrainParams(steps=10, batch_size=32, min_size=10, checkpoint_every=10,
                                          width=8, z_dim=16, baseline=False, shared_start=0.0))  # from scratch: 5 artifacts fewer
    return store
