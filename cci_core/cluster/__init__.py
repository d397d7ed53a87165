"""Cluster: pixel features, PCA, k-means and other clusterers, metrics, and the clustering run."""
