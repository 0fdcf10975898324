"""Width-aware learning-rate rules: pure functions from (base LR, width) to what a network trains with.

A rule maps a sweep's ``base_lr`` (the LR at the base width ``C0``) to the LR of one network of
width ``C``: a scalar LR plus per-parameter-kind multipliers (kinds as in
``core.gan.model.parameter_kinds``, inferred from how shapes change with width as muP does:
``vector`` = embeddings, biases, norm gains, LayerScale and matrices whose fan-in does not grow
with width; ``hidden`` = matrices whose fan-in and fan-out grow with C; ``output`` = read-outs,
whose fan-in grows and fan-out does not). The parameter of kind k trains with ``lr * mult[k]``.

========== ====================== ============ ============ ============
rule        scalar LR               vector        hidden        output
========== ====================== ============ ============ ============
constant    base_lr                 1             1             1
gat         base_lr * C0 / C        1             1             1
mup         base_lr                 1             C0 / C        C0 / C
power<a>    base_lr * (C0 / C)^a    1             1             1
========== ====================== ============ ============ ============

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
* ``power<a>``: a family, one rule per decimal exponent ``a`` (``power0.62``, ``power-0.25``): one
  scalar LR for all parameters that falls as ``width^-a``, so ``power0`` gives the LRs of
  ``constant`` and ``power1`` those of ``gat``. It is the rule the LR-transfer analysis fits: when
  the best actual LR falls as ``width^-a`` (docs/ANALYSIS.md), ``power<a>`` keeps the best base LR
  in place. A name is kept as written up to the spelling of its number (:func:`rule_name`:
  ``power0.50`` is ``power0.5``, ``power1.0`` is ``power1``), since it names trials and is logged.

Invariant (tested): at C = C0 every rule returns ``base_lr`` with all multipliers 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

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
        raise ConfigError("lr.base_width is required by the width-aware LR rules (gat, mup, power<a>)")
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


def power(exponent: float) -> LRRule:
    """The rule ``power<exponent>``: ``lr = base_lr * (base_width / width) ** exponent``, all
    multipliers 1 (``power(0)`` gives :func:`constant`'s LRs, ``power(1)`` :func:`gat`'s)."""

    def rule(base_lr: float, width: int, base_width: int | None) -> NetLR:
        return NetLR(lr=base_lr * _ratio(base_lr, width, base_width) ** exponent, mult=LRMultipliers())

    return rule


LRRule = Callable[[float, int, int | None], NetLR]

RULES: dict[str, LRRule] = {"constant": constant, "gat": gat, "mup": mup}
"""The named rules (as written in sweep files and logged as ``sweep.lr_rule``) -> rule; beside
them, every name matching :data:`POWER_PATTERN` is a rule (:func:`power`)."""

WIDTH_AWARE_RULES = frozenset({"gat", "mup"})
"""The named rules that need a base width (``lr.base_width`` in a sweep file); so does every
``power<a>`` (:func:`needs_base_width`)."""

POWER_PATTERN = r"^power-?[0-9]+(\.[0-9]+)?$"
"""The names of the ``power<a>`` rules: ``power``, an optional minus sign, a decimal number
(``power0.5``, ``power1``, ``power-0.25``; no exponent notation, no leading dot). Also the JSON
schema's pattern for them (``gat-sweep schema``)."""

RULE_FORMS = ("constant, gat, mup, or power<a> with a decimal exponent a, lr = base_lr * "
              "(base_width / width)^a (e.g. power0.5, power1, power-0.25)")
"""What a rule name may be, for error messages."""


def rule_name(rule: str) -> str:
    """The canonical spelling of an LR rule's name: a named rule as it is; ``power<a>`` with its
    number written without trailing zeros, leading zeros or a negative zero (``power0.50`` ->
    ``power0.5``, ``power1.0`` -> ``power1``, ``power-0`` -> ``power0``), so one rule has one name
    in trial names and in ``sweep.lr_rule``. Raises ConfigError for any other name."""
    if rule in RULES:
        return rule
    if not re.match(POWER_PATTERN, rule):
        raise ConfigError(f"unknown LR rule {rule!r}; choose {RULE_FORMS}")
    exponent = Decimal(rule.removeprefix("power")).normalize()
    return f"power{exponent.copy_abs() if exponent.is_zero() else exponent:f}"


def needs_base_width(rule: str) -> bool:
    """True for the rules that need ``lr.base_width``: gat, mup and every ``power<a>``."""
    return rule in WIDTH_AWARE_RULES or rule not in RULES


def apply_rule(rule: str, base_lr: float, width: int, base_width: int | None) -> NetLR:
    """LR of one network of ``width`` under ``rule`` (a named rule or ``power<a>``); raises
    ConfigError for an unknown rule, or a width-aware rule without ``base_width``."""
    name = rule_name(rule)
    if name in RULES:
        return RULES[name](base_lr, width, base_width)
    return power(float(name.removeprefix("power")))(base_lr, width, base_width)
