"""Generate: per-cluster and conditional generators, their training, evaluation and datasets."""
