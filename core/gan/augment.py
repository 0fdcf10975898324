"""Differentiable augmentation of latents (DiffAugment, Zhao et al. 2020; docs/METHOD.md §4).

Policy ``color, translation, cutout, flip`` applied with probability 1, as in the GAT reference
(``losses/diffaug.py``, ``losses/Rp_loss.py``). Parameters are drawn once per sample by
:func:`sample_augment` and applied by :func:`apply_augment`, so the same draw can be applied to
all K MNG levels of a sample and to both branches of a finite-difference gradient penalty.
Every op is differentiable w.r.t. the input (it runs inside R1/R2 and the G loss), and the batch
is processed without a Python loop over samples.

Shapes: K MNG levels, N batch, c latent channels, H = W = ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

COLOR_PROB = 0.5
"""Probability that a sample gets the colour op (brightness, saturation and contrast together)."""
TRANSLATION_RATIO = 0.125
"""Largest shift as a fraction of the size (rounded to the nearest integer)."""
CUTOUT_RATIO = 0.5
"""Side of the cutout square as a fraction of the size (rounded to the nearest integer)."""
FLIP_PROB = 0.4
"""Probability of a horizontal flip (reference ``rand_flip``)."""


@dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters for N samples (all tensors on one device)."""

    color: Tensor
    """(N,) bool: whether the sample gets the colour op (prob 0.5)."""
    brightness: Tensor
    """(N,) float in [-0.5, 0.5): added to every element."""
    saturation: Tensor
    """(N,) float in [0, 2): factor on the deviation from the per-pixel channel mean."""
    contrast: Tensor
    """(N,) float in [0.5, 1.5): factor on the deviation from the sample mean."""
    shift: Tensor
    """(N, 2) int64 (rows, columns): content moves down/right by this many pixels; zero fill."""
    cutout_corner: Tensor
    """(N, 2) int64 (row, column) of the cutout square's top-left corner; may lie outside the
    image, the square is clipped to it."""
    cutout_size: int
    """Side of the cutout square in pixels."""
    flip: Tensor
    """(N,) bool: mirror the columns (horizontal flip)."""

    @property
    def batch(self) -> int:
        """Number of samples N the parameters are for."""
        return self.color.shape[0]

    def head(self, n: int) -> "AugmentParams":
        """The parameters of the first n samples (e.g. the reals of a reals-then-fakes draw)."""
        fields = {name: getattr(self, name)[:n] for name in
                  ("color", "brightness", "saturation", "contrast", "shift", "cutout_corner", "flip")}
        return AugmentParams(cutout_size=self.cutout_size, **fields)


def sample_augment(
    n: int,
    size: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Draw augmentation parameters for n samples of size x size latents.

    Ranges follow the reference's DiffAugment: brightness U(-0.5, 0.5), saturation U(0, 2),
    contrast U(0.5, 1.5), all three applied together with prob 0.5 per sample; integer shifts
    in [-s, s] per axis with ``s = int(size / 8 + 0.5)``; one cutout square of side
    ``int(size / 2 + 0.5)`` centred on an integer position in [0, size] (in [0, size - 1] for an
    odd side); horizontal flip with prob 0.4. ``generator`` must live on ``device``.

    Raises ValueError if n or size is not positive.
    """
    if n <= 0 or size <= 0:
        raise ValueError(f"sample_augment needs positive n and size, got n={n}, size={size}")

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=device)

    def integers(low: int, high: int) -> Tensor:  # uniform in [low, high), shape (n, 2)
        return torch.randint(low, high, (n, 2), generator=generator, device=device)

    max_shift = int(size * TRANSLATION_RATIO + 0.5)
    cut = int(size * CUTOUT_RATIO + 0.5)
    brightness, saturation, contrast = uniform(n) - 0.5, 2.0 * uniform(n), uniform(n) + 0.5
    color = uniform(n) < COLOR_PROB
    shift = integers(-max_shift, max_shift + 1)
    centre = integers(0, size + 1 - cut % 2)
    flip = uniform(n) < FLIP_PROB
    return AugmentParams(color=color, brightness=brightness, saturation=saturation, contrast=contrast,
                         shift=shift, cutout_corner=centre - cut // 2, cutout_size=cut, flip=flip)


def apply_augment(x: Tensor, params: AugmentParams, color_reference: Tensor | None = None) -> Tensor:
    """Apply one parameter draw; every level of a sample gets that sample's parameters.

    x: (K, N, c, H, W) MNG levels or (N, c, H, W). Returns a tensor of x's shape and dtype,
    differentiable w.r.t. x. Order: colour, translation, cutout, flip (reference policy order).
    ``color_reference`` (x's shape; default x): the input whose last level gives the colour op's
    means. The finite-difference R1/R2 branch ``x + fd_eps * eps`` passes the clean x, because
    the reference stores the means with the augmentation parameters and reuses them there
    (docs/METHOD.md §4, "R1/R2 finite difference, exact detail").

    Colour, as the reference's ``rand_brightness_saturation_contrast`` computes it (it differs
    from applying DiffAugment's three ops in turn: the brightness offset ends up scaled by the
    saturation and contrast factors):
    ``a = x + b; a = (a - m_s) * s + m_s; a = (a - m_c) * c + m_c`` where m_s (per-pixel
    channel mean) and m_c (sample mean) are taken before brightness, from the last level x_K --
    the reference draws the parameters (means included) on the final level and reuses them for
    the other levels.

    Raises ValueError if x is not 4-D/5-D or its batch size differs from the parameters'.
    """
    if x.ndim not in (4, 5):
        raise ValueError(
            f"apply_augment needs x of shape (K, N, c, H, W) or (N, c, H, W), got {tuple(x.shape)}"
        )
    levels = x if x.ndim == 5 else x.unsqueeze(0)
    k, n, c, h, w = levels.shape
    if n != params.batch:
        raise ValueError(f"augmentation parameters are for {params.batch} samples, x has batch {n}")
    reference = levels if color_reference is None else color_reference.reshape(levels.shape)
    levels = _color(levels, params, reference[-1:])
    flat = levels.transpose(0, 1).reshape(n, k * c, h, w)  # one sample's levels side by side
    flat = _translate(flat, params.shift)
    flat = _cutout(flat, params.cutout_corner, params.cutout_size)
    flat = torch.where(params.flip.view(n, 1, 1, 1), flat.flip(-1), flat)
    out = flat.reshape(n, k, c, h, w).transpose(0, 1)
    return out if x.ndim == 5 else out.squeeze(0)


def apply_to_pixels(images: Tensor, params: AugmentParams, latent_size: int) -> Tensor:
    """The geometric part of a latent draw applied to the raw images of the same samples:
    translation (scaled from latent to image pixels, zero fill) and horizontal flip -- the GAT
    reference's raw-image policy ``translation,flip`` for its DINOv2 alignment target
    (``losses/Rp_PT_loss.py``); no colour (an RGB and a latent colour shift are different
    things) and no cutout.

    images: (N, 3, S, S) float; a latent shift of t pixels moves the image by
    ``round(t * S / latent_size)`` pixels in the same direction. (The reference rescales with
    ``t * latent_size // S``, which is 0 or -1 at S = 224 -- in effect no shift; we apply the
    intended one. docs/METHOD.md lists this difference.) Returns (N, 3, S, S).

    Raises ValueError if the batch size differs from the parameters'.
    """
    n, _, size, _ = images.shape
    if n != params.batch:
        raise ValueError(f"augmentation parameters are for {params.batch} samples, images have batch {n}")
    shift = torch.round(params.shift.to(torch.float64) * size / latent_size).to(torch.int64)
    out = _translate(images, shift)
    return torch.where(params.flip.view(n, 1, 1, 1), out.flip(-1), out)


def _color(levels: Tensor, params: AugmentParams, ref: Tensor) -> Tensor:
    """Brightness, saturation and contrast together on the selected samples, with the means of
    ``ref`` (1, N, c, H, W). (K, N, c, H, W) -> same."""

    def per_sample(v: Tensor) -> Tensor:
        return v.to(levels.dtype).view(1, -1, 1, 1, 1)

    mean_sat = ref.mean(dim=2, keepdim=True)
    mean_con = ref.mean(dim=(2, 3, 4), keepdim=True)
    out = levels + per_sample(params.brightness)
    out = (out - mean_sat) * per_sample(params.saturation) + mean_sat
    out = (out - mean_con) * per_sample(params.contrast) + mean_con
    return torch.where(params.color.view(1, -1, 1, 1, 1), out, levels)


def _translate(x: Tensor, shift: Tensor) -> Tensor:
    """out[:, :, i, j] = x[:, :, i - dy, j - dx], zero where that falls outside. (N, C, H, W) -> same."""
    n, ch, h, w = x.shape
    rows = torch.arange(h, device=x.device) - shift[:, :1]  # (N, H) source row of each output row
    cols = torch.arange(w, device=x.device) - shift[:, 1:]  # (N, W)
    out = x.gather(2, rows.clamp(0, h - 1).view(n, 1, h, 1).expand(n, ch, h, w))
    out = out.gather(3, cols.clamp(0, w - 1).view(n, 1, 1, w).expand(n, ch, h, w))
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    return out * inside.to(x.dtype)


def _cutout(x: Tensor, corner: Tensor, size: int) -> Tensor:
    """Zero the square [r, r + size) x [c, c + size) of each sample (clipped). (N, C, H, W) -> same."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) - corner[:, :1]  # (N, H) position inside the square
    cols = torch.arange(w, device=x.device) - corner[:, 1:]
    in_rows = ((rows >= 0) & (rows < size)).view(n, 1, h, 1)
    in_cols = ((cols >= 0) & (cols < size)).view(n, 1, 1, w)
    return x * (~(in_rows & in_cols)).to(x.dtype)
