"""One GAT training iteration: a D step, then a G step on the same real batch and the same z.

Blocks in a fixed order (GAT_METHOD.md §3-§5, reference ``train.py``):

D step: fakes ``G(z, y)`` (no grad, all K = 4 MNG levels) -> DiffAugment reals and fakes with
independent parameters (the same parameters for all levels of a sample) -> MNG-perturb with
independent nested noise chains -> RpGAN D loss + gamma/2 R1 (reals) + gamma/2 R2 (fakes), both
with the same augmentation and noise as the loss -> clip -> AdamW.

G step: ``G(z, y)`` with grad (updates the per-class w running mean) -> fresh augmentation and
noise for reals and fakes -> RpGAN G loss with D(real) detached -> clip -> AdamW -> EMA update.

Every stat is returned as a detached 0-d tensor; the loop decides when to synchronise (``item``).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from core.augment import apply_augment, sample_augment
from core.config import MNG_LEVELS, LRMultipliers, TrainConfig
from core.loss import gradient_penalty, rpgan_d_loss, rpgan_g_loss
from core.mng import nested_noise, noise_levels, perturb
from core.model import Discriminator, Generator, parameters_by_kind


def make_optimizer(model: nn.Module, lr: float, mults: LRMultipliers, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one parameter group per kind (vector / hidden / output), lr = lr * multiplier.

    Betas (0.0, 0.99), eps 1e-8, weight decay 0, constant LR (GAT_METHOD.md §5). Each group keeps
    its ``kind`` so LR rules and logs can find it.
    """
    groups = [
        {"params": params, "lr": lr * mults.as_dict()[kind], "kind": kind}
        for kind, params in parameters_by_kind(model).items() if params
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers copied (GAT_METHOD.md §5)."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


class GATStep:
    """Holds G, D, EMA-G and both optimisers; ``d_step`` and ``g_step`` each run one update.

    G and D may be wrapped in DistributedDataParallel; gradients then average over ranks.
    With ``count_only`` (FLOP counting on the meta device) the per-class w average, the EMA and
    gradient clipping's data-dependent parts still run but nothing is read back.
    """

    def __init__(self, cfg: TrainConfig, G: nn.Module, D: nn.Module, device: torch.device,
                 G_ema: Generator | None = None, count_only: bool = False) -> None:
        self.cfg, self.G, self.D, self.G_ema, self.device = cfg, G, D, G_ema, device
        self.count_only = count_only
        self.t = noise_levels(MNG_LEVELS)  # float64 on CPU; perturb moves it to the data's device
        self.opt_g = make_optimizer(_unwrap(G), cfg.lr_g, cfg.lr_mult_g, cfg)
        self.opt_d = make_optimizer(_unwrap(D), cfg.lr_d, cfg.lr_mult_d, cfg)
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16" and device.type != "meta" else contextlib.nullcontext()
        )

    # -- D input: augment, then MNG-perturb (GAT_METHOD.md §3 "augment first, then perturb") -------
    def _d_input_fn(self, levels_shape: torch.Size, y: Tensor, D: nn.Module) -> Callable[[Tensor], Tensor]:
        """A function clean data -> D logits (N,), with augmentation and noise drawn once here.

        Clean data is either a real batch (N, c, H, W), repeated to K levels, or a fake stack
        (K, N, c, H, W). Both R1/R2 branches reuse the same function, hence the same draws.
        """
        k, n, _, size, _ = levels_shape
        aug = sample_augment(n, size, self.device) if self.cfg.augment else None
        noise = nested_noise(tuple(levels_shape), self.t, device=self.device)

        def d_of(x: Tensor) -> Tensor:
            levels = x.unsqueeze(0).expand(k, *x.shape) if x.ndim == 4 else x
            if aug is not None:
                levels = apply_augment(levels, aug)
            with self.autocast:
                return D(perturb(levels, noise.to(levels.dtype), self.t), y).float()

        return d_of

    def _clip_and_step(self, model: nn.Module, opt: torch.optim.Optimizer) -> Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        opt.step()
        return norm.detach()

    def d_step(self, x: Tensor, y: Tensor, z: Tensor) -> dict[str, Tensor]:
        """One discriminator update. x: (N, c, H, W) scaled real latents, y: (N,), z: (N, z_dim)."""
        cfg = self.cfg
        with torch.no_grad(), self.autocast:
            fake = _unwrap(self.G)(z, y).float()  # (K, N, c, H, W)
        exact = cfg.reg_mode == "exact"
        # Double backprop needs the math attention kernel (fused kernels have no 2nd derivative).
        kernel = sdpa_kernel([SDPBackend.MATH]) if exact else contextlib.nullcontext()
        with kernel:
            real = x.detach().requires_grad_(exact and cfg.gamma_r1 > 0)
            fake = fake.requires_grad_(exact and cfg.gamma_r2 > 0)
            d_real_of = self._d_input_fn(fake.shape, y, self.D)
            d_fake_of = self._d_input_fn(fake.shape, y, self.D)
            d_real, d_fake = d_real_of(real), d_fake_of(fake)
            loss = rpgan_d_loss(d_real, d_fake)
            total = loss
            stats = {"loss/D": loss.detach(), "diag/d_real": d_real.detach().mean(),
                     "diag/d_fake": d_fake.detach().mean()}
            for key, gamma, fn, data, logits in (("reg/r1", cfg.gamma_r1, d_real_of, real, d_real),
                                                 ("reg/r2", cfg.gamma_r2, d_fake_of, fake, d_fake)):
                if gamma > 0:
                    penalty = gradient_penalty(fn, data, mode=cfg.reg_mode, fd_eps=cfg.reg_fd_eps,
                                               d_x=logits).mean()
                    total = total + gamma / 2 * penalty
                    stats[key] = penalty.detach()
            self.opt_d.zero_grad(set_to_none=True)
            total.backward()
        stats["diag/grad_norm_D"] = self._clip_and_step(self.D, self.opt_d)
        return stats

    def g_step(self, x: Tensor, y: Tensor, z: Tensor) -> dict[str, Tensor]:
        """One generator update, then the EMA update. Same shapes as :meth:`d_step`."""
        D = _unwrap(self.D)  # D is not updated here: no gradient sync, no parameter grads
        D.requires_grad_(False)
        try:
            with self.autocast:
                fake = self.G(z, y, update_w_avg=not self.count_only).float()
            d_fake = self._d_input_fn(fake.shape, y, D)(fake)
            with torch.no_grad():
                d_real = self._d_input_fn(fake.shape, y, D)(x)
            loss = rpgan_g_loss(d_fake, d_real)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            D.requires_grad_(True)
        stats = {"loss/G": loss.detach(), "diag/grad_norm_G": self._clip_and_step(self.G, self.opt_g)}
        if self.G_ema is not None:
            update_ema(self.G_ema, _unwrap(self.G), self.cfg.ema_decay)
        return stats
