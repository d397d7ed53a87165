"""Two writers into one corpus: real processes racing, and the compare-and-swap on corpus.json."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cci_core.ingest.images import image_id
from cci_core.ingest.ingest import (
    CorpusChangedError,
    check_ingest_request,
    commit_ingest,
    decode_batch,
    ingest_local,
    plan_ingest,
    prepare_array,
    release_lock,
    select_new,
)
from cci_core.store.corpus import open_corpus
from cci_core.store.store import Store

rng = np.random.default_rng(11)
_INGEST = """
import json, sys
from cci_core.ingest.ingest import ingest_local
from cci_core.store.store import Store
try:
    s = ingest_local(Store(sys.argv[1]), sys.argv[2], "race")
except ValueError as exc:
    print("error: " + str(exc)); sys.exit(1)
print(json.dumps({"added": s["added"], "version": s["version"]}))
"""


def _good_images(folder: Path, prefix: str, n: int) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = set()
    for i in range(n):
        px = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(px).save(folder / f"{prefix}-{i:03d}.png")
        ids.add(image_id(px))
    return ids


def _slow_first(folder: Path, n: int) -> None:
    """n truncated 4096x4096 PNGs sorted before the good images: the slow part of planning a
    new corpus (finding the first decodable image) that used to run before the lock."""
    b = io.BytesIO()
    ramp = (np.add.outer(np.arange(4096), np.arange(4096)) % 256).astype(np.uint8)
    Image.fromarray(ramp).save(b, "PNG", compress_level=1)
    data = b.getvalue()[: len(b.getvalue()) * 9 // 10]
    for i in range(n):
        (folder / f"a-trunc-{i:03d}.png").write_bytes(data)


def _check_rows(store: Store) -> set[str]:
    c = open_corpus(store, "race")
    idx = c.index()
    assert list(idx["row"]) == list(range(c.n_rows)) and idx["image_id"].is_unique
    px = c.read_images()
    assert [image_id(p) for p in px] == list(idx["image_id"])  # each row holds the pixels its index says
    return set(idx["image_id"])


def test_two_real_ingests_into_a_new_corpus_lose_no_row(tmp_path):
    slow, fast = tmp_path / "B", tmp_path / "A"
    ids_b = _good_images(slow, "good", 20)
    _slow_first(slow, 150)
    ids_a = _good_images(fast, "good", 40)
    store = tmp_path / "store"
    cmd = [sys.executable, "-c", _INGEST, str(store)]
    proc_b = subprocess.Popen(cmd + [str(slow)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)  # B is importing or planning: under the old order its lock came seconds later
    proc_a = subprocess.Popen(cmd + [str(fast)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc, src in (("A", proc_a, fast), ("B", proc_b, slow)):
        out, errout = proc.communicate(timeout=300)
        assert proc.returncode in (0, 1) and "Traceback" not in errout, errout
        if proc.returncode == 1:  # the loser says why, and that nothing of it was committed
            assert "being written by another ingest" in out or "nothing was committed" in out, out
        results[name] = (proc.returncode, src)
    assert any(rc == 0 for rc, _ in results.values())
    committed = _check_rows(Store(store))
    for name, (rc, _) in results.items():
        if rc == 0:  # every row a successful ingest reported is still there
            assert (ids_a if name == "A" else ids_b) <= committed
    for _name, (rc, src) in results.items():
        if rc == 1:  # re-running the loser adds its rows on top
            again = subprocess.run(cmd + [str(src)], capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, again.stdout + again.stderr
    assert _check_rows(Store(store)) == ids_a | ids_b
    assert not (store / "corpora" / "race" / ".ingest.lock").exists()


def test_commit_refuses_when_another_version_landed_since_the_plan(tmp_path):
    """A broken lock (deleted by hand) cannot make one ingest overwrite another's rows."""
    store = Store(tmp_path / "store")
    a, b = tmp_path / "A", tmp_path / "B"
    ids_a, ids_b = _good_images(a, "a", 12), _good_images(b, "b", 7)
    plan_a = plan_ingest(store, str(a), "race")
    lock = Path(plan_a["corpus_dir"]) / ".ingest.lock"
    held = json.loads(lock.read_text())
    lock.unlink()  # someone "fixes" a corpus that looks stuck
    done_b = ingest_local(store, str(b), "race")
    assert done_b["version"] == 1 and done_b["added"] == 7
    sel_a = select_new(plan_a, [decode_batch(plan_a, x) for x in plan_a["batches"]])
    with pytest.raises(CorpusChangedError, match=r"is at v1 .* planned to extend v0: nothing was committed"):
        prepare_array(plan_a, sel_a)  # resizing would have cut B's rows
    with pytest.raises(CorpusChangedError):
        commit_ingest(store, plan_a, sel_a)
    assert _check_rows(store) == ids_b and open_corpus(store, "race").version == 1
    release_lock(plan_a)
    assert held["ingest_id"] == plan_a["ingest_id"]
    again = ingest_local(store, str(a), "race")
    assert again["version"] == 2 and again["added"] == 12
    assert _check_rows(store) == ids_a | ids_b


def test_lock_is_taken_before_the_corpus_is_read_and_released_when_planning_fails(tmp_path):
    store = Store(tmp_path / "store")
    a = tmp_path / "A"
    _good_images(a, "a", 3)
    plan = plan_ingest(store, str(a), "race")
    with pytest.raises(ValueError, match="being written by another ingest"):
        plan_ingest(store, str(a), "race")
    with pytest.raises(ValueError, match="being written by another ingest"):  # said before any server starts
        check_ingest_request(store, str(a), "race")
    release_lock(plan)
    ingest_local(store, str(a), "race")
    with pytest.raises(ValueError, match="stores images of shape"):
        plan_ingest(store, str(a), "race", size=(4, 4))
    assert not (Path(plan["corpus_dir"]) / ".ingest.lock").exists()  # a failed plan leaves no lock
