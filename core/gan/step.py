"""One GAT training iteration: a D step, then a G step on the same real batch and the same z.

Blocks in a fixed order (docs/METHOD.md §3-§5, reference ``train.py``):

Fakes: ``G(z, y)`` once, with grad (all K = 4 MNG levels; updates the per-class w running mean).
The reference runs G twice, once without grad for the D step and once with grad for the G step;
G's weights do not change in between, so both give the same fakes and one forward suffices.

D step: on the detached fakes -> DiffAugment reals and fakes with
independent parameters (the same parameters for all levels of a sample) -> MNG-perturb with
independent nested noise chains -> RpGAN D loss + gamma/2 R1 (reals) + gamma/2 R2 (fakes), both
with the same augmentation and noise as the loss, + ``repa_weight`` x the DINOv2 alignment loss
of the reals (``cfg.repa``, :mod:`core.gan.repa`) -> clip -> AdamW.

G step: the same fakes, with grad -> fresh augmentation and noise for reals and fakes -> RpGAN G loss
with D(real) detached -> clip -> AdamW -> EMA update.

Every stat is returned as a detached 0-d tensor; the loop decides when to synchronise (``item``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from core.gan.augment import AugmentParams, apply_augment, sample_augment
from core.config import MNG_LEVELS, LRMultipliers, TrainConfig
from core.gan.loss import finite_difference_penalty, gradient_penalty, rpgan_d_loss, rpgan_g_loss
from core.gan.mng import nested_noise, noise_levels, perturb
from core.gan.model import Generator, parameters_by_kind
from core.records import D_FAKE, D_REAL, GRAD_NORM_D, GRAD_NORM_G, LOSS_D, LOSS_G, LOSS_REPA, REG_R1, REG_R2
from core.gan.repa import alignment_loss, encoder_input, encoder_targets


def make_optimizer(model: nn.Module, lr: float, mults: LRMultipliers, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one parameter group per kind (vector / hidden / output), lr = lr * multiplier.

    Betas (0.0, 0.99), eps 1e-8, weight decay 0, constant LR (docs/METHOD.md §5). Each group keeps
    its ``kind`` so LR rules and logs can find it. On CPU and CUDA the fused kernel runs (one pass
    over each tensor: 6x faster than the per-tensor loop on CPU for D's 2048-wide class MLP,
    benchmarks/train_step.py); elsewhere (the meta device of FLOP counting) the default one.
    """
    groups = [
        {"params": params, "lr": lr * mults.as_dict()[kind], "kind": kind}
        for kind, params in parameters_by_kind(model, cfg).items() if params
    ]
    device = next(model.parameters()).device
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers copied (docs/METHOD.md §5)."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(cfg: TrainConfig, iteration: int) -> float:
    """EMA decay used after ``iteration`` completed iterations (0-based count before the update).

    ``cfg.ema_decay``, or with ``cfg.ema_warmup`` ``min(ema_decay, (1 + t) / (10 + t))``
    (TensorFlow ``tf.train.ExponentialMovingAverage(num_updates=t)``).
    """
    if cfg.ema_warmup:
        return min(cfg.ema_decay, (1 + iteration) / (10 + iteration))
    return cfg.ema_decay


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


class GATStep:
    """Holds G, D, EMA-G and both optimisers; ``d_step`` and ``g_step`` each run one update.

    G and D may be wrapped in DistributedDataParallel; gradients then average over ranks.
    With ``cfg.repa`` the frozen ``encoder`` (:func:`core.gan.repa.load_encoder`) gives the alignment
    targets. FLOP counting (``core.gan.flops``) runs a subclass that leaves out what holds no counted
    FLOPs (:meth:`_repa_targets`, :meth:`_clip_and_step`, :meth:`generate` are its hooks).
    Raises ValueError for ``cfg.repa`` without an encoder.
    """

    updates_w_avg = True
    """Whether :meth:`generate` updates G's per-class w average (training does; counting does not)."""

    def __init__(self, cfg: TrainConfig, G: nn.Module, D: nn.Module, device: torch.device,
                 G_ema: Generator | None = None, encoder: nn.Module | None = None) -> None:
        self.cfg, self.G, self.D, self.G_ema, self.device = cfg, G, D, G_ema, device
        self.encoder = encoder
        self._check_encoder()
        self.done = 0
        """Iterations completed (set on resume; drives the EMA warm-up)."""
        self.t = noise_levels(MNG_LEVELS)  # float64 on CPU; perturb moves it to the data's device
        self.opt_g = make_optimizer(_unwrap(G), cfg.lr_g, cfg.lr_mult_g, cfg)
        self.opt_d = make_optimizer(_unwrap(D), cfg.lr_d, cfg.lr_mult_d, cfg)
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16" and device.type != "meta" else contextlib.nullcontext()
        )

    def _check_encoder(self) -> None:
        if self.cfg.repa and self.encoder is None:
            raise ValueError("cfg.repa needs the DINOv2 encoder (core.gan.repa.load_encoder)")

    # -- D input: augment, then MNG-perturb (docs/METHOD.md §3 "augment first, then perturb") -------
    def _d_input(self, levels: Tensor, aug: AugmentParams | None, noise: Tensor,
                 color_reference: Tensor | None = None) -> Tensor:
        """Clean levels (K, N, c, H, W) -> D input (N, K*c, H, W) with the given draws
        (``color_reference``: see :func:`core.gan.augment.apply_augment`)."""
        if aug is not None:
            levels = apply_augment(levels, aug, color_reference)
        return perturb(levels, noise.to(levels.dtype), self.t)

    def _draws(self, shape: torch.Size) -> tuple[AugmentParams | None, Tensor]:
        """One augmentation draw (per sample, shared by its levels) and one nested noise chain."""
        k, n, _, size, _ = shape
        aug = sample_augment(n, size, self.device) if self.cfg.augment else None
        return aug, nested_noise(tuple(shape), self.t, device=self.device)

    def _logits(self, D: nn.Module, d_input: Tensor, y: Tensor, projection: Tensor | None = None,
                fp32: bool = False, align: int = 0) -> tuple[Tensor, Tensor | None]:
        """D's float32 logits (N,) and, for ``align`` > 0, the REPA projector's output on the
        first ``align`` samples (align, 1 + T, repa_dim)."""
        with contextlib.nullcontext() if fp32 else self.autocast:
            out = D(d_input, y, projection=projection, align=align)
        logits, projected = out if align else (out, None)
        return logits.float(), projected

    def _repa_targets(self, images: Tensor | None, aug: AugmentParams | None, n: int) -> tuple[Tensor, Tensor]:
        """The encoder's (f_cls (n, E), f_patch (n, P, E)) for the real batch's raw images
        (uint8 (n, 3, S, S)) under the reals' augmentation draw."""
        cfg = self.cfg
        if images is None:
            raise ValueError("cfg.repa needs the raw images of the real batch (d_step's images)")
        pixels = encoder_input(images.to(self.device), aug, cfg.latent_size)
        with self.autocast:
            return encoder_targets(self.encoder, pixels)

    def _clip_and_step(self, opt: torch.optim.Optimizer) -> Tensor:
        """Clip the gradient norm of exactly the parameters ``opt`` updates, then step.

        Parameters outside the optimiser (the fixed sin-cos positional embeddings) never enter
        the norm: had they a gradient, clipping would scale the real update by something the
        optimiser ignores (docs/METHOD.md §8, "gradient clipping must see exactly the parameters
        that are optimised").
        """
        params = [p for group in opt.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return norm.detach()

    def generate(self, z: Tensor, y: Tensor) -> Tensor:
        """Fakes with grad for this iteration: (N, z_dim), (N,) -> (K, N, c, H, W) float32."""
        with self.autocast:
            return self.G(z, y, update_w_avg=self.updates_w_avg).float()

    def iteration(self, x: Tensor, y: Tensor, z: Tensor, images: Tensor | None = None) -> dict[str, Tensor]:
        """One full iteration: fakes, D step, G step (+ EMA). Returns detached 0-d stats.
        ``images``: the reals' raw uint8 images (N, 3, S, S), needed with ``cfg.repa``."""
        fake = self.generate(z, y)
        stats = {**self.d_step(x, y, fake.detach(), images), **self.g_step(x, y, fake)}
        self.done += 1
        return stats

    def d_step(self, x: Tensor, y: Tensor, fake: Tensor, images: Tensor | None = None) -> dict[str, Tensor]:
        """One discriminator update. x: (N, c, H, W) scaled real latents, y: (N,),
        fake: (K, N, c, H, W) detached generator output, images: uint8 (N, 3, S, S) raw images of
        the reals (``cfg.repa`` only; the alignment loss is logged as ``loss/repa``).

        Reals and fakes, and for the finite-difference R1/R2 their perturbed twins
        ``x + fd_eps * eps``, go through D in one batched forward: D treats samples
        independently, so this equals separate calls (same draws) with far fewer kernel launches.
        R1 perturbs the real latent before it is repeated to the K levels; R2 perturbs each fake
        level (reference ``approximated_gradient_penalty``).
        """
        cfg = self.cfg
        n = x.shape[0]
        exact = cfg.reg_mode == "exact"
        regularise = cfg.gamma_r1 > 0 or cfg.gamma_r2 > 0
        real = x.detach().requires_grad_(exact and regularise)
        fake = fake.detach().requires_grad_(exact and regularise)
        clean = torch.cat([real.unsqueeze(0).expand_as(fake), fake], dim=1)  # (K, 2N, c, H, W)
        aug, noise = self._draws(clean.shape)  # independent draws for reals and fakes
        inputs, labels = [self._d_input(clean, aug, noise)], [y, y]
        fd = regularise and not exact
        if fd:
            eps_real = torch.randn_like(x).unsqueeze(0).expand_as(fake)
            shifted = clean + cfg.reg_fd_eps * torch.cat([eps_real, torch.randn_like(fake)], dim=1)
            # the same augmentation (its colour means from the clean input) and noise
            inputs.append(self._d_input(shifted, aug, noise, color_reference=clean))
            labels += [y, y]
        # The frozen encoder's targets, outside the math-kernel block below (the encoder needs no
        # second derivative, and the math kernel is slow).
        targets = self._repa_targets(images, None if aug is None else aug.head(n), n) if cfg.repa else None
        # Double backprop needs the math attention kernel (fused kernels have no 2nd derivative).
        kernel = sdpa_kernel([SDPBackend.MATH]) if exact and regularise else contextlib.nullcontext()
        with kernel:
            logits, projected = self._logits(self.D, torch.cat(inputs), torch.cat(labels),
                                             fp32=fd and cfg.reg_fd_precision == "fp32", align=n if cfg.repa else 0)
            logits = logits.split(n)
            d_real, d_fake = logits[0], logits[1]
            loss = rpgan_d_loss(d_real, d_fake)
            stats = {LOSS_D: loss.detach(), D_REAL: d_real.detach().mean(), D_FAKE: d_fake.detach().mean()}
            total = loss
            if projected is not None:  # the reals come first in the batched forward
                align = alignment_loss(projected, *targets).mean()
                total = total + cfg.repa_weight * align
                stats[LOSS_REPA] = align.detach()
            for i, (key, gamma, data) in enumerate(((REG_R1, cfg.gamma_r1, real), (REG_R2, cfg.gamma_r2, fake))):
                if gamma <= 0:
                    continue
                if fd:
                    penalty = finite_difference_penalty(logits[i], logits[2 + i], cfg.reg_fd_eps)
                else:
                    penalty = gradient_penalty(lambda _: logits[i], data, d_x=logits[i])
                total = total + gamma / 2 * penalty.mean()
                stats[key] = penalty.mean().detach()
            self.opt_d.zero_grad(set_to_none=True)
            total.backward()
        stats[GRAD_NORM_D] = self._clip_and_step(self.opt_d)
        return stats

    def g_step(self, x: Tensor, y: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """One generator update through the just-updated D, then the EMA update.

        fake: (K, N, c, H, W) from :meth:`generate`, still attached to G's graph.
        """
        D = _unwrap(self.D)  # D is not updated here: no gradient sync, no parameter grads
        # Freeze D for this step and restore each parameter's own flag afterwards: a blanket
        # requires_grad_(True) would switch on the fixed positional embedding after the first
        # iteration, so a fresh (resumed) process and a running one would differ.
        trainable = [p for p in D.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with torch.no_grad(), self.autocast:  # D is fixed here: one class MLP for both calls
                projection = D.class_projection(y)
            aug, noise = self._draws(fake.shape)
            d_fake = self._logits(D, self._d_input(fake, aug, noise), y, projection)[0]
            with torch.no_grad():
                aug, noise = self._draws(fake.shape)
                d_real = self._logits(D, self._d_input(x.unsqueeze(0).expand_as(fake), aug, noise), y, projection)[0]
            loss = rpgan_g_loss(d_fake, d_real)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for p in trainable:
                p.requires_grad_(True)
        stats = {LOSS_G: loss.detach(), GRAD_NORM_G: self._clip_and_step(self.opt_g)}
        if self.G_ema is not None:
            update_ema(self.G_ema, _unwrap(self.G), ema_decay_at(self.cfg, self.done))
        return stats
