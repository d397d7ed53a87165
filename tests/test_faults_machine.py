"""Faults of the machine under a real store (issue 28, item 5): a read-only store, a full disk, a
damaged or locked lineage database, NaN model weights, an object store that stops answering.

Each case damages a copy of one small store (digits at 28x28, run ``km`` = k-means k=3 and its
refinement ``ref``), runs the real ``cci`` and asserts through the shared tally (tests/faults.py):
one ``error:`` line naming the resource and what to do, or a correct result; no traceback, no
file lost, nothing half-written left. Mounts (a read-only bind mount, a tiny tmpfs) need root
and a container that allows them; where it does not, the case is skipped with the reason.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from faults import Ran, check, flip_bytes, invoke, run, snapshot

from cci_core.cluster.cluster_run import ClusterParams


@pytest.fixture(scope="module")
def base(digits28_store):
    """The store every case copies: corpus ``d28``, run ``km`` and its refined run ``ref``."""
    from cci_core.refine import refine_run as rr
    store = digits28_store("faults-machine", corpus="d28", km=ClusterParams(k=3, n_components=20))
    rr.refine_local(store, "km", rr.config_from_options({"rounds": 1, "warmup_steps": 20, "steps": 20,
                                                        "batch_size": 64, "width": 8, "start": "given",
                                                        "recluster": "kmeans"}),
                    new_run_id="ref", log=lambda _: None)
    return store.root


def _copy(base: Path, where: Path) -> Path:
    shutil.copytree(base, where, symlinks=True)
    return where


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"`mount {' '.join(args)}` is not allowed here ({done.stderr.strip() or done.returncode}); "
                    "this case needs root in a container that may mount")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_view(src: Path, mnt: Path):
    """SRC seen read-only at MNT (a read-only bind mount: root's writes fail with EROFS too)."""
    mnt.mkdir(parents=True)
    _mount("--bind", str(src), str(mnt))
    try:
        _mount("-o", "remount,ro,bind", str(mnt))
        yield mnt
    finally:
        _umount(mnt)


@contextlib.contextmanager
def tiny_disk(mnt: Path, size: str):
    """A tmpfs of SIZE at MNT: a small disk to fill."""
    mnt.mkdir(parents=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        _umount(mnt)


def fill(disk: Path, leave: int = 0) -> None:
    """Write a file on DISK until only LEAVE bytes are free (0: until the disk is full)."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    block = bytes(1 << 16)
    with contextlib.suppress(OSError), open(disk / "filler.bin", "wb", buffering=0) as fh:
        todo = max(free - leave, 0) if leave else None
        while todo is None or todo > 0:
            fh.write(block if todo is None or todo >= len(block) else block[:todo])
            if todo is not None:
                todo -= min(todo, len(block))


def _leftovers(root: Path) -> list[str]:
    """Half-written things a failed command may not leave: staging folders and temp files."""
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.name.startswith(".staging-") or p.name == "_staging" or p.name.endswith((".tmp", ".partial"))]


# ----- a read-only store ---------------------------------------------------------------------------------------

def test_read_only_store_refuses_writes_before_start_and_still_reads(base, tmp_path):
    src = _copy(base, tmp_path / "store")
    with read_only_view(src, tmp_path / "ro") as ro:
        before = snapshot(ro)
        ran = invoke("cluster", "d28", "-k", "3", "--store", ro)
        check("machine: read-only store, cci cluster", ran, before, ro, fragments=[f"store {ro} is read-only", "writable"])
        for args, shows in ((("corpus", "info", "d28"), "d28"), (("lineage", "list"), "corpus"),
                            (("predict", "km", "--corpus", "d28", "--rows", "0:50"), "50 images labelled")):
            ran = invoke(*args, "--store", ro)
            check(f"machine: read-only store, cci {' '.join(args[:2])}", ran, before, ro, expect="correct result",
                  correct=lambda r, shows=shows: shows in r.stdout)


def _as_nobody(home: Path, *args) -> Ran:
    """The ``cci`` console script run as user nobody (uid 65534)."""
    cci = str(Path(sys.executable).parent / "cci")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", cci, *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), "COLUMNS": "400"})
    if done.returncode == 126 or ("Permission denied" in done.stderr and cci in done.stderr):
        pytest.skip(f"user nobody cannot run {cci} here")
    return Ran(done.returncode, done.stdout, done.stderr)


def test_permission_denied_for_another_user(base):
    """The store belongs to root: run as nobody, `cci cluster` cannot write it (one line, before start-up)
    and, once the store's folder is closed to others, a reading command cannot read it (one line)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another user")
    top = Path(tempfile.mkdtemp(prefix="cci-perm-", dir="/tmp"))
    try:
        top.chmod(0o755)
        store = _copy(base, top / "store")
        store.chmod(0o755)
        home = top / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        before = snapshot(store)
        ran = _as_nobody(home, "cluster", "d28", "-k", "3", "--store", store)
        check("machine: permission denied (another user), cci cluster", ran, before, store,
              fragments=[f"store {store} cannot be written", "permission denied"])
        store.chmod(0o700)
        ran = _as_nobody(home, "corpus", "info", "d28", "--store", store)
        check("machine: store folder closed to the user, cci corpus info", ran, before, store,
              fragments=[str(store), "permission denied", "give this user access"])
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ----- a full disk -----------------------------------------------------------------------------------------------

def test_full_disk_is_refused_before_start(tmp_path):
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        fill(disk)
        before = snapshot(disk)
        ran = invoke("ingest", "builtin:digits", "--corpus", "d", "--size", "28x28", "--store", disk / "store")
        check("machine: full disk, cci ingest", ran, before, disk, fragments=[f"store {disk / 'store'}", "disk is full"])
        assert not (disk / "store").exists()


def test_predict_output_on_a_full_disk_leaves_no_part(base, tmp_path):
    with tiny_disk(tmp_path / "disk", "1m") as disk:
        fill(disk)
        before = snapshot(disk)
        ran = invoke("predict", "km", "--corpus", "d28", "-o", disk / "labels.parquet", "--store", base)
        check("machine: full disk, cci predict -o", ran, before, disk, fragments=["no space left", str(disk)])
        assert _leftovers(disk) == [] and not (disk / "labels.parquet").exists()


def test_disk_full_during_ingest_removes_staging_and_keeps_the_last_version(tmp_path, prefect_api):
    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.corpus import open_corpus
    from cci_core.store.store import Store
    first = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "first.npy", first)
    with tiny_disk(tmp_path / "disk", "4m") as disk:
        store = Store(disk / "store")
        ingest_local(store, str(tmp_path / "first.npy"), "d")
        v1 = open_corpus(store, "d").read_images()
        fill(disk, leave=(1 << 20) + (200 << 10))  # past the preflight's 1 MiB; less than the 1.4 MB of pixels
        before = snapshot(disk)
        ran = invoke("ingest", "builtin:digits", "--corpus", "d", "--size", "28x28", "--store", disk / "store",
                     "--workers", "1")
        check("machine: disk full during cci ingest", ran, before, disk, fragments=["no space left", str(disk)])
        assert _leftovers(disk) == []
        corpus = open_corpus(store, "d")
        assert corpus.version == 1 and np.array_equal(corpus.read_images(), v1)


# ----- the lineage database ------------------------------------------------------------------------------------

def test_damaged_lineage_page(base, tmp_path):
    store = _copy(base, tmp_path / "store")
    with contextlib.closing(sqlite3.connect(str(store / "lineage.db"))) as conn:  # every page in the file itself
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    flip_bytes(store / "lineage.db", count=64)  # a b-tree page in the middle of the file
    before = snapshot(store)
    for args in (("lineage", "list"), ("corpus", "info", "d28"), ("cluster", "d28", "-k", "3")):
        ran = invoke(*args, "--store", store)
        check(f"machine: damaged lineage.db page, cci {' '.join(args[:2])}", ran, before, store,
              fragments=[f"{store / 'lineage.db'} is damaged", "cannot be read", "backup"])


@contextlib.contextmanager
def exclusive_lock(db: Path):
    """Another process's writer holding the lineage database (``BEGIN EXCLUSIVE``) for the block."""
    conn = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_locked_lineage_database(base, tmp_path):
    store = _copy(base, tmp_path / "store")
    with exclusive_lock(store / "lineage.db"):
        before = snapshot(store)
        ran = invoke("cluster", "d28", "-k", "3", "--store", store)
        check("machine: locked lineage.db, cci cluster", ran, before, store,
              fragments=[f"{store / 'lineage.db'} is locked", "wait"])
        ran = invoke("lineage", "list", "--store", store)  # a WAL database: readers are not blocked
        check("machine: locked lineage.db, cci lineage list", ran, before, store, expect="correct result",
              correct=lambda r: "corpus" in r.stdout)


# ----- NaN weights ---------------------------------------------------------------------------------------------------

def _poison(path: Path) -> None:
    """NaN into the first floating-point tensor of a safetensors file (written with the safetensors library)."""
    from safetensors.numpy import load_file, save_file
    arrays = load_file(str(path))
    name = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    arrays[name] = arrays[name].copy()
    arrays[name].reshape(-1)[:3] = np.nan
    save_file(arrays, str(path))


@pytest.mark.parametrize("run_id, weights", [("ref", "classifier/classifier.safetensors"), ("km", "pca/pca.safetensors")])
def test_nan_weights_make_predict_fail(base, tmp_path, run_id, weights):
    store = _copy(base, tmp_path / "store")
    _poison(store / "runs" / run_id / weights)
    before = snapshot(store)
    ran = invoke("predict", run_id, "--corpus", "d28", "--rows", "0:100", "--store", store)
    check(f"machine: NaN weights ({weights.split('/')[-1]}), cci predict", ran, before, store,
          fragments=[weights.split("/")[-1], "NaN", "cci store verify"])


def test_nan_classifier_weights_make_generate_fail(base, tmp_path, prefect_api):
    """The classifier that scores generated images holds NaN: `cci generate` (a flow) fails with one
    line naming it, and publishes no dataset (was: every image rejected, a dataset published)."""
    from cci_core.generate.settings import TrainParams
    from cci_core.generate.training_run import train_local
    from cci_core.store.store import Store
    store = _copy(base, tmp_path / "store")
    train_local(Store(store), "ref", TrainParams(steps=4, batch_size=16, min_size=10, checkpoint_every=4, width=8,
                                                 z_dim=8, baseline=False))
    _poison(store / "runs" / "ref" / "classifier" / "classifier.safetensors")
    before = snapshot(store)
    ran = invoke("generate", "ref", "--dataset", "g", "--per-cluster", "4", "--store", store, "--workers", "1")
    check("machine: NaN classifier weights, cci generate", ran, before, store,
          fragments=["classifier.safetensors", "NaN", "cci store verify"])
    assert not list((store / "datasets").glob("g/v*")) and _leftovers(store) == []


# ----- an object store that stops answering -------------------------------------------------------------------------

def test_object_store_stops_answering_mid_command(tmp_path):
    from s3cut import cut_proxy
    from s3server import make_bucket, moto_server, s3_env

    from cci_core.ingest.ingest import ingest_local
    from cci_core.store.store import Store
    lineage = {"CCI_LINEAGE_URL": f"sqlite:///{tmp_path / 'lineage.db'}"}
    with moto_server(tmp_path) as env, s3_env({**env, **lineage}):
        url = f"{make_bucket('faults')}/store"
        ingest_local(Store(url), "builtin:digits", "d28", size=(28, 28), batch_size=600)
        with cut_proxy(env["AWS_ENDPOINT_URL"], cut_at="index.parquet") as proxy:
            # as a user runs it: in this process, earlier tests' logging handlers would print asyncio's
            # note on the session s3fs leaves open through a closed test stream
            ran = run("corpus", "info", "d28", "--store", url, env={**env, **lineage, "AWS_ENDPOINT_URL": proxy.url})
            assert proxy.cut.is_set()  # it went away after the preflight, while the command read
            check("machine: object store stops mid-command, cci corpus info", ran, {}, tmp_path,
                  fragments=[f"cannot reach the object store at {proxy.url}", "index.parquet"])
