"""Alembic revisions of the lineage database, oldest first (each file names its ``down_revision``)."""
