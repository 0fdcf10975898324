"""DINOv2 alignment of the discriminator: the published GAT recipe's REPA term on D.

The GAT reference (hse1032/GAT, ``losses/Rp_PT_loss.py``, its default ``enc_type`` dinov2-vit-b)
adds to the D loss, per real sample, the representation-alignment loss of REPA (Yu et al.,
"Representation Alignment for Generation", 2025) computed on D instead of a diffusion model
(docs/METHOD.md §2 and §4):

* the raw RGB image of the real sample is scaled to [0, 1], normalised with the ImageNet mean
  and std, resized to 224 x 224 (bicubic), augmented with the translation and flip of its
  latent's DiffAugment draw (:func:`core.gan.augment.apply_to_pixels`), and encoded by a frozen
  DINOv2 without gradient: ``f_cls`` (E,) and ``f_i`` (P, E), the final-LayerNorm CLS and patch
  tokens (timm's ``x_norm_clstoken`` / ``x_norm_patchtokens``, transformers'
  ``last_hidden_state``);
* D's projector ``P`` (Linear-SiLU-Linear-SiLU-Linear, :class:`core.gan.model.Discriminator`) reads
  D's CLS and image tokens of the real branch before D's final norm;
* ``loss = (1 - cos(P(h_cls), f_cls)) + mean_i (1 - cos(P(h_i), f_i))``; the encoder's patch grid
  (16 x 16 at 224 px with patch 14) is resized bicubically to D's token grid when they differ.

The term enters the D loss with weight ``cfg.repa_weight`` (reference ``proj_coeff`` 1.0); the G
step has none. The encoder comes from transformers (``Dinov2Model``), loaded from a local
directory only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.gan.augment import AugmentParams, apply_to_pixels
from core.config import ConfigError, TrainConfig, load_local

if TYPE_CHECKING:
    from core.data.latents import LatentData

ENCODER_RESOLUTION = 224
"""Side in pixels the raw images are resized to before the encoder (reference ``preprocess_raw_image``)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""DINOv2's input normalisation (timm's IMAGENET_DEFAULT_MEAN / _STD, as the reference uses)."""


def load_encoder(path: str, dim: int, device: torch.device) -> nn.Module:
    """A frozen DINOv2 (transformers ``Dinov2Model``) from a local directory, in eval mode.

    Args:
        path: directory written by ``Dinov2Model.save_pretrained`` (config.json + weights).
        dim: the projector's output size (``cfg.repa_dim``); must equal the encoder's hidden size.
        device: where to put it.
    The position table is resampled once to the 224 px grid (:func:`resample_positions`).

    Raises:
        ConfigError: ``path`` empty, missing, not a DINOv2 (``model_type`` other than 'dinov2', or
            weights with missing, unexpected or mis-shaped keys), or its hidden size differs from
            ``dim`` -- each message says what to set.
    """
    how = ("save one with transformers on a machine with internet access, e.g. "
           "Dinov2Model.from_pretrained('facebook/dinov2-base').save_pretrained(DIR) (ViT-B/14, the "
           "reference's encoder), copy DIR here and set repa_encoder to its absolute path; or set repa false")
    def load(directory: str) -> nn.Module:
        from transformers import Dinov2Model  # seconds of imports; only runs that align pay them

        model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
        if model_type != "dinov2":  # transformers would load e.g. a ViT's weights into a random DINOv2
            raise ValueError(f"its config.json has model_type {model_type!r}, not 'dinov2' (a DINOv2 "
                             "without registers, as the reference uses)")
        model, info = Dinov2Model.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                                   use_safetensors=True)  # never unpickle a .bin
        bad = {kind: info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
        if bad:
            raise ValueError(f"its weights do not fit the DINOv2 model ({bad})")
        return model

    encoder = load_local("repa_encoder", path, "a DINOv2 model directory", "repa=true", how, load,
                         directory=True, errors=(OSError, ValueError, KeyError, RuntimeError))
    hidden = encoder.config.hidden_size
    if hidden != dim:
        raise ConfigError(f"repa_encoder={path} has hidden size {hidden} but repa_dim={dim}; set repa_dim: {hidden}")
    resample_positions(encoder)
    return encoder.to(device).eval().requires_grad_(False)


def resample_positions(encoder: nn.Module, size: int = ENCODER_RESOLUTION) -> None:
    """Resample the encoder's position table once, in place, to the grid of ``size`` px inputs, as
    the reference does (``utils.load_encoders``: timm's ``resample_abs_pos_embed``, bicubic with
    antialiasing, the CLS position kept); transformers would otherwise interpolate it at every call,
    bicubic without antialiasing, a table several percent different (docs/METHOD.md §9).
    DINOv2's pretrained table is 37 x 37 (518 px); at 224 px the grid is 16 x 16."""
    table = encoder.embeddings.position_embeddings.detach()  # (1, 1 + g * g, E)
    grid = size // encoder.config.patch_size
    patches = resize_tokens(table[:, 1:].float(), grid, antialias=True).to(table.dtype)  # as is if it fits
    encoder.embeddings.position_embeddings = nn.Parameter(torch.cat([table[:, :1], patches], dim=1),
                                                          requires_grad=False)
    encoder.config.image_size = size


def require_images(kind: str, name: str, has_images: bool) -> None:
    """Raise ConfigError unless a dataset (kind 'digits' / 'encoded' / 'random', its name) keeps
    the raw images the alignment encodes; the message says how to get them."""
    if has_images:
        return
    how = ("re-encode the folder with `gat-sweep encode ... --keep-images`" if kind == "encoded"
           else "use the digits dataset or a folder encoded with `gat-sweep encode ... --keep-images`")
    raise ConfigError(f"repa=true aligns D with DINOv2 features of the raw images, and dataset {name!r} "
                      f"keeps none: {how}, or set repa false")


def run_encoder(cfg: TrainConfig, data: LatentData, device: torch.device) -> nn.Module:
    """The frozen DINOv2 of ``cfg.repa`` (:func:`core.gan.repa.load_encoder`), checked before training.

    Raises ConfigError when the dataset keeps no raw images (the message says how to get them)
    or the encoder is missing or does not fit ``cfg.repa_dim``.
    """
    require_images(data.kind, data.name, data.images is not None)
    return load_encoder(cfg.repa_encoder, cfg.repa_dim, device)


def encoder_input(images: Tensor, aug: AugmentParams | None, latent_size: int) -> Tensor:
    """Raw images -> the encoder's input, in the reference's order (normalise, resize, augment).

    images: uint8 (N, 3, S, S) in [0, 255]; aug: the real samples' latent draw (None: no
    augmentation); latent_size: the latents' side, to scale the translation.
    Returns float32 (N, 3, 224, 224). Translation fills with 0 after normalisation, i.e. with the
    ImageNet mean colour, as in the reference.
    """
    x = images.float() / 255.0
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.interpolate(x, size=(ENCODER_RESOLUTION, ENCODER_RESOLUTION), mode="bicubic", align_corners=False)
    return x if aug is None else apply_to_pixels(x, aug, latent_size)


@torch.no_grad()
def encoder_targets(encoder: nn.Module, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Frozen encoder tokens of :func:`encoder_input` pixels (N, 3, 224, 224).

    Returns (f_cls (N, E), f_patch (N, P, E)) float32: the final-LayerNorm CLS token and patch
    tokens (timm's ``x_norm_clstoken`` and ``x_norm_patchtokens``).
    """
    hidden = encoder(pixel_values=pixels).last_hidden_state.float()  # (N, 1 + P, E)
    return hidden[:, 0], hidden[:, 1:]


def resize_tokens(tokens: Tensor, grid: int, antialias: bool = False) -> Tensor:
    """(N, P, E) tokens of a square g x g grid -> (N, grid^2, E) by bicubic interpolation
    (reference ``resize_spatial``; with ``antialias``, timm's ``resample_abs_pos_embed``);
    returned unchanged when P == grid^2. Raises ValueError if P is not a square number."""
    n, p, e = tokens.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"{p} encoder patch tokens do not form a square grid")
    if side == grid:
        return tokens
    x = tokens.transpose(1, 2).reshape(n, e, side, side)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=antialias, align_corners=False)
    return x.reshape(n, e, grid * grid).transpose(1, 2)


def alignment_loss(projected: Tensor, f_cls: Tensor, f_patch: Tensor) -> Tensor:
    """Per-sample alignment loss ``(1 - cos(P(h_cls), f_cls)) + mean_i (1 - cos(P(h_i), f_i))``.

    projected: (N, 1 + T, E) D's projected tokens, CLS first (T a square number);
    f_cls: (N, E); f_patch: (N, P, E), resized to T tokens when P != T.
    Returns (N,) float32, each in [0, 4]. Raises ValueError for a non-square grid.
    """
    projected = projected.float()
    tokens = projected.shape[1] - 1
    target = resize_tokens(f_patch, math.isqrt(tokens))
    cls_term = 1.0 - F.cosine_similarity(projected[:, 0], f_cls, dim=-1)
    patch_term = (1.0 - F.cosine_similarity(projected[:, 1:], target, dim=-1)).mean(dim=1)
    return cls_term + patch_term
