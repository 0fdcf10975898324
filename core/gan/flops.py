"""Training FLOP accounting, measured with ``torch.utils.flop_counter.FlopCounterMode``.

One training iteration (the D step with R1/R2 and the G step, exactly the code the trainer runs)
is executed under the flop counter on the ``meta`` device: no memory, no arithmetic, so even
GAT-XL/2 at batch 512 is counted in about a second. Matmul-like ops (linear, conv, bmm, attention)
are counted; element-wise work (norms, activations, augmentation, the optimiser and EMA) is not,
which is the usual convention of scaling-law papers (Kaplan et al. 2020, §2.1).

On a real CPU tensor PyTorch's counter sees 0 FLOPs for scaled-dot-product attention, because
the CPU kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` has no registered formula;
:data:`CPU_ATTENTION_FLOPS` maps it (and its backward) to the standard formulas so that counts on
CPU tensors equal counts on meta tensors (tested).

Counts are kept on disk, one JSON file per architecture and batch under ``<cache>/flops/``
(``core.cache``), keyed also by the torch version and the source of the ``core`` package, so a
changed model or training step is counted again. A second dry run of a sweep then needs no torch
at all: this module imports torch only inside the functions that count.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from core.cache import atomic_write_bytes, cache_root, content_hash
from core.config import COMPUTE_FIELDS, TrainConfig

if TYPE_CHECKING:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

FLOPS_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of matmul/conv/attention ops, measured with torch "
    "FlopCounterMode over one full training iteration (D step incl. R1/R2 on real and fake, "
    "G step), forward + backward, G + D (with repa: D's projector, not the frozen DINOv2 encoder); "
    "optimiser, EMA, norms and augmentation not counted"
)


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    from torch.utils.flop_counter import sdpa_flop_count

    # Model FLOPs: the backward of the two attention matmuls is 2x their forward. PyTorch's own
    # flash-backward formula also counts the kernel's recomputation of the scores (5 matmuls).
    return 2 * sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU scaled-dot-product attention (a custom
    mapping of ``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cpu_attention = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
    }
    return FlopCounterMode(display=False, custom_mapping=cpu_attention)


def measure_iteration_flops(cfg: TrainConfig, device: torch.device | str = "meta") -> int:
    """FLOPs of one training iteration (convention: :data:`FLOPS_CONVENTION`) at ``cfg.batch``.

    Runs one :meth:`core.gan.step.GATStep.iteration` under the counter. Raises whatever
    the step raises for an impossible config (the config itself is validated on construction).
    """
    import torch

    from core.gan.model import build_models

    cfg = cfg.replace(grad_checkpointing=False, compile=False)
    device = torch.device(device)
    G, D = build_models(cfg, device)
    step = _counting_step_class()(cfg, G, D, device)
    n, c, h = cfg.batch, cfg.latent_channels, cfg.latent_size
    x = torch.randn(n, c, h, h, device=device)
    y = torch.zeros(n, dtype=torch.long, device=device)
    z = torch.randn(n, cfg.z_dim, device=device)
    with flop_counter() as counter:
        step.iteration(x, y, z)
    return int(counter.get_total_flops())


@functools.cache
def _counting_step_class() -> type:
    """:class:`core.gan.step.GATStep` as FLOP counting runs it: the per-class w average is not
    updated, and gradient clipping and the optimiser steps are skipped (they hold no counted
    matmul FLOPs, and on the meta device the per-tensor optimiser loop cost seconds for large
    models); with ``cfg.repa`` random targets of the frozen encoder's output shape stand in for
    it (its forward is not training compute of G or D). Built on first use: the step imports torch."""
    import torch

    from core.gan.step import GATStep  # the step imports this module's siblings only

    class CountingStep(GATStep):
        def _check_encoder(self) -> None:
            pass  # random targets stand in for the encoder

        def _repa_targets(self, images, aug, n):  # type: ignore[no-untyped-def]
            cfg, tokens = self.cfg, (self.cfg.latent_size // self.cfg.patch) ** 2
            return (torch.randn(n, cfg.repa_dim, device=self.device),
                    torch.randn(n, tokens, cfg.repa_dim, device=self.device))

        def _clip_and_step(self, opt):  # type: ignore[no-untyped-def]
            return torch.zeros((), device=self.device)

        updates_w_avg = False

    return CountingStep


_MEASURED: dict[TrainConfig, int] = {}

SMALL_MODEL_PARAMS = 20_000_000
"""Below this many G + D parameters the count runs on real CPU tensors (about one training
iteration of time); above it on the meta device (no memory, no arithmetic, but a fixed cost of a
few seconds per iteration's ops)."""


@dataclass(frozen=True)
class ArchitectureCount:
    """What :func:`count_architecture` measures for one architecture and batch."""

    g_params: int
    d_params: int
    """Parameter counts of G and D (all tensors, ``core.gan.model.count_parameters``)."""
    flops_per_iter: int
    """FLOPs of one training iteration (:data:`FLOPS_CONVENTION`)."""


def train_flops_per_iter(cfg: TrainConfig) -> int:
    """FLOPs of one training iteration at ``cfg.batch`` (convention: :data:`FLOPS_CONVENTION`).

    Measured at the real batch size (D's class projection costs the same for any batch that
    holds more rows than classes, so FLOPs are not exactly linear in the batch). Kept per
    architecture and batch for the life of the process and on disk (:func:`count_architecture`).
    """
    key = _architecture(cfg)
    if key not in _MEASURED:
        _MEASURED[key] = count_architecture(key).flops_per_iter
    return _MEASURED[key]


_PARAMETERS: dict[TrainConfig, tuple[int, int]] = {}


def parameter_counts(cfg: TrainConfig) -> tuple[int, int]:
    """(G, D) parameter counts: from the disk entry of :func:`count_architecture` when there is
    one (no torch import), else by building both models on the meta device (no memory); kept per
    architecture for the life of the process."""
    key = _architecture(cfg)
    if key not in _PARAMETERS:
        cached = _cached_count(key)
        if cached is not None:
            _PARAMETERS[key] = cached.g_params, cached.d_params
        else:
            from core.gan.model import build_models, count_parameters

            G, D = build_models(key, "meta")
            _PARAMETERS[key] = count_parameters(G), count_parameters(D)
    return _PARAMETERS[key]


def count_architecture(cfg: TrainConfig) -> ArchitectureCount:
    """Parameter counts and FLOPs per iteration of ``cfg``'s architecture and batch, read from
    ``<cache>/flops/`` if this code and torch version counted it before, else measured (small
    models on real CPU tensors, others on the meta device; :data:`SMALL_MODEL_PARAMS`) and
    written there atomically. A cache entry that cannot be read is measured again."""
    key = _architecture(cfg)
    cached = _cached_count(key)
    if cached is not None:
        return cached
    from core.gan.model import build_models, count_parameters

    G, D = build_models(key, "meta")
    g_params, d_params = count_parameters(G), count_parameters(D)
    small = g_params + d_params < SMALL_MODEL_PARAMS
    count = ArchitectureCount(g_params, d_params, measure_iteration_flops(key, "cpu" if small else "meta"))
    atomic_write_bytes(_cache_path(key), json.dumps(asdict(count)).encode())
    return count


def _cached_count(key: TrainConfig) -> ArchitectureCount | None:
    """The disk entry for an architecture key, or None if there is none or it is unreadable."""
    try:
        return ArchitectureCount(**json.loads(_cache_path(key).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _cache_path(key: TrainConfig) -> Path:
    """``<cache>/flops/<hash>.json``: the hash covers the architecture key, the torch version and
    the ``core`` package's source."""
    return cache_root() / "flops" / f"{content_hash(key.to_dict(), version('torch'), _core_source_hash())}.json"


@functools.cache
def _core_source_hash() -> str:
    """Hash of every ``.py`` file of the ``core`` package: the code that builds and steps the models
    being counted."""
    files = sorted(Path(__file__).parents[1].rglob("*.py"))
    return content_hash(*(f.read_bytes() for f in files))


def _architecture(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every field outside :data:`core.config.COMPUTE_FIELDS` at its default: the
    measurement's key, so that configs differing only in LRs, seeds or cadence (a learning-rate
    or muP sweep) share one measurement."""
    defaults = TrainConfig()
    return cfg.replace(**{f.name: getattr(defaults, f.name) for f in fields(TrainConfig)
                          if f.name not in COMPUTE_FIELDS})
