"""Per-chunk checksums of the store's Zarr arrays, and reads that name a damaged chunk.

New arrays end their codec chain with Zarr v3's ``crc32c`` codec (:func:`compressors`): the
checksum of each chunk's compressed bytes is checked before decompression, so a flipped bit is
an error instead of garbled pixels or a decompressor's crash. Arrays written before this have no
checksum and keep reading as they are (docs/reliability.md: ``cci store verify --deep`` checks
their pixels against ``index.parquet``'s ``image_id``).

:func:`open_checked` opens an array whose reads turn a damaged chunk into one
:class:`ChunkDamagedError` naming the array (relative to the store), the chunk key and the
repair; it travels to and from Dask workers like the array it wraps.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from cci_core.store import fs

MAX_NAMED = 5  # chunks named in one error message; verify lists them all


def compressors(compressor=None) -> list:
    """The bytes-to-bytes codecs of a new array: ``compressor`` (zarr's default zstd when None),
    then a crc32c of the compressed bytes, checked first on every read."""
    return [ZstdCodec(level=0) if compressor is None else compressor, Crc32cCodec()]


def has_checksum(arr: zarr.Array) -> bool:
    """Whether the array's chunks carry a crc32c (arrays written before it do not)."""
    return any(isinstance(c, Crc32cCodec) for c in getattr(arr.metadata, "codecs", ()))


def repair_hint(array: str) -> str:
    """What to do about a damaged chunk of ``array`` (a path relative to the store)."""
    parts = array.split("/")
    if parts[0] == "corpora" and len(parts) > 1:
        return (f"ingest the source again into a new corpus (`cci ingest SOURCE --corpus {parts[1]}-restored`) "
                f"or restore corpora/{parts[1]} from a backup")
    if parts[0] == "runs" and len(parts) > 1:
        return f"run the step again under a new run id, or restore runs/{parts[1]} from a backup"
    if parts[0] == "datasets" and len(parts) > 2:
        return f"generate the dataset again (a new version), or restore datasets/{parts[1]}/{parts[2]} from a backup"
    return "restore it from a backup"


class ChunkDamagedError(ValueError):
    """Chunks of a Zarr array that fail their checksum or do not decode.

    ``array`` is the array's path relative to the store, ``chunks`` the damaged chunk keys
    (``c/0/0/0/0``), ``reason`` what was wrong with the first one. The arguments are the
    exception's ``args``, so it pickles back from a Dask worker whole.
    """

    def __init__(self, array: str, chunks: list[str] | tuple[str, ...], reason: str = ""):
        super().__init__(array, tuple(chunks), reason)
        self.array, self.chunks, self.reason = array, tuple(chunks), reason

    def __str__(self) -> str:
        named = ", ".join(self.chunks[:MAX_NAMED]) + (f" and {len(self.chunks) - MAX_NAMED} more"
                                                       if len(self.chunks) > MAX_NAMED else "")
        what = "chunk {} is" if len(self.chunks) == 1 else "chunks {} are"
        why = f" ({self.reason})" if self.reason else ""
        return (f"{self.array}: {what.format(named)} damaged{why}; {repair_hint(self.array)}; "
                "`cci store verify` lists everything damaged and what depends on it")


def chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    return arr.metadata.encode_chunk_key(coords)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "checksum" in text.lower():
        return "checksum mismatch"
    return f"does not decode: {text[:120]}"


def _not_damage(exc: BaseException) -> bool:
    """A read that failed for another reason than the chunk's bytes: a disk, a permission, an
    object store that does not answer (machine_faults says those in one line of their own)."""
    from cci_core.store.machine_faults import is_machine_fault
    return isinstance(exc, OSError) or is_machine_fault(exc)


def damaged_chunks(arr: zarr.Array) -> Iterator[tuple[str, str]]:
    """``(chunk key, reason)`` of every stored chunk of ``arr`` that fails its checksum or does
    not decode (a chunk that was never written reads as the fill value and is not listed). A read
    that fails for another reason (:func:`_not_damage`) is raised as it is."""
    read_block = zarr.Array.get_block_selection  # the plain read, not a CheckedArray's
    for coords in itertools.product(*(range(n) for n in arr.cdata_shape)):
        try:
            read_block(arr, coords)
        except Exception as exc:  # any decode failure is damage; the reason says which
            if _not_damage(exc):
                raise
            yield chunk_key(arr, coords), _reason(exc)


def _checked(name: str):
    plain = getattr(zarr.Array, name)

    @functools.wraps(plain)
    def read(self, *args, **kwargs):
        try:
            return plain(self, *args, **kwargs)
        except (IndexError, TypeError, KeyboardInterrupt, ChunkDamagedError):
            raise  # a bad selection, not a bad chunk
        except Exception as exc:
            if _not_damage(exc):
                raise
            bad = list(damaged_chunks(self))
            if not bad:
                raise
            label = self.label or str(self.store_path)
            raise ChunkDamagedError(label, [k for k, _ in bad], bad[0][1]) from exc
    return read


@dataclass(frozen=False)
class CheckedArray(zarr.Array):
    """A read-only view of a ``zarr.Array`` whose reads raise :class:`ChunkDamagedError`
    (naming ``label`` and the damaged chunks) where the plain array raises a codec's error."""
    label: str = ""

    get_basic_selection = _checked("get_basic_selection")
    get_orthogonal_selection = _checked("get_orthogonal_selection")
    get_mask_selection = _checked("get_mask_selection")
    get_coordinate_selection = _checked("get_coordinate_selection")
    get_block_selection = _checked("get_block_selection")


def open_checked(path, label: str) -> CheckedArray:
    """Open the array at ``path`` (a local path or URL) read-only; ``label`` is its path relative to the store."""
    arr = zarr.open_array(fs.zarr_url(path), mode="r")
    return CheckedArray(arr.async_array, label)


def missing_chunks(arr: zarr.Array, path, n_rows: int) -> list[str]:
    """Keys of the chunks holding rows ``[0, n_rows)`` of the local array at ``path`` that have no
    file: an array written with ``write_empty_chunks`` (a corpus) has one for every written chunk, and
    a missing one would read back as zeros. Not checked (empty) for an array at a URL (a request per chunk)."""
    if not fs.is_local(path) or not n_rows:
        return []
    rest = (0,) * (arr.ndim - 1)
    keys = (chunk_key(arr, (i, *rest)) for i in range(-(-n_rows // arr.chunks[0])))
    return [k for k in keys if not (fs.as_path(path) / k).exists()]


def open_complete(path, label: str, n_rows: int) -> CheckedArray:
    """:func:`open_checked`, refusing an array whose rows ``[0, n_rows)`` lack a chunk file
    (:func:`missing_chunks`) with a :class:`ChunkDamagedError`."""
    arr = open_checked(path, label)
    missing = missing_chunks(arr, path, n_rows)
    if missing:
        raise ChunkDamagedError(label, missing, "chunk file missing: its rows would read back as zeros")
    return arr


def store_label(root, path) -> str:
    """``path`` relative to the store ``root`` as errors name it (the path itself when outside)."""
    root, path = str(root).rstrip("/"), str(path)
    return path[len(root) + 1:] if path.startswith(root + "/") else path
