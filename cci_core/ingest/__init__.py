"""Ingest: read image sources safely, normalise them, append committed corpus versions."""
