"""How much device memory a training run needs at least, and whether a device has it.

A run too large for its device used to fail only on allocation, inside a trial that was then
retried; :func:`check_memory` refuses it before anything is built, with the estimate. The
estimate is a lower bound, so that no run that fits is refused:

* parameters: G, D and the EMA copy of G, 4 bytes each (fp32 master weights, also under bf16);
* optimiser states: a gradient and AdamW's two moments per parameter of G and D, 4 bytes each;
* activations kept for the backward pass: per sample, token and channel of each block, at least
  :data:`ACTIVATION_VALUES` values (one with ``grad_checkpointing``), of 4 bytes (2 under bf16),
  for G's pass over the batch and D's passes over reals and fakes at every MNG level (the D step;
  docs/METHOD.md §3-§5). Measured with ``saved_tensors_hooks`` on CPU at widths 64 and 128, one
  iteration saves 4-5 times this (40 bytes per such value unit over all of its passes), so the
  bound leaves room for what it does not count: attention's own buffers, the finite-difference
  R1/R2 twins, the class projection and, with ``repa``, the frozen DINOv2 encoder.

Torch is imported only to ask CUDA for its memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from core.config import MNG_LEVELS, ConfigError, TrainConfig

ACTIVATION_VALUES = 2
"""Values kept for backward per sample, token and channel of a block, at least (without
gradient checkpointing; with it, one: the block's input)."""
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """The least memory, in bytes, that a run needs on its device (see the module docstring)."""

    parameters: int
    optimiser: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.optimiser + self.activations

    def describe(self) -> str:
        """``12.3 GiB (parameters 1.2 GiB, optimiser states 3.4 GiB, activations 7.7 GiB)``."""
        return (f"{gib(self.total)} (parameters {gib(self.parameters)}, optimiser states "
                f"{gib(self.optimiser)}, activations {gib(self.activations)})")


def gib(n_bytes: float) -> str:
    """Bytes in GiB, 3 significant digits (``24 GiB``, ``1.5e+06 GiB`` for absurd sizes)."""
    return f"{n_bytes / GIB:.3g} GiB"


def estimate_memory(cfg: TrainConfig, g_params: int, d_params: int, batch: int) -> MemoryEstimate:
    """The least memory one process of a run needs: ``g_params``/``d_params`` parameters
    (:func:`core.gan.flops.parameter_counts`) and ``batch`` samples per iteration on this process (the
    global batch divided by the DDP workers)."""
    element = 2 if cfg.precision == "bf16" else 4
    values = 1 if cfg.grad_checkpointing else ACTIVATION_VALUES
    d_passes = 2 * MNG_LEVELS * batch  # reals and fakes at every noise level
    per_value = cfg.tokens * (cfg.g.width * cfg.g.depth * batch + cfg.d.width * cfg.d.depth * d_passes)
    return MemoryEstimate(parameters=4 * (2 * g_params + d_params), optimiser=12 * (g_params + d_params),
                          activations=element * values * per_value)


def device_memory(device: str) -> int | None:
    """Bytes of memory of ``device`` ('cpu': this machine's RAM; 'cuda' or 'cuda:N': that GPU's),
    or None for a CUDA device this machine does not have."""
    if device == "cpu":
        return psutil.virtual_memory().total
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory


def check_memory(cfg: TrainConfig, g_params: int, d_params: int, batch: int, available: int, where: str) -> None:
    """Raise ConfigError naming the run and the estimate when :func:`estimate_memory` exceeds
    ``available`` bytes (``where``: the memory's name in the message, e.g. "this machine's 24 GiB
    of memory")."""
    need = estimate_memory(cfg, g_params, d_params, batch)
    if need.total > available:
        raise ConfigError(
            f"{cfg.name}: G {g_params:,} and D {d_params:,} parameters at batch {batch} need at least "
            f"{need.describe()}, more than {where}; choose smaller widths, depths or a smaller batch per "
            "device (grad_checkpointing and precision bf16 need less)")
