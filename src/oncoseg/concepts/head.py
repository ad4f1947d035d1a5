"""The concept head: a small dense network on the frozen image embedding (LiteMedSAM: 256×64×64).

For each of K concepts it predicts a presence logit (is the concept anywhere in this image?) and a coarse mask
logit map (computed at 32×32 after average pooling, for speed on CPU, and upsampled bilinearly to 64×64). Instances are the connected components of the coarse mask; their boxes go to the
LiteMedSAM mask decoder, which draws the fine mask (see `oncoseg.concepts.detect`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(channels: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, channels),
        nn.GELU(),
    )


class ConceptHead(nn.Module):
    """Embedding ``(B, C, 64, 64)`` → presence logits ``(B, K)`` and coarse mask logits ``(B, K, 64, 64)``."""

    def __init__(
        self, num_concepts: int, in_channels: int = 256, width: int = 64, dilations=(1, 2, 4, 1)
    ) -> None:
        super().__init__()
        self.num_concepts, self.in_channels, self.width = num_concepts, in_channels, width
        self.dilations = tuple(dilations)
        self.stem = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(in_channels, width, 1, bias=False), nn.GroupNorm(8, width), nn.GELU()
        )
        self.blocks = nn.ModuleList(_block(width, d) for d in self.dilations)
        self.mask = nn.Conv2d(width, num_concepts, 1)
        self.presence = nn.Sequential(
            nn.Linear(2 * width + num_concepts, width), nn.GELU(), nn.Linear(width, num_concepts)
        )
        nn.init.constant_(self.mask.bias, -4.0)  # start with "nothing here" (most pixels are background)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(features.float())
        for block in self.blocks:
            x = x + block(x)
        masks = self.mask(x)
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3)), masks.amax((2, 3))], dim=1)
        size = features.shape[-2:]
        return self.presence(pooled), F.interpolate(masks, size, mode="bilinear", align_corners=False)

    def config(self) -> dict:
        return {
            "num_concepts": self.num_concepts,
            "in_channels": self.in_channels,
            "width": self.width,
            "dilations": list(self.dilations),
        }
