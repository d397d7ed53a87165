"""Refine: the CCI classifier (CNN) that learns the clusters and refines them."""
