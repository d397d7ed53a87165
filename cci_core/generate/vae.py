"""Convolutional VAE, the per-cluster alternative to the GAN (``--model vae``).

Images are (N, C, H, W) float tensors in [-1, 1]; sizes 28, 32 and 64, 1 or 3 channels.
The decoder outputs logits of pixel intensities in [0, 1]; the reconstruction term is
binary cross-entropy against (x + 1) / 2, summed over pixels, plus ``beta`` times the KL.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cci_core.common.shapes import MODEL_SIZES
from cci_core.generate.gan import feature_map_plan


@dataclass
class VAEConfig:
    """Shape and capacity of one VAE."""

    image_size: int = 28
    channels: int = 1
    z_dim: int = 32
    width: int = 32            # channels of the first encoder block
    beta: float = 1.0          # weight of the KL term

    def __post_init__(self) -> None:
        if self.image_size not in MODEL_SIZES:
            raise ValueError(f"image_size={self.image_size} is not supported; use one of {MODEL_SIZES}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels} is not supported; use 1 or 3")
        if self.z_dim < 1 or self.width < 1:
            raise ValueError(f"z_dim={self.z_dim} and width={self.width} must be positive")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0")

    @property
    def base(self) -> int:
        return feature_map_plan(self.image_size)[0]

    @property
    def n_blocks(self) -> int:
        return feature_map_plan(self.image_size)[1]


class VAE(nn.Module):
    """encode(x) -> (mu, logvar); decode(z) -> images in [-1, 1]; sample(n) -> images."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.width
        enc: list[nn.Module] = [nn.Conv2d(cfg.channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for _ in range(cfg.n_blocks - 1):
            enc += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        enc.append(nn.Flatten())
        self.encoder = nn.Sequential(*enc)
        self.top = ch
        flat = ch * cfg.base * cfg.base
        self.to_stats = nn.Linear(flat, 2 * cfg.z_dim)
        self.from_z = nn.Linear(cfg.z_dim, flat)
        dec: list[nn.Module] = []
        for _ in range(cfg.n_blocks - 1):
            dec += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        dec.append(nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) in [-1, 1] -> mu, logvar, each (N, z_dim)."""
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, z_dim) -> pixel logits (N, C, H, W)."""
        h = F.relu(self.from_z(z)).view(-1, self.top, self.cfg.base, self.cfg.base)
        return self.decoder(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, z_dim) -> images (N, C, H, W) in [-1, 1]."""
        return torch.sigmoid(self.decode_logits(z)) * 2 - 1

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reparameterised pass: returns (logits, mu, logvar)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device="cpu").to(mu.device, mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mu, logvar

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO per image: {"loss", "recon", "kl"} (scalars, summed over pixels)."""
        logits, mu, logvar = self(x, generator)
        target = (x + 1) / 2
        recon = F.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                   reduction="sum") / x.shape[0]
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x.shape[0]
        return {"loss": recon + self.cfg.beta * kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1] decoded from z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn((n, self.cfg.z_dim), generator=generator).to(device)
        return self.decode(z)
