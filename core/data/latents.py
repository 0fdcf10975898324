"""Latent training data: what the GAT training loop samples real batches from.

``load_latents(cfg)`` resolves ``cfg.dataset``:

* ``'digits'``: the embedded default (:mod:`core.data.digits`), prepared on first use and cached;
* ``'random'``: a fixed pool of N(0, I) latents with uniform labels (tests and benchmarks; no VAE,
  scaling factor 1);
* an absolute path: a directory written by ``gat-sweep encode`` (:mod:`core.data.encode`).

Latents are stored unscaled (posterior mean and std). :meth:`LatentData.sample` draws
``mean + std * eps`` (``cfg.sample_posterior``) or the mean, and multiplies by the VAE's scaling
factor exactly once, as the LDM/DiT recipe does (Rombach et al. 2022, §4.3.2); evaluation divides
by the same factor exactly once before decoding (:func:`core.data.vae.decode_latents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from core.config import ConfigError, TrainConfig
from core.data.digits import prepare_digits
from core.data.encode import ShardImages, read_encoded

RANDOM_POOL = 1024
"""Latents in the 'random' dataset's fixed pool."""


@dataclass(frozen=True)
class LatentData:
    """A latent dataset in memory (CPU tensors)."""

    name: str
    """'digits' (or 'digits-<preset>'), 'random', or the encode output directory."""
    kind: Literal["digits", "random", "encoded"]
    num_classes: int
    channels: int
    size: int
    """Latent height = width."""
    scaling_factor: float
    mean: Tensor
    """(N, c, H, W) posterior means, unscaled (float32 or bfloat16 as stored)."""
    std: Tensor | None
    """(N, c, H, W) posterior standard deviations, unscaled; None for 'random'."""
    labels: Tensor
    """(N,) int64 class indices."""
    sample_posterior: bool
    vae: str | None
    """Where to load the decoder from (local directory or hub id); None for 'random'."""
    root: Path | None
    """Digits cache entry or encode output directory; None for 'random'."""
    images: Tensor | ShardImages | None = None
    """(N, 3, S, S) uint8 raw images in [0, 255] (for the DINOv2 alignment, ``cfg.repa``): the
    digits' 32 px images; an encoded folder's ADM crops if encoded with ``--keep-images`` (read
    from disk per batch); None otherwise. Indexed with an (n,) index tensor."""

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A real batch drawn uniformly with replacement using ``generator`` (a CPU generator).

        Returns x: (batch, c, H, W) float32 scaled latents, ``scaling_factor * (mean + std * eps)``
        with eps ~ N(0, I) if ``sample_posterior`` (and std is known) else
        ``scaling_factor * mean``; y: (batch,) int64. Both on CPU.
        """
        index, x = self._draw(batch, generator)
        return x, self.labels[index]

    def sample_with_images(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`sample` (the same draws) plus the batch's raw images, uint8 (batch, 3, S, S).
        Raises ValueError if the dataset keeps no images."""
        if self.images is None:
            raise ValueError(f"dataset {self.name!r} keeps no raw images")
        index, x = self._draw(batch, generator)
        return x, self.labels[index], self.images[index]

    def _draw(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The batch's indices (batch,) and scaled latents (see :meth:`sample`)."""
        index = torch.randint(len(self.labels), (batch,), generator=generator)
        x = self.mean[index].float()
        if self.sample_posterior and self.std is not None:
            x = x + self.std[index].float() * torch.randn(x.shape, generator=generator)
        return index, x * self.scaling_factor


def load_latents(cfg: TrainConfig) -> LatentData:
    """Load (and for 'digits', prepare if needed) the latent dataset named by ``cfg.dataset``.

    Raises ConfigError when ``cfg.dataset`` is not 'digits', 'random' or an absolute path, or when
    ``cfg.latent_size`` / ``cfg.latent_channels`` / ``cfg.num_classes`` disagree with the data;
    FileNotFoundError from :func:`core.data.encode.read_encoded` for a missing file, ConfigError for a corrupt
    encode directory.
    """
    if cfg.dataset == "random":
        data = _random_data(cfg)
    elif cfg.dataset == "digits":
        data = _digits_data(cfg)
    elif Path(cfg.dataset).is_absolute():
        data = _encoded_data(cfg, Path(cfg.dataset))
    else:
        raise ConfigError(
            f"dataset must be 'digits', 'random' or an absolute path to a `gat-sweep encode` output "
            f"directory, got {cfg.dataset!r}"
        )
    _check_matches(cfg, data)
    return data


def _random_data(cfg: TrainConfig) -> LatentData:
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (RANDOM_POOL, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    return LatentData(
        name="random", kind="random", num_classes=cfg.num_classes, channels=cfg.latent_channels,
        size=cfg.latent_size, scaling_factor=1.0, mean=torch.randn(shape, generator=generator), std=None,
        labels=torch.randint(cfg.num_classes, (RANDOM_POOL,), generator=generator),
        sample_posterior=cfg.sample_posterior, vae=None, root=None,
    )


def _digits_data(cfg: TrainConfig) -> LatentData:
    digits = prepare_digits()
    _, channels, size, _ = digits.latent_mean.shape
    return LatentData(
        name=digits.name, kind="digits", num_classes=int(digits.labels.max()) + 1, channels=channels,
        size=size, scaling_factor=digits.scaling_factor, mean=digits.latent_mean, std=digits.latent_std,
        labels=digits.labels, images=digits.images, sample_posterior=cfg.sample_posterior, vae=str(digits.vae_dir),
        root=digits.root,
    )


def _encoded_data(cfg: TrainConfig, root: Path) -> LatentData:
    try:
        encoded = read_encoded(root)
    except ValueError as err:  # a corrupt, replaced or foreign file: the user's data, not a crash to retry
        raise ConfigError(f"dataset {root}: {err}; restore the file, or encode the folder again into an "
                          "empty directory with `gat-sweep encode`") from err
    manifest = encoded.manifest
    channels, size, _ = manifest["latent_shape"]
    return LatentData(
        name=str(root), kind="encoded", num_classes=len(manifest["classes"]), channels=channels, size=size,
        scaling_factor=float(manifest["scaling_factor"]), mean=encoded.mean, std=encoded.std,
        labels=encoded.labels, images=encoded.images, sample_posterior=cfg.sample_posterior, vae=manifest["vae"],
        root=root,
    )


def _check_matches(cfg: TrainConfig, data: LatentData) -> None:
    """ConfigError naming the first TrainConfig field that disagrees with the data's shape."""
    for field, ours in (("latent_size", data.size), ("latent_channels", data.channels),
                        ("num_classes", data.num_classes)):
        if getattr(cfg, field) != ours:
            raise ConfigError(
                f"{field}={getattr(cfg, field)} does not match dataset {data.name!r}, which has "
                f"{field}={ours}; set {field}: {ours}"
            )
