"""Predict: assign images to a run's clusters, with whichever model the run has."""
