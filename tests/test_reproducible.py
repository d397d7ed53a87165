"""Same seed, same inputs -> the same dataset: two real `cci run` at once in two fresh stores, each
on its own LocalCluster of two worker processes, publish byte-identical images and manifest; generators
trained as concurrent threads of one process get the same weights as trained one by one."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

SMALL = ["--k", "4", "--refine-steps", "20", "--train-steps", "20", "--per-cluster", "8", "--workers", "2",
         "--seed", "3", "--refine-set", "ae_epochs=0", "--refine-set", "width=8",
         "--refine-set", "recluster=kmeans"]


def _cci_runs(*stores: Path) -> list[dict]:
    """`cci run` into each store at the same time (the runs' timings differ; their outputs must not)."""
    cci = Path(sys.executable).parent / "cci"
    # CPU only, as a user without a GPU: CUDA kernels are not bitwise repeatable (the card says so)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200"}
    procs = [subprocess.Popen([str(cci), "run", "builtin:digits", "--store", str(s), *SMALL, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for s in stores]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out[out.index("{"):]) for out, _ in outs]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_dataset(tmp_path, prefect_api):
    first, second = _cci_runs(tmp_path / "a", tmp_path / "b")
    a, b = Path(first["dataset"]["path"]), Path(second["dataset"]["path"])
    assert a != b and first["refined_run"] == second["refined_run"]

    # decoded images, then every chunk and metadata byte of the Zarr store
    ia, ib = zarr.open_array(str(a / "images.zarr"), mode="r")[:], zarr.open_array(str(b / "images.zarr"), mode="r")[:]
    assert ia.shape == (32, 28, 28, 1) and ia.std() > 0
    assert np.array_equal(ia, ib)
    assert _files(a / "images.zarr") == _files(b / "images.zarr")

    # the manifest's content, and its file byte for byte (it holds no wall-clock value)
    ma, mb = pd.read_parquet(a / "manifest.parquet"), pd.read_parquet(b / "manifest.parquet")
    pd.testing.assert_frame_equal(ma, mb)
    assert not any(pd.api.types.is_datetime64_any_dtype(t) for t in ma.dtypes)
    assert (a / "manifest.parquet").read_bytes() == (b / "manifest.parquet").read_bytes()
    assert (a / "data.parquet").read_bytes() == (b / "data.parquet").read_bytes()

    # the cards differ only in when they were written; both say the data is repeatable
    ca, cb = (json.loads((p / "card.json").read_text()) for p in (a, b))
    assert ca.pop("created_at") != "" and cb.pop("created_at") != ""
    assert ca == cb
    assert ca["deterministic"] is True and ca["devices"]["generate"] == "cpu"
    assert set(ca["devices"]["train"].values()) == {"cpu"} and ca["devices"]["classifier"] == "cpu"


def test_generators_trained_in_threads_match_sequential(tmp_path):
    """The old pipeline trained every cluster as a thread of one process: each thread's
    torch.manual_seed and layer initialisation interleaved on torch's global RNG, so weights
    (and every generated image) depended on thread timing."""
    from cci_core.generate.gan import GANConfig
    from cci_core.generate.train_generator import TrainConfig, train_generator
    images = np.random.default_rng(0).integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
    cfg = GANConfig(image_size=28, channels=1, z_dim=8, g_width=8, d_width=8, d_features=16)

    def train(where: str, i: int) -> str:
        out = tmp_path / where / f"cluster-{i}"
        train_generator(images, out, cfg, TrainConfig(steps=3, batch_size=16, checkpoint_every=3, n_samples=4),
                        rows=np.arange(50 * i, 50 * i + 50))
        return hashlib.sha256((out / "generator.safetensors").read_bytes()).hexdigest()

    one_by_one = [train("sequential", i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        threads = list(pool.map(lambda i: train("threads", i), range(4)))
    assert len(set(one_by_one)) == 4 and threads == one_by_one


def test_card_says_when_a_gpu_made_the_dataset_unrepeatable():
    from cci_core.generate.generate_run import devices_used
    refined = {"classifier": "runs/r/classifier", "clustering": {"device": "cpu"}}
    cpu = [{"name": "cluster-0", "device": "cpu"}, {"name": "cluster-1", "device": "cpu"}]
    assert devices_used(refined, cpu, "cpu")[0] is True
    assert devices_used(refined, cpu, "cuda")[0] is False
    assert devices_used(refined, [*cpu[:1], {"name": "cluster-1", "device": "cuda:0"}], "cpu") == (
        False, {"generate": "cpu", "train": {"cluster-0": "cpu", "cluster-1": "cuda:0"}, "classifier": "cpu"})
    assert devices_used({"classifier": "c", "clustering": {"device": "cuda"}}, cpu, "cpu")[0] is False
    assert devices_used({}, cpu, "cpu")[0] is None  # scored by a stand-in CNN whose device was not recorded
