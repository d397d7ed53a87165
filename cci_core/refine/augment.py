"""Whole-batch image augmentation as tensor ops (one ``affine_grid``/``grid_sample`` per
batch, no per-image Python), for contrastive pre-training and self-labelling.

Two presets: :data:`WEAK` (small shift/zoom, flips: the view that gives self-labelling
its targets) and :data:`STRONG` (crops down to 60 % of the area, small rotations,
brightness/contrast, blur, optional erasing: the views contrasted and trained on).
Vertical flips and tiny crops are never drawn: they destroy class cues (a shoe upside
down, a sleeve without its shirt). Every draw comes from a CPU ``torch.Generator``, so a
seed gives the same views on every device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """One family of random views.

    crop_area : (low, high) fraction of the image area kept by the random crop
        (resized back to full size); low >= 0.6 keeps the object recognisable
    aspect : largest aspect-ratio change of the crop (1.0 = square crops)
    shift : extra translation as a fraction of the side (on top of the crop position)
    rotate : largest rotation in degrees, either way
    flip : flip half the images left-right
    brightness, contrast : largest relative change (0.4 = factor in [0.6, 1.4])
    jitter_p : probability that an image gets brightness/contrast jitter
    blur_p : probability that an image is Gaussian-blurred (sigma in ``blur_sigma``)
    blur_sigma : (low, high) blur strength in pixels
    erase : side of a zeroed square as a fraction of the shorter side (0 = off), drawn with
        probability ``erase_p``
    """
    crop_area: tuple = (0.6, 1.0)
    aspect: float = 1.25
    shift: float = 0.0
    rotate: float = 10.0
    flip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    blur_p: float = 0.3
    blur_sigma: tuple = (0.1, 1.2)
    erase: float = 0.0
    erase_p: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.crop_area
        if not 0.6 <= lo <= hi <= 1.0:
            raise ValueError(f"crop_area={self.crop_area}: need 0.6 <= low <= high <= 1 "
                             f"(smaller crops lose the object)")
        if self.aspect < 1 or self.rotate < 0 or not 0 <= self.shift < 0.5:
            raise ValueError(f"aspect={self.aspect} (>= 1), rotate={self.rotate} (>= 0), "
                             f"shift={self.shift} (in [0, 0.5)) out of range")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")


WEAK = AugmentConfig(crop_area=(0.85, 1.0), aspect=1.0, shift=0.08, rotate=0.0, flip=True,
                     brightness=0.0, contrast=0.0, jitter_p=0.0, blur_p=0.0)
STRONG = AugmentConfig()


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(lo, hi, generator=gen)


def _affine(b: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(b, 2, 3) sampling matrices: crop (area, aspect, position), rotation, flip."""
    area = _uniform(b, *cfg.crop_area, gen)
    log_r = _uniform(b, -math.log(cfg.aspect), math.log(cfg.aspect), gen)
    sx = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop side / image side
    sy = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    # the crop centre anywhere that keeps the crop inside the image, plus the extra shift
    tx = (1 - sx) * _uniform(b, -1, 1, gen) + 2 * cfg.shift * _uniform(b, -1, 1, gen)
    ty = (1 - sy) * _uniform(b, -1, 1, gen) + 2 * cfg.shift * _uniform(b, -1, 1, gen)
    a = torch.deg2rad(_uniform(b, -cfg.rotate, cfg.rotate, gen))
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip \
        else torch.ones(b)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.empty(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = sx * cos * flip, -sy * sin, tx
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sx * sin * flip, sy * cos, ty
    return theta


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (separable 5-tap kernels, one grouped conv per axis)."""
    b, c, h, w = x.shape
    taps = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, 5)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def random_view(x: torch.Tensor, gen: torch.Generator,
                cfg: AugmentConfig = STRONG) -> torch.Tensor:
    """One random view of every image in the batch.

    Parameters
    ----------
    x : float (B, C, H, W) in [0, 1], on any device, any H and W
    gen : CPU generator; the same seed gives the same views on CPU and CUDA
    cfg : which family of views (:data:`WEAK`, :data:`STRONG` or your own)

    Returns
    -------
    float (B, C, H, W) in [0, 1], same device and dtype. Pixels brought in from outside
    the image are 0 (the background of a centred object).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    theta = _affine(b, cfg, gen)
    if h != w:  # the rotation in pixels, not in the [-1, 1] coordinates of a non-square image
        theta[:, 0, 1] *= h / w
        theta[:, 1, 0] *= w / h
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    col = lambda v: v.to(x.device, x.dtype)[:, None, None, None]
    if cfg.jitter_p > 0 and (cfg.brightness > 0 or cfg.contrast > 0):
        on = col((torch.rand(b, generator=gen) < cfg.jitter_p).float())
        bright = col(_uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, gen))
        contr = col(_uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen))
        mean = out.mean((1, 2, 3), keepdim=True)
        jittered = ((out * bright - mean * bright) * contr + mean * bright).clamp(0, 1)
        out = on * jittered + (1 - on) * out
    if cfg.blur_p > 0:
        on = col((torch.rand(b, generator=gen) < cfg.blur_p).float())
        sigma = _uniform(b, *cfg.blur_sigma, gen).to(x.device, x.dtype)
        out = on * _blur(out, sigma) + (1 - on) * out
    if cfg.erase > 0:
        half = max(1, int(min(h, w) * cfg.erase)) / 2
        cy = torch.randint(0, h, (b,), generator=gen).to(x.device)
        cx = torch.randint(0, w, (b,), generator=gen).to(x.device)
        on = (torch.rand(b, generator=gen) < cfg.erase_p).to(x.device)
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        box = ((ys[None] - cy[:, None]).abs() < half)[:, :, None] & \
              ((xs[None] - cx[:, None]).abs() < half)[:, None, :] & on[:, None, None]
        out = out.masked_fill(box[:, None], 0.0)
    return out
