"""A small CNN classifier for the CCI model: convolutional trunk, embedding head, cluster head.

``embed(x)`` gives the L2-normalised embedding that refinement re-clusters;
``forward(x)`` gives the cluster logits trained on pseudo-labels.

Any image size: the model adapts its input on the device (:func:`adapt_images`) before the
trunk. An image whose longer side is above ``max_side`` (64 by default) is shrunk by area
averaging to fit it, keeping its aspect ratio, so a 200x300 corpus costs what a 43x64 one does
(no more than 64x64); an image with a side under ``2 ** depth`` (too small for ``depth``
2x2 poolings to leave a pixel) is zero-padded, centred, to that side. Adaptive average
pooling after the trunk makes the heads independent of the grid. 28x28, 32x32 and 64x64
inputs pass unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_SIDE = 64  # default cap on the longer side of the grid the trunk sees


def _shrunk(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) scaled, aspect kept, so that the longer side is at most ``max_side``."""
    if max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def internal_shape(height: int, width: int, depth: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The (H, W) grid the trunk sees for a ``height`` x ``width`` input (see :func:`adapt_images`)."""
    h, w = _shrunk(height, width, max_side)
    return max(h, 2 ** depth), max(w, 2 ** depth)


def adapt_images(x: torch.Tensor, depth: int, max_side: int = MAX_SIDE) -> torch.Tensor:
    """Shrink (area averaging) and/or zero-pad, centred, a batch to :func:`internal_shape`.

    x : float (B, C, H, W) in [0, 1], on any device; returned as is when it already fits
    (so adapting twice is adapting once). Returns float (B, C, H', W'), same device and dtype.
    """
    h, w = x.shape[-2:]
    if (size := _shrunk(h, w, max_side)) != (h, w):
        x = F.interpolate(x, size=size, mode="area")
    th, tw = internal_shape(h, w, depth, max_side)
    dh, dw = th - x.shape[-2], tw - x.shape[-1]
    if dh or dw:
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
    return x


@dataclass
class CNNConfig:
    """Shape of the classifier; stored next to its weights as JSON.

    in_channels : 1 (grey) or 3 (RGB)
    image_height, image_width : the corpus images' shape (any, 1..4096 a side; see
        :func:`adapt_images` for what the trunk sees). Stored configs of older versions hold
        ``image_size`` (square): :meth:`from_dict` / :func:`upgrade_record` read it as both.
    n_classes : number of clusters the classification head predicts
    width : channels of the first stage, doubled at every following stage
    depth : number of stages (each = two 3x3 conv-BN-ReLU then 2x2 max-pool)
    embed_dim : size of the embedding head
    max_side : longer side of the trunk's grid; larger inputs are shrunk to it on the device
    """
    in_channels: int = 1
    image_height: int = 28
    image_width: int = 28
    n_classes: int = 10
    width: int = 32
    depth: int = 3
    embed_dim: int = 128
    max_side: int = MAX_SIDE

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels={self.in_channels}: use 1 (grey) or 3 (RGB)")
        for name in ("image_height", "image_width"):
            if not 1 <= getattr(self, name) <= 4096:
                raise ValueError(f"{name}={getattr(self, name)}: use 1..4096 pixels")
        if self.n_classes < 2:
            raise ValueError(f"n_classes={self.n_classes}: need at least 2 clusters")
        if self.width < 1 or self.embed_dim < 1:
            raise ValueError(f"width={self.width}, embed_dim={self.embed_dim}: both must be >= 1")
        if not 1 <= self.depth or 2 ** self.depth > self.max_side:
            raise ValueError(f"depth={self.depth}: must be >= 1 with 2**depth <= max_side={self.max_side} "
                             f"(each of the {self.depth} poolings must leave at least 1 pixel)")

    @property
    def grid(self) -> tuple[int, int]:
        """The (H, W) the trunk sees (:func:`internal_shape`)."""
        return internal_shape(self.image_height, self.image_width, self.depth, self.max_side)

    @classmethod
    def from_dict(cls, d: dict) -> "CNNConfig":
        d = upgrade_record(d)
        return cls(**{k: d[k] for k in asdict(cls()) if k in d})


def upgrade_record(d):
    """A stored config dict with an older version's square ``image_size`` (int) read as
    ``image_height`` = ``image_width``; anything else is returned unchanged."""
    if isinstance(d, dict) and isinstance(d.get("image_size"), int) and "image_height" not in d:
        size = d["image_size"]
        d = {**{k: v for k, v in d.items() if k != "image_size"}, "image_height": size, "image_width": size}
    return d


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNN(nn.Module):
    """Small VGG-style CNN with an embedding head and a classification head.

    Input: float tensor (B, C, H, W) in [0, 1], any H, W (adapted by :meth:`adapt`).
    ``embed`` -> (B, embed_dim), unit norm; ``forward`` -> (B, n_classes) logits.
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        chans = [config.in_channels] + [config.width * 2 ** i for i in range(config.depth)]
        self.trunk = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.embed_head = nn.Sequential(
            nn.Linear(chans[-1], config.embed_dim, bias=False), nn.BatchNorm1d(config.embed_dim))
        self.head = nn.Linear(config.embed_dim, config.n_classes)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The batch on the trunk's grid (:func:`adapt_images` with this model's depth and cap)."""
        return adapt_images(x, self.config.depth, self.config.max_side)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised embedding (B, embed_dim) of (B, C, H, W) in [0, 1], any H, W."""
        h = self.trunk((self.adapt(x) - 0.5) * 2.0)
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self.embed_head(h)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, embed_dim)."""
        return F.normalize(self.features(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))
