"""How much one ingested image may cost, without numpy or Pillow: the CLI's option defaults and
the decoders (:mod:`cci_core.ingest.images`) read the same numbers."""

DEFAULT_MAX_FILE_BYTES = 256 << 20       # bytes read from one file or tar member
DEFAULT_MAX_IMAGE_PIXELS = 1 << 27       # pixels decoded from one image (134 M: about 400 MB as RGB)
