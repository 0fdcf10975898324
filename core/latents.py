"""Latent datasets for training (random Gaussian latents; digits and encoded folders to come)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core.config import ConfigError, TrainConfig


@dataclass
class LatentData:
    """In-memory latents: mean/std (M, c, H, W) unscaled, labels (M,)."""

    name: str
    mean: Tensor
    std: Tensor | None
    labels: Tensor
    num_classes: int
    scaling_factor: float

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    @property
    def size(self) -> int:
        return self.mean.shape[-1]

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """x: (N, c, H, W) scaled latents, y: (N,) int64, drawn with replacement."""
        idx = torch.randint(len(self.labels), (batch,), generator=generator)
        x = self.mean[idx]
        if self.std is not None:
            x = x + self.std[idx] * torch.randn(x.shape, generator=generator)
        return x * self.scaling_factor, self.labels[idx]


def load_latents(cfg: TrainConfig) -> LatentData:
    """Latents named by ``cfg.dataset``. Raises ConfigError for an unknown dataset."""
    if cfg.dataset == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        shape = (1024, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        return LatentData("random", torch.randn(shape, generator=g), None,
                          torch.randint(cfg.num_classes, (1024,), generator=g), cfg.num_classes, 1.0)
    raise ConfigError(f"dataset={cfg.dataset!r} is not available yet")
