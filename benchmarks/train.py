"""Orchestration overhead of generator training: `train_generator` (checkpoints, samples,
progress, row reads from Zarr) against a bare PyTorch loop with the same GAN, batch and steps.

Both train the same model (the DCGAN-style GAN, then the VAE) on a Fashion-MNIST cluster's
rows read from a Zarr array, on the device chosen at run time (bfloat16 autocast on CUDA). Each side runs
``--repeats`` times, alternating, and the median
is kept (one run alone is at the mercy of whatever else the machine does). The defaults are
those of ``cci train``: 2,000 steps, a checkpoint and sample grid every 500.
Writes benchmarks/results/train.json (``--out`` elsewhere).

    python benchmarks/train.py [--steps 2000] [--checkpoint-every 500] [--repeats 3] [--threads 2]
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

from cci_core.common.device import pick_device
from cci_core.generate.gan import Discriminator, GANConfig, Generator, d_loss, g_loss
from cci_core.generate.training_loop import TrainConfig, train_generator
from cci_core.generate.vae import VAE, VAEConfig
from cci_core.ingest.idx import read_idx

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULT = Path(__file__).parent / "results" / "train.json"


def bare_loop(images: np.ndarray, cfg, steps: int, batch: int, device) -> float:
    """The same model, optimisers and batch with nothing else: images/s. On CUDA it runs in
    bfloat16 autocast, as train_generator does there."""
    torch.manual_seed(0)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    gen = torch.Generator().manual_seed(0)

    def step_once(opt, loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if isinstance(cfg, GANConfig):
        G, D = Generator(cfg).to(device), Discriminator(cfg).to(device)
        opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    else:
        vae = VAE(cfg).to(device)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x = x_all[idx.to(device)]
        if isinstance(cfg, GANConfig):
            z = torch.randn(batch, cfg.z_dim, device=device)
            with amp:
                fake = G(z, None)
                loss_d = d_loss(D(x, None).float(), D(fake.detach(), None).float(), cfg.loss)
            step_once(opt_d, loss_d)
            with amp:
                loss_g = g_loss(D(fake, None).float(), cfg.loss)
            step_once(opt_g, loss_g)
        else:
            with amp:
                loss = vae.loss(x, gen)["loss"]
            step_once(opt, loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--models", default="gan,vae", help="comma-separated: gan, vae")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(None)
    X = read_idx(DATA / "train-images-idx3-ubyte.gz")[..., None]
    y = read_idx(DATA / "train-labels-idx1-ubyte.gz")
    rows = np.flatnonzero(y == 7)  # one "cluster": sneakers, 6,000 images
    configs = {"gan": GANConfig(g_width=args.width, d_width=args.width, d_features=4 * args.width),
               "vae": VAEConfig(width=args.width, z_dim=64)}
    res = {"device": str(device), "machine": f"{platform.machine()}, torch threads {args.threads}",
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
           "steps": args.steps, "checkpoint_every": args.checkpoint_every, "batch_size": args.batch_size,
           "width": args.width, "cluster_rows": int(rows.size), "repeats": args.repeats, "models": {}}
    n_images = args.steps * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(f"{tmp}/images.zarr", shape=X.shape, chunks=(4096, 28, 28, 1), dtype="uint8")
        arr[:] = X
        for name in args.models.split(","):
            cfg = configs[name]
            bare_loop(X[rows[:512]], cfg, 5, args.batch_size, device)  # warm-up (kernels, allocator)
            bare, in_loop, wall = [], [], []
            for r in range(args.repeats):
                bare.append(bare_loop(X[rows], cfg, args.steps, args.batch_size, device))
                tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                   checkpoint_every=args.checkpoint_every, seed=0, device=str(device))
                t0 = time.perf_counter()
                out = train_generator(arr, f"{tmp}/{name}-{r}", cfg, tcfg, rows=rows)
                wall.append(n_images / (time.perf_counter() - t0))
                in_loop.append(n_images / out["seconds"])
                print(f"{name} repeat {r}: bare {bare[-1]:.0f}, train_generator {in_loop[-1]:.0f} in the loop, "
                      f"{wall[-1]:.0f} wall (images/s)", flush=True)
            m = {"bare_images_per_s": float(np.median(bare)), "train_generator_images_per_s": float(np.median(in_loop)),
                 "train_generator_wall_images_per_s": float(np.median(wall)),
                 "runs": {"bare": bare, "train_generator": in_loop, "train_generator_wall": wall}}
            m["overhead_in_loop"] = 1 - m["train_generator_images_per_s"] / m["bare_images_per_s"]
            m["overhead_wall"] = 1 - m["train_generator_wall_images_per_s"] / m["bare_images_per_s"]
            res["models"][name] = m
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
