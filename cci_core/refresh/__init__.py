"""Refresh: assign new corpus rows to an existing run's clusters and retrain what changed."""
