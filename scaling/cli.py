"""The ``gat-sweep`` command line (typer + rich).

Commands: ``run`` (a sweep file -> Ray Tune trials -> MLflow), ``train`` (one run in-process, no
Ray), ``schema`` (the sweep file's JSON schema), ``encode`` (images -> VAE latents) and ``plot``
(a sweep's report). Heavy libraries (torch, ray, mlflow) are imported inside the commands, so
``--help`` is quick. Mistakes a user can fix (a bad sweep file, an impossible config, a missing
file) print one message without a traceback and exit with status 2; a sweep with failed trials
exits with status 1, an interrupted one (Ctrl-C) with 130. ``--json`` on ``run`` puts only JSON on
stdout (the dry run's trials, or the outcome) for scripts; the human lines go to stderr then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.config import ConfigError, TrainConfig, flatten
from core.presets import PRESETS, get_preset
from core.records import LOSS_D, LOSS_G, TAG_SAME_AS, is_fd_key, is_progress_key
from scaling.lock import refuse_if_running
from scaling.spec import (
    EMBEDDED_DATASETS,
    RAY_ADDRESS_ENV,
    SweepSpec,
    apply_set,
    default_tracking_uri,
    load_spec,
    load_yaml,
)

app = typer.Typer(
    name="gat-sweep",
    help="Scaling-law sweeps of GAT (transformer GANs in a VAE latent space) with Ray Tune and MLflow.",
    no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown",
)
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""
console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables in logs and pipes
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ValidationError, FileNotFoundError, NotADirectoryError)
"""Exceptions that mean 'fix your input': printed as one line, exit status 2."""


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn a user's mistake into one red line on stderr and exit status 2 (no traceback)."""
    try:
        yield
    except (*USER_ERRORS, *extra) as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _print_version(value: bool) -> None:
    if value:
        print(f"gat-sweep {package_version('gat-sweep')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Scaling-law sweeps of GAT (transformer GANs in a VAE latent space) with Ray Tune and MLflow."""


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


# ----------------------------------------------------------------------------------------------
# gat-sweep run
# ----------------------------------------------------------------------------------------------
@app.command()
def run(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (YAML); see `gat-sweep schema`.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a key of the sweep file, key=value, dotted (train.batch=64, "
        "budget.iterations=100, seeds=[0,1]); validated as the file is. Repeatable.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the trials and their cost; start nothing.")] = False,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print JSON on stdout: the trials (with --dry-run) or the outcome; "
        "progress goes to stderr.")] = False,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join, e.g. auto (overrides ray_address and $RAY_ADDRESS).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (overrides tracking_uri and $MLFLOW_TRACKING_URI).")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Output directory (overrides output_dir).")] = None,
) -> None:
    """Run a sweep: every grid point of SWEEP_FILE as a Ray Tune trial, logged to MLflow.

    Starts a local Ray instance unless an address is given (--address, the sweep file's
    ray_address or $RAY_ADDRESS, in that order). Each trial trains in its own run
    directory under the output directory; crashed trials are retried from their last checkpoint.
    Progress is printed as trials start and end; at the end a summary table and the commands
    that show the runs and make the report. Exit status 1 if any trial failed, 130 if the run was
    interrupted (Ctrl-C), 2 for a mistake in the sweep file or the options.

    **Overrides:** `--set KEY=VALUE` sets a key of the sweep file (dots for nested keys) as if
    the file said it; the sweep's output directory records the merged file as sweep.yaml. A
    changed grid is a new sweep: give it a new name too (`--set name=width_lr_b64`).

    **Resuming:** run the same command again. Trials that ended (finished or diverged) are
    not rerun; the others continue from their checkpoints; MLflow runs are reattached. If the
    sweep file's trials changed since the output directory was created, the command stops with
    an error (a changed sweep is a new sweep: give it a new name or output_dir).

    **Examples:**

      gat-sweep run sweeps/width_lr.yaml --dry-run

      gat-sweep run sweeps/width_lr.yaml

      gat-sweep run sweeps/width_lr.yaml --set budget.iterations=100 --set name=width_lr_short

      gat-sweep run sweeps/imagenet256_gat.yaml --address auto --tracking-uri http://mlflow:5000
    """
    out_console = err_console if json_ else console  # --json: stdout holds the JSON alone
    with user_errors():
        as_filed = load_spec(sweep_file)
        spec = load_spec(sweep_file, set_) if set_ else as_filed
        overrides = {"ray_address": address, "tracking_uri": tracking_uri,
                     "output_dir": str(output_dir) if output_dir else None}
        spec = spec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        if dry_run:
            _print_trials(spec, as_json=json_)
            return
        spec.check_cluster_settings()  # before the slow imports: a quick answer
        refuse_if_running(spec.output_path())  # likewise, for a second driver on this sweep
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
        # Offline by default, and quiet: our own progress lines replace Ray's and MLflow's banners.
        for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                           ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1"), ("MLFLOW_LOGGING_LEVEL", "WARNING")):
            os.environ.setdefault(key, value)
        from scaling.tune import run_sweep

        try:
            outcome = run_sweep(spec, sweep_file, console=out_console)
        except KeyboardInterrupt:
            err_console.print("interrupted; run the same command again to resume: ended trials are kept, the "
                              "others continue from their checkpoints", highlight=False, soft_wrap=True)
            raise typer.Exit(INTERRUPTED) from None
    _print_outcome(outcome, out_console, _plot_command(sweep_file, as_filed, spec))
    interrupted = any(t.status == "incomplete" for t in outcome.trials)
    status = INTERRUPTED if interrupted else 1 if outcome.failed else 0
    if json_:
        summary = {**dataclasses.asdict(outcome), "failed": outcome.failed, "interrupted": interrupted,
                   "exit_status": status}
        print(json.dumps(summary, indent=2, default=str))
    if status:
        raise typer.Exit(status)


def _plot_command(sweep_file: Path, as_filed: SweepSpec, spec: SweepSpec) -> str:
    """The ``gat-sweep plot`` line for this sweep: the file as given when the file alone leads to
    the same sweep (the README's form), else the sweep's name with its tracking URI and report
    directory (overrides moved its name, output or store)."""
    where = (spec.name, spec.output_path(), spec.tracking())
    if where == (as_filed.name, as_filed.output_path(), as_filed.tracking()):
        args = [str(sweep_file)]
    else:
        args = [spec.name, "--tracking-uri", spec.tracking(), "--out", str(spec.output_path() / "report")]
    return " ".join([installed_command("gat-sweep"), "plot", *map(shlex.quote, args)])


def _print_trials(spec: SweepSpec, as_json: bool = False) -> None:
    """The dry run: a table of the trials (or, ``as_json``, the same rows and the plan as JSON on
    stdout), the budget, resources, LR rules, and last what would run where."""
    from core.flops import FLOPS_CONVENTION
    from scaling.grid import expand, shared_trainings, started_trials, trial_rows

    trials = expand(spec)  # copies as the run would make them, also for a sweep that grows
    rows = trial_rows(trials, shared_trainings(trials, started_trials(spec.output_path(), trials)))
    trained = [r for r in rows if not r["same_as"]]
    total_flops = sum(r["total_flops"] for r in trained)
    if as_json:
        print(json.dumps({
            "name": spec.name, "trials": rows, "trainings": len(trained), "total_train_flops": total_flops,
            "flops_convention": FLOPS_CONVENTION, "resources": spec.resources.model_dump(),
            "max_concurrent": spec.max_concurrent, "max_failures": spec.max_failures,
            "output_dir": str(spec.output_path()), "tracking_uri": spec.tracking(), "ray_address": spec.ray_target(),
        }, indent=2))
        return
    tied = all((r["g_width"], r["g_depth"], r["g_heads"]) == (r["d_width"], r["d_depth"], r["d_heads"]) for r in rows)
    repeats = any(r["same_as"] for r in rows)
    table = Table(title=f"sweep {spec.name}: {len(rows)} trials", title_justify="left", box=box.SIMPLE_HEAD)
    columns = ["trial", "width", "depth", "heads"] + ([] if tied else ["D width", "D depth", "D heads"])
    columns += ["G params", "D params", "FLOPs/iter", "lr_G", "lr_D", "train FLOPs"] + (["same training as"] if repeats else [])
    for name in columns:
        table.add_column(name, justify="left" if name in ("trial", "same training as") else "right",
                         no_wrap=name == "trial")
    for r in rows:
        cells = [r["name"], str(r["g_width"]), str(r["g_depth"]), str(r["g_heads"])]
        cells += [] if tied else [str(r["d_width"]), str(r["d_depth"]), str(r["d_heads"])]
        cells += [si(r["g_params"]), si(r["d_params"]), si(r["flops_per_iter"]), f"{r['lr_g']:.4g}",
                  f"{r['lr_d']:.4g}", si(r["total_flops"])] + ([r["same_as"]] if repeats else [])
        table.add_row(*cells)
    console.print(table)
    res, first = spec.resources, rows[0]
    console.print(
        f"budget {first['iterations']} iterations x batch {first['batch']} = {first['kimg']:g} kimg per trial; "
        f"{len(trained)} trainings ({len(rows) - len(trained)} trials repeat an identical trial's training and "
        f"get a copy of its results); total training compute {si(total_flops, 'FLOPs')} "
        f"({FLOPS_CONVENTION.split(',')[0]})\n"
        f"per trial: {res.workers} worker(s) x ({res.cpus:g} CPU, {res.gpus:g} GPU); "
        f"at most {spec.max_concurrent or 'as many as fit'} at once; retries {spec.max_failures}\n"
        f"{spec.lr.describe()}\n"
        f"Dry run, nothing started. The sweep would train {len(trained)} runs on {_where(spec)}, "
        f"write to {spec.output_path()} and log to MLflow at {spec.tracking()}.",
        highlight=False, markup=False, soft_wrap=True)


def _where(spec: SweepSpec) -> str:
    """Where a sweep's trials would run, in words (and where the Ray address came from)."""
    address = spec.ray_target()
    if address == "local":
        return f"a new Ray instance on this machine ({socket.gethostname()}, {os.cpu_count()} CPUs)"
    source = f" (from ${RAY_ADDRESS_ENV})" if spec.ray_address is None else ""
    return f"the Ray cluster at {address}{source}"


def _print_outcome(outcome: Any, console: Console, plot_command: str) -> None:
    """The summary of a sweep: a table of every trial, then the trials that were retried, failed,
    hit a configuration error or diverged (each with its reason), disagreements of the MLflow
    store, counts, what to do next (commands that work as printed) and where the results are."""
    keys = sorted({k for t in outcome.trials for k in t.metrics if is_fd_key(k)})
    table = Table(title=f"sweep {outcome.name}", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ["trial", "status", "iterations", "kimg", *keys, LOSS_G, LOSS_D]:
        table.add_column(name, justify="left" if name in ("trial", "status") else "right", no_wrap=name == "trial")
    styles = {"finished": "green", "diverged": "yellow", "error": "red", "config_error": "red", "incomplete": "dim"}
    for t in outcome.trials:
        values = [f"{t.metrics[k]:.4g}" if k in t.metrics else "-" for k in [*keys, LOSS_G, LOSS_D]]
        table.add_row(t.name, f"[{styles[t.status]}]{t.status}[/]", str(t.iterations), f"{t.kimg:g}", *values)
    console.print(table)
    for t in outcome.trials:
        if t.failures or t.starts > 1:
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
    # MLflow 3's UI opens an experiment on its GenAI pages unless told the workflow type.
    page = f"#/experiments/{outcome.experiment_id}/runs?workflowType=machine_learning"
    if outcome.tracking_uri.startswith(("http://", "https://")):
        console.print(f"MLflow:     {outcome.tracking_uri.rstrip('/')}/{page}",
                      highlight=False, soft_wrap=True, markup=False)
    else:
        console.print(f"MLflow UI:  {installed_command('mlflow')} ui --backend-store-uri "
                      f"{shlex.quote(outcome.tracking_uri)}", highlight=False, soft_wrap=True, markup=False)
        console.print(f"            then open http://127.0.0.1:5000/{page}", highlight=False, soft_wrap=True,
                      markup=False)
    console.print(f"Report:     {plot_command}", highlight=False, soft_wrap=True, markup=False)


# ----------------------------------------------------------------------------------------------
# gat-sweep train
# ----------------------------------------------------------------------------------------------
def resolve_config(source: str, sets: list[str]) -> TrainConfig:
    """A preset name or a YAML/JSON file of TrainConfig fields, then ``key=value`` overrides.

    Nested fields use dots (``g.width=128``); values are read like YAML scalars (``1e-4``).
    A relative dataset path becomes absolute. Raises FileNotFoundError or ConfigError.
    """
    if source in PRESETS:
        data = get_preset(source).to_dict()
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of TrainConfig fields")
        data = TrainConfig.from_dict(loaded).to_dict()
    for item in sets:
        apply_set(data, item, "g.width=128", known_only=True)
    if data["dataset"] not in EMBEDDED_DATASETS:
        data["dataset"] = str(Path(data["dataset"]).expanduser().absolute())
    return TrainConfig.from_dict(data)


@app.command()
def train(
    config: Annotated[str, typer.Argument(
        help=f"Preset ({', '.join(PRESETS)}) or a YAML/JSON file of TrainConfig fields.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field, key=value; nested with dots (g.width=128). Repeatable.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default outputs/train/NAME, the config's name).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print config, parameter counts and FLOPs; do not train.")] = False,
) -> None:
    """Train one run in this process (no Ray, no MLflow), with a progress bar.

    The run directory gets config.json, stats.jsonl, checkpoints/, samples/ and result.json.
    Running the same command again resumes from the last checkpoint; a finished run returns at
    once (raise iterations to continue it).

    **Examples:**

      gat-sweep train digits

      gat-sweep train GAT-B/2 --dry-run

      gat-sweep train tiny --set g.width=128 --set d.width=128 --set iterations=50

      gat-sweep train my_config.yaml --out outputs/debug
    """
    with user_errors():
        cfg = resolve_config(config, set_ or [])
        run_dir = (out or Path("outputs/train") / cfg.name.replace("/", "-")).absolute()
        if dry_run:
            _print_config(cfg, run_dir)
            return
        from core.train import train as train_run

        try:
            result = train_run(cfg, run_dir, progress=True)
        except KeyboardInterrupt:
            err_console.print(f"interrupted; run the same command again to resume {escape(str(run_dir))} "
                              "from its last checkpoint", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    style = "green" if result.status == "finished" else "yellow"
    if result.reason:
        console.print(f"[yellow]diverged:[/] {escape(result.reason)}", highlight=False)
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())
                        if is_progress_key(k))
    console.print(f"[{style}]{result.status}[/] after {result.iterations} iterations "
                  f"({result.kimg:g} kimg): {metrics}\nrun directory {escape(str(result.run_dir))}", highlight=False)


def _print_config(cfg: TrainConfig, run_dir: Path) -> None:
    from core.flops import FLOPS_CONVENTION
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
        from core.model import count_parameters, repa_projector

        projector = count_parameters(repa_projector(cfg.d.width, cfg.repa_dim).to("meta"))
        encoder = cfg.repa_encoder or "not set (set repa_encoder to a local DINOv2 directory before training)"
        console.print(f"DINOv2 alignment (repa) on, weight {cfg.repa_weight:g}: D's projector has {projector:,} "
                      f"({si(projector)}) parameters, included in D's count; encoder {encoder}",
                      highlight=False, markup=False)


# ----------------------------------------------------------------------------------------------
# gat-sweep schema / encode / plot
# ----------------------------------------------------------------------------------------------
@app.command()
def schema() -> None:
    """Print the JSON schema of sweep files (for editor completion and validation).

    **Example:**  gat-sweep schema > sweep.schema.json
    """
    print(json.dumps(SweepSpec.model_json_schema(), indent=2))


@app.command()
def encode(
    images_dir: Annotated[Path, typer.Argument(help="ImageFolder: one sub-folder of images per class.")],
    out_dir: Annotated[Path, typer.Argument(help="Output directory for latent shards and manifest.json.")],
    vae: Annotated[str, typer.Option(
        help="Local AutoencoderKL directory (save_pretrained), e.g. SD-VAE; or 'digits' for the embedded "
        "digits VAE (prepared offline on first use; trained on 32 px digits, downsamples by 4; a local "
        "folder named digits is ./digits).")],
    resolution: Annotated[int, typer.Option(help="Image side in px after the ADM centre crop.")] = 256,
    batch: Annotated[int, typer.Option(help="Images per VAE forward pass.")] = 32,
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (VAE compute and stored latents).")] = "fp32",
    shard_size: Annotated[int | None, typer.Option(help="Images per shard file (default 2048).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader processes decoding images.")] = 0,
    allow_download: Annotated[bool, typer.Option(help="Allow fetching a hub VAE id (offline by default).")] = False,
    keep_images: Annotated[bool, typer.Option(
        "--keep-images", help="Also store the cropped images beside the latents (needed by repa: true, the "
        "DINOv2 alignment; 192 KiB per image at 256 px, held in memory when training).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count images and classes; encode nothing.")] = False,
) -> None:
    """Encode an image folder into VAE latents that sweeps and `gat-sweep train` can use as dataset.

    Resumable: run the same command again after an interruption (finished shards are kept).
    Use the output directory as `dataset:` in a sweep file, with `latent_size` = resolution / the
    VAE's downsampling factor (8 for SD-VAE, 4 for the embedded digits VAE; the line printed at the
    end gives the latent shape) and `num_classes` = the number of class folders.

    Runs on it are evaluated offline: with eval_metric auto and no inception_weights, the first
    evaluation trains a small classifier on the folder's own images and labels (cached; seconds for
    a few thousand small images) and runs log eval/fd_domain_1k (for 1,000 samples), a Frechet
    distance in that classifier's feature space; with inception_weights set, auto means Inception
    FID. Either way the reference is the images in IMAGES_DIR: keep them where they are.

    **Examples:**

      gat-sweep encode /data/imagenet/train /shared/latents/in256 --vae /weights/sd-vae-ft-ema --dry-run

      gat-sweep encode /data/imagenet/train /shared/latents/in256 --vae /weights/sd-vae-ft-ema --precision bf16 --batch 128

      gat-sweep encode my_digits/ latents/my_digits --vae digits --resolution 32   # offline, no download
    """
    with user_errors(ValueError):
        from core.encode import DEFAULT_SHARD_SIZE, encode_folder, image_folder

        if dry_run:
            folder = image_folder(images_dir, resolution)
            console.print(f"{len(folder.samples)} images in {len(folder.classes)} classes under "
                          f"{images_dir.absolute()} -> {out_dir.absolute()} at {resolution} px, {precision}, "
                          f"VAE {vae}", highlight=False, markup=False)
            return
        import torch

        if vae == "digits":  # the embedded VAE, wherever this machine's cache keeps it
            from core.digits import prepare_digits

            vae = str(prepare_digits().vae_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        manifest = encode_folder(images_dir, out_dir, vae, resolution=resolution, batch=batch, precision=precision,
                                 shard_size=shard_size or DEFAULT_SHARD_SIZE, device=device,
                                 allow_download=allow_download, num_workers=workers, keep_images=keep_images)
    info = json.loads(manifest.read_text())
    console.print(f"{info['count']} images, {len(info['classes'])} classes, latents {info['latent_shape']} "
                  f"-> {manifest.parent}", highlight=False, markup=False)


def _above_one(value: float) -> float:
    """Typer callback: a factor that must exceed 1."""
    if not value > 1:
        raise typer.BadParameter(f"must be a factor above 1 (e.g. 2), got {value:g}")
    return value


@app.command()
def plot(
    sweep: Annotated[str, typer.Argument(help="Sweep file, or a sweep name (MLflow experiment) or parent run id.")],
    out: Annotated[Path | None, typer.Option(help="Report directory (default OUTPUT_DIR/report of the sweep).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the sweep file's, else $MLFLOW_TRACKING_URI, else "
        "outputs/NAME/mlflow.db for a sweep NAME).")] = None,
    log: Annotated[bool, typer.Option(
        "--log/--no-log", help="Log the report, fits and exponents to the sweep's MLflow parent run.")] = True,
    tolerance: Annotated[float, typer.Option(
        callback=_above_one,
        help="LR transfer: the largest factor the best LR may move by over the sweep's widths and still "
        "'transfer' (the equivalence margin; set it before looking at the results).")] = 2.0,
) -> None:
    """Fit FD/FID against training compute for a sweep and write figures and an HTML report.

    Works on a finished sweep and on one still running. The report's files, the fitted exponents
    (fit/MODEL/alpha) and the LR-transfer verdicts are also logged to the sweep's MLflow parent
    run (artifacts under report/), unless --no-log.

    **Examples:**

      gat-sweep plot sweeps/width_lr.yaml

      gat-sweep plot width_lr --tracking-uri sqlite:///$PWD/outputs/width_lr/mlflow.db

      gat-sweep plot imagenet256_gat --tracking-uri http://mlflow:5000 --out report/

      gat-sweep plot sweeps/width_lr_full.yaml --tolerance 1.5
    """
    with user_errors():  # a missing sweep file is named at once, before the slow imports
        if Path(sweep).suffix in (".yaml", ".yml") or os.sep in sweep or Path(sweep).is_file():
            spec = load_spec(Path(sweep))
            name, uri, default_out = spec.name, tracking_uri or spec.tracking(), spec.output_path() / "report"
        else:
            default_dir = (Path("outputs") / sweep).absolute()
            name, uri = sweep, tracking_uri or default_tracking_uri(default_dir)
            default_out = default_dir / "report"
    from analysis.runs import SweepNotFound

    with user_errors(SweepNotFound):
        from analysis.report import make_report

        result = make_report(name, uri, out or default_out, tolerance=math.log(tolerance))
    console.print(result.summary, highlight=False, markup=False)
    console.print(f"report {result.html}", highlight=False, markup=False)
    if log:
        from mlflow.exceptions import MlflowException

        from analysis.report import log_report

        try:
            run_id = log_report(result)
        except (MlflowException, OSError) as err:  # the report on disk stands; say why MLflow has no copy
            console.print(f"not logged to MLflow ({uri}): {type(err).__name__}: {err}", highlight=False, markup=False)
        else:
            console.print(f"logged to MLflow parent run {run_id} (artifacts report/)" if run_id is not None
                          else "not logged to MLflow: the sweep has no single parent run", highlight=False, markup=False)
