"""Identical archives give identical corpora whatever their compression (issue 28, item 7): two
members with one name are read by one rule (the first is ingested, later ones are quarantined
as a duplicate member name) in a plain, gzip, bzip2 or xz tar archive, with any batch size."""
from __future__ import annotations

import io
import tarfile

import faults
import numpy as np
import pytest
from PIL import Image

from cci_core.ingest.batches import DUPLICATE_MEMBER
from cci_core.ingest.ingest import ingest_local
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store

MODES = {".tar": "w", ".tar.gz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# a/x.png twice with different pixels; b.png between them
MEMBERS = [("a/x.png", _png(10)), ("b.png", _png(20)), ("a/x.png", _png(30)), ("c.png", _png(40))]


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archives")
    paths = {}
    for suffix, mode in MODES.items():
        paths[suffix] = folder / f"same{suffix}"
        with tarfile.open(paths[suffix], mode) as tf:
            for name, data in MEMBERS:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return paths


def _corpus(store: Store, name: str) -> tuple[list[tuple], np.ndarray, list[tuple]]:
    """The rows (member, image_id, label, original size and mode), pixels and quarantine of a corpus."""
    c = open_corpus(store, name)
    index = c.index().sort_values("row")
    rows = [(r.source.split("!", 1)[1], r.image_id, r.label, r.orig_height, r.orig_width, r.orig_mode)
            for r in index.itertuples()]
    quarantine = sorted((s.split("!", 1)[1], r) for s, r in zip(c.quarantine()["source"], c.quarantine()["reason"]))
    return rows, np.asarray(c.images()[:]), quarantine


@pytest.mark.parametrize("batch_size", [1, 512])
def test_duplicate_member_names_one_rule(tmp_path, archives, batch_size):
    store = Store(tmp_path / "store")
    got = {}
    for suffix, path in archives.items():
        corpus = "t" + suffix.replace(".", "-")
        ingest_local(store, str(path), corpus, batch_size=batch_size)
        got[suffix] = _corpus(store, corpus)
    rows, pixels, quarantine = got[".tar"]
    assert [r[0] for r in rows] == ["a/x.png", "b.png", "c.png"] and quarantine == [("a/x.png", DUPLICATE_MEMBER)]
    assert pixels[:, 0, 0, 0].tolist() == [10, 20, 40]  # the first a/x.png, never the later one
    for suffix, (rows_, pixels_, quarantine_) in got.items():
        assert rows_ == rows and quarantine_ == quarantine and np.array_equal(pixels_, pixels), suffix
    faults.TALLY[f"archives: duplicate member names, batch {batch_size}"] = "correct result"
