"""The VAE between images and GAT's latent space (diffusers ``AutoencoderKL``).

GAT trains on VAE latents multiplied by the VAE's ``scaling_factor`` (0.18215 for SD-VAE; Rombach
et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", §4.3.2 and App. G:
the factor is 1 / std of the latents so that scaled latents have unit variance). This module:

* builds and trains the small ``AutoencoderKL`` of the embedded digits dataset (32x32 RGB ->
  4x8x8 latents) and computes its scaling factor from the data;
* loads a pretrained ``AutoencoderKL`` (local directory, or a hub id only when downloads are
  allowed) with clear errors;
* encodes images to posterior mean/std and decodes scaled latents back to images, dividing by
  the scaling factor exactly once.

Images are float in [-1, 1], shape (N, 3, H, W); latents (N, c, H/f, W/f), f = 2^(stages - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor
from tqdm import tqdm


@dataclass(frozen=True)
class VAESettings:
    """Shape and training schedule of the embedded dataset's small AutoencoderKL."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    """Channels per resolution stage; len - 1 = number of 2x downsamplings (32 px -> 8 px)."""
    latent_channels: int = 4
    steps: int = 300
    """Adam steps of the reconstruction + KL objective."""
    batch: int = 32
    lr: float = 3e-3
    """Peak learning rate, decayed to 0 by a cosine schedule over ``steps``."""
    kl_weight: float = 1e-4
    """Weight of the KL term per latent element against the per-pixel MSE (beta-VAE)."""
    seed: int = 0


def build_vae(settings: VAESettings, image_size: int) -> AutoencoderKL:
    """A freshly initialised (seeded) ``AutoencoderKL`` for ``image_size`` px RGB images.

    One ResNet layer per encoder stage (two per decoder stage, the diffusers layout), no attention
    in the mid block (the 8x8 digits latents do not need it and it costs CPU time).
    """
    stages = len(settings.block_out_channels)
    torch.manual_seed(settings.seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * stages,
        up_block_types=("UpDecoderBlock2D",) * stages,
        block_out_channels=settings.block_out_channels,
        layers_per_block=1,
        latent_channels=settings.latent_channels,
        norm_num_groups=min(settings.block_out_channels[0], 32),
        sample_size=image_size,
        mid_block_add_attention=False,
    )


def vae_loss(vae: AutoencoderKL, images: Tensor, generator: torch.Generator, kl_weight: float) -> tuple[Tensor, Tensor]:
    """beta-VAE objective (Kingma & Welling 2014, eq. 10; Higgins et al. 2017, eq. 4), per element.

    ``loss = mean((decode(z) - x)^2) + kl_weight * KL(q(z|x) || N(0, I)) / (c * h * w)`` with
    ``z = mean + std * eps`` (reparameterisation). images: (N, 3, H, W) in [-1, 1].
    Returns (loss, mse), both scalars.
    """
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample
    mse = F.mse_loss(recon, images)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return mse + kl_weight * kl, mse


def train_vae(
    vae: AutoencoderKL, images: Tensor, settings: VAESettings, progress: bool = True
) -> list[float]:
    """Train ``vae`` in place on CPU with Adam on :func:`vae_loss`; deterministic for a thread count.

    images: (N, 3, H, W) float in [-1, 1]. Batches are drawn with replacement from a generator
    seeded by ``settings.seed``; the learning rate follows a cosine decay from ``settings.lr`` to 0
    (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts). Returns the per-step reconstruction
    MSE (for the record).
    """
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    vae.train()
    history = []
    for _ in tqdm(range(settings.steps), desc="digits VAE", disable=None if progress else True, leave=False):
        batch = images[torch.randint(len(images), (settings.batch,), generator=generator)]
        loss, mse = vae_loss(vae, batch, generator, settings.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(mse.item())
    vae.eval()
    return history


@torch.no_grad()
def encode_posterior(vae: AutoencoderKL, images: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior mean and std of ``images`` (N, 3, H, W) in [-1, 1] on the VAE's device/dtype.

    Returns float32 CPU tensors (N, c, h, w) each, unscaled (no scaling factor applied).
    """
    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    for chunk in images.split(batch):
        posterior = vae.encode(chunk.to(device, dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def scaling_factor_from_latents(mean: Tensor) -> float:
    """``1 / std`` over all elements of the posterior means (LDM, Rombach et al. 2022, App. G).

    Scaled latents ``mean * factor`` then have unit standard deviation. mean: (N, c, h, w).
    Raises ValueError if the std is zero or not finite.
    """
    std = mean.double().std().item()
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"cannot compute a scaling factor: latent std is {std}")
    return 1.0 / std


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, scaled: Tensor, scaling_factor: float, batch: int = 64) -> Tensor:
    """Scaled latents (N, c, h, w) -> images (N, 3, H, W) float32 in the VAE's range (about [-1, 1]).

    Divides by ``scaling_factor`` exactly once (the inverse of the training loader's multiply).
    Runs on the VAE's device and dtype; returns tensors on that device, not clamped.
    """
    out = [
        vae.decode(chunk.to(vae.device, vae.dtype) / scaling_factor).sample.float()
        for chunk in scaled.split(batch)
    ]
    return torch.cat(out)


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255]: ``round((x + 1) * 127.5)`` after clamping to [-1, 1].

    Out-of-range values are clamped, never wrapped. Raises ValueError on non-finite input
    (NaN has no pixel value; clamping would hide a diverged generator).
    """
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf; refusing to convert them to pixels")
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) in [0, 255] -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return images.float() / 127.5 - 1.0


def load_vae(
    name_or_path: str, allow_download: bool = False, dtype: torch.dtype = torch.float32
) -> AutoencoderKL:
    """Load a pretrained ``AutoencoderKL`` in eval mode.

    ``name_or_path`` is a local directory written by ``save_pretrained`` (``config.json`` plus
    weights; a ``vae`` sub-folder of a pipeline directory also works) or, only with
    ``allow_download=True`` or when already in the Hugging Face cache, a hub id such as
    ``stabilityai/sd-vae-ft-ema``. Only safetensors weights are read (a pickled ``.bin`` could run
    code when loaded). Raises FileNotFoundError naming the path or id and how to fix it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    local = path.is_dir()
    if not local and (name_or_path.startswith(("/", ".", "~")) or path.exists()):
        raise FileNotFoundError(f"VAE directory {path} does not exist (expected a save_pretrained directory)")
    try:
        vae = AutoencoderKL.from_pretrained(
            str(path) if local else name_or_path,
            local_files_only=local or not allow_download,
            torch_dtype=dtype,
            low_cpu_mem_usage=False,  # the default needs the optional `accelerate` package
            use_safetensors=True,  # a pickled .bin could run code when loaded: never read one
        )
    except OSError as err:
        hint = " (only safetensors weights are read: re-save a .bin checkpoint with save_pretrained)" if local \
            else "" if allow_download else (
                " (downloads are off: pass a local directory written by save_pretrained, "
                "or allow downloading the hub model explicitly)")
        raise FileNotFoundError(f"cannot load AutoencoderKL from {name_or_path!r}{hint}: {err}") from err
    return vae.eval().requires_grad_(False)
