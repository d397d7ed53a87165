"""Orchestration overhead of generator training: `train_generator` (checkpoints, samples,
progress, row reads from Zarr) against a bare PyTorch loop with the same GAN, batch and steps.

Both train a DCGAN-style GAN on a Fashion-MNIST cluster's rows read from a Zarr array, on the
device chosen at run time. Writes benchmarks/results/train.json.

    python benchmarks/train.py [--steps 300] [--width 32] [--batch-size 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from cci_core.device import pick_device
from cci_core.gan import Discriminator, GANConfig, Generator, d_loss, g_loss
from cci_core.idx import read_idx
from cci_core.train_generator import TrainConfig, train_generator

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "train.json"


def bare_loop(images: np.ndarray, cfg: GANConfig, steps: int, batch: int, device) -> float:
    """The same model and optimisers with nothing else: images/s."""
    torch.manual_seed(0)
    G, D = Generator(cfg).to(device), Discriminator(cfg).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x = x_all[idx.to(device)]
        z = torch.randn(batch, cfg.z_dim, device=device)
        fake = G(z, None)
        loss_d = d_loss(D(x, None), D(fake.detach(), None), cfg.loss)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = g_loss(D(fake, None), cfg.loss)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(None)
    X = read_idx(DATA / "train-images-idx3-ubyte.gz")[..., None]
    y = read_idx(DATA / "train-labels-idx1-ubyte.gz")
    rows = np.flatnonzero(y == 7)  # one "cluster": sneakers, 6,000 images
    cfg = GANConfig(g_width=args.width, d_width=args.width, d_features=4 * args.width)
    res = {"device": str(device), "machine": f"{platform.machine()}, torch threads {args.threads}",
           "steps": args.steps, "batch_size": args.batch_size, "width": args.width, "cluster_rows": int(rows.size)}
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(f"{tmp}/images.zarr", shape=X.shape, chunks=(4096, 28, 28, 1), dtype="uint8")
        arr[:] = X
        bare_loop(X[rows[:512]], cfg, 5, args.batch_size, device)  # warm-up (kernels, allocator)
        res["bare_images_per_s"] = bare_loop(X[rows], cfg, args.steps, args.batch_size, device)
        tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size,
                           checkpoint_every=max(1, args.steps // 3), seed=0)
        t0 = time.perf_counter()
        out = train_generator(arr, f"{tmp}/model", cfg, tcfg, rows=rows)
        wall = time.perf_counter() - t0
        res["train_generator_images_per_s"] = args.steps * args.batch_size / out["seconds"]
        res["train_generator_wall_images_per_s"] = args.steps * args.batch_size / wall
    res["overhead_in_loop"] = 1 - res["train_generator_images_per_s"] / res["bare_images_per_s"]
    res["overhead_wall"] = 1 - res["train_generator_wall_images_per_s"] / res["bare_images_per_s"]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
