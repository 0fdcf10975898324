"""How the report writes its numbers: FD as whole numbers, LRs in short scientific notation."""

from __future__ import annotations

import math


def fd_text(value: float | None) -> str:
    """An FD/FID for people: a whole number with thousands separators (1285.4 -> '1,285'); below
    10, two decimals (FIDs of good models: 3.52); '-' for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"


def lr_text(value: float) -> str:
    """An LR for people: 3 significant digits in scientific notation, 0.00285 -> '2.85e-3'."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
