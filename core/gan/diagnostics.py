"""The paper's failure-mode diagnostics as cheap scalar metrics (docs/METHOD.md §7).

(a) Early-layer utilisation (paper §3.1): if the first blocks of G are under-used, removing them
barely changes the output. ``early_skip_rel`` = ||G(z) - G_{skip}(z)|| / ||G(z)|| where G_skip
replaces the first quarter of the blocks by the identity. Small values = early blocks idle.

(b) Update size against width (paper §3.2): under a fixed learning rate the change of the network
output per optimiser step grows with width. ``update_rel`` = ||G_{t+1}(z) - G_t(z)|| / ||G_t(z)||
on fixed (z, y).

Both are measured on fixed inputs drawn once per run, with no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.config import MNG_LEVELS
from core.gan.model import Generator


def relative_change(before: Tensor, after: Tensor) -> float:
    """||after - before|| / ||before|| over the whole tensor (Frobenius norms)."""
    return float((after.float() - before.float()).norm() / before.float().norm().clamp_min(1e-12))


@torch.no_grad()
def early_skip_rel(G: Generator, z: Tensor, y: Tensor) -> float:
    """Relative output change when the first depth/4 blocks are skipped. z: (N, z_dim), y: (N,)."""
    w = G.style(z, y)
    full = G.synthesize(w)[-1]
    skipped = G.synthesize(w, skip_blocks=len(G.blocks) // MNG_LEVELS)[-1]
    return relative_change(full, skipped)


@torch.no_grad()
def g_output(G: Generator, z: Tensor, y: Tensor) -> Tensor:
    """Final-level output on fixed inputs, for :func:`relative_change` across a step: (N, c, H, W)."""
    return G.sample(z, y)
