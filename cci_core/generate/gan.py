"""DCGAN-style generator and discriminator, unconditional or cluster-conditional.

Images are (N, C, H, W) float tensors in [-1, 1]; sizes 28, 32 and 64, 1 or 3 channels.
The conditional variants take a cluster id ``y`` (LongTensor, shape (N,)):

- the generator concatenates a learned class embedding to ``z`` and every batch norm takes
  a per-class gain and bias (conditional batch norm, de Vries et al. 2017);
- the discriminator sees ``y`` either as one-hot planes stacked on the image
  (``d_condition="concat"``, the conditional DCGAN; the default, best measured on
  Fashion-MNIST) or through a projection (``"projection"``, Miyato & Koyama 2018:
  ``D(x, y) = w·phi(x) + embed(y)·phi(x)``), whose features do not depend on ``y``.

``Discriminator.features(x)`` returns ``phi(x)``, the penultimate features (a concat
discriminator needs ``y`` too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from cci_core.common.shapes import MODEL_SIZES
from cci_core.generate.model_choices import D_CONDITIONS, LOSSES


def feature_map_plan(image_size: int) -> tuple[int, int]:
    """(smallest feature map side, number of stride-2 layers): 7 and 2 for 28x28, else 4 and log2(size/4)."""
    return (7, 2) if image_size == 28 else (4, {32: 3, 64: 4}[image_size])


@dataclass
class GANConfig:
    """Shape and capacity of one GAN.

    ``n_classes = 0`` is an unconditional GAN; ``n_classes = K`` conditions both networks
    on a cluster id in ``[0, K)``. The discriminator uses batch norm unless
    ``spectral_norm`` is on (then it uses neither, as in SN-GAN).
    """

    image_size: int = 28
    channels: int = 1
    z_dim: int = 64
    g_width: int = 64          # channels of the last generator block (DCGAN's ngf)
    d_width: int = 64          # channels of the first discriminator block (DCGAN's ndf)
    d_features: int = 256      # size of D.features(x)
    n_classes: int = 0
    embed_dim: int = 32        # generator class-embedding size (conditional only)
    spectral_norm: bool = False
    loss: str = "hinge"        # "hinge" or "ns" (non-saturating)
    d_condition: str = "concat"  # how a conditional D sees y: "concat" or "projection"
    # a learned map added to the first layer's output of G and of D: what a conditional GAN's
    # cluster input becomes once the cluster is fixed (cci_core.generate.specialise)
    bias_map: bool = False

    def __post_init__(self) -> None:
        if self.image_size not in MODEL_SIZES:
            raise ValueError(f"image_size={self.image_size} is not supported; use one of {MODEL_SIZES}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels} is not supported; use 1 or 3")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is unknown; use one of {LOSSES}")
        if self.d_condition not in D_CONDITIONS:
            raise ValueError(f"d_condition={self.d_condition!r} is unknown; use one of {D_CONDITIONS}")
        if self.n_classes < 0:
            raise ValueError(f"n_classes={self.n_classes} must be >= 0 (0 = unconditional)")
        if self.bias_map and self.n_classes:
            raise ValueError("bias_map stands for a fixed cluster: use it with n_classes=0")
        for name in ("z_dim", "g_width", "d_width", "d_features", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")

    @property
    def base(self) -> int:
        """Spatial size of the smallest feature map: 7 for 28x28, else 4."""
        return feature_map_plan(self.image_size)[0]

    @property
    def n_blocks(self) -> int:
        """Number of stride-2 up/down-sampling layers."""
        return feature_map_plan(self.image_size)[1]


def init_dcgan_(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), norm weights N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_labels(y: torch.Tensor | None, n: int, n_classes: int) -> torch.Tensor | None:
    if n_classes == 0:
        if y is not None:
            raise ValueError("labels were given to an unconditional model; pass y=None "
                             "or build it with n_classes > 0")
        return None
    if y is None:
        raise ValueError(f"this model is conditional (n_classes={n_classes}); pass y, "
                         "a LongTensor of cluster ids with shape (N,)")
    if y.shape != (n,):
        raise ValueError(f"y has shape {tuple(y.shape)}; expected ({n},)")
    return y.long()


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are looked up per class: ``bn(h) * gain[y] + bias[y]``."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(n_classes, channels)
        self.bias = nn.Embedding(n_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(h) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """z (N, z_dim) [, y (N,)] -> images (N, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.n_classes
        self.embed = nn.Embedding(k, cfg.embed_dim) if k else None

        def block(c_in: int, c_out: int, kernel: int, stride: int, pad: int) -> nn.ModuleDict:
            return nn.ModuleDict({"up": nn.ConvTranspose2d(c_in, c_out, kernel, stride, pad, bias=False),
                                  "norm": ConditionalBatchNorm2d(c_out, k) if k else nn.BatchNorm2d(c_out)})
        ch = cfg.g_width * 2 ** (cfg.n_blocks - 1)
        self.blocks = nn.ModuleList([block(cfg.z_dim + (cfg.embed_dim if k else 0), ch, cfg.base, 1, 0)])
        for _ in range(cfg.n_blocks - 1):
            self.blocks.append(block(ch, ch // 2, 4, 2, 1))
            ch //= 2
        self.out = nn.Sequential(nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1), nn.Tanh())
        init_dcgan_(self)
        first = cfg.g_width * 2 ** (cfg.n_blocks - 1)
        self.bias_map = nn.Parameter(torch.zeros(first, cfg.base, cfg.base)) if cfg.bias_map else None

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = _check_labels(y, z.shape[0], self.cfg.n_classes)
        h = z if y is None else torch.cat([z, self.embed(y)], dim=1)
        h = h[:, :, None, None]
        for i, b in enumerate(self.blocks):
            h = b["up"](h)
            if i == 0 and self.bias_map is not None:
                h = h + self.bias_map
            h = torch.relu(b["norm"](h) if y is None else b["norm"](h, y))
        return self.out(h)


class BiasMap(nn.Module):
    """Adds a learned (channels, side, side) map to its input."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.map = nn.Parameter(torch.zeros(channels, side, side))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.map


class Discriminator(nn.Module):
    """images (N, C, H, W) [, y (N,)] -> logits (N,); ``features(x)`` -> (N, d_features)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        sn = _sn if cfg.spectral_norm else (lambda m: m)
        use_bn = not cfg.spectral_norm
        self.concat = bool(cfg.n_classes) and cfg.d_condition == "concat"
        ch = cfg.d_width
        c_in = cfg.channels + (cfg.n_classes if self.concat else 0)
        layers: list[nn.Module] = [sn(nn.Conv2d(c_in, ch, 4, 2, 1))]
        if cfg.bias_map:
            layers.append(BiasMap(ch, cfg.image_size // 2))
        layers.append(nn.LeakyReLU(0.2, True))
        for _ in range(cfg.n_blocks - 1):
            layers.append(sn(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=not use_bn)))
            if use_bn:
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        # A full-size kernel collapses the base x base map to one feature vector.
        layers += [sn(nn.Conv2d(ch, cfg.d_features, cfg.base, 1, 0)), nn.LeakyReLU(0.2, True),
                   nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = sn(nn.Linear(cfg.d_features, 1))
        projection = bool(cfg.n_classes) and not self.concat
        self.embed = sn(nn.Embedding(cfg.n_classes, cfg.d_features)) if projection else None
        init_dcgan_(self)

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate features phi(x), shape (N, d_features); ``y`` only for a concat D."""
        if self.concat:
            if y is None:
                raise ValueError("this discriminator sees the cluster id as input planes "
                                 "(d_condition='concat'), so its features need y; train with "
                                 "d_condition='projection' for features of the image alone")
            planes = nn.functional.one_hot(y.long(), self.cfg.n_classes).to(x.dtype)
            x = torch.cat([x, planes[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        return self.body(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = _check_labels(y, x.shape[0], self.cfg.n_classes)
        h = self.features(x, y)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Discriminator loss for ``kind`` in {"hinge", "ns"}."""
    if kind == "hinge":
        return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()
    return nn.functional.softplus(-real_logits).mean() + nn.functional.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator loss for ``kind`` in {"hinge", "ns"}."""
    if kind == "hinge":
        return -fake_logits.mean()
    return nn.functional.softplus(-fake_logits).mean()
