"""Train one generator (GAN, conditional GAN or VAE) on rows of an image array, resumably.

``train_generator`` reads uint8 images (N, H, W, C) from a numpy or zarr array (optionally
only the given ``rows``: one cluster's members), trains for a step budget and optionally a
time budget, writes checkpoints (safetensors + JSON, never pickle) every
``checkpoint_every`` steps with a sample grid PNG beside each, resumes from the latest
checkpoint in ``out_dir``, and ends with the exported generator and a loss-curve PNG::

    out_dir/checkpoints/step-0000500/state.{safetensors,json}
    out_dir/samples/step-0000500.png
    out_dir/generator.{safetensors,json}      (EMA weights when ema_decay is set)
    out_dir/loss.png

A conditional GAN takes ``labels`` (cluster ids aligned with ``rows``). They are read at
every call, so a later phase may resume the same run with different labels. Loading and sampling a
trained generator: :mod:`cci_core.generate.sampling`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cci_core.common.device import pick_device, use_amp
from cci_core.common.imagegrid import make_grid, save_png
from cci_core.common.memory import memory_budget_bytes
from cci_core.common.seeding import seeded
from cci_core.generate.gan import Discriminator, GANConfig, Generator, d_loss, g_loss
from cci_core.generate.image_batches import RowSource, to_signed_tensor, to_uint8
from cci_core.generate.model_dir import checkpoint_dirs
from cci_core.generate.vae import VAE, VAEConfig
from cci_core.store import fs
from cci_core.store.weights import MODEL_STATE_FIELDS, load_weights, save_weights

ProgressFn = Callable[[int, int, dict], None]


@dataclass
class TrainConfig:
    """Budget and optimiser settings shared by every model kind.

    ``lr``/``betas`` default per kind: GAN 2e-4, (0.5, 0.999); VAE 1e-3, (0.9, 0.999).
    Training stops at ``steps`` (the total, counted across resumes) or after ``seconds`` of
    training time (also summed over resumes), whichever comes first. Runs with the same seed
    and step budget give identical weights on CPU, interrupted or not; a time budget does not.
    """

    steps: int = 2000
    seconds: float | None = None
    batch_size: int = 64
    lr: float | None = None
    betas: tuple[float, float] | None = None
    ema_decay: float | None = None       # e.g. 0.999; GAN only
    mode_seeking: float = 0.0            # weight of the mode-seeking term; GAN only
    init_from: str | None = None         # a fresh run starts from the weights of this run's last checkpoint
    init_cluster: int | None = None      # ... cut down to this cluster when init_from is a conditional GAN
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    n_samples: int = 64                  # images in each sample grid
    progress_every: int | None = None    # default: about 100 calls per run
    seed: int = 0
    device: str | None = None            # default: cuda when available, else cpu
    # rows above this are read window by window; default: $CCI_MEMORY_BUDGET_MB (cci_core.common.memory)
    max_memory_bytes: int = field(default_factory=memory_budget_bytes)

    def __post_init__(self) -> None:
        if self.betas is not None:
            self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds={self.seconds} must be positive, or None for no time budget")
        if self.mode_seeking < 0:
            raise ValueError(f"mode_seeking={self.mode_seeking} must be >= 0 (0 = off)")
        if self.mode_seeking and self.batch_size < 2:
            raise ValueError(f"mode_seeking compares pairs of images in a batch; batch_size={self.batch_size} "
                             "must be >= 2 (or set mode_seeking=0)")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must be in (0, 1), or None for no EMA")


# ---------------------------------------------------------------- models: one small strategy each

class _Amp:
    """autocast + grad scaling on CUDA; a no-op elsewhere."""

    def __init__(self, device: torch.device):
        self.enabled = use_amp(device)
        self.device_type = device.type
        bf16 = self.enabled and torch.cuda.is_bf16_supported()
        self.dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaling = self.enabled and not bf16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self):
        return torch.amp.GradScaler(self.device_type, enabled=self.scaling)


def _backward_step(loss, opt, scaler) -> None:
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


class _GANKind:
    kind = "gan"

    def __init__(self, cfg: GANConfig, tcfg: TrainConfig, device: torch.device):
        lr, betas = tcfg.lr or 2e-4, tcfg.betas or (0.5, 0.999)
        self.cfg, self.device, self.amp = cfg, device, _Amp(device)
        self.G, self.D = Generator(cfg).to(device), Discriminator(cfg).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        self.scale_g, self.scale_d = self.amp.scaler(), self.amp.scaler()
        self.ema_decay, self.mode_seeking = tcfg.ema_decay, tcfg.mode_seeking
        self.G_ema = copy.deepcopy(self.G).eval() if tcfg.ema_decay else None

    def modules(self) -> dict[str, nn.Module]:
        mods = {"G": self.G, "D": self.D}
        if self.G_ema is not None:
            mods["G_ema"] = self.G_ema
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def sampler(self) -> nn.Module:
        return self.G_ema if self.G_ema is not None else self.G

    def step(self, x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> dict:
        b = x.shape[0]
        z = torch.randn((b, self.cfg.z_dim), generator=gen).to(self.device)
        # Fakes are drawn for the same cluster ids as the real batch: the empirical prior.
        # With mode seeking the second half repeats the first half's ids, so each pair
        # (i, i + b//2) shares a condition and differs only in z.
        yf = y if y is None or not self.mode_seeking else torch.cat([y[: b // 2], y[: b - b // 2]])
        with self.amp.autocast():
            fake = self.G(z, yf)
            loss_d = d_loss(self.D(x, y).float(), self.D(fake.detach(), yf).float(), self.cfg.loss)
        _backward_step(loss_d, self.opt_d, self.scale_d)
        with self.amp.autocast():
            loss_g = g_loss(self.D(fake, yf).float(), self.cfg.loss)
            if self.mode_seeking:
                # MSGAN (Mao et al. 2019): penalise images that move less than their z do,
                # the within-condition collapse of conditional GANs
                h = b // 2
                ratio = ((fake[:h] - fake[h:2 * h]).abs().mean() / (z[:h] - z[h:2 * h]).abs().mean()).float()
                loss_g = loss_g + self.mode_seeking / (ratio + 1e-5)
        _backward_step(loss_g, self.opt_g, self.scale_g)
        if self.G_ema is not None:
            # warm-up: a plain 0.999 average stays near the random start for the first thousands
            # of steps, which short per-cluster budgets never leave
            n = getattr(self, "updates_done", 0)
            decay = min(self.ema_decay, (1.0 + n) / (10.0 + n))
            with torch.no_grad():
                for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                    pe.lerp_(p, 1.0 - decay)
                for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
                    be.copy_(b)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


class _VAEKind:
    kind = "vae"

    def __init__(self, cfg: VAEConfig, tcfg: TrainConfig, device: torch.device):
        if tcfg.ema_decay or tcfg.mode_seeking:
            raise ValueError("ema_decay and mode_seeking apply to GAN generators only; "
                             "leave them unset for a VAE")
        self.cfg, self.device, self.amp = cfg, device, _Amp(device)
        self.vae = VAE(cfg).to(device)
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=tcfg.lr or 1e-3,
                                    betas=tcfg.betas or (0.9, 0.999))
        self.scale = self.amp.scaler()

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def sampler(self) -> nn.Module:
        return self.vae

    def step(self, x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> dict:
        with self.amp.autocast():
            parts = self.vae.loss(x, gen)
        _backward_step(parts["loss"], self.opt, self.scale)
        return {k: v.item() for k, v in parts.items()}


def _make_kind(model_cfg, tcfg: TrainConfig, device: torch.device):
    if isinstance(model_cfg, GANConfig):
        return _GANKind(model_cfg, tcfg, device)
    if isinstance(model_cfg, VAEConfig):
        return _VAEKind(model_cfg, tcfg, device)
    raise ValueError(f"model_cfg must be a GANConfig or a VAEConfig; got {type(model_cfg).__name__}")


# ---------------------------------------------------------------- checkpoints

def _save_checkpoint(out_dir: Path, kind, step: int, elapsed: float, gen: torch.Generator,
                     history: dict[str, list[float]], meta: dict, keep: int) -> Path:
    tensors: dict[str, torch.Tensor] = {"rng.torch": gen.get_state()}
    for name, mod in kind.modules().items():
        tensors.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    groups = {}
    for name, opt in kind.optimizers().items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for pid, st in sd["state"].items():
            tensors.update({f"{name}.state.{pid}.{k}": torch.as_tensor(v) for k, v in st.items()})
    for name, values in history.items():
        tensors[f"history.{name}"] = torch.tensor(values, dtype=torch.float64)
    path = out_dir / "checkpoints" / f"step-{step:07d}"
    save_weights(path, tensors, dict(meta, step=step, elapsed=elapsed, param_groups=groups,
                                     history=sorted(history)), name="state")
    for old in checkpoint_dirs(out_dir)[:-keep]:
        fs.rmtree(old, ignore_errors=True)
    return path


def _load_checkpoint(path: Path, kind, gen: torch.Generator, meta: dict):
    tensors, info = load_weights(path, "state", fields=MODEL_STATE_FIELDS)
    for key in ("kind", "model"):
        if info[key] != meta[key]:
            raise ValueError(f"{path} was written for {key}={info[key]}, not {meta[key]}; "
                             "use a fresh out_dir or the original configuration")
    gen.set_state(tensors["rng.torch"])
    for name, mod in kind.modules().items():
        pre = f"{name}."
        mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    for name, opt in kind.optimizers().items():
        state: dict[int, dict] = {}
        pre = f"{name}.state."
        for k, v in tensors.items():
            if k.startswith(pre):
                pid, field = k[len(pre):].split(".", 1)
                state.setdefault(int(pid), {})[field] = v
        groups = info["param_groups"][name]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        opt.load_state_dict({"state": state, "param_groups": groups})
    history = {n: tensors[f"history.{n}"].tolist() for n in info["history"]}
    return int(info["step"]), float(info["elapsed"]), history


def _start_from(init_dir: str | Path, kind, meta: dict, cluster: int | None) -> None:
    """Load the weights (not the optimiser state) of ``init_dir``'s last checkpoint into ``kind``: a model
    fine-tuned from a shared start. A conditional GAN's start is cut down to ``cluster`` first
    (:mod:`cci_core.generate.specialise`). An EMA generator the start lacks starts as its G."""
    from cci_core.generate.specialise import specialise, specialised_config
    ckpts = checkpoint_dirs(fs.as_path(init_dir))
    if not ckpts:
        raise ValueError(f"init_from={init_dir} holds no checkpoint; train the shared start there first")
    tensors, info = load_weights(ckpts[-1], "state", fields=MODEL_STATE_FIELDS)
    conditional = info["kind"] == "gan" and info["model"].get("n_classes", 0) > 0
    if conditional:
        if cluster is None:
            raise ValueError(f"init_from={init_dir} is a conditional GAN; say which cluster to start from "
                             "(init_cluster)")
        start = GANConfig(**info["model"])
        if asdict(specialised_config(start)) != meta["model"]:
            raise ValueError(f"init_from={init_dir} ({info['model']}) does not specialise to {meta['model']}")
    elif info["kind"] != meta["kind"] or info["model"] != meta["model"]:
        raise ValueError(f"init_from={init_dir} was trained as {info['kind']} {info['model']}, not {meta['kind']} "
                         f"{meta['model']}; a shared start must have the fine-tuned model's configuration")

    def part(name: str) -> dict:
        pre = f"{name}." if any(k.startswith(f"{name}.") for k in tensors) else "G."
        return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}

    if not conditional:
        for name, mod in kind.modules().items():
            mod.load_state_dict(part(name))
        return
    G, D = Generator(start), Discriminator(start)
    D.load_state_dict(part("D"))
    for name in kind.modules():
        if name != "D":
            G.load_state_dict(part(name))
            g, d = specialise(G, D, cluster)
            kind.modules()[name].load_state_dict(g.state_dict())
    kind.D.load_state_dict(d.state_dict())


# ---------------------------------------------------------------- outputs

def _save_samples(model: nn.Module, z: torch.Tensor, y: torch.Tensor | None, path: Path) -> Path:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = model.decode(z) if isinstance(model, VAE) else model(z, y)
    model.train(was_training)
    ncols = model.cfg.n_classes if getattr(model.cfg, "n_classes", 0) else None
    return save_png(make_grid(to_uint8(x), ncols=ncols), path, scale=2)


def save_loss_curve(history: dict[str, list[float]], path: str | Path, smooth: int = 25) -> Path:
    """Plot each loss against the step (moving average over ``smooth`` steps) as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = fs.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, values in history.items():
        v = np.asarray(values, dtype=float)
        w = max(1, min(smooth, v.size // 5))
        ax.plot(np.arange(w, v.size + 1), np.convolve(v, np.ones(w) / w, mode="valid"), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return fs.savefig(fig, path, dpi=100)


# ---------------------------------------------------------------- the loop

def train_generator(images, out_dir: str | Path, model_cfg: GANConfig | VAEConfig,
                    train_cfg: TrainConfig | None = None, *, rows=None, n_rows: int | None = None,
                    labels=None, progress: ProgressFn | None = None) -> dict:
    """Train (or resume training) one generator and export it.

    Parameters
    ----------
    images : numpy or zarr array of shape (N, H, W, C), uint8
    out_dir : directory for checkpoints, samples, the exported generator and loss.png.
        If it holds a checkpoint of the same model, training resumes from the latest one.
    model_cfg : GANConfig (``n_classes > 0`` for the conditional GAN) or VAEConfig.
    train_cfg : TrainConfig; defaults to ``TrainConfig()``.
    rows : int array (M,), optional — the rows to train on (one cluster); default all.
    n_rows : committed row count; rows beyond it are never read. Default: ``len(images)``.
    labels : int array (M,) aligned with ``rows`` (or with the first n_rows), cluster ids
        in ``[0, n_classes)``; required for, and only for, the conditional GAN.
    progress : ``progress(step, total_steps, losses)``, called about 100 times a run.

    Returns
    -------
    dict with ``kind``, ``steps``, ``seconds``, ``resumed_from`` (step or None), ``losses``
    (mean of each loss over the last 50 steps), ``n_train``, ``n_params`` (the exported generator's
    parameters; a VAE's: encoder and decoder), and the paths ``generator``,
    ``checkpoint``, ``samples`` (list), ``loss_curve``.
    """
    tcfg = train_cfg or TrainConfig()
    out_dir = fs.as_path(out_dir)
    h, w, c = images.shape[1:] if images.ndim == 4 else (None, None, None)
    if (h, w, c) != (model_cfg.image_size, model_cfg.image_size, model_cfg.channels):
        raise ValueError(f"images have shape {tuple(images.shape)} but the model expects "
                         f"(N, {model_cfg.image_size}, {model_cfg.image_size}, {model_cfg.channels}); "
                         "set image_size and channels in the model config")
    n_classes = getattr(model_cfg, "n_classes", 0)
    if n_classes and labels is None:
        raise ValueError(f"the conditional GAN (n_classes={n_classes}) needs labels: one cluster id per row")
    if not n_classes and labels is not None:
        raise ValueError("labels were given but the model is unconditional; set n_classes in GANConfig")
    if labels is not None:
        lab = np.asarray(labels)
        if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
            raise ValueError(f"labels must be cluster ids in [0, {n_classes}); got {lab.min()}..{lab.max()}")

    device = pick_device(tcfg.device)
    with seeded(tcfg.seed):  # initial weights from the seed alone, whatever other threads do
        kind = _make_kind(model_cfg, tcfg, device)
    gen = torch.Generator().manual_seed(tcfg.seed)
    source = RowSource(images, rows, n_rows, labels, tcfg.batch_size, tcfg.max_memory_bytes, tcfg.seed)
    fixed = torch.Generator().manual_seed(tcfg.seed + 1)
    z_fixed = torch.randn((tcfg.n_samples, model_cfg.z_dim), generator=fixed).to(device)
    # Conditional grids: one column per cluster id.
    y_fixed = torch.arange(tcfg.n_samples, device=device) % n_classes if n_classes else None
    # the start by its folder's name: a checkpoint holds no absolute path (a moved store stays whole)
    meta = {"kind": kind.kind, "model": asdict(model_cfg),
            "train": {**asdict(tcfg), "init_from": fs.as_path(tcfg.init_from).name if tcfg.init_from else None}}

    step, elapsed, history, resumed_from = 0, 0.0, {}, None
    ckpts = checkpoint_dirs(out_dir)
    if ckpts:
        step, elapsed, history = _load_checkpoint(ckpts[-1], kind, gen, meta)
        resumed_from = step
    elif tcfg.init_from:
        _start_from(tcfg.init_from, kind, meta, tcfg.init_cluster)
    for name, mod in kind.modules().items():
        mod.train(name != "G_ema")

    every = tcfg.progress_every or max(1, tcfg.steps // 100)
    samples: list[Path] = []
    saved_at = step if ckpts else None
    losses: dict = {}
    start = time.perf_counter() - elapsed
    while step < tcfg.steps and (tcfg.seconds is None or time.perf_counter() - start < tcfg.seconds):
        xb, yb = source.batch(tcfg.batch_size, gen, step)
        x = to_signed_tensor(xb, device)
        y = None if yb is None else torch.from_numpy(yb).to(device)
        kind.updates_done = step  # the EMA's warm-up follows the global step, so resume is exact
        losses = kind.step(x, y, gen)
        step += 1
        for k, v in losses.items():
            history.setdefault(k, []).append(v)
        if step % tcfg.checkpoint_every == 0:
            _save_checkpoint(out_dir, kind, step, time.perf_counter() - start, gen, history, meta,
                             tcfg.keep_checkpoints)
            samples.append(_save_samples(kind.sampler(), z_fixed, y_fixed,
                                         out_dir / "samples" / f"step-{step:07d}.png"))
            saved_at = step
        if progress is not None and step % every == 0:
            progress(step, tcfg.steps, losses)

    elapsed = time.perf_counter() - start
    if saved_at != step:
        _save_checkpoint(out_dir, kind, step, elapsed, gen, history, meta, tcfg.keep_checkpoints)
        samples.append(_save_samples(kind.sampler(), z_fixed, y_fixed,
                                     out_dir / "samples" / f"step-{step:07d}.png"))
    gen_path = save_weights(out_dir, kind.sampler().state_dict(),
                            {"kind": kind.kind, "model": asdict(model_cfg), "step": step},
                            name="generator")
    curve = save_loss_curve(history, out_dir / "loss.png") if history else None
    if progress is not None and step % every != 0:
        progress(step, tcfg.steps, losses)
    tail = {k: float(np.mean(v[-50:])) for k, v in history.items()}
    return {"kind": kind.kind, "steps": step, "seconds": elapsed, "resumed_from": resumed_from,
            "losses": tail, "n_train": len(source), "generator": gen_path,
            "n_params": sum(p.numel() for p in kind.sampler().parameters()),
            "checkpoint": checkpoint_dirs(out_dir)[-1], "samples": samples, "loss_curve": curve}
