"""The artifact store: folder layout and atomic writes, lineage, corpora, datasets, weights."""
