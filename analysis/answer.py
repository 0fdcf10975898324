"""The answer a sweep's report opens with (docs/ANALYSIS.md, "The answer").

Per LR rule: the verdict in one sentence with its number and interval and the reason that binds
it (a single seed before any valley detail); then the exponent the data imply for the best LR
against width and the rule that follows from it (``power<a>``, core/lr_rules.py); the LR to use
at target widths with the backtest that says how far to trust an extrapolation; and what to run
next (:class:`NextSweep`, which ``gat-sweep plot`` writes as a sweep file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from analysis.fit import Estimate
from core.units import lr_text
from core.config import SIZES
from core.lr_rules import rule_name
from analysis.transfer import PAPER_WIDTHS, LRBacktest, LRPrediction, RuleTransfer, factor_text, predict_lr

PAPER_SIZES = {net.width: f"GAT-{name}" for name, net in SIZES.items()}
"""Names of the paper's sizes by width (docs/METHOD.md §6)."""
SEEDS_FOR_ONE = 8
"""Seeds suggested after a one-seed sweep: what the simulation study finds 8 seeds decide in the
measured regime for a clear shift (docs/ANALYSIS.md)."""
MAX_SUGGESTED_SEEDS = 32
"""Most seeds a confirmation sweep asks for; beyond, a wider width range is the better buy."""


def estimate_text(e: Estimate, fmt=lr_text) -> str:
    """'2.85e-3 [2.46e-3, 3.3e-3]', or 'x (no interval)'."""
    if e.lo is None or e.hi is None:
        return f"{fmt(e.value)} (no interval)"
    return f"{fmt(e.value)} [{fmt(e.lo)}, {fmt(e.hi)}]"


@dataclass(frozen=True)
class NextSweep:
    """The sweep the report suggests running next: a sweep file with these values in place of the
    analysed sweep's (``gat-sweep plot`` writes it beside the report)."""

    rules: tuple[str, ...]
    base_lrs: tuple[float, ...]
    """Empty: the analysed sweep's base LRs."""
    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    why: str

    def to_dict(self) -> dict:
        return {"rules": list(self.rules), "base_lrs": list(self.base_lrs), "seeds": list(self.seeds),
                "widths": list(self.widths), "why": self.why}


@dataclass
class Answer:
    """The report's opening block and the values behind it."""

    lines: list[str]
    """The block as plain text lines (terminal, HTML, MLflow description)."""
    short: dict[str, str]
    """Per rule, the verdict in a few words for an MLflow tag ('does not transfer: x0.28 [x0.2, x0.39]')."""
    predictions: dict[int, LRPrediction] = field(default_factory=dict)
    """Per target width, the best actual LR the data predict (any rule's line gives the same)."""
    implied: dict | None = None
    """{'rule': 'power0.62', 'exponent': Estimate dict, 'base_lr': LR at the base width} or None."""
    backtest: LRBacktest | str | None = None
    next_sweep: NextSweep | None = None

    def to_dict(self) -> dict:
        bt = self.backtest
        return {"lines": self.lines, "short": self.short,
                "predictions": [p.to_dict() for p in self.predictions.values()], "implied_rule": self.implied,
                "backtest": bt.to_dict() if isinstance(bt, LRBacktest) else bt,
                "next_sweep": None if self.next_sweep is None else self.next_sweep.to_dict()}


def _span(res: RuleTransfer) -> str:
    widths = res.valley.widths if res.valley is not None else [o.width for o in res.optima]
    return f"from width {min(widths)} to {max(widths)}"


def binding_reason(res: RuleTransfer) -> str:
    """Why ``res``'s verdict is what it is, in plain words, the most basic reason first."""
    tol = factor_text(res.tolerance)
    if res.n_seeds < 2:
        return (f"one seed gives no interval (the bootstrap over seeds needs at least 2); {SEEDS_FOR_ONE} seeds "
                "decide a clear shift in the measured regime (docs/ANALYSIS.md)")
    if res.valley is None:
        return res.verdict.split(": ", 1)[-1]
    flat = [w for w, c in zip(res.valley.widths, res.valley.curvatures) if not c > 0]
    if flat:
        return (f"no valley at width {', '.join(map(str, flat))}: FD does not rise on both sides of the LRs "
                "tried there; widen the LR grid or train longer")
    edges = [o.width for o in res.optima if o.at_edge]
    if edges:
        return (f"the best LR at width {', '.join(map(str, edges))} lies outside the LRs its valley holds: "
                "widen the LR grid there")
    if res.shift is None or res.shift.lo is None:
        return "too few seeds locate the optimum (many resamples have no valley); run more seeds"
    if res.outcome in ("transfers", "does not transfer"):
        return f"decided at 95% against the x{tol[1:]} tolerance ({res.n_seeds} seeds)"
    if res.seeds_needed is None:
        return f"the shift lies on the {tol} tolerance itself: no number of seeds decides it; a wider width range does"
    more = (f"about {res.seeds_needed} seeds would decide" if res.seeds_needed <= 100
            else "more than 100 seeds would be needed; a wider width range is cheaper")
    return f"{res.n_seeds} seeds leave the interval across the {tol} tolerance; {more}"


def verdict_sentence(res: RuleTransfer) -> str:
    """'<rule>: <outcome>: its best base LR falls by x0.28 [x0.2, x0.39] from width 16 to 128 ...'."""
    if res.shift is None or res.outcome == "inconclusive":
        return f"{res.rule}: inconclusive: {binding_reason(res)}."
    direction = "falls" if res.shift.value < 0 else "grows"
    moved = (f"its best base LR {direction} by {factor_text(res.shift.value)} "
             f"[{factor_text(res.shift.lo)}, {factor_text(res.shift.hi)}] {_span(res)}")
    tol = factor_text(res.tolerance)
    tail = {"transfers": f"within the {tol} tolerance",
            "does not transfer": f"beyond the {tol} tolerance",
            "moves": f"so it moves; whether by more than {tol} is undecided ({binding_reason(res)})"}[res.outcome]
    return f"{res.rule}: {res.outcome}: {moved}, {tail}."


def short_verdict(res: RuleTransfer) -> str:
    """The verdict in a few words, for an MLflow tag value."""
    if res.shift is None or res.shift.lo is None:
        return f"{res.outcome} ({'one seed' if res.n_seeds < 2 else 'no interval'})"
    return f"{res.outcome}: {factor_text(res.shift.value)} [{factor_text(res.shift.lo)}, {factor_text(res.shift.hi)}]"


def _line_rule(transfer: dict[str, RuleTransfer]) -> RuleTransfer | None:
    """A rule whose fit has a line of optima with an interval (all rules fitted to the same
    trainings give the same actual-LR line), preferring ``constant``."""
    usable = [r for r in transfer.values() if r.valley is not None and math.isfinite(r.valley.b)
              and r.factor is not None and r.actual_slope is not None]
    usable.sort(key=lambda r: (r.rule != "constant", r.slope.lo is None))
    return usable[0] if usable else None


def _round_lr(value: float) -> float:
    """Two significant digits: 7.47e-3 -> 7.5e-3."""
    return float(f"{value:.2g}")


def answer(transfer: dict[str, RuleTransfer], *, target_widths: tuple[int, ...] = PAPER_WIDTHS,
           seeds: tuple[int, ...] = (), base_width: int | None = None) -> Answer:
    """The opening block of a report from its LR-transfer results.

    ``target_widths``: widths to predict the best LR at (default the paper's sizes); ``seeds``:
    the seeds the sweep ran (a confirmation sweep uses new ones); ``base_width``: the sweep's base
    width (the implied rule's base LR is the best LR there). Never raises on thin data.
    """
    lines = [verdict_sentence(r) for r in transfer.values()]
    short = {rule: short_verdict(r) for rule, r in transfer.items()}
    out = Answer(lines, short)
    line = _line_rule(transfer)
    if line is None:
        return _with_next(out, transfer, seeds, base_width, None)
    exponent = line.actual_slope
    a = round(-exponent.value, 2)
    ref = base_width or round(line.valley.w_ref)
    at_ref = predict_lr(line, ref)
    implied = {"rule": rule_name(f"power{a:g}"), "exponent": exponent.to_dict(),
               "base_lr": None if at_ref is None or at_ref.actual_lr is None else at_ref.actual_lr.value,
               "base_width": ref}
    out.implied = implied
    interval = "" if exponent.lo is None else f" [{exponent.lo:.2f}, {exponent.hi:.2f}]"
    lines.append(f"The data: the best actual LR scales as width^{exponent.value:.2f}{interval} (constant assumes "
                 f"width^0, gat width^-1): the rule that follows is {implied['rule']}, lr = base_lr x "
                 f"(base_width / width)^{a:g}" + (f", base LR {lr_text(implied['base_lr'])} at width {ref}"
                                                 if implied["base_lr"] else "") + ".")
    for width in target_widths:
        pred = predict_lr(line, width)
        if pred is not None and pred.actual_lr is not None:
            out.predictions[width] = pred
    if out.predictions:
        parts = [f"{PAPER_SIZES.get(w, f'width {w}')} ({w}, x{p.extrapolation:.3g} the widest tried): "
                 f"{estimate_text(p.actual_lr)}" for w, p in out.predictions.items()]
        lines.append("The best actual LR of G predicted at " + "; ".join(parts) + ".")
        by_rule = []
        for rule, res in transfer.items():
            preds = [predict_lr(res, w) for w in out.predictions]
            if all(p is not None for p in preds):
                by_rule.append(f"{rule} base LR " + ", ".join(lr_text(p.base_lr.value) for p in preds))
        if by_rule:
            lines.append(f"As each rule's base LR at widths {', '.join(map(str, out.predictions))}: "
                         + "; ".join(by_rule) + ".")
    out.backtest = line.backtest
    lines.append(_trust(line, out.predictions))
    return _with_next(out, transfer, seeds, base_width, implied)


def _trust(line: RuleTransfer, predictions: dict[int, LRPrediction]) -> str:
    """How far to trust an extrapolation: the backtest and the local exponents."""
    bt = line.backtest
    widest = max(p.extrapolation for p in predictions.values()) if predictions else 1.0
    if isinstance(bt, LRBacktest):
        inside = {True: "inside", False: "outside", None: "without"}[bt.covered]
        text = (f"How far to trust it: fitted on widths {'-'.join(map(str, (min(bt.fitted_widths), max(bt.fitted_widths))))}, "
                f"the line predicted width {bt.held_out}'s best base LR at {estimate_text(bt.predicted)}; measured "
                f"{estimate_text(bt.measured)}: off by x{bt.error:.2f} ({abs(bt.grid_steps):.1f} LR-grid steps), "
                f"{inside} its interval")
        text += ("; the prediction above extrapolates the line further (x%.3g), so expect an error at least "
                 "that large." % widest if widest > 1 else ".")
        if bt.covered is False:
            text += " The backtest missed: treat the predictions as a starting point for a short LR sweep at the target width."
    else:
        text = f"How far to trust it: {bt or 'no backtest: it needs 3 or more widths with a valley'}."
    bends = [f"{a}-{b}: {e.value:.2f}" + ("" if e.lo is None else f" [{e.lo:.2f}, {e.hi:.2f}]")
             for a, b, e in line.local_slopes]
    if len(bends) >= 2:
        last = line.local_slopes[-1][2]
        bent = last.lo is not None and not (last.lo <= line.slope.value <= last.hi)
        text += (f" Local exponents (base LR, {line.rule}): " + "; ".join(bends)
                 + (": the line bends at the widest step, so the fitted exponent misdescribes large widths."
                    if bent else "; no bend shown."))
    return text


def _with_next(out: Answer, transfer: dict[str, RuleTransfer], seeds: tuple[int, ...], base_width: int | None,
               implied: dict | None) -> Answer:
    """Add the suggested next sweep: the implied rule against the tested ones, on new seeds, as many
    as the verdicts need (and a wider width where only a wider range decides)."""
    results = list(transfer.values())
    if not results:
        return out
    widths = sorted({o.width for r in results for o in r.optima})
    n_seeds = max((r.n_seeds for r in results), default=0)
    needed = [r.seeds_needed for r in results if r.outcome in ("moves", "inconclusive") and r.seeds_needed]
    if n_seeds < 2:
        count, why = SEEDS_FOR_ONE, f"{SEEDS_FOR_ONE} seeds instead of one, so the verdicts get intervals"
    elif needed and min(max(needed), MAX_SUGGESTED_SEEDS) > n_seeds:
        count = min(max(needed), MAX_SUGGESTED_SEEDS)
        why = (f"{count} seeds, about what the undecided verdicts need" if max(needed) <= MAX_SUGGESTED_SEEDS else
               f"{count} seeds (the undecided verdicts need about {max(needed)}; beyond {MAX_SUGGESTED_SEEDS} a "
               "wider width range is the better buy)")
    else:
        count, why = n_seeds, f"{n_seeds} new seeds, to confirm the verdicts on seeds not yet seen"
    if any("a wider width range" in binding_reason(r) for r in results):
        wider = 2 ** math.ceil(math.log2(max(widths) * 2))
        widths = [*widths, wider]
        why += f", and width {wider}, since a wider width range decides a shift on the tolerance"
    start = max(seeds) + 1 if seeds else 0
    rules = tuple(dict.fromkeys(([implied["rule"]] if implied else []) + list(transfer)))
    base = implied["base_lr"] if implied and implied["base_lr"] else None
    base_lrs = tuple(_round_lr(base * 2.0**k) for k in (-2, -1, 0, 1, 2)) if base else ()
    if implied:
        why = f"the rule the data imply ({implied['rule']}) against {', '.join(transfer)}; " + why
    out.next_sweep = NextSweep(rules, base_lrs, tuple(range(start, start + count)), tuple(widths), why)
    return out
