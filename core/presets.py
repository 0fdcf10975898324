"""Named training presets, as one literal table (EDM2 style).

``gat-sweep train PRESET`` runs one of these; sweep files start from them too. ImageNet presets
follow the paper's scaling study (docs/METHOD.md §5-§7: batch 512, bf16, 50K iterations,
lr = 2e-4 * 768 / width for G and D, FID-5K every 2,500 iterations) with the reference's DINOv2
alignment of D (``repa``), and need latents written by ``gat-sweep encode --keep-images``, local
Inception weights and a local DINOv2 ViT-B/14 (``repa_encoder``).
"""

from __future__ import annotations

from core.config import SIZES, ConfigError, NetConfig, TrainConfig
from core.lr_rules import gat

PAPER_BASE_LR = 2e-4
"""Reference base learning rate at batch 512 and base width 768 (docs/METHOD.md §5)."""
PAPER_BASE_WIDTH = 768


def _imagenet(size: str, patch: int) -> TrainConfig:
    net = NetConfig.named(size)
    lr = gat(PAPER_BASE_LR, net.width, PAPER_BASE_WIDTH).lr  # the paper's width-aware rule
    return TrainConfig(
        name=f"GAT-{size}/{patch}", dataset="imagenet256-latents", latent_size=32, num_classes=1000,
        g=net, d=net, patch=patch, batch=512, lr_g=lr, lr_d=lr, iterations=50_000,
        eval_every=2_500, eval_samples=5_000, eval_metric="fid", precision="bf16",
        ckpt_every=2_500, log_every=100, diag_every=500, repa=True,
    )


_SMALL = NetConfig(width=64, depth=4, heads=4)
# Models this small are bound by per-op overhead, not arithmetic: one torch thread is as fast as
# two on these 2-core machines and, unlike two, does not collapse when another process competes
# for a core (measured: 0.3 s vs 2.3 s per iteration with a second job running).
_SMALL_THREADS = 1

PRESETS: dict[str, TrainConfig] = {
    # Gaussian latents, no evaluation: plumbing and speed checks.
    "tiny": TrainConfig(name="tiny", dataset="random", g=_SMALL, d=_SMALL, d_proj_dim=256,
                        iterations=100, eval_every=-1, ckpt_every=50, num_threads=_SMALL_THREADS),
    # The embedded default (scikit-learn digits through a small VAE), a few minutes on 2 CPU cores.
    "digits": TrainConfig(name="digits", dataset="digits", g=_SMALL, d=_SMALL, d_proj_dim=256,
                          lr_g=1e-3, lr_d=1e-3, iterations=1500, eval_every=500, eval_samples=1000,
                          ckpt_every=250, ema_warmup=True, num_threads=_SMALL_THREADS),
    **{f"GAT-{s}/{p}": _imagenet(s, p) for s in SIZES for p in (2, 4, 8)},
}


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; raises ConfigError listing the valid names."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
