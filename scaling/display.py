"""What the ``gat-sweep`` commands print: the dry-run tables of a sweep and of one config, the
summary of a sweep's outcome with the commands to run next, one run's result, and a coordinate
check's plan and slopes; number formats
and how to spell a console script of this environment. Nothing here starts work; the commands
(:mod:`scaling.cli`) decide what to print and where.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.config import TrainConfig, flatten
from core.metrics import MANIFEST, dataset_kind
from core.records import (FINAL_EVALS, FINAL_PREFIX, LOSS_D, LOSS_G, RUNS_VIEW, TAG_SAME_AS, RunResult, final_key,
                          is_fd_key, is_progress_key)
from core.units import fd_text
from scaling.spec import RAY_ADDRESS_ENV, SweepSpec

if TYPE_CHECKING:  # the driver imports ray and torch: the commands import it only to run a sweep
    import pandas as pd

    from scaling.grid import Trial
    from scaling.plan import Plan
    from scaling.tune import SweepOutcome


def installed_command(name: str) -> str:
    """How to call this environment's console script ``name`` in a line the user can paste: its
    bare name when that is what the shell finds, else its path (relative to the current directory
    when under it, as the README writes ``.venv/bin/mlflow``); ``python -m NAME`` if the
    environment has no such script."""
    script = Path(sys.executable).parent / name  # not resolved: a venv's python is a symlink
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m {name}"
    found = shutil.which(name)
    if found and Path(found).resolve() == script.resolve():
        return name
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def si(value: float, unit: str = "") -> str:
    """Engineering notation: 4.64e11 -> '464G' (3 significant digits)."""
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


WHERE_KEYS = ("name", "output_dir", "tracking_uri")
"""The sweep file's keys that say where a sweep is: its name, output directory and MLflow store."""


def plot_command(sweep_file: Path, spec: SweepSpec, moved: bool) -> str:
    """The ``gat-sweep plot`` line for this sweep: the file as given (the README's form), or, when
    overrides may have ``moved`` it (they set a key of :data:`WHERE_KEYS`, even to the file's value),
    the sweep's name with its tracking URI and report directory."""
    if moved:
        args = [spec.name, "--tracking-uri", spec.tracking(), "--out", str(spec.output_path() / "report")]
    else:
        args = [str(sweep_file)]
    return " ".join([installed_command("gat-sweep"), "plot", *map(shlex.quote, args)])


UNBOUNDED = 1_000_000
"""A width no table reaches: its natural width is measured within it."""


def fitted_table(console: Console, title: str, columns: list[str], rows: list[list[str]], left: set[str],
                 droppable: list[str], elsewhere: str = "") -> Table:
    """A table of ``rows`` (cells may hold rich markup) under ``columns`` in which no cell wraps:
    while it is wider than ``console``, the columns of ``droppable`` are left out, in that order;
    its caption then names them (and ``elsewhere``, where they can be read). Columns in ``left``
    are left-aligned, the others right-aligned."""
    shown = list(columns)
    for dropped in [None, *droppable]:
        if dropped is not None:
            shown.remove(dropped)
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, caption_justify="left")
        for name in shown:
            table.add_column(name, justify="left" if name in left else "right", no_wrap=True, overflow="ellipsis")
        for row in rows:
            table.add_row(*(cell for name, cell in zip(columns, row) if name in shown))
        if console.measure(table, options=console.options.update_width(UNBOUNDED)).maximum <= console.width:
            break
    hidden = [name for name in columns if name not in shown]
    if hidden:
        table.caption = f"left out at {console.width} columns: {', '.join(hidden)}{elsewhere}"
    return table


def dataset_problem(cfg: TrainConfig) -> str | None:
    """Why the encoded dataset ``cfg.dataset`` cannot be read, with the command that makes it, or
    None when it can (or is an embedded one). A directory that does not exist is written by
    ``gat-sweep encode`` from a folder of labelled images: at ``latent_size`` x 8 px for a VAE that
    downsamples by 8, as SD-VAE does (the digits VAE downsamples by 4), with ``--keep-images``
    where runs use the DINOv2 alignment (``repa``). A directory without a manifest is an encoding
    that did not finish."""
    if dataset_kind(cfg.dataset) != "encoded":
        return None
    root = Path(cfg.dataset)
    if not root.is_dir():
        keep = " --keep-images" if cfg.repa else ""
        return (f"dataset {root} does not exist; make it with `{installed_command('gat-sweep')} encode IMAGES_DIR "
                f"{shlex.quote(str(root))} --vae VAE_DIR --resolution {8 * cfg.latent_size}{keep}` (IMAGES_DIR: "
                f"labelled images, one sub-folder per class, {cfg.num_classes} classes; {8 * cfg.latent_size} px "
                f"gives latent_size {cfg.latent_size} with a VAE that downsamples by 8, as SD-VAE does)")
    if not (root / MANIFEST).is_file():
        return (f"dataset {root} has no {MANIFEST}: its encoding has not finished; run the `gat-sweep encode` "
                "command that writes it again (it resumes)")
    return None


def print_trials(plan: Plan, console: Console, as_json: bool = False) -> None:
    """The dry run of ``plan`` (:func:`scaling.plan.plan_sweep`): a table of the trials (or,
    ``as_json``, the same rows and the plan as JSON on stdout; the table leaves out columns that do
    not fit the console, :func:`fitted_table`), the budget, resources, LR rules, what the output
    directory already holds of the sweep (:meth:`scaling.plan.Plan.held`), whether the dataset is
    missing and the command that makes it (:func:`dataset_problem`), and last what would run where."""
    from core.gan.flops import FLOPS_CONVENTION
    from scaling.grid import trial_rows

    spec, trials = plan.spec, plan.trials
    rows = trial_rows(trials, plan.repeats)
    trained = [r for r in rows if not r["same_as"]]
    total_flops = sum(r["total_flops"] for r in trained)
    to_train, held = plan.pending, plan.held()
    if as_json:
        print(json.dumps({
            "name": spec.name, "trials": rows, "trainings": len(trained), "to_train": len(to_train),
            "output_dir_holds": held, "total_train_flops": total_flops,
            "flops_convention": FLOPS_CONVENTION, "resources": spec.resources.model_dump(),
            "max_concurrent": spec.max_concurrent, "max_failures": spec.max_failures,
            "output_dir": str(spec.output_path()), "tracking_uri": spec.tracking(), "ray_address": spec.ray_target(),
        }, indent=2))
        return
    tied = all((r["g_width"], r["g_depth"], r["g_heads"]) == (r["d_width"], r["d_depth"], r["d_heads"]) for r in rows)
    one_lr = all(r["lr_g"] == r["lr_d"] for r in rows)  # as when G and D have one width
    repeats = any(r["same_as"] for r in rows)
    columns = ["trial", "width", "depth", "heads"] + ([] if tied else ["D width", "D depth", "D heads"])
    columns += ["G params", "D params", "FLOPs/iter"] + (["lr"] if one_lr else ["lr_G", "lr_D"]) + ["train FLOPs"]
    columns += ["same training as"] if repeats else []
    cells = []
    for r in rows:
        row = [r["name"], str(r["g_width"]), str(r["g_depth"]), str(r["g_heads"])]
        row += [] if tied else [str(r["d_width"]), str(r["d_depth"]), str(r["d_heads"])]
        row += [si(r["g_params"]), si(r["d_params"]), si(r["flops_per_iter"])]
        row += [f"{r['lr_g']:.4g}"] + ([] if one_lr else [f"{r['lr_d']:.4g}"])
        cells.append(row + [si(r["total_flops"])] + ([r["same_as"]] if repeats else []))
    console.print(fitted_table(
        console, f"sweep {spec.name}: {len(rows)} trials", columns, cells, {"trial", "same training as"},
        [c for c in ("FLOPs/iter", "D params", "D heads", "heads", "D depth", "G params", "lr_D", "depth", "D width",
                     "train FLOPs") if c in columns], " (--json shows every column)"))
    res, first = spec.resources, rows[0]
    console.print(
        f"budget {first['iterations']} iterations x batch {first['batch']} = {first['kimg']:g} kimg per trial; "
        f"{len(trained)} trainings ({len(rows) - len(trained)} trials repeat an identical trial's training and "
        f"get a copy of its results); total training compute {si(total_flops, 'FLOPs')} "
        f"({FLOPS_CONVENTION.split(',')[0]})\n"
        f"per trial: {res.workers} worker(s) x ({res.cpus:g} CPU, {res.gpus:g} GPU); "
        f"at most {spec.max_concurrent or 'as many as fit'} at once; retries {spec.max_failures}\n"
        f"{spec.lr.describe()}\n"
        + (f"{held}: {len(trained) - len(to_train)} of its {len(trained)} trainings ended\n" if held else "")
        + (f"{missing}\n" if (missing := dataset_problem(trials[0].config)) else "") +
        f"Dry run, nothing started. The sweep would train {len(to_train)} runs on {_where(spec)}, "
        f"write to {spec.output_path()} and log to MLflow at {spec.tracking()}.",
        highlight=False, markup=False, soft_wrap=True)


def _where(spec: SweepSpec) -> str:
    """Where a sweep's trials would run, in words (and where the Ray address came from)."""
    address = spec.ray_target()
    if address == "local":
        return f"a new Ray instance on this machine ({socket.gethostname()}, {os.cpu_count()} CPUs)"
    source = f" (from ${RAY_ADDRESS_ENV})" if spec.ray_address is None else ""
    return f"the Ray cluster at {address}{source}"


def print_outcome(outcome: SweepOutcome, console: Console, report_command: str) -> None:
    """The summary of a sweep: a table of every trial, then the trials that were retried, failed,
    hit a configuration error or diverged (each with its reason), disagreements of the MLflow
    store, counts, what to do next (commands that work as printed) and where the results are;
    ``report_command`` is the ``gat-sweep plot`` line (:func:`plot_command`)."""
    keys = sorted({final_key(k) for t in outcome.trials for k in t.metrics if is_fd_key(k)})
    styles = {"finished": "green", "diverged": "yellow", "error": "red", "config_error": "red", "incomplete": "dim"}
    rows = [[t.name, f"[{styles[t.status]}]{t.status}[/]", str(t.iterations), f"{t.kimg:g}",
             *(fd_text(t.metrics.get(k)) for k in keys),
             *(f"{t.metrics[k]:.4g}" if k in t.metrics else "-" for k in (LOSS_G, LOSS_D))] for t in outcome.trials]
    columns = ["trial", "status", "iterations", "kimg", *(k.removeprefix(FINAL_PREFIX) for k in keys), LOSS_G, LOSS_D]
    console.print(fitted_table(
        console, f"sweep {outcome.name} (final FD: geometric mean of a trial's last {FINAL_EVALS} evaluations)",
        columns, rows, {"trial", "status"}, [LOSS_D, LOSS_G, "kimg"]))
    for t in outcome.trials:
        # Started more than once: more than one start or failure, or a failure and then an end.
        if t.starts > 1 or len(t.failures) > 1 or (t.failures and t.status in ("finished", "diverged")):
            reasons = list(dict.fromkeys(t.failures)) or ["resumed after the driver stopped"]
            console.print(f"[yellow]retried[/]      {t.name} ({t.starts} starts, {len(t.failures)} failed): "
                          f"{escape('; '.join(reasons))}", highlight=False, soft_wrap=True)
    labels = {"error": "[red]failed[/]      ", "config_error": "[red]config error[/]",
              "diverged": "[yellow]diverged[/]    "}
    for t in outcome.trials:
        if t.status in labels:
            reason = t.reason if t.status == "diverged" else t.error
            console.print(f"{labels[t.status]} {t.name}: {escape(reason or 'no reason recorded')}",
                          highlight=False, soft_wrap=True)
    if outcome.store_problems:
        console.print(f"[red]MLflow store check failed[/]: {escape(outcome.tracking_uri)} does not hold one "
                      "FINISHED child run per ended trial (their results are in the run directories):\n  "
                      + escape("\n  ".join(outcome.store_problems)), highlight=False, soft_wrap=True)
    counts = {s: sum(t.status == s for t in outcome.trials) for s in styles}
    copies = sum(t.same_as is not None for t in outcome.trials)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n)
                  + (f" ({copies} repeat an identical trial's training: copied runs, tag {TAG_SAME_AS})"
                     if copies else ""), highlight=False)
    if counts["incomplete"] or counts["error"]:
        console.print("Run the same command again to resume: ended trials are kept, the others continue "
                      "from their checkpoints.", highlight=False)
    if counts["config_error"]:
        console.print("A configuration error is not retried: fix what it names, then run the same command "
                      "again (ended trials are kept).", highlight=False)
    page = runs_page(outcome.experiment_id)
    if outcome.tracking_uri.startswith(("http://", "https://")):
        console.print(f"MLflow:     {outcome.tracking_uri.rstrip('/')}/{page}",
                      highlight=False, soft_wrap=True, markup=False)
    else:
        console.print(f"MLflow UI:  {installed_command('mlflow')} ui --backend-store-uri "
                      f"{shlex.quote(outcome.tracking_uri)}", highlight=False, soft_wrap=True, markup=False)
        console.print(f"            then open http://127.0.0.1:5000/{page}", highlight=False, soft_wrap=True,
                      markup=False)
    console.print(f"Report:     {report_command}", highlight=False, soft_wrap=True, markup=False)


def runs_page(experiment_id: str) -> str:
    """Where the MLflow UI shows a sweep's trials (after its address): the runs page of its
    experiment, in the view the driver stores in it (:data:`core.records.RUNS_VIEW`: sorted by final
    FD, lowest first, with the key columns), and on MLflow 3's model-training pages
    (``workflowType``: without it the UI shows an experiment's GenAI pages, unless this browser
    last chose 'Model training' in its sidebar)."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW}&workflowType=machine_learning"


def print_config(cfg: TrainConfig, run_dir: Path, console: Console) -> None:
    """The dry run of `gat-sweep train`: every field of ``cfg``, parameter counts, FLOPs per
    iteration and in all, the run directory, with repa the projector's size and the encoder, and
    whether the dataset is missing and the command that makes it (:func:`dataset_problem`)."""
    from core.gan.flops import FLOPS_CONVENTION
    from scaling.grid import trial_cost

    table = Table(title=f"config {cfg.name}", title_justify="left", show_header=False, box=box.SIMPLE)
    table.add_column(style="bold")
    table.add_column()
    for key, value in flatten(cfg.to_dict()).items():
        table.add_row(key, repr(value) if isinstance(value, str) else str(value))
    console.print(table)
    cost = trial_cost(cfg)
    console.print(
        f"G parameters {cost.g_params:,} ({si(cost.g_params)}), D parameters {cost.d_params:,} "
        f"({si(cost.d_params)})\nFLOPs per iteration {cost.flops_per_iter:.4g}; {cfg.iterations} iterations "
        f"({cfg.kimg:g} kimg) -> {si(cost.total_flops, 'FLOPs')}\nconvention: {FLOPS_CONVENTION}\n"
        f"run directory {run_dir}", highlight=False, markup=False)
    if cfg.repa:
        from core.gan.model import count_parameters, repa_projector

        projector = count_parameters(repa_projector(cfg.d.width, cfg.repa_dim).to("meta"))
        encoder = cfg.repa_encoder or "not set (set repa_encoder to a local DINOv2 directory before training)"
        console.print(f"DINOv2 alignment (repa) on, weight {cfg.repa_weight:g}: D's projector has {projector:,} "
                      f"({si(projector)}) parameters, included in D's count; encoder {encoder}",
                      highlight=False, markup=False)
    missing = dataset_problem(cfg)
    if missing:
        console.print(missing, highlight=False, markup=False, soft_wrap=True)


def print_train_result(result: RunResult, console: Console) -> None:
    """How one ``gat-sweep train`` run ended: its status (and why it diverged), iterations, kimg,
    its last progress metrics and the run directory."""
    style = "green" if result.status == "finished" else "yellow"
    if result.reason:
        console.print(f"[yellow]diverged:[/] {escape(result.reason)}", highlight=False)
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())
                        if is_progress_key(k))
    console.print(f"[{style}]{result.status}[/] after {result.iterations} iterations "
                  f"({result.kimg:g} kimg): {metrics}\nrun directory {escape(str(result.run_dir))}", highlight=False)


def print_coord_plan(spec: SweepSpec, trials: list[Trial], steps: int, out: Path, console: Console) -> None:
    """What ``gat-sweep coord-check`` runs: a table of each rule's learning rate of G (D's is the same,
    D having G's shape) at each width (with the LR of hidden and output matrices where a rule gives
    them their own), the shapes, seeds, steps and batch, and where the files go."""
    first = trials[0].config
    widths = sorted({t.config.g.width for t in trials})
    rules = list(dict.fromkeys(t.lr_rule for t in trials))
    seeds = sorted({t.config.seed for t in trials})
    table = Table(title=f"coordinate check of sweep {spec.name}: learning rate of G and D at each width",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("rule", justify="left")
    for width in widths:
        table.add_column(f"w{width}", justify="right")
    for rule in rules:
        cells = []
        for width in widths:
            cfg = next(t.config for t in trials if t.lr_rule == rule and t.config.g.width == width)
            lr, mult = cfg.lr_g, cfg.lr_mult_g
            if mult.hidden == mult.output == 1:
                cells.append(f"{lr:.4g}")
            elif mult.hidden == mult.output:
                cells.append(f"{lr:.4g}, hidden/output {lr * mult.hidden:.4g}")
            else:
                cells.append(f"{lr:.4g}, hidden {lr * mult.hidden:.4g}, output {lr * mult.output:.4g}")
        table.add_row(rule, *cells)
    console.print(table)
    heads = f"head dim {first.g.head_dim}" if spec.model.heads is None else f"{first.g.heads} heads"
    console.print(
        f"widths {', '.join(map(str, widths))} (depth {first.g.depth}, {heads}, patch {first.patch}; "
        "D the shape of G); "
        f"base LR {trials[0].base_lr:g}" + (f" at base width {trials[0].base_width}" if trials[0].base_width else "")
        + f"; {len(seeds)} seed(s) x {steps} steps at batch {first.batch} on random latents "
        f"({first.latent_channels}x{first.latent_size}x{first.latent_size}, {first.num_classes} classes): "
        f"{len(trials)} runs\noutput {out}", highlight=False, markup=False, soft_wrap=True)


def print_coord_check(tables: dict[str, pd.DataFrame], files: list[Path], console: Console) -> None:
    """A coordinate check's result: per network, the slope of log(RMS change per step) against
    log(width) of each layer group under each rule (``analysis.coord_check.slope_table``), then the
    files written."""
    for network, slopes in tables.items():
        table = Table(title=f"{network.upper()}: slope of log(RMS change per step) against log(width)",
                      title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("rule", justify="left")
        for group in slopes.columns:
            table.add_column(str(group), justify="right")
        for rule, row in slopes.iterrows():
            table.add_row(str(rule), *(f"{v:+.2f}" if v == v else "-" for v in row))
        console.print(table)
    console.print("0 = flat in width (the update size transfers); +1 = grows like width (updates blow up as "
                  "the network widens); below 0 = vanishes with width", highlight=False, markup=False)
    for path in files:
        console.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)
