"""cci_core.store.fs on a local folder and on a real S3 API (moto on 127.0.0.1)."""
from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pandas as pd
import pytest
import torch
from s3server import make_bucket, moto_server, s3_env

from cci_core.store import fs


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as env, s3_env(env):
        yield env, make_bucket("fs-test")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return tmp_path
    _, bucket = request.getfixturevalue("s3")
    return fs.as_path(f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}")


def test_files_round_trip(root):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    fs.save_npy(root / "a" / "x.npy", arr)
    assert np.array_equal(fs.load_npy(root / "a" / "x.npy"), arr)
    fs.save_npz(root / "a" / "m.npz", p=arr, q=arr * 2)
    assert np.array_equal(fs.load_npz(root / "a" / "m.npz")["q"], arr * 2)
    df = pd.DataFrame({"row": [1, 2, 3], "name": list("abc")})
    fs.write_parquet(root / "a" / "t.parquet", df)
    assert fs.read_parquet(root / "a" / "t.parquet").equals(df)
    t = {"w": torch.arange(6.0).reshape(2, 3)}
    fs.save_tensors(root / "a" / "w.safetensors", t, metadata={"k": "v"})
    assert torch.equal(fs.load_tensors(root / "a" / "w.safetensors")["w"], t["w"])
    assert fs.as_path(str(root / "a" / "x.npy")).exists()


def test_tree_moves_and_copies(root):
    src = root / "src"
    if fs.is_local(root):
        (src / "sub").mkdir(parents=True)  # an object store has no folders to make
    (src / "sub" / "f.txt").write_text("one")
    (src / "g.txt").write_text("two")
    fs.copytree(src, root / "copy")
    with pytest.raises(FileExistsError):
        fs.copytree(src, root / "copy")
    fs.move(src, root / "moved")
    assert not (root / "src").exists()
    assert (root / "moved" / "sub" / "f.txt").read_text() == "one"
    assert (root / "copy" / "g.txt").read_text() == "two"
    fs.rmtree(root / "moved")
    assert not (root / "moved" / "g.txt").exists()
    fs.rmtree(root / "moved", ignore_errors=True)


def test_create_exclusive(root):
    assert fs.create_exclusive(root / "once", b"first")
    assert not fs.create_exclusive(root / "once", b"second")
    assert (root / "once").read_bytes() == b"first"


def _count_under_lock(url: str, env: dict, n: int) -> None:
    import os
    os.environ.update(env)
    for _ in range(n):
        with fs.lock(fs.as_path(url) / "counter.lock"):
            p = fs.as_path(url) / "counter"
            v = int(p.read_text()) if p.exists() else 0
            time.sleep(0.01)
            p.write_text(str(v + 1))


def test_lock_serialises_processes(root, request):
    """Read-increment-write from three processes under the lock loses no update."""
    env = request.getfixturevalue("s3")[0] if not fs.is_local(root) else {}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count_under_lock, args=(str(root), env, 8)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert int((root / "counter").read_text()) == 24
    assert not (root / "counter.lock").exists() or fs.is_local(root)


def test_stale_lock_of_a_dead_writer_is_broken(s3):
    _, bucket = s3
    path = fs.as_path(f"{bucket}/stale") / "x.lock"
    import json
    import socket
    fs.create_exclusive(path, json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 7,
                                          "started": 1.0, "taken": time.time()}).encode())
    with fs.lock(path, timeout_s=10):
        assert json.loads(path.read_text())["pid"] != 2 ** 22 + 7
    assert not path.exists()
