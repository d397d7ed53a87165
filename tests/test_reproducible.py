"""Same seed, same inputs -> the same weights: generators trained as concurrent threads of one process
get the same weights as trained one by one. (Two whole `cci run` publishing byte-identical datasets:
tests/test_cci_run.py.)"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def test_generators_trained_in_threads_match_sequential(tmp_path):
    """The old pipeline trained every cluster as a thread of one process: each thread's
    torch.manual_seed and layer initialisation interleaved on torch's global RNG, so weights
    (and every generated image) depended on thread timing."""
    from cci_core.generate.gan import GANConfig
    from cci_core.generate.training_loop import TrainConfig, train_generator
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
    from cci_core.generate.dataset_run import devices_used
    refined = {"classifier": "runs/r/classifier", "clustering": {"device": "cpu"}}
    cpu = [{"name": "cluster-0", "device": "cpu"}, {"name": "cluster-1", "device": "cpu"}]
    assert devices_used(refined, cpu, "cpu")[0] is True
    assert devices_used(refined, cpu, "cuda")[0] is False
    assert devices_used(refined, [*cpu[:1], {"name": "cluster-1", "device": "cuda:0"}], "cpu") == (
        False, {"generate": "cpu", "train": {"cluster-0": "cpu", "cluster-1": "cuda:0"}, "classifier": "cpu"})
    assert devices_used({"classifier": "c", "clustering": {"device": "cuda"}}, cpu, "cpu")[0] is False
    assert devices_used({}, cpu, "cpu")[0] is None  # scored by a stand-in CNN whose device was not recorded
