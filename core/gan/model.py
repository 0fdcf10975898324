"""GAT generator and discriminator (Hyun et al., "Scalable GANs with Transformers", 2025).

The whole architecture in one file, read top to bottom: shared layers (positional embeddings,
RoPE, attention, SwiGLU, equalised linear), the generator with its mapping network and four MNG
output heads, the discriminator with its class projection, and the initialisation. The numbers
follow docs/METHOD.md §1, §2, §6 and §8; where the paper and the authors' reference
implementation (github.com/hse1032/GAT) differ, a comment says which one is followed and
docs/METHOD.md §9 says why. Parameter counts match the paper's Table (docs/METHOD.md §6) within
0.1%; see ``tests/test_model.py``.

Shapes: N batch, C width, T = (H/p)^2 image tokens, H latent size, c latent channels (4),
K = 4 MNG levels, P = ``d_proj_dim``.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.config import MNG_LEVELS, PARAM_KINDS, NetConfig, TrainConfig

EQUAL_LR_MUL = 0.01
"""Equalised-LR multiplier of the mapping network and D's class projection (StyleGAN2 §B)."""
MOD_INIT_GAIN = 0.1
"""Xavier gain of the adaLN modulation layers: small but non-zero gates (reference init)."""
LAYERSCALE_INIT = 0.1
"""Initial LayerScale of D's residual branches (docs/METHOD.md §2)."""
EMBED_INIT_STD = 0.02
REPA_HIDDEN = 2048
"""Hidden width of D's REPA projector MLP (reference ``projector_dim``)."""


# ----------------------------------------------------------------------------------------------
# Positional information
# ----------------------------------------------------------------------------------------------
def sincos_pos_embed_2d(width: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding, MAE/DiT convention (docs/METHOD.md §8).

    Token ``i * grid + j`` is row i, column j. The first C/2 channels encode the column j, the
    last C/2 the row i; each half is ``[sin(pos * w_k)] + [cos(pos * w_k)]`` with
    ``w_k = 10000 ** (-k / (C/4))``, k = 0 .. C/4 - 1.

    Returns: float32 tensor (grid*grid, width). Raises ValueError if width % 4 != 0.
    """
    if width % 4:
        raise ValueError(f"sin-cos embedding width must be divisible by 4, got {width}")
    quarter = width // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    idx = torch.arange(grid * grid)
    rows, cols = (idx // grid).double(), (idx % grid).double()

    def half(pos: Tensor) -> Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([half(cols), half(rows)], dim=1).float()


def rope_2d(head_dim: int, grid: int, prefix: int = 0) -> tuple[Tensor, Tensor]:
    """cos/sin tables of 2-D axial RoPE for a grid x grid token map (docs/METHOD.md §8).

    The first head_dim/2 channels rotate with the row index, the last head_dim/2 with the
    column index; channel pairs (2m, 2m+1) of each half turn by ``pos * 10000 ** (-2m / (hd/2))``.
    ``prefix`` leading rows are the identity (cos 1, sin 0): D's CLS token is not rotated.

    Returns: (cos, sin), each float32 (prefix + grid*grid, head_dim), every angle repeated for its
    pair. Raises ValueError if head_dim % 4 != 0.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = 10000.0 ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)  # (hd/4,)
    idx = torch.arange(grid * grid)
    rows, cols = (idx // grid).double(), (idx % grid).double()
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (T, hd/2)
    angles = torch.cat([angles.new_zeros(prefix, half), angles])  # identity rows first
    angles = angles.repeat_interleave(2, dim=1)  # (prefix + T, hd)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (a, b) -> (a cos - b sin, b cos + a sin).

    x: (N, heads, T, hd); cos, sin: (T, hd). Returns a tensor shaped like x.
    Written as ``x * cos + swap(x) * (sin * [-1, +1])`` with swap (a, b) -> (b, a): three passes
    over x instead of five (benchmarks/train_step.py at width 256).
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    pairs = sin.unflatten(-1, (-1, 2))  # no host tensor here: on CUDA that would be a copy per call
    signed_sin = torch.stack((-pairs[..., 0], pairs[..., 1]), dim=-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (StyleGAN2 mapping network).

    The stored weight is xavier-uniform with gain 1/lr_mul; forward multiplies weight and bias by
    lr_mul, so the effective learning rate under Adam is lr_mul times the optimiser's.
    (N, ..., in) -> (N, ..., out).
    """

    def __init__(self, in_features: int, out_features: int, lr_mul: float = EQUAL_LR_MUL) -> None:
        super().__init__()
        self.lr_mul = lr_mul
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight, gain=1.0 / lr_mul)

    def forward(self, x: Tensor) -> Tensor:
        # lr_mul * (x W^T + b) equals x (lr_mul W)^T + lr_mul b; scaling the (rows x out) output
        # is far cheaper than scaling D's 2048 x 2048 weights at every call.
        return F.linear(x, self.weight, self.bias) * self.lr_mul


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalise each row to unit second moment (StyleGAN's 'normalize_2nd_moment'). (N, D) -> (N, D)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def _rms_norm(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """Apply an affine RMSNorm in x's dtype: under bf16 autocast q and k arrive in bf16, and a
    float32 gain would force PyTorch's slower unfused kernel."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias, QK-norm (RMSNorm over head dim, affine) and 2-D RoPE.

    (N, T, C) -> (N, T, C); cos, sin: (T, head_dim) from :func:`rope_2d` (identity rows for
    tokens that are not rotated, such as D's CLS).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        # QK-norm keeps torch's default eps (None: the machine epsilon of the input dtype), as the
        # reference does (docs/METHOD.md §8); the block norms use 1e-6.
        self.q_norm = nn.RMSNorm(head_dim)
        self.k_norm = nn.RMSNorm(head_dim)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        n, t, c = x.shape
        # Split before moving heads forward: the backward then stacks the q, k, v gradients
        # straight into the qkv layout instead of copying them twice.
        q, k, v = (part.transpose(1, 2) for part in self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(2))
        # RoPE after QK-norm (reference order).
        q, k = apply_rope(_rms_norm(self.q_norm, q), cos, sin), apply_rope(_rms_norm(self.k_norm, k), cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


def swiglu_hidden(width: int) -> int:
    """SwiGLU hidden size h = int(2/3 * 4C), computed exactly in integers."""
    return 8 * width // 3


class SwiGLU(nn.Module):
    """SwiGLU FFN: Linear(C -> 2h), silu(a) * b, Linear(h -> C), with biases. (N, T, C) -> same."""

    def __init__(self, width: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(width)
        self.fc1 = nn.Linear(width, 2 * hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(a) * b)


def _maybe_checkpoint(enabled: bool, fn, *args):  # type: ignore[no-untyped-def]
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------
class GeneratorBlock(nn.Module):
    """Pre-norm block modulated by the style w: scale + gate, no shift (docs/METHOD.md §1).

    x: (N, T, C), w: (N, C) -> (N, T, C).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(width, heads)
        self.norm2 = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.mlp = SwiGLU(width)
        self.modulation = nn.Linear(width, 4 * width)

    def forward(self, x: Tensor, w: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        scale_a, gate_a, scale_m, gate_m = self.modulation(F.silu(w)).unsqueeze(1).chunk(4, dim=-1)
        x = x + gate_a * self.attn(self.norm1(x) * (1 + scale_a), cos, sin)
        x = x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m))
        return x


class OutputHead(nn.Module):
    """MNG output head: modulated RMSNorm then Linear(C -> p*p*c). (N, T, C), (N, C) -> (N, T, p*p*c)."""

    def __init__(self, width: int, patch: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.modulation = nn.Linear(width, width)
        self.out = nn.Linear(width, patch * patch * channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        scale = self.modulation(F.silu(w)).unsqueeze(1)
        return self.out(self.norm(x) * (1 + scale))


class Generator(nn.Module):
    """GAT generator G(z, y) -> latent image(s).

    Tokens start as the fixed sin-cos embedding (no noise image); all variation enters through
    the style w from the mapping network. Four output heads after each quarter of the blocks give
    accumulated predictions ``x_k = x_{k-1} + head_k`` (MNG, docs/METHOD.md §1, §3).
    """

    def __init__(self, net: NetConfig, *, patch: int, latent_size: int, channels: int, num_classes: int,
                 z_dim: int, w_avg_beta: float, train_pos_embed: bool = False,
                 grad_checkpointing: bool = False) -> None:
        """``net``: width, depth and heads; ``patch``: patch size on the latent grid of
        ``latent_size`` x ``latent_size`` with ``channels`` channels; ``z_dim``: size of z;
        ``w_avg_beta``: decay of the per-class running mean of w (truncation);
        ``train_pos_embed``: train the sin-cos embedding; ``grad_checkpointing``: recompute the
        blocks' activations in the backward pass. :func:`build_models` passes a TrainConfig's."""
        super().__init__()
        self.patch, self.channels, self.num_classes = patch, channels, num_classes
        self.z_dim, self.width = z_dim, net.width
        self.grid = latent_size // patch
        self.grad_checkpointing = grad_checkpointing
        # Mapping network: [pixel_norm(embed(y)), pixel_norm(z)] -> EqualLinear -> SiLU -> EqualLinear.
        self.class_embed = nn.Embedding(num_classes, z_dim)
        self.mapping = nn.Sequential(
            EqualLinear(2 * z_dim, net.width), nn.SiLU(), EqualLinear(net.width, net.width)
        )
        # Token input: the sin-cos embedding, fixed unless train_pos_embed (counted as a
        # parameter either way, like the reference does).
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(net.width, self.grid), requires_grad=train_pos_embed)
        self.blocks = nn.ModuleList(GeneratorBlock(net.width, net.heads) for _ in range(net.depth))
        self.heads = nn.ModuleList(
            OutputHead(net.width, patch, channels) for _ in range(MNG_LEVELS)
        )
        self.head_after = [(k + 1) * net.depth // MNG_LEVELS - 1 for k in range(MNG_LEVELS)]
        cos, sin = rope_2d(net.head_dim, self.grid)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("w_avg", torch.zeros(num_classes, net.width))
        self.w_avg_beta = w_avg_beta
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform for every Linear, zero biases; class table N(0, 0.02^2); modulation
        layers xavier with gain 0.1 (reference ``initialize_weights``). EqualLinear keeps its own
        gain-1/0.01 init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.class_embed.weight, std=EMBED_INIT_STD)
        for layer in [b.modulation for b in self.blocks] + [h.modulation for h in self.heads]:
            nn.init.xavier_uniform_(layer.weight, gain=MOD_INIT_GAIN)
            nn.init.zeros_(layer.bias)

    # -- style ---------------------------------------------------------------------------------
    def style(self, z: Tensor, y: Tensor) -> Tensor:
        """Mapping network. z: (N, z_dim), y: (N,) int64 -> w: (N, C)."""
        return self.mapping(torch.cat([pixel_norm(self.class_embed(y)), pixel_norm(z)], dim=1))

    @torch.no_grad()
    def update_w_avg(self, w: Tensor, y: Tensor) -> None:
        """Per-class running mean of w, beta 0.995, updated in the G step (reference).

        w_avg[c] <- lerp(mean(w[y == c]), w_avg[c], beta) for each class c in the batch.
        """
        w = w.detach().float()
        sums = torch.zeros_like(self.w_avg).index_add_(0, y, w)
        counts = torch.bincount(y, minlength=self.num_classes).to(w.dtype)
        present = counts > 0
        means = sums[present] / counts[present, None]
        self.w_avg[present] = torch.lerp(means, self.w_avg[present], self.w_avg_beta)

    def truncate(self, w: Tensor, y: Tensor, psi: float) -> Tensor:
        """Truncation towards the class's running mean (reference ``forward``):
        ``w <- lerp(w, w_avg[y], psi)``, psi 0 = none. Shapes: w (N, C), y (N,)."""
        return torch.lerp(w, self.w_avg[y], psi) if psi else w

    # -- synthesis -----------------------------------------------------------------------------
    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, T, p*p*c) -> (N, c, H, W), DiT layout."""
        n, g, p, c = x.shape[0], self.grid, self.patch, self.channels
        x = x.view(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, g * p, g * p)

    def synthesize(self, w: Tensor, skip_blocks: int = 0) -> Tensor:
        """Blocks and MNG heads from a style. w: (N, C) -> (K, N, c, H, W), accumulated levels.

        ``skip_blocks`` leading blocks are replaced by the identity (early-layer utilisation
        diagnostic, paper §3.1: how much the output changes without them).
        """
        x = self.pos_embed.unsqueeze(0).expand(w.shape[0], -1, -1).to(w.dtype)
        levels, accum, head_idx = [], None, 0
        for i, block in enumerate(self.blocks):
            if i >= skip_blocks:
                x = _maybe_checkpoint(self.grad_checkpointing, block, x, w, self.rope_cos, self.rope_sin)
            if i == self.head_after[head_idx]:
                out = self.unpatchify(self.heads[head_idx](x, w))
                accum = out if accum is None else accum + out
                levels.append(accum)
                head_idx += 1
        return torch.stack(levels, dim=0)

    def forward(self, z: Tensor, y: Tensor, psi: float = 0.0, update_w_avg: bool = False) -> Tensor:
        """z: (N, z_dim) float, y: (N,) int64 -> (K=4, N, c, H, W) accumulated MNG levels.

        The last level ``[-1]`` is the sample; evaluation uses :meth:`sample`.
        """
        w = self.style(z, y)
        if update_w_avg:
            self.update_w_avg(w, y)
        return self.synthesize(self.truncate(w, y, psi))

    def sample(self, z: Tensor, y: Tensor, psi: float = 0.0) -> Tensor:
        """Final level only: (N, z_dim), (N,) -> (N, c, H, W)."""
        return self.forward(z, y, psi=psi)[-1]


# ----------------------------------------------------------------------------------------------
# Discriminator
# ----------------------------------------------------------------------------------------------
class DiscriminatorBlock(nn.Module):
    """Pre-norm block with affine RMSNorm and LayerScale 0.1. (N, 1 + T, C) -> same."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.RMSNorm(width, eps=1e-6)
        self.mlp = SwiGLU(width)
        self.ls1 = nn.Parameter(torch.full((width,), LAYERSCALE_INIT))
        self.ls2 = nn.Parameter(torch.full((width,), LAYERSCALE_INIT))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.ls1 * self.attn(self.norm1(x), cos, sin)
        x = x + self.ls2 * self.mlp(self.norm2(x))
        return x


def repa_projector(width: int, dim: int) -> nn.Sequential:
    """D's REPA projector (reference ``build_mlp``): Linear(C -> 2048) SiLU Linear(2048 -> 2048)
    SiLU Linear(2048 -> dim); tokens (..., C) -> (..., dim) (docs/METHOD.md §2)."""
    return nn.Sequential(nn.Linear(width, REPA_HIDDEN), nn.SiLU(), nn.Linear(REPA_HIDDEN, REPA_HIDDEN),
                         nn.SiLU(), nn.Linear(REPA_HIDDEN, dim))


def _xavier_init(root: nn.Module) -> None:
    """Xavier-uniform weights (a conv's as a flattened matrix) and zero biases for every Linear and
    Conv2d in ``root`` (reference ``initialize_weights``)."""
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            nn.init.zeros_(module.bias)


class Discriminator(nn.Module):
    """GAT discriminator D(x_levels, y) -> logit (docs/METHOD.md §2).

    Input: the K = 4 MNG-perturbed levels concatenated on channels (N, 4c, H, W); one logit per
    sample, class-conditioned by projection onto an embedding passed through an equalised MLP.
    """

    def __init__(self, net: NetConfig, *, patch: int, latent_size: int, channels: int, num_classes: int,
                 proj_dim: int, repa_dim: int | None = None, train_pos_embed: bool = False,
                 grad_checkpointing: bool = False) -> None:
        """``net``: width, depth and heads; ``patch``, ``latent_size``, ``channels`` as the
        generator's (D reads the MNG levels of its output); ``proj_dim``: size of the class
        projection; ``repa_dim``: output size of the REPA projector, None for none;
        ``train_pos_embed``, ``grad_checkpointing`` as the generator's. :func:`build_models`
        passes a TrainConfig's."""
        super().__init__()
        self.grid = latent_size // patch
        self.grad_checkpointing = grad_checkpointing
        proj = proj_dim
        self.patch_embed = nn.Conv2d(MNG_LEVELS * channels, net.width, patch, patch)
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(net.width, self.grid), requires_grad=train_pos_embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, net.width))
        self.blocks = nn.ModuleList(DiscriminatorBlock(net.width, net.heads) for _ in range(net.depth))
        self.norm = nn.RMSNorm(net.width, eps=1e-6)
        self.head = nn.Linear(net.width, proj)
        self.class_embed = nn.Embedding(num_classes, proj)
        self.class_map = nn.Sequential(EqualLinear(proj, proj), nn.SiLU(), EqualLinear(proj, proj))
        cos, sin = rope_2d(net.head_dim, self.grid, prefix=1)  # CLS first, not rotated
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()
        self.repa: nn.Sequential | None = None
        if repa_dim is not None:  # built and drawn last: D's other weights are those of repa off at the same seed
            self.repa = repa_projector(net.width, repa_dim)
            _xavier_init(self.repa)

    def _init_weights(self) -> None:
        """Xavier-uniform for Linear and Conv (conv as a flattened matrix), zero biases; CLS token
        and class table N(0, 0.02^2)."""
        _xavier_init(self)
        nn.init.normal_(self.cls_token, std=EMBED_INIT_STD)
        nn.init.normal_(self.class_embed.weight, std=EMBED_INIT_STD)

    def tokens(self, x: Tensor) -> Tensor:
        """(N, 4c, H, W) -> the last block's tokens (N, 1 + T, C), CLS first, before the final
        norm (what the REPA projector reads, as in the reference)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), tokens], dim=1)
        for block in self.blocks:
            h = _maybe_checkpoint(self.grad_checkpointing, block, h, self.rope_cos, self.rope_sin)
        return h

    def class_projection(self, y: Tensor) -> Tensor:
        """Projection vectors ``cmap(embed(y))``: (N,) int64 -> (N, P).

        The MLP acts row by row, so when the batch has at least as many rows as there are classes
        it runs once on the whole table and the rows are gathered (exactly equal, far cheaper:
        D's batched step sees each class many times).
        """
        if self.class_embed.num_embeddings <= y.numel():
            # Row lookup as an embedding: its backward is 4x cheaper on CPU than indexing's.
            return F.embedding(y, self.class_map(self.class_embed.weight))
        return self.class_map(self.class_embed(y))

    def forward(self, x: Tensor, y: Tensor, projection: Tensor | None = None,
                align: int = 0) -> Tensor | tuple[Tensor, Tensor]:
        """x: (N, 4c, H, W), y: (N,) int64 -> logits (N,).

        ``projection``: ``class_projection(y)`` (N, P) computed by the caller, so that calls with
        the same labels while D's weights are fixed (the G step) run the class MLP once.
        ``align`` > 0 (needs ``repa=True``): also return the REPA projector's output on the first
        ``align`` samples' tokens before the final norm, (align, 1 + T, repa_dim), CLS first
        (inside forward, so DistributedDataParallel sees the projector used).
        Raises ValueError for ``align`` > 0 on a D built without the projector.
        """
        h = self.tokens(x)
        if projection is None:
            projection = self.class_projection(y)
        logit = (self.head(self.norm(h)[:, 0]) * projection).sum(dim=1)
        if align <= 0:
            return logit
        if self.repa is None:
            raise ValueError("align > 0 needs a discriminator built with repa=True")
        return logit, self.repa(h[:align])


# ----------------------------------------------------------------------------------------------
# Parameter kinds (for per-kind LR multipliers) and counts
# ----------------------------------------------------------------------------------------------
@functools.cache
def parameter_kinds(cfg: TrainConfig, net: Literal["g", "d"]) -> dict[str, str]:
    """Kind of every named parameter of G (``net='g'``) or D (``'d'``) for muP-style per-kind
    LRs: 'vector', 'hidden' or 'output', inferred the muP way from how its shape changes with
    width (mup's ``infshape``; Yang et al. 2022, "Tensor Programs V", Table 3, Adam column).

    The network is built on the meta device at its width C and at 2C (heads doubled, head dim
    kept). A linear map's weight (out, in) -- ``nn.Linear`` or :class:`EqualLinear` -- is
    'hidden' when both its fan-in and fan-out grow with width, 'output' (a read-out) when only its
    fan-in grows, and 'vector' when its fan-in does not grow (input layers, fixed-size MLPs such
    as D's class map and the REPA projector's inner layers). Every other tensor (biases, norm gains,
    LayerScale, embeddings, tokens, the patch-embedding convolution) is 'vector' unless two or
    more of its dimensions grow. Returns {parameter name: kind}.
    """
    base = getattr(cfg, net)
    wide = cfg.replace(**{net: NetConfig(width=2 * base.width, depth=base.depth, heads=2 * base.heads)})

    def shapes(c: TrainConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        with torch.device("meta"):
            model = build_generator(c) if net == "g" else build_discriminator(c)
        linear = {f"{name}.weight" for name, module in model.named_modules()
                  if isinstance(module, (nn.Linear, EqualLinear))}
        return {name: tuple(p.shape) for name, p in model.named_parameters()}, linear

    (narrow_shapes, linear), (wide_shapes, _) = shapes(cfg), shapes(wide)
    kinds = {}
    for name, shape in narrow_shapes.items():
        grows = [a != b for a, b in zip(shape, wide_shapes[name])]
        if name in linear:
            fan_out, fan_in = grows
            kinds[name] = "vector" if not fan_in else "hidden" if fan_out else "output"
        else:
            kinds[name] = "hidden" if sum(grows) >= 2 else "vector"
    return kinds


def parameters_by_kind(model: Generator | Discriminator, cfg: TrainConfig) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of ``model`` (built from ``cfg``) grouped by :func:`parameter_kinds`,
    in ``named_parameters`` order; every kind key is present."""
    kinds = parameter_kinds(cfg, "g" if isinstance(model, Generator) else "d")
    groups: dict[str, list[nn.Parameter]] = {kind: [] for kind in PARAM_KINDS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[kinds[name]].append(param)
    return groups


def count_parameters(model: nn.Module) -> int:
    """All parameter tensors, the fixed positional embedding included (the paper's convention)."""
    return sum(p.numel() for p in model.parameters())


def build_generator(cfg: TrainConfig) -> Generator:
    """G of a run: ``cfg.g`` with the run's latent shape, classes, z size and G settings (on the
    current default device)."""
    return Generator(cfg.g, patch=cfg.patch, latent_size=cfg.latent_size, channels=cfg.latent_channels,
                     num_classes=cfg.num_classes, z_dim=cfg.z_dim, w_avg_beta=cfg.w_avg_beta,
                     train_pos_embed=cfg.train_pos_embed, grad_checkpointing=cfg.grad_checkpointing)


def build_discriminator(cfg: TrainConfig) -> Discriminator:
    """D of a run: ``cfg.d`` with the run's latent shape, classes, projection size and the REPA
    projector when ``cfg.repa`` (on the current default device)."""
    return Discriminator(cfg.d, patch=cfg.patch, latent_size=cfg.latent_size, channels=cfg.latent_channels,
                         num_classes=cfg.num_classes, proj_dim=cfg.d_proj_dim,
                         repa_dim=cfg.repa_dim if cfg.repa else None, train_pos_embed=cfg.train_pos_embed,
                         grad_checkpointing=cfg.grad_checkpointing)


def build_models(cfg: TrainConfig, device: torch.device | str | None = None) -> tuple[Generator, Discriminator]:
    """Instantiate (G, D) for a config, G first (its draws come first from the seed);
    ``device='meta'`` builds them without memory."""
    with torch.device(device or "cpu"):
        return build_generator(cfg), build_discriminator(cfg)
