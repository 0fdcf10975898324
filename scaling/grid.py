"""Expand a :class:`~scaling.spec.SweepSpec` into trials, each a complete TrainConfig.

The grid is the cross product (generator shape x discriminator shape x patch x LR rule x base LR
x seed), in that nesting order. Each trial's learning rates come from ``core.lr_rules``
(G and D by their own widths). Trial names are unique, file-system safe and readable, e.g.
``w64-d4-p2_gat_lr0.001_s0``; they name the run directory, the Ray Tune trial and the sweep's
state, and are the ``gat_sweep.trial`` tag of the MLflow run. The MLflow run's name is the trial's
:attr:`Trial.label` (``gat 1e-3 w64-d4 s0 p2``): what tells trials apart comes first.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.config import SIZES, ConfigError, NetConfig, TrainConfig, flatten
from core.gan.flops import parameter_counts, train_flops_per_iter
from core.memory import check_memory, device_memory, gib
from core.records import BASE_LR_PARAM, BASE_WIDTH_PARAM, LR_RULE_PARAM, SIZE_PARAM, RunResult
from core.units import lr_text
from core.lr_rules import apply_rule
from scaling.spec import SweepFileError, SweepSpec, format_errors


@dataclass(frozen=True)
class Trial:
    """One grid point: its config plus the sweep coordinates logged beside it."""

    name: str
    config: TrainConfig
    size: str
    """Model label: a named size ('S') or 'w64-d4'; 'G+D' labels when D has its own grid."""
    lr_rule: str
    base_lr: float
    base_width: int | None
    """None when the sweep's rules do not use one (constant only)."""

    @property
    def label(self) -> str:
        """The trial as the MLflow UI names its run: LR rule, base LR, model size, seed, then patch
        (``constant 1.6e-2 w64-d4 s0 p2``), so that the start of the name, which the UI's runs table
        shows, tells the trials of a sweep apart. As unique as :attr:`name` (both give base LRs to
        3 significant digits)."""
        return f"{self.lr_rule} {lr_text(self.base_lr)} {self.size} s{self.config.seed} p{self.config.patch}"

    def sweep_params(self) -> dict[str, str | float | int]:
        """The ``sweep.*`` params of docs/TRACKING.md (``sweep.base_width`` only when set)."""
        params: dict[str, str | float | int] = {
            SIZE_PARAM: self.size, LR_RULE_PARAM: self.lr_rule, BASE_LR_PARAM: self.base_lr}
        if self.base_width is not None:
            params[BASE_WIDTH_PARAM] = self.base_width
        return params


def expand(spec: SweepSpec) -> list[Trial]:
    """All trials of a sweep, in grid order.

    Raises core.config.ConfigError (message prefixed with the trial name) if a grid point is an
    impossible TrainConfig.
    """
    base = spec.base_config()
    g_shapes = spec.model.shapes()
    d_shapes = spec.model.discriminator.shapes() if spec.model.discriminator else [None]
    trials = []
    for g_shape, d_shape, patch, rule, base_lr, seed in itertools.product(
        g_shapes, d_shapes, spec.model.patch, spec.lr.rules, spec.lr.base_lrs, spec.seeds
    ):
        g_label, g = g_shape[0], NetConfig(*g_shape[1:])
        d_label, d = (g_label, g) if d_shape is None else (d_shape[0], NetConfig(*d_shape[1:]))
        size = g_label if d_shape is None else f"G{g_label}+D{d_label}"
        name = f"{size}-p{patch}_{rule}_lr{base_lr:.3g}_s{seed}"
        lr_g = apply_rule(rule, base_lr, g.width, spec.lr.base_width)
        lr_d = apply_rule(rule, base_lr, d.width, spec.lr.base_width)
        try:
            config = base.replace(name=name, g=g, d=d, patch=patch, seed=seed, lr_g=lr_g.lr,
                                  lr_d=lr_d.lr, lr_mult_g=lr_g.mult, lr_mult_d=lr_d.mult)
        except ValueError as err:
            raise type(err)(f"trial {name}: {err}") from err
        trials.append(Trial(name, config, size, rule, base_lr, spec.lr.base_width))
    names = [t.name for t in trials]
    if len(set(names)) < len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"trial names collide: {', '.join(duplicates)} (base LRs that differ "
                          "only after 3 significant digits, or repeated grid values)")
    return trials


COORD_CHECK_STEPS, COORD_CHECK_SEEDS, COORD_CHECK_BATCH = 5, 2, 16
"""The coordinate check's defaults: optimiser steps, seeds and batch per run (``gat-sweep
coord-check``; widths 16-256 under three rules in under a minute on 2 CPU cores, docs/ANALYSIS.md).
Adam's first steps move each weight by about its LR whatever the batch, so a small batch measures
the update sizes of a trial's larger one at a fraction of the cost."""


def coord_check_trials(spec: SweepSpec, widths: list[int] | None = None, base_lr: float | None = None,
                       seeds: int = COORD_CHECK_SEEDS, batch: int | None = None) -> list[Trial]:
    """The runs of a coordinate check of ``spec`` (``core.gan.coord_check``): the trials of the sweep
    narrowed to one depth, one patch, one base LR and seeds ``0 .. seeds - 1``, every LR rule of the
    sweep, every width of ``widths``, with D the shape of G (the paper's setting; a sweep's own D
    grid is dropped). All are :func:`expand`'s trials of that narrowed sweep.

    Shape: the sweep's first depth and its ``heads`` / ``head_dim`` rule; for a sweep of named sizes
    only, the first size's depth and head dim. ``widths``: default the sweep's widths, else its sizes'.
    ``base_lr``: default the middle of the sweep's base LRs (of an even count, the lower middle one).
    ``batch``: default the sweep's. Torch threads: the sweep's ``train.num_threads``, else as many as
    a trial's CPUs (``resources.cpus``), which is what a trial trains with. Raises SweepFileError
    (e.g. a width the head rule cannot split) with the message of the equivalent sweep file.
    """
    grid = spec.model
    if grid.widths:
        depth, heads = grid.depths[0], {"heads": grid.heads} if grid.heads is not None else {"head_dim": grid.head_dim}
    else:
        first = SIZES[grid.sizes[0]]
        depth, heads = first.depth, {"head_dim": first.head_dim}
    lrs = sorted(spec.lr.base_lrs)
    data = spec.model_dump(exclude_unset=True)
    data["model"] = {"widths": widths or grid.widths or [SIZES[s].width for s in grid.sizes], "depths": [depth],
                     **heads, "patch": [grid.patch[0]]}
    data["lr"]["base_lrs"] = [base_lr if base_lr is not None else lrs[(len(lrs) - 1) // 2]]
    data["seeds"] = list(range(seeds))
    train = data.setdefault("train", {})
    train["num_threads"] = spec.base_config().num_threads or spec.resources.torch_threads()  # as a trial runs
    if batch is not None:
        train["batch"] = batch
    try:
        narrowed = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SweepFileError(f"coordinate check of sweep {spec.name}: {format_errors(err)}") from None
    return expand(narrowed)


def training_key(config: TrainConfig) -> str:
    """Short SHA-256 of everything that decides a training run: the config without its name."""
    data = config.to_dict()
    data.pop("name")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


TRIALS_DIR, ATTEMPTS_FILE = "trials", "attempts.jsonl"
"""A sweep's run directories (``<out>/trials/<trial>``) and, in each, one line per start of training."""
STATE_FILE = "sweep.json"
"""In the output directory: the sweep's state (written last when a sweep is created or grows;
scaling/state.py)."""


def started_trials(out: Path, trials: list[Trial]) -> set[str]:
    """The trials of the sweep in ``out`` that started training (an ``attempts.jsonl`` in their run
    directory; a copied trial has none): what :func:`shared_trainings` keeps as sources."""
    return {t.name for t in trials if (out / TRIALS_DIR / t.name / ATTEMPTS_FILE).exists()}


def is_done(trial: Trial, run_dir: Path) -> bool:
    """True if the trial ended: diverged, or finished its full budget (``result.json`` in ``run_dir``)."""
    result = RunResult.load(run_dir)
    return result is not None and result.is_done(trial.config.iterations)


def pending_trainings(out: Path, trials: list[Trial], repeats: dict[str, str]) -> list[Trial]:
    """The trials of the sweep in ``out`` still to train: neither a copy of another's training
    (``repeats``, :func:`shared_trainings`) nor ended (:func:`is_done`)."""
    return [t for t in trials if t.name not in repeats and not is_done(t, out / TRIALS_DIR / t.name)]


def shared_trainings(trials: list[Trial], trained: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """{trial: the trial it repeats} for trials whose TrainConfig equals another's but for the name
    (the first in grid order, or one in ``trained``). Rules coincide wherever they give the same
    learning rates: ``gat`` and ``constant`` at the base width, and ``gat`` at width C with base
    LR b and ``constant`` with b * C0 / C.
    Such a trial needs no training of its own (training is deterministic given the config).

    ``trained``: trials that already started training (of a sweep being extended); they come
    first, so that a new grid point never takes the training of an existing one from it.
    """
    first: dict[str, str] = {}
    repeats = {}
    for t in sorted(trials, key=lambda t: t.name not in trained):  # stable: grid order otherwise
        key = training_key(t.config)
        if key in first:
            repeats[t.name] = first[key]
        else:
            first[key] = t.name
    return repeats


def trial_records(trials: list[Trial]) -> dict[str, dict[str, Any]]:
    """{trial: its flattened TrainConfig and ``sweep.*`` coordinates}, as JSON gives them back: what
    a sweep's state keeps of each trial, so that a later sweep file can be compared with it field
    by field (an extended sweep must leave every existing trial as it was)."""
    records = {t.name: {**flatten(t.config.to_dict()), **t.sweep_params()} for t in trials}
    return json.loads(json.dumps(records))


def sweep_hash(trials: list[Trial]) -> str:
    """Short SHA-256 of everything that decides the trials' results (names, configs, coordinates).

    Two sweep files with the same hash train exactly the same runs; resources, concurrency and
    where to log do not enter it.
    """
    payload = [
        {"name": t.name, "config": t.config.to_dict(), **t.sweep_params()} for t in trials
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrialCost:
    """Size and training cost of one trial (FLOPs convention: ``core.gan.flops.FLOPS_CONVENTION``)."""

    g_params: int
    d_params: int
    flops_per_iter: int
    total_flops: int


def trial_cost(config: TrainConfig) -> TrialCost:
    """Parameter counts (all tensors, docs/METHOD.md §6 convention) and measured training FLOPs.

    Both come from ``core.gan.flops``: counted once per architecture and batch (models on the meta
    device, so paper-scale sizes cost no memory) and kept on disk for later dry runs.
    """
    g_params, d_params = parameter_counts(config)
    per_iter = train_flops_per_iter(config)  # one measurement per architecture (core.gan.flops)
    return TrialCost(g_params, d_params, per_iter, per_iter * config.iterations)


def trial_rows(trials: list[Trial], repeats: dict[str, str]) -> list[dict[str, Any]]:
    """One row per trial for the dry-run table and trials.csv (parameter counts, FLOPs, LRs, and
    ``same_as``: the trial whose training this one repeats, if any, from ``repeats`` as
    :func:`shared_trainings` gives it)."""
    rows = []
    for t in trials:
        cost, c = trial_cost(t.config), t.config
        rows.append({
            "name": t.name, "size": t.size, "lr_rule": t.lr_rule, "base_lr": t.base_lr,
            "g_width": c.g.width, "g_depth": c.g.depth, "g_heads": c.g.heads,
            "d_width": c.d.width, "d_depth": c.d.depth, "d_heads": c.d.heads, "patch": c.patch,
            "g_params": cost.g_params, "d_params": cost.d_params, "flops_per_iter": cost.flops_per_iter,
            "lr_g": c.lr_g, "lr_d": c.lr_d, "batch": c.batch, "iterations": c.iterations,
            "kimg": c.kimg, "seed": c.seed, "total_flops": cost.total_flops, "same_as": repeats.get(t.name, ""),
        })
    return rows


def _cuda_devices() -> int:
    """CUDA devices torch sees on this machine."""
    import torch

    return torch.cuda.device_count()


def check_trials_fit(spec: SweepSpec, trials: list[Trial]) -> None:
    """Refuse a sweep that starts its own Ray instance when a trial cannot run on this machine: it
    asks for more CPUs or GPUs than the machine has (Ray would wait for them forever), or its least
    memory (:func:`core.memory.estimate_memory`, at its batch per DDP worker) exceeds what it gets:
    with ``resources.gpus`` a share of GPU 0, else this machine's memory. A sweep on a Ray cluster
    is not checked here (its nodes' resources are theirs to know): each trial checks its own device
    before it builds its models (``core.gan.train``), as a configuration error that is not retried.

    Raises ConfigError naming the resource, or the first trial too large (and how many more) with
    its estimate.
    """
    res = spec.resources
    if spec.is_cluster():
        return
    cpus = len(os.sched_getaffinity(0))
    if res.cpus * res.workers > cpus:
        raise ConfigError(f"resources: a trial asks for {res.cpus * res.workers:g} CPUs ({res.workers} worker(s) x "
                          f"cpus {res.cpus:g}) and this machine has {cpus}, so Ray would wait for them forever; lower "
                          "resources.cpus or resources.workers, or join a cluster (--address)")
    if res.gpus > 0:
        gpu = device_memory("cuda")
        if gpu is None or _cuda_devices() < math.ceil(res.gpus * res.workers):
            raise ConfigError(f"resources: a trial asks for {res.gpus * res.workers:g} GPUs and this machine has "
                              f"{0 if gpu is None else _cuda_devices()} that torch can use, so Ray would wait for "
                              "them forever; set resources.gpus: 0, or join a cluster with GPUs (--address)")
        available, where = int(gpu * min(res.gpus, 1.0)), f"the {gib(gpu * min(res.gpus, 1.0))} of GPU memory a trial gets"
    else:
        available = device_memory("cpu")
        where = f"this machine's {gib(available)} of memory"
    too_big = []
    for t in trials:
        g_params, d_params = parameter_counts(t.config)
        try:
            check_memory(t.config, g_params, d_params, t.config.batch // res.workers, available, where)
        except ConfigError as err:
            too_big.append(str(err))
    if too_big:
        more = f" ({len(too_big) - 1} more trial(s) do not fit either)" if len(too_big) > 1 else ""
        raise ConfigError(f"trial {too_big[0]}{more}")
