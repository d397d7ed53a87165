"""A small CNN classifier for the CCI model: convolutional trunk, embedding head, cluster head.

``embed(x)`` gives the L2-normalised embedding that refinement re-clusters;
``forward(x)`` gives the cluster logits trained on pseudo-labels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cci_core.common.shapes import MODEL_SIZES


@dataclass
class CNNConfig:
    """Shape of the classifier; stored next to its weights as JSON.

    in_channels : 1 (grey) or 3 (RGB)
    image_size : 28, 32 or 64 (square inputs)
    n_classes : number of clusters the classification head predicts
    width : channels of the first stage, doubled at every following stage
    depth : number of stages (each = two 3x3 conv-BN-ReLU then 2x2 max-pool)
    embed_dim : size of the embedding head
    """
    in_channels: int = 1
    image_size: int = 28
    n_classes: int = 10
    width: int = 32
    depth: int = 3
    embed_dim: int = 128

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels={self.in_channels}: use 1 (grey) or 3 (RGB)")
        if self.image_size not in MODEL_SIZES:
            raise ValueError(f"image_size={self.image_size}: use one of {MODEL_SIZES}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes={self.n_classes}: need at least 2 clusters")
        if self.width < 1 or self.embed_dim < 1:
            raise ValueError(f"width={self.width}, embed_dim={self.embed_dim}: both must be >= 1")
        if not 1 <= self.depth or self.image_size >> self.depth < 1:
            raise ValueError(f"depth={self.depth}: must be >= 1 and leave at least 1 pixel "
                             f"after {self.depth} poolings of {self.image_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "CNNConfig":
        return cls(**{k: d[k] for k in asdict(cls()) if k in d})


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNN(nn.Module):
    """Small VGG-style CNN with an embedding head and a classification head.

    Input: float tensor (B, C, H, W) in [0, 1]. ``embed`` -> (B, embed_dim), unit norm;
    ``forward`` -> (B, n_classes) logits.
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        chans = [config.in_channels] + [config.width * 2 ** i for i in range(config.depth)]
        self.trunk = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.embed_head = nn.Sequential(
            nn.Linear(chans[-1], config.embed_dim, bias=False), nn.BatchNorm1d(config.embed_dim))
        self.head = nn.Linear(config.embed_dim, config.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised embedding (B, embed_dim)."""
        h = self.trunk((x - 0.5) * 2.0)
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self.embed_head(h)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, embed_dim)."""
        return F.normalize(self.features(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))
