"""The GAT training loop: one function, counted in iterations and kimg.

``train(cfg, run_dir, reporter)`` owns everything a run does, in this fixed order per iteration:
seed the iteration's RNGs -> sample a real batch and z -> D step -> G step (+ EMA) -> divergence
check -> diagnostics -> logging -> evaluation (EMA G) -> sample grid -> checkpoint. Metrics reach
the outside world through a :class:`Reporter` (``scaling`` supplies Ray Tune + MLflow) and
``stats.jsonl``; ``core`` imports no ray, mlflow, pydantic or yaml.

Determinism and resume: the RNGs are re-seeded from (seed, iteration, rank) at the start of every
iteration and evaluation uses its own seeds, so a run resumed from a checkpoint follows exactly
the trajectory of an uninterrupted one (bit-for-bit on CPU; tested).

Run directory (ARCHITECTURE.md): ``config.json`` written before step 0, ``stats.jsonl``,
``checkpoints/``, ``samples/``, ``result.json`` written when the run ends.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from core.gan import diagnostics
from core.cache import atomic_write_bytes, check_free_space, json_text
from core.gan.checkpoint import CHECKPOINTS, FILE_OVERHEAD, checkpoint_bytes, resume_state, save_checkpoint
from core.config import RESUMABLE_FIELDS, ConfigError, TrainConfig
from core.evaluation.evaluate import InvalidMetricError, make_evaluator, make_sampler
from core.gan.flops import FLOPS_CONVENTION, parameter_counts, train_flops_per_iter
from core.data.latents import load_latents
from core.memory import check_memory, device_memory, gib
from core.gan.model import Generator, build_models, count_parameters
from core.records import (
    CONFIG_FILE,
    DIVERGED,
    D_PARAMS_PARAM,
    EARLY_SKIP_REL,
    EVAL_SECONDS,
    FINAL_EVALS,
    FINISHED,
    FLOPS_CONVENTION_PARAM,
    FLOPS_PER_ITER_PARAM,
    G_PARAMS_PARAM,
    G_UPDATE_REL,
    ITER,
    KIMG,
    LOSS_D,
    LOSS_G,
    RESULT_FILE,
    SEC_PER_KIMG,
    STATS_FILE,
    TRAIN_FLOPS,
    RunResult,
    final_fd,
    final_key,
)
from core.gan.repa import run_encoder
from core.gan.step import GATStep

DIAG_SAMPLES = 16


@dataclass
class Report:
    """What :func:`train` sends to the reporter at a logging, evaluation or checkpoint step."""

    step: int
    """Iterations completed."""
    metrics: dict[str, float]
    """Metric keys as in docs/TRACKING.md (``loss/G``, ``eval/fd_digits_1k``, ...)."""
    images: list[Path] = field(default_factory=list)
    """Sample grids written at this step (absolute paths)."""
    checkpoint: Path | None = None
    """Checkpoint written at this step (absolute), if any."""


class Reporter:
    """Receives a run's progress. Subclass and override; every method is a no-op here."""

    def start(self, cfg: TrainConfig, info: dict[str, str], state: dict[str, Any] | None) -> None:
        """Called once before the first iteration. ``info``: extra params (parameter counts,
        FLOPs per iteration and convention, evaluation provenance). ``state``: what
        :meth:`state_dict` returned when the checkpoint being resumed was written, else None."""

    def report(self, report: Report) -> None:
        """Called at every logging / evaluation / checkpoint step (rank 0 only)."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data stored in every checkpoint (e.g. a tracking run id)."""
        return {}

    def finish(self, result: RunResult) -> None:
        """Called once when the run ends (finished or diverged)."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's CUDA device if available, else CPU. Raises ConfigError for CUDA
    requested on a machine without it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but CUDA is not available; use device='cpu'")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _check_device_memory(cfg: TrainConfig, device: torch.device, world: int) -> None:
    """Refuse a run whose least memory (:func:`core.memory.estimate_memory`, parameters counted on
    the meta device) exceeds its device's, before its models are built there (ConfigError)."""
    available = device_memory(str(device)) if device.type in ("cpu", "cuda") else None
    if available is not None:
        g_params, d_params = parameter_counts(cfg)
        where = f"the {gib(available)} of {device}" if device.type == "cuda" else f"this machine's {gib(available)} of memory"
        check_memory(cfg, g_params, d_params, cfg.batch // world, available, where)


def _iteration_seed(seed: int, iteration: int, rank: int) -> int:
    return (seed * 1_000_003 + iteration) * 1_009 + rank


def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Write config.json, or refuse a run directory whose run trained under an incompatible config.

    A run directory without a checkpoint or result holds nothing that a new config could
    contradict (e.g. a first attempt that stopped on a configuration error): its config.json is
    replaced, so the corrected command just runs.
    """
    path = run_dir / CONFIG_FILE
    trained = any((run_dir / CHECKPOINTS).glob("*.pt")) or (run_dir / RESULT_FILE).exists()
    if path.exists() and trained:
        old = json.loads(path.read_text())
        with contextlib.suppress(ConfigError, TypeError):  # a field it lacks ran with its default
            old = TrainConfig.from_dict(old).to_dict()
        new = cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))
        if diff:
            raise ConfigError(
                f"run directory {run_dir} holds a run with a different config (fields: "
                f"{', '.join(diff)}); choose another output directory or delete this one"
            )
    atomic_write_bytes(path, json.dumps(cfg.to_dict(), indent=2).encode())


def _truncate_stats(path: Path, start: int) -> None:
    """Keep the lines of stats.jsonl up to iteration ``start`` (the checkpoint being resumed):
    the resumed run writes the later ones again, identically, so none appears twice."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= start]
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(kept).encode())


def _losses_healthy(stats: dict[str, torch.Tensor], bound: float) -> torch.Tensor:
    """1 if loss/D and loss/G are finite (and at most ``bound`` when it is > 0), else 0: an int
    0-d tensor on the losses' device, ready for an all-reduce (MIN) across ranks."""
    losses = torch.stack([stats[LOSS_D], stats[LOSS_G]])
    ok = torch.isfinite(losses).all()
    if bound > 0:
        ok = ok & (losses <= bound).all()
    return ok.int()


def _loss_divergence(stats: dict[str, torch.Tensor], bound: float, iteration: int) -> str:
    """Why :func:`_losses_healthy` said 0 (this rank's losses; another rank's when they look fine)."""
    for key in (LOSS_D, LOSS_G):
        value = stats[key].item()
        if not math.isfinite(value):
            return f"non-finite {key} at iteration {iteration}"
        if bound > 0 and value > bound:
            return f"{key} = {value:.4g} above diverge_loss = {bound:g} at iteration {iteration}"
    return f"a loss on another worker was non-finite or above diverge_loss at iteration {iteration}"


def _fd_divergence(key: str, value: float, best: dict[str, Any], ratio: float) -> str | None:
    """The reason an evaluation counts as a blow-up (more than ``ratio`` x the best so far), else None."""
    if ratio > 0 and math.isfinite(best["value"]) and value > ratio * best["value"]:
        return (f"{key} = {value:.4g} is more than diverge_fd_ratio = {ratio:g} times its best "
                f"{best['value']:.4g} (iteration {best['iteration']})")
    return None


def _rank0_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (a collective: every rank must call it at the same step)."""
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


@dataclass
class _Carry:
    """What the loop carries from one iteration to the next besides weights and optimiser moments.

    Everything else is re-derived from the iteration number (RNG seeds, EMA warm-up), so a run
    resumed from a checkpoint holding this logs and trains exactly what the uninterrupted one does.
    """

    iteration: int = 0
    """Iterations completed."""
    best: dict[str, Any] = field(default_factory=lambda: {"value": math.inf, "iteration": -1})
    """The best evaluation so far (``value`` inf before any)."""
    window: dict[str, torch.Tensor] = field(default_factory=dict)
    """Sums of the step statistics since the last log."""
    window_iters: int = 0
    last: dict[str, float] = field(default_factory=dict)
    """The last logged value of every metric (the result's metrics)."""
    reporter: dict[str, Any] | None = None
    """The reporter's :meth:`Reporter.state_dict` at the checkpoint (None for a fresh run)."""
    recent: list[float] = field(default_factory=list)
    """The last :data:`FINAL_EVALS` evaluations of the metric (their geometric mean is ``final/``)."""


def _checkpoint_state(G: Generator, D: torch.nn.Module, G_ema: Generator, step: GATStep, carry: _Carry,
                      cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint of the current iteration: weights, optimiser moments, the carry and the
    config as plain data (:mod:`core.gan.checkpoint`)."""
    return {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_g": step.opt_g.state_dict(), "opt_d": step.opt_d.state_dict(),
            "iteration": carry.iteration, "best": carry.best, "window": carry.window,
            "window_iters": carry.window_iters, "last": carry.last, "config": cfg.to_dict(),
            "reporter": carry.reporter, "recent": carry.recent}


def _resume(state: dict[str, Any], G: Generator, D: torch.nn.Module,
            G_ema: Generator) -> tuple[_Carry, dict[str, Any]]:
    """Load a :func:`_checkpoint_state` into the models; returns the carry and the two optimiser
    states (loaded once the optimisers exist)."""
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    G_ema.load_state_dict(state["G_ema"])
    carry = _Carry(state["iteration"], state["best"], state["window"], state["window_iters"], state["last"],
                   state["reporter"], list(state.get("recent", [])))  # checkpoints before final/ have none
    return carry, {"opt_g": state["opt_g"], "opt_d": state["opt_d"]}


def _decide(cfg: TrainConfig, run_dir: Path, rank: int, world: int) -> RunResult | None:
    """Rank 0 checks the run directory (:func:`_check_run_dir`) and whether the run has ended
    already; every rank follows its decision, or raises its ConfigError."""
    decision: list[Any] = [None]
    if rank == 0:
        try:
            _check_run_dir(cfg, run_dir)
            ended = RunResult.load(run_dir)
            decision[0] = ("ok", ended if ended is not None and ended.is_done(cfg.iterations) else None)
        except ConfigError as error:
            decision[0] = ("error", str(error))
    if world > 1:
        dist.broadcast_object_list(decision, src=0)
    kind, value = decision[0]
    if kind == "error":
        raise ConfigError(value)
    return value


def _mean_over_ranks(window: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """The logging window's sums averaged over the ranks (logged losses are global-batch means)."""
    keys = sorted(window)
    sums = torch.stack([window[k] for k in keys])
    dist.all_reduce(sums)
    return dict(zip(keys, sums / world))


def train(cfg: TrainConfig, run_dir: Path, reporter: Reporter | None = None, progress: bool = True,
          flops_per_iter: int | None = None) -> RunResult:
    """Train (or resume, or return at once if finished) one GAT run in ``run_dir``.

    Args:
        cfg: the validated run configuration.
        run_dir: run directory; made absolute. Resumes from ``checkpoints/latest.pt`` if present,
            or when it cannot be read from the newest numbered checkpoint that can (said on stderr).
        reporter: progress sink (Ray Tune / MLflow in ``scaling``); None = files only.
        progress: show a tqdm progress bar (rank 0).
        flops_per_iter: FLOPs of one iteration (:func:`core.gan.flops.train_flops_per_iter`), when the
            caller has counted them (a sweep's driver counts every architecture once); None: count.
    Returns: :class:`core.records.RunResult`; status 'diverged' (no exception) when a loss became
        non-finite or exceeded ``cfg.diverge_loss``, an evaluation's samples were non-finite, or an
        evaluation exceeded ``cfg.diverge_fd_ratio`` times the best so far; ``reason`` says which.
    Raises: ConfigError for an impossible config, a missing dataset or evaluation weights, a
        run directory holding a different config, or checkpoints none of which can be read
        (:class:`core.gan.checkpoint.CheckpointError`); :class:`core.cache.DiskFullError` (also a
        ConfigError) naming the directory and the space to free when its device fills up (checked
        before each checkpoint, so the last one stays intact). Other exceptions propagate (Ray
        retries them).
    """
    try:
        return _train(cfg, run_dir, reporter, progress, flops_per_iter)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        g_params, d_params = parameter_counts(cfg)
        where = Path(err.filename).parent if err.filename else Path(run_dir)
        check_free_space(where, round(2 * FILE_OVERHEAD * checkpoint_bytes(g_params, d_params)),
                         f"what {cfg.name} writes next (its next checkpoint: the numbered file and latest.pt)")
        raise  # space was freed meanwhile: a retry may go through


def _train(cfg: TrainConfig, run_dir: Path, reporter: Reporter | None, progress: bool,
           flops_per_iter: int | None) -> RunResult:
    """The body of :func:`train`."""
    # ---- 1. Has this run directory a run, and may this config continue it? -------------------
    run_dir = Path(run_dir).resolve()
    reporter = reporter or Reporter()
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cfg.batch % world:
        raise ConfigError(f"batch={cfg.batch} is not divisible by the {world} distributed workers")
    ended = _decide(cfg, run_dir, rank, world)
    if ended is not None:
        return ended
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    # ---- 2. Data, the DINOv2 encoder, evaluation: everything that can fail before training ---
    device = resolve_device(cfg.device)
    _check_device_memory(cfg, device, world)
    data = load_latents(cfg)
    encoder = run_encoder(cfg, data, device) if cfg.repa else None
    sampler = evaluator = None
    if rank == 0 and (cfg.eval_every >= 0 or cfg.sample_every >= 0):
        sampler = make_sampler(cfg, data, device)
    if rank == 0 and cfg.eval_every >= 0:
        evaluator = make_evaluator(cfg, data, device, sampler)

    # ---- 3. Models, seeded; the run's parameters --------------------------------------------
    torch.manual_seed(cfg.seed)  # the initialisation is part of what a seed names
    G, D = build_models(cfg, device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if flops_per_iter is None:
        flops_per_iter = train_flops_per_iter(cfg)
    info = {G_PARAMS_PARAM: str(count_parameters(G)), D_PARAMS_PARAM: str(count_parameters(D)),
            FLOPS_PER_ITER_PARAM: str(flops_per_iter), FLOPS_CONVENTION_PARAM: FLOPS_CONVENTION,
            **(evaluator.provenance if evaluator is not None else {})}

    # ---- 4. Resume ----------------------------------------------------------------------------
    carry, optimisers = _Carry(), None
    ckpt_dir = run_dir / CHECKPOINTS
    found = resume_state(ckpt_dir, device)  # CheckpointError when no checkpoint can be read
    if found is not None:
        state, path, damaged = found
        carry, optimisers = _resume(state, G, D, G_ema)
        for problem in damaged if rank == 0 else []:
            tqdm.write(f"{cfg.name}: {problem}; resuming from {path.name} (iteration {carry.iteration})",
                       file=sys.stderr)
    start = carry.iteration
    if rank == 0:
        _truncate_stats(run_dir / STATS_FILE, start)

    # ---- 5. Compilation, DDP wrappers, the step (optimisers) and the reporter ----------------
    G_train: torch.nn.Module = G
    D_train: torch.nn.Module = D
    if cfg.compile:
        G.compile()
        D.compile()
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # w_avg stays rank-local (rank 0's copy is saved), as in the reference: no buffer broadcast.
        G_train = DistributedDataParallel(G, device_ids=ids, broadcast_buffers=False)
        D_train = DistributedDataParallel(D, device_ids=ids)
    step = GATStep(cfg, G_train, D_train, device, G_ema=G_ema, encoder=encoder)
    step.done = start
    if optimisers is not None:
        step.opt_g.load_state_dict(optimisers["opt_g"])
        step.opt_d.load_state_dict(optimisers["opt_d"])
    if rank == 0:
        reporter.start(cfg, info, carry.reporter)

    # Fixed inputs for diagnostics (and nothing else): drawn once from the run's seed.
    fixed = torch.Generator().manual_seed(cfg.seed + 12_345)
    z_fix = torch.randn(DIAG_SAMPLES, cfg.z_dim, generator=fixed).to(device)
    y_fix = torch.randint(cfg.num_classes, (DIAG_SAMPLES,), generator=fixed).to(device)

    local_batch = cfg.batch // world
    data_gen = torch.Generator()
    window_start = time.perf_counter()
    status, reason = FINISHED, None
    bar = tqdm(total=cfg.iterations, initial=start, unit="it", disable=not progress or rank != 0,
               desc=cfg.name, dynamic_ncols=True)

    def with_progress(it: int, metrics: dict[str, float]) -> dict[str, float]:
        return {ITER: float(it), KIMG: cfg.kimg_at(it), TRAIN_FLOPS: float(it * flops_per_iter), **metrics}

    def emit(it: int, metrics: dict[str, float], images: list[Path] | None = None,
             checkpoint: Path | None = None) -> None:
        metrics = with_progress(it, metrics)
        carry.last.update(metrics)
        with open(run_dir / STATS_FILE, "a") as f:
            f.write(json_text({"step": it, **metrics}) + "\n")
        reporter.report(Report(it, metrics, images or [], checkpoint))

    def grid_at(it: int) -> list[Path]:
        """G_ema's sample grid at iteration ``it`` as ``samples/iter_XXXXXXX.png``; none (with a
        message) when its samples are not finite."""
        try:
            return [sampler.sample_grid(G_ema, run_dir / "samples" / f"iter_{it:07d}.png")]
        except InvalidMetricError as error:  # an evaluation has said so already, or the loss bound will
            bar.write(f"{cfg.name} iter {it}: no sample grid: {error}")
            return []

    # A fresh run's first grid shows its initialisation: the run's grids then start at step 0, where
    # MLflow's image slider opens.
    if rank == 0 and start == 0 and sampler is not None and cfg.sample_every >= 0:
        emit(0, {}, grid_at(0))
        window_start = time.perf_counter()

    # ---- 6. The loop --------------------------------------------------------------------------
    for it in range(start, cfg.iterations):
        # 6a. This iteration's draws, from (seed, iteration, rank) alone; one D and one G step.
        seed = _iteration_seed(cfg.seed, it, rank)
        torch.manual_seed(seed)
        data_gen.manual_seed(seed)
        if cfg.repa:  # the same draws; the raw images only when the alignment encodes them
            x, y, images = data.sample_with_images(local_batch, data_gen)
            images = images.to(device, non_blocking=True)
        else:
            (x, y), images = data.sample(local_batch, data_gen), None
        z = torch.randn(local_batch, cfg.z_dim, generator=data_gen)
        x, y, z = x.to(device, non_blocking=True), y.to(device), z.to(device)

        done_it = it + 1
        diag_now = rank == 0 and done_it % cfg.diag_every == 0
        before = diagnostics.g_output(G, z_fix, y_fix) if diag_now else None
        stats = step.iteration(x, y, z, images)

        # 6b. A non-finite or exploding loss on any rank ends the run on every rank.
        healthy = _losses_healthy(stats, cfg.diverge_loss)
        if world > 1:
            dist.all_reduce(healthy, op=dist.ReduceOp.MIN)
        if not bool(healthy):
            status, reason = DIVERGED, _loss_divergence(stats, cfg.diverge_loss, done_it)
            if rank == 0:
                emit(done_it, {k: v.item() for k, v in stats.items() if torch.isfinite(v)})
            bar.write(f"{cfg.name}: {reason}; stopping (diverged)")
            break

        # 6c. The logging window (statistics stay on the device until they are logged).
        for key, value in stats.items():
            carry.window[key] = carry.window.get(key, 0.0) + value
        carry.window_iters += 1
        bar.update(1)
        log_now = done_it % cfg.log_every == 0 or done_it == cfg.iterations
        if log_now and world > 1:
            carry.window = _mean_over_ranks(carry.window, world)
        eval_step = cfg.eval_every >= 0 and (
            done_it == cfg.iterations or (cfg.eval_every > 0 and done_it % cfg.eval_every == 0))
        if rank != 0:  # the other ranks only learn whether rank 0's evaluation diverged
            if eval_step and world > 1 and _rank0_flag(False, device):
                status = DIVERGED
                break
            continue

        # 6d. Diagnostics and the logged means.
        metrics: dict[str, float] = {}
        if diag_now:
            metrics[G_UPDATE_REL] = diagnostics.relative_change(before, diagnostics.g_output(G, z_fix, y_fix))
            metrics[EARLY_SKIP_REL] = diagnostics.early_skip_rel(G_ema, z_fix, y_fix)
        if log_now:
            elapsed = time.perf_counter() - window_start
            metrics.update({k: (v / carry.window_iters).item() for k, v in carry.window.items()})
            metrics[SEC_PER_KIMG] = elapsed / cfg.kimg_at(carry.window_iters)
            carry.window, carry.window_iters, window_start = {}, 0, time.perf_counter()
            bar.set_postfix({"kimg": f"{cfg.kimg_at(done_it):.1f}", "D": f"{metrics[LOSS_D]:.3f}",
                             "G": f"{metrics[LOSS_G]:.3f}"}, refresh=False)

        # 6e. Evaluation of the EMA generator; a blow-up ends the run.
        images: list[Path] = []
        is_best = False
        if eval_step and evaluator is not None:
            eval_start = time.perf_counter()
            try:
                results = evaluator.evaluate(G_ema)  # RNG use here is harmless: iterations re-seed
            except InvalidMetricError as error:  # non-finite samples: the run has diverged
                results, reason = {}, str(error)
            eval_seconds = time.perf_counter() - eval_start
            window_start += eval_seconds  # time/sec_per_kimg measures training, not evaluation
            metrics.update(results)
            metrics[EVAL_SECONDS] = eval_seconds
            value = results.get(evaluator.metric_key, math.inf)
            carry.recent = [*carry.recent, value][-FINAL_EVALS:]
            if math.isfinite(final := final_fd(carry.recent)):
                metrics[final_key(evaluator.metric_key)] = final
            reason = reason or _fd_divergence(evaluator.metric_key, value, carry.best, cfg.diverge_fd_ratio)
            if reason is None and value < carry.best["value"]:
                carry.best, is_best = {"value": value, "iteration": done_it}, True
            bar.write(f"{cfg.name} iter {done_it}: {evaluator.metric_key} = {value:.4g}")

        # 6f. Sample grid: at evaluations, at the end, and every sample_every iterations (and at 0).
        if sampler is not None and cfg.sample_every >= 0 and (
                eval_step or done_it == cfg.iterations or (cfg.sample_every and done_it % cfg.sample_every == 0)):
            grid_start = time.perf_counter()
            images += grid_at(done_it)
            window_start += time.perf_counter() - grid_start  # not training time either
        if eval_step and world > 1:
            _rank0_flag(reason is not None, device)
        if reason is not None:
            status = DIVERGED
            bar.write(f"{cfg.name} iter {done_it}: {reason}; stopping (diverged)")
            emit(done_it, metrics, images)
            break

        # 6g. Checkpoint (with the carry as it is after this step's emit), then emit.
        checkpoint = None
        if done_it % cfg.ckpt_every == 0 or done_it == cfg.iterations or is_best:
            carry.iteration, carry.reporter = done_it, reporter.state_dict()
            carry.last.update(with_progress(done_it, metrics))  # as emit does just below
            checkpoint = save_checkpoint(_checkpoint_state(G, D, G_ema, step, carry, cfg), ckpt_dir, done_it,
                                         keep=cfg.keep_checkpoints, best=is_best)
        if metrics or images or checkpoint:
            emit(done_it, metrics, images, checkpoint)
    bar.close()

    # ---- 7. The result ------------------------------------------------------------------------
    final_it = done_it if cfg.iterations > start else start
    result = RunResult(status, final_it, cfg.kimg_at(final_it), dict(carry.last), run_dir, reason, carry.best)
    if rank == 0:
        result.save()  # the best value is null when nothing was evaluated
        reporter.finish(result)
    return result
