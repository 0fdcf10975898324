"""What a run records, in one place: metric keys, MLflow tag names, statuses, the files of a run
directory, and the run's result record (``result.json``).

Torch-free, so that the trainer (``core``), the sweep driver and tracking (``scaling``) and the
analysis (``analysis``, which never imports torch) read and write the same names. docs/TRACKING.md
lists what each key means; a test checks that no module outside this one spells a metric key or
a tag name as a string literal.
"""

from __future__ import annotations

import math

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cache import atomic_write_bytes, json_text

# ---- metric keys (logged per iteration step; docs/TRACKING.md "Metrics") ----------------------
LOSS_D, LOSS_G, LOSS_REPA = "loss/D", "loss/G", "loss/repa"
"""RpGAN losses of the D and G steps and the DINOv2 alignment loss (repa only)."""
REG_R1, REG_R2 = "reg/r1", "reg/r2"
"""R1 (reals) and R2 (fakes) penalties before the gamma / 2 factor."""
D_REAL, D_FAKE = "diag/d_real", "diag/d_fake"
"""Mean D logit on reals and on fakes in the D step."""
GRAD_NORM_D, GRAD_NORM_G = "diag/grad_norm_D", "diag/grad_norm_G"
"""Gradient norms before clipping."""
G_UPDATE_REL, EARLY_SKIP_REL = "diag/g_update_rel", "diag/early_skip_rel"
"""Failure-mode diagnostics of G (core/gan/diagnostics.py)."""
ITER, KIMG, TRAIN_FLOPS = "progress/iter", "progress/kimg", "compute/train_flops"
"""Iterations and thousands of real images done; cumulative training FLOPs."""
SEC_PER_KIMG, EVAL_SECONDS = "time/sec_per_kimg", "time/eval_s"
"""Training seconds per kimg (evaluation excluded) and seconds of one evaluation."""
TIME_PREFIX = "time/"
"""Prefix of the timing keys: the values that differ between two runs of the same training."""
EVAL_PREFIX = "eval/"
FD_PREFIXES = ("eval/fd", "eval/fid")
"""Prefixes of a Frechet-distance key: ``eval/fd_<extractor>_<n>`` (a domain classifier's feature
space) or ``eval/fid<n>`` (Inception)."""
BEST_PREFIX, BEST_STEP = "best/", "best/step"
"""``best/<metric>``: the lowest single FD/FID evaluation so far (the one ``best.pt`` holds),
``<metric>`` being the FD key without ``eval/``; ``best/step``: its iteration (MLflow only)."""
FINAL_PREFIX = "final/"
"""``final/<metric>``: the run's final FD/FID so far (:func:`final_fd` of its evaluations)."""
FINAL_EVALS = 3
"""Evaluations whose geometric mean is a run's final FD: one evaluation swings by ~30% between
neighbouring checkpoints, the mean of three is steadier and still describes the end of training."""


def final_fd(values) -> float:
    """A run's final FD: the geometric mean of its last :data:`FINAL_EVALS` evaluations (fewer if
    it has fewer), the quantity every "best" of gat-sweep means (the LR-transfer score, the best
    trial of a size, ``final/<metric>``). inf when one of them is non-finite or not positive (a
    blow-up), nan when there is none. ``values``: FD/FID per evaluation, oldest first."""
    last = [float(v) for v in values][-FINAL_EVALS:]
    if not last:
        return math.nan
    if not all(math.isfinite(v) and v > 0 for v in last):
        return math.inf
    return math.exp(sum(math.log(v) for v in last) / len(last))


def final_key(fd_key: str) -> str:
    """The MLflow key of the final FD of an FD/FID key (``final/fd_digits_500``)."""
    return FINAL_PREFIX + fd_key.removeprefix(EVAL_PREFIX)


# ---- dotted params beside the flattened TrainConfig (docs/TRACKING.md "Child run") ------------
METRIC_KEY_PARAM = "eval.metric_key"
"""Param holding the run's FD/FID metric key."""
SIZE_PARAM, LR_RULE_PARAM, BASE_LR_PARAM, BASE_WIDTH_PARAM = (
    "sweep.size", "sweep.lr_rule", "sweep.base_lr", "sweep.base_width")
"""A sweep trial's coordinates: size (``w<width>-d<depth>``), LR rule, base LR, base width."""
G_PARAMS_PARAM, D_PARAMS_PARAM = "model.g_params", "model.d_params"
"""Parameter counts of G and D."""
FLOPS_PER_ITER_PARAM, FLOPS_CONVENTION_PARAM = "compute.flops_per_iter", "compute.flops_convention"
"""Training FLOPs of one iteration, and how they are counted (``core.gan.flops.FLOPS_CONVENTION``)."""
EXTRACTOR_PARAM, EVAL_SAMPLES_PARAM, REFERENCE_PARAM = "eval.extractor", "eval.num_samples", "eval.reference"
EVAL_EMA_PARAM, TRUNCATION_PARAM, CLASSIFIER_ACCURACY_PARAM = (
    "eval.ema", "eval.truncation_psi", "eval.classifier_heldout_accuracy")
"""How a run is evaluated: feature extractor (and its weights), samples, reference statistics,
EMA generator, truncation, the domain classifier's held-out accuracy."""
G_WIDTH_PARAM, G_DEPTH_PARAM, D_WIDTH_PARAM, D_DEPTH_PARAM = "g.width", "g.depth", "d.width", "d.depth"
"""Flattened TrainConfig keys (``core.config.flatten``) that the analysis and the runs view read."""
DOTTED_PARAMS = (METRIC_KEY_PARAM, SIZE_PARAM, LR_RULE_PARAM, BASE_LR_PARAM, BASE_WIDTH_PARAM, G_PARAMS_PARAM,
                 D_PARAMS_PARAM, FLOPS_PER_ITER_PARAM, FLOPS_CONVENTION_PARAM, EXTRACTOR_PARAM, EVAL_SAMPLES_PARAM,
                 REFERENCE_PARAM, EVAL_EMA_PARAM, TRUNCATION_PARAM, CLASSIFIER_ACCURACY_PARAM, G_WIDTH_PARAM,
                 G_DEPTH_PARAM, D_WIDTH_PARAM, D_DEPTH_PARAM)
"""Every dotted param key gat-sweep logs or reads (a test checks that no other module spells one)."""

# ---- MLflow tags -------------------------------------------------------------------------------
TAG_ROLE, TAG_SWEEP, TAG_TRIAL = "gat_sweep.role", "gat_sweep.sweep", "gat_sweep.trial"
"""Role ('parent' or 'trial'), sweep name and trial name of a run."""
TAG_STATUS, TAG_SPEC_HASH, TAG_SAME_AS = "gat_sweep.status", "gat_sweep.spec_hash", "gat_sweep.same_as"
"""A child run's status (:data:`STATUSES`); the sweep file's hash (parent); for a copied trial,
the trial whose identical training it repeats (its metrics are that training's)."""
TAG_ERROR = "gat_sweep.error"
TAG_PREFIX = "gat_sweep."
RUNS_VIEW = "gat-sweep"
"""Name of the runs-page view each sweep's experiment holds (MLflow UI's shared view state, the
experiment tag :data:`RUNS_VIEW_TAG`): the runs sorted by final FD with the key columns."""
RUNS_VIEW_TAG = "mlflow.sharedViewState." + RUNS_VIEW


def fit_tag(model: str) -> str:
    """Parent-run tag of a compute fit's outcome (``gat_sweep.fit.<model>``: 'ok' or why not)."""
    return f"{TAG_PREFIX}fit.{model}"


def lr_transfer_tag(rule: str) -> str:
    """Parent-run tag of an LR rule's transfer verdict (``gat_sweep.lr_transfer.<rule>``)."""
    return f"{TAG_PREFIX}lr_transfer.{rule}"


# ---- statuses ----------------------------------------------------------------------------------
RUNNING, FINISHED, DIVERGED, FAILED = "running", "finished", "diverged", "failed"
STATUSES = (RUNNING, FINISHED, DIVERGED, FAILED)
"""Values of the ``gat_sweep.status`` tag of a child run; ``result.json`` holds FINISHED or DIVERGED."""
EXCLUDED_STATUSES = (DIVERGED, FAILED)
"""Trials whose evaluations are never fitted: their numbers near the failure are not trustworthy."""


# ---- analysis defaults shared with the command line -------------------------------------------
TRANSFER_TOLERANCE = 2.0
"""Default LR-transfer tolerance: the largest factor the best LR may move by over a sweep's widths
and still "transfer" (docs/ANALYSIS.md); ``gat-sweep plot --tolerance`` and ``analysis.transfer``
read it, and a report logs the one it used as its natural log, ``lr_transfer_tolerance_log``.
"""


# ---- files of a run directory (ARCHITECTURE.md "A run directory describes itself") -----------
CONFIG_FILE, STATS_FILE, RESULT_FILE = "config.json", "stats.jsonl", "result.json"


def count_label(n: int) -> str:
    """Sample count as written in metric keys: 1000 -> '1k', 50000 -> '50k', 1500 -> '1500'."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def eval_keys(extractor: str | None, count: str) -> dict[str, str]:
    """The evaluation metric keys of one extractor and sample-count label: {'fd', 'kid',
    'precision', 'recall'} -> key. ``extractor`` None means Inception (``eval/fid5k``,
    ``eval/kid5k``, ...); a name such as 'digits' gives ``eval/fd_digits_1k``, ``eval/kid_digits_1k``."""
    suffix = count if extractor is None else f"_{extractor}_{count}"
    keys = {name: f"{EVAL_PREFIX}{name}{suffix}" for name in ("kid", "precision", "recall")}
    keys["fd"] = f"{EVAL_PREFIX}{'fid' if extractor is None else 'fd'}{suffix}"
    return keys


def is_fd_key(key: str) -> bool:
    """True for a Frechet-distance metric key (FD in any feature space, or FID)."""
    return key.startswith(FD_PREFIXES)


def quality_keys(fd_key: str) -> tuple[str, str]:
    """The precision and recall keys logged beside an FD/FID key: ``eval/fd_digits_500`` ->
    (``eval/precision_digits_500``, ``eval/recall_digits_500``); ``eval/fid5k`` ->
    (``eval/precision5k``, ``eval/recall5k``)."""
    prefix = FD_PREFIXES[1] if fd_key.startswith(FD_PREFIXES[1]) else FD_PREFIXES[0]
    suffix = fd_key.removeprefix(prefix)
    return f"{EVAL_PREFIX}precision{suffix}", f"{EVAL_PREFIX}recall{suffix}"


def best_key(fd_key: str) -> str:
    """The MLflow key of the best value so far of an FD/FID key (``best/fd_digits_500``)."""
    return BEST_PREFIX + fd_key.removeprefix(EVAL_PREFIX)


def is_progress_key(key: str) -> bool:
    """True for the keys of evaluations and losses, what a one-line run summary shows."""
    return key.startswith((EVAL_PREFIX, "loss/"))


@dataclass(frozen=True)
class RunResult:
    """How a run ended: what ``result.json`` of its run directory holds."""

    status: str
    """FINISHED or DIVERGED."""
    iterations: int
    kimg: float
    metrics: dict[str, float]
    """Last logged value of every metric."""
    run_dir: Path
    reason: str | None = None
    """Why the run diverged (None when it finished)."""
    best: dict[str, Any] | None = None
    """The best evaluation: {'value': FD/FID or None when nothing was evaluated, 'iteration'}."""

    def is_done(self, iterations: int) -> bool:
        """True if a run asked for ``iterations`` has nothing left to do: it diverged, or it
        finished at least that many iterations (a longer budget continues a finished run)."""
        return self.status == DIVERGED or self.iterations >= iterations

    def save(self) -> None:
        """Write ``result.json`` atomically (temp file + rename) into :attr:`run_dir`."""
        record = {"status": self.status, "reason": self.reason, "iterations": self.iterations,
                  "kimg": self.kimg, "metrics": self.metrics, "best": self.best}
        atomic_write_bytes(self.run_dir / RESULT_FILE, json_text(record, indent=2).encode())

    @classmethod
    def load(cls, run_dir: Path) -> RunResult | None:
        """The result of the run in ``run_dir``, or None if it has not ended (no ``result.json``)."""
        path = Path(run_dir) / RESULT_FILE
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        return cls(record["status"], record["iterations"], record["kimg"], record["metrics"], Path(run_dir),
                   record.get("reason"), record.get("best"))
