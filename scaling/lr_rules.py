"""Width-aware learning-rate rules: pure functions from (base LR, width) to what a network trains with.

A rule maps a sweep's ``base_lr`` (the LR at the base width ``C0``) to the LR of one network of
width ``C``: a scalar LR plus per-parameter-kind multipliers (kinds as in
``core.model.parameter_kinds``, inferred from how shapes change with width as muP does:
``vector`` = embeddings, biases, norm gains, LayerScale and matrices whose fan-in does not grow
with width; ``hidden`` = matrices whose fan-in and fan-out grow with C; ``output`` = read-outs,
whose fan-in grows and fan-out does not). The parameter of kind k trains with ``lr * mult[k]``.

======== ====================== ============ ============ ============
rule      scalar LR               vector        hidden        output
======== ====================== ============ ============ ============
constant  base_lr                 1             1             1
gat       base_lr * C0 / C        1             1             1
mup       base_lr                 1             C0 / C        C0 / C
======== ====================== ============ ============ ============

* ``constant``: standard parametrisation, the same LR at every width.
* ``gat``: the paper's rule (Hyun et al. 2025, "Scalable GANs with Transformers"; see
  docs/METHOD.md §5): one scalar for all parameters of a network, inversely proportional to its
  width, with C0 = 768 (GAT-B) in the paper. Generator and discriminator each use their own width.
  At base_lr 2e-4: S (384) 4e-4, B (768) 2e-4, L (1024) 1.5e-4, XL (1152) 1.333e-4.
* ``mup``: the Adam column of muP (Yang et al. 2022, "Tensor Programs V", Table 3): input weights
  and all biases keep the base LR, hidden and output weights scale as 1/fan_in, i.e. C0/C relative
  to the base width. Only the learning rates change; muP's initialisation (output weights with
  variance 1/fan_in^2, or an equivalent 1/width output multiplier) is not applied, so this is a
  muP-style per-kind rule, not full muP.

Invariant (tested): at C = C0 every rule returns ``base_lr`` with all multipliers 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.config import ConfigError, LRMultipliers


@dataclass(frozen=True)
class NetLR:
    """What one network (G or D) trains with: parameter of kind k gets ``lr * mult.<k>``."""

    lr: float
    mult: LRMultipliers


def _check_lr(base_lr: float) -> None:
    if not base_lr > 0:
        raise ConfigError(f"base learning rate must be positive, got {base_lr}")


def _ratio(base_lr: float, width: int, base_width: int | None) -> float:
    """Validate the arguments of a width-aware rule and return the width ratio C0 / C.

    Raises ConfigError for a non-positive LR or width, or a missing base width."""
    _check_lr(base_lr)
    if base_width is None:
        raise ConfigError("lr.base_width is required by the width-aware LR rules (gat, mup)")
    if width <= 0 or base_width <= 0:
        raise ConfigError(f"width and base_width must be positive, got {width} and {base_width}")
    return base_width / width


def constant(base_lr: float, width: int, base_width: int | None) -> NetLR:
    """Standard parametrisation: ``lr = base_lr`` at every width, all multipliers 1 (``base_width``
    unused)."""
    _check_lr(base_lr)
    return NetLR(lr=base_lr, mult=LRMultipliers())


def gat(base_lr: float, width: int, base_width: int | None) -> NetLR:
    """The paper's width-aware rule ``lr = base_lr * base_width / width`` (docs/METHOD.md §5)."""
    return NetLR(lr=base_lr * _ratio(base_lr, width, base_width), mult=LRMultipliers())


def mup(base_lr: float, width: int, base_width: int | None) -> NetLR:
    """muP for Adam (Tensor Programs V, Table 3): hidden and output matrices get ``base_width / width``,
    vectors and width-independent fan-in matrices keep ``base_lr``."""
    ratio = _ratio(base_lr, width, base_width)
    return NetLR(lr=base_lr, mult=LRMultipliers(vector=1.0, hidden=ratio, output=ratio))


LRRule = Callable[[float, int, int | None], NetLR]

RULES: dict[str, LRRule] = {"constant": constant, "gat": gat, "mup": mup}
"""Rule name (as written in sweep files and logged as ``sweep.lr_rule``) -> rule."""

WIDTH_AWARE_RULES = frozenset({"gat", "mup"})
"""The rules that need a base width (``lr.base_width`` in a sweep file)."""


def apply_rule(rule: str, base_lr: float, width: int, base_width: int | None) -> NetLR:
    """LR of one network of ``width`` under ``rule``; raises ConfigError for an unknown rule, or a
    width-aware rule without ``base_width``."""
    if rule not in RULES:
        raise ConfigError(f"unknown LR rule {rule!r}; choose one of {', '.join(RULES)}")
    return RULES[rule](base_lr, width, base_width)
