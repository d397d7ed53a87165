"""Image shapes: the shape of every image in a corpus, and the sizes the models take."""
from __future__ import annotations

from dataclasses import dataclass

# Square image sizes the GANs and the VAE are built for (one definition); the CCI classifier
# (cci_core.refine.cnn) takes any size.
MODEL_SIZES = (28, 32, 64)


@dataclass(frozen=True)
class ImageShape:
    """Target shape of every image in a corpus."""
    height: int
    width: int
    channels: int

    def __post_init__(self):
        if self.height < 1 or self.width < 1 or self.height > 4096 or self.width > 4096:
            raise ValueError(f"image size {self.height}x{self.width} is out of range: use 1..4096 pixels a side")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels} is not supported: use 1 (gray) or 3 (RGB)")

    @property
    def hwc(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)
