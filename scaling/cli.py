"""The ``gat-sweep`` command line (typer + rich).

Commands: ``run`` (a sweep file -> Ray Tune trials -> MLflow), ``train`` (one run in-process, no
Ray), ``schema`` (the sweep file's JSON schema), ``encode`` (images -> VAE latents), ``plot``
(a sweep's report) and ``coord-check`` (how G's and D's activations and updates scale with
width). Heavy libraries (torch, ray, mlflow) are imported inside the commands, so ``--help`` is
quick. Mistakes a user can fix (a bad sweep file, an impossible config, a missing
file) print one message without a traceback and exit with status 2; a sweep with failed trials
exits with status 1, an interrupted one with 130 (Ctrl-C) or 143 (SIGTERM, handled as Ctrl-C).
``--json`` on ``run`` puts only JSON on stdout (the dry run's trials, or the outcome) for
scripts; the human lines go to stderr then. The tables and summaries the commands print are
:mod:`scaling.display`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from pydantic import ValidationError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from rich.console import Console
from rich.markup import escape

from core.config import ConfigError, TrainConfig
from core.presets import PRESETS, get_preset
from core.records import TRANSFER_TOLERANCE
from scaling.display import (
    WHERE_KEYS,
    dataset_problem,
    plot_command,
    print_config,
    print_coord_check,
    print_coord_plan,
    print_outcome,
    print_train_result,
    print_trials,
)
from scaling.grid import COORD_CHECK_BATCH, COORD_CHECK_SEEDS, COORD_CHECK_STEPS, coord_check_trials
from scaling.lock import sweep_lock
from scaling.next_sweep import write_next_sweep
from scaling.plan import check_settings, plan_sweep
from scaling.spec import (ReportSpec, SweepSpec, absolute_paths, check_tracking_uri, default_output_dir,
                          default_tracking_uri, load_spec)
from scaling.yamlio import apply_set, load_yaml

class _PlainHelp:
    """Help that reads as command-line help does: on/off options as flags (typer 0.29 writes
    ``--dry-run <bool>``) and arguments in capitals in the usage line (``SWEEP_FILE``, where typer
    writes ``{sweep_file}``). Mixed into typer's command and group classes."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:  # a metavar is what help shows of a parameter's value
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
            elif isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
        return params

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]  # type: ignore[misc]


class Command(_PlainHelp, TyperCommand):
    """A ``gat-sweep`` command (:class:`_PlainHelp`)."""


class Group(_PlainHelp, TyperGroup):
    """The ``gat-sweep`` command group (:class:`_PlainHelp`)."""


app = typer.Typer(
    name="gat-sweep", cls=Group,
    help="Scaling-law sweeps of GAT (transformer GANs in a VAE latent space) with Ray Tune and MLflow.",
    no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown",
)
INTERRUPTED, TERMINATED = 130, 143
"""Exit status after Ctrl-C (128 + SIGINT) and after SIGTERM (128 + 15: what SLURM and Kubernetes
send to stop a job), as shells report them."""
RAY_ENVIRONMENT = (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                   ("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1"),
                   ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1"), ("MLFLOW_LOGGING_LEVEL", "WARNING"))
"""Defaults the sweep driver sets before Ray and MLflow load: offline, and quiet (our own progress
lines replace Ray's and MLflow's banners); and no C++ failure-signal handler in Ray's processes,
which would take SIGTERM from the driver's own handler and abort with a stack dump (exit 134)."""
RAY_LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's single-machine mode (its default on macOS and Windows), set for a sweep that starts its own
Ray instance: the node's address is 127.0.0.1, so its driver, GCS, raylet and workers listen on
loopback only. Ray reads it when it is imported."""
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


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[threading.Event]:
    """Handle SIGTERM as Ctrl-C for the block: call whatever handles SIGINT at that moment (Ray
    Tune's handler stops the trials; Python's raises KeyboardInterrupt; an ignored SIGINT ignores
    it too). Yields an event set once SIGTERM came (:func:`stop_status`)."""
    received = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        received.set()
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        elif handler == signal.SIG_DFL:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (the processes it starts inherit them), and put
    the earlier values back after it, so that a caller running the command in its own process
    (a test, a notebook) keeps its environment."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def stop_status(terminated: threading.Event) -> int:
    """The exit status of a command stopped by SIGTERM (``terminated`` set) or else Ctrl-C."""
    return TERMINATED if terminated.is_set() else INTERRUPTED


def stop_word(terminated: threading.Event) -> str:
    """How a stopped command says why it stopped."""
    return "terminated (SIGTERM)" if terminated.is_set() else "interrupted"


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


# ----------------------------------------------------------------------------------------------
# gat-sweep run
# ----------------------------------------------------------------------------------------------
@app.command(cls=Command)
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
    interrupted (Ctrl-C), 143 if it was stopped by SIGTERM (as by SLURM or Kubernetes; handled as
    Ctrl-C), 2 for a mistake in the sweep file or the options.

    **Overrides:** `--set KEY=VALUE` sets a key of the sweep file (dots for nested keys) as if
    the file said it; the sweep's output directory records the merged file as sweep.yaml.

    **Resuming and growing:** run the same command again. Trials that ended (finished or
    diverged) are not rerun; the others continue from their checkpoints; MLflow runs are
    reattached. A sweep grows: add widths, LRs or seeds to the file (or with --set) and
    only the new trials train, the others are kept. Any other change to existing trials (batch,
    iterations, ...) makes a new sweep, and the command stops with an error naming the change:
    give it a new name (`--set name=width_lr_b64`) or output_dir. `--dry-run` says which of
    these the output directory holds and how many trainings are left.

    **Examples:**

      gat-sweep run sweeps/width_lr.yaml --dry-run

      gat-sweep run sweeps/width_lr.yaml

      gat-sweep run sweeps/width_lr.yaml --set budget.iterations=100 --set name=width_lr_short

      gat-sweep run sweeps/imagenet256_gat.yaml --address auto --tracking-uri http://mlflow:5000
    """
    started = time.monotonic()  # the progress lines' elapsed time counts from here
    out_console = err_console if json_ else console  # --json: stdout holds the JSON alone
    with user_errors():
        spec = load_spec(sweep_file, set_ or [])
        overrides = {"ray_address": address, "tracking_uri": tracking_uri,
                     "output_dir": str(output_dir) if output_dir else None}
        spec = spec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        moved = bool(overrides["tracking_uri"] or overrides["output_dir"]) or any(
            item.split("=", 1)[0].strip() in WHERE_KEYS for item in set_ or [])
        if dry_run:
            print_trials(plan_sweep(spec, sweep_file), console, as_json=json_)
            return
        check_settings(spec)  # before the slow imports: a quick answer
        # Likewise: a second driver is refused before torch and Ray load (the driver takes the lock
        # again, which this process may).
        settings = {**{key: os.environ.get(key, value) for key, value in RAY_ENVIRONMENT},
                    **(RAY_LOOPBACK_ONLY if not spec.is_cluster() else {})}
        with sweep_lock(spec.output_path()), sigterm_as_ctrl_c() as terminated, environment(settings):
            sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
            from scaling.tune import run_checked_sweep

            try:
                outcome = run_checked_sweep(spec, sweep_file, console=out_console, started=started)
            except KeyboardInterrupt:
                err_console.print(f"{stop_word(terminated)}; run the same command again to resume: ended trials are "
                                  "kept, the others continue from their checkpoints", highlight=False, soft_wrap=True)
                raise typer.Exit(stop_status(terminated)) from None
    print_outcome(outcome, out_console, plot_command(sweep_file, spec, moved))
    status = stop_status(terminated) if outcome.interrupted else 1 if outcome.failed else 0
    if json_:
        summary = {**dataclasses.asdict(outcome), "failed": outcome.failed, "interrupted": outcome.interrupted,
                   "exit_status": status}
        print(json.dumps(summary, indent=2, default=str))
    if status:
        raise typer.Exit(status)


# ----------------------------------------------------------------------------------------------
# gat-sweep train
# ----------------------------------------------------------------------------------------------
def resolve_config(source: str, sets: list[str]) -> TrainConfig:
    """A preset name or a YAML/JSON file of TrainConfig fields, then ``key=value`` overrides.

    Nested fields use dots (``g.width=128``); values are read like YAML scalars (``1e-4``).
    Relative paths become absolute (:func:`scaling.spec.absolute_paths`). A file is
    validated before the overrides, so that its own mistakes are named as its. Raises
    FileNotFoundError or ConfigError.
    """
    start = get_preset(source) if source in PRESETS else _config_file(source)
    data = start.to_dict()  # every field, so that an override of an unknown one is refused
    for item in sets:
        apply_set(data, item, "g.width=128", known_only=True)
    return TrainConfig.from_dict(absolute_paths(data))


def _config_file(source: str) -> TrainConfig:
    """The TrainConfig a YAML/JSON file of its fields describes; FileNotFoundError for a source
    that is neither a preset nor a file, ConfigError for what the file gets wrong."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    loaded = load_yaml(path)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig fields")
    return TrainConfig.from_dict(loaded)


TRAIN_OUTPUTS = Path("outputs/train")
"""Where `gat-sweep train` puts a run directory without --out (under the current directory)."""


def run_dir_name(name: str) -> str:
    """The directory name of run ``name`` under :data:`TRAIN_OUTPUTS`: '/' becomes '-' (GAT-B/2 ->
    GAT-B-2). Raises ConfigError for a name that would not stay a directory there ('', '.', '..')."""
    folder = name.replace("/", "-")
    if folder in ("", ".", "..") or "\0" in folder:
        raise ConfigError(f"name: {name!r} cannot name a run directory (it would not stay under {TRAIN_OUTPUTS}); "
                          "choose another name, or give --out")
    return folder


@app.command(cls=Command)
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
        run_dir = (out or TRAIN_OUTPUTS / run_dir_name(cfg.name)).absolute()
        if dry_run:
            print_config(cfg, run_dir, console)
            return
        missing = dataset_problem(cfg)
        if missing:
            raise FileNotFoundError(missing)
        from core.gan.train import train as train_run

        with sigterm_as_ctrl_c() as terminated:
            try:
                result = train_run(cfg, run_dir, progress=True)
            except KeyboardInterrupt:
                err_console.print(f"{stop_word(terminated)}; run the same command again to resume "
                                  f"{escape(str(run_dir))} from its last checkpoint", highlight=False, soft_wrap=True)
                raise typer.Exit(stop_status(terminated)) from None
    print_train_result(result, console)


# ----------------------------------------------------------------------------------------------
# gat-sweep schema / encode / plot
# ----------------------------------------------------------------------------------------------
@app.command(cls=Command)
def schema() -> None:
    """Print the JSON schema of sweep files (for editor completion and validation).

    **Example:**  gat-sweep schema > sweep.schema.json
    """
    print(json.dumps(SweepSpec.model_json_schema(), indent=2))


@app.command(cls=Command)
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
        "DINOv2 alignment; 192 KiB per image at 256 px on disk, read per batch when training).")] = False,
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
        from core.data.encode import DEFAULT_SHARD_SIZE, encode_folder, image_folder

        if dry_run:
            folder = image_folder(images_dir, resolution)
            console.print(f"{len(folder.samples)} images in {len(folder.classes)} classes under "
                          f"{images_dir.absolute()} -> {out_dir.absolute()} at {resolution} px, {precision}, "
                          f"VAE {vae}", highlight=False, markup=False)
            return
        from core.gan.train import resolve_device

        if vae == "digits":  # the embedded VAE, wherever this machine's cache keeps it
            from core.data.digits import prepare_digits

            vae = str(prepare_digits().vae_dir)
        manifest = encode_folder(images_dir, out_dir, vae, resolution=resolution, batch=batch, precision=precision,
                                 shard_size=shard_size or DEFAULT_SHARD_SIZE, device=resolve_device(device),
                                 allow_download=allow_download, num_workers=workers, keep_images=keep_images)
    info = json.loads(manifest.read_text())
    console.print(f"{info['count']} images, {len(info['classes'])} classes, latents {info['latent_shape']} "
                  f"-> {manifest.parent}", highlight=False, markup=False)


def _above_one(value: float) -> float:
    """Typer callback: a factor that must exceed 1."""
    if not value > 1:
        raise typer.BadParameter(f"must be a factor above 1 (e.g. 2), got {value:g}")
    return value


def _positive_ints(text: str, option: str) -> list[int]:
    """'384,768' -> [384, 768]; ConfigError naming ``option`` otherwise."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option} takes positive integers separated by commas, e.g. 384,768; got {text!r}")
    return values


@app.command(cls=Command)
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
        "'transfer' (the equivalence margin; set it before looking at the results).")] = TRANSFER_TOLERANCE,
    target_widths: Annotated[str | None, typer.Option(
        help="Widths at which to predict the best LR, comma-separated (default: the sweep file's "
        "report.target_widths, else the paper's 384,768,1024,1152).")] = None,
) -> None:
    """Fit FD/FID against training compute for a sweep and write figures and an HTML report.

    Works on a finished sweep and on one still running. The report opens with the answer: per LR
    rule the verdict and what binds it, the exponent of the best LR against width and the rule it
    implies, the best LR at the target widths with a backtest, and the sweep to run next, which is
    written beside the report as next_sweep.yaml. The report's files, the fitted exponents
    (fit/MODEL/alpha) and the LR-transfer verdicts are also logged to the sweep's MLflow parent
    run (artifacts under report/, the answer as its description), unless --no-log.

    **Examples:**

      gat-sweep plot sweeps/width_lr.yaml

      gat-sweep plot width_lr --tracking-uri sqlite:///$PWD/outputs/width_lr/mlflow.db

      gat-sweep plot imagenet256_gat --tracking-uri http://mlflow:5000 --out report/

      gat-sweep plot sweeps/width_lr_full.yaml --tolerance 1.5

      gat-sweep plot sweeps/width_lr_wide.yaml --target-widths 256,768
    """
    with user_errors():  # a missing sweep file is named at once, before the slow imports
        if Path(sweep).suffix in (".yaml", ".yml") or os.sep in sweep or Path(sweep).is_file():
            spec = load_spec(Path(sweep))
            name, uri, default_out = spec.name, tracking_uri or spec.tracking(), spec.output_path() / "report"
            sweep_text, widths = spec.file_text(), spec.report.target_widths
        else:
            default_dir = default_output_dir(sweep)
            name, uri = sweep, tracking_uri or default_tracking_uri(default_dir)
            default_out = default_dir / "report"
            recorded = default_dir / "sweep.yaml"   # the sweep file as run, when it ran here
            sweep_text = recorded.read_text() if recorded.is_file() else None
            widths = ReportSpec().target_widths
        if target_widths is not None:
            widths = _positive_ints(target_widths, "--target-widths")
        check_tracking_uri(uri)
    from analysis.runs import SweepNotFound

    report_dir = out or default_out

    def next_sweep(suggestion) -> str | None:
        """Write the suggested sweep beside the report; None (the answer describes it) without the
        analysed sweep's file, or when the suggestion is not a valid sweep file."""
        if sweep_text is None:
            return None
        try:
            return write_next_sweep(sweep_text, name, suggestion, report_dir)
        except ConfigError as err:
            console.print(f"no next_sweep.yaml: {err}", highlight=False, markup=False)
            return None

    with user_errors(SweepNotFound):
        from analysis.report import make_report

        result = make_report(name, uri, report_dir, tolerance=math.log(tolerance), target_widths=tuple(widths),
                             next_sweep_writer=next_sweep)
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


# ----------------------------------------------------------------------------------------------
# gat-sweep coord-check
# ----------------------------------------------------------------------------------------------
COORD_CHECK_DIR = "coord_check"
"""Default directory of a coordinate check's files under the sweep's output directory, and the
artifact directory of its parent run in MLflow."""


def _widths(value: str | None) -> list[int] | None:
    """Typer callback: ``16,32,64`` -> [16, 32, 64] (None stays None)."""
    if value is None:
        return None
    try:
        widths = [int(part) for part in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"write comma-separated widths, e.g. 16,32,64; got {value!r}") from None
    if any(w <= 0 for w in widths):
        raise typer.BadParameter(f"widths must be positive, got {value!r}")
    return widths


def _positive(value: float | None) -> float | None:
    """Typer callback: a number that must be positive (None stays None)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be positive, got {value:g}")
    return value


@app.command("coord-check", cls=Command)
def coord_check(
    sweep_file: Annotated[Path, typer.Argument(
        help="Sweep file (YAML): its model, LR rules, base LRs and base width.")],
    widths: Annotated[str | None, typer.Option(
        callback=_widths, help="Comma-separated widths (default: the sweep file's widths, or its sizes').")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps of G and D per run.")] = COORD_CHECK_STEPS,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per width and rule (0, 1, ...).")] = COORD_CHECK_SEEDS,
    lr: Annotated[float | None, typer.Option(
        callback=_positive, help="Base LR (default: the middle of the sweep file's base LRs).")] = None,
    batch: Annotated[int, typer.Option(
        min=1, help="Training batch per step (the sweep's own, e.g. --batch 64, measures the same update "
        "sizes more slowly).")] = COORD_CHECK_BATCH,
    out: Annotated[Path | None, typer.Option(
        help="Output directory (default OUTPUT_DIR/coord_check of the sweep).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a key of the sweep file, key=value, dotted (lr.rules=[constant,gat,mup], "
        "model.depths=[8]). Repeatable.")] = None,
    log: Annotated[bool, typer.Option(
        "--log/--no-log", help="Log the figure and JSON to the sweep's MLflow parent run, if the sweep has "
        "been run.")] = True,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the runs and their learning rates; train nothing.")] = False,
) -> None:
    """Coordinate check: how the size of G's and D's activations, and of their change per optimiser
    step, scales with width under each LR rule of SWEEP_FILE (Yang et al., Tensor Programs V).

    Trains every width under every rule for a few steps, from a few seeds, with the trainer's own
    step (loss, MNG, augmentation, R1/R2, AdamW with the rule's per-kind LRs) on random latents of
    the sweep's latent shape (nothing to prepare, no evaluation), and measures per layer group (G:
    mapping network, each block, output; D: each block, CLS feature, logit) the RMS of the
    activations on a fixed probe batch and of their change per step. Flat curves against width
    mean the update size transfers across widths; growing ones that updates blow up as the network
    widens (the LR is too high at large widths), shrinking ones that they vanish.

    Writes coord_check.json (tidy records) and coord_check.png (one panel per rule x network x
    quantity) and prints the slopes of the change against width. If the sweep has been run, both
    files are also logged to its MLflow parent run (artifacts coord_check/), unless --no-log.
    Widths 16-256 under three rules take under a minute on 2 CPU cores (docs/ANALYSIS.md).

    **Examples:**

      gat-sweep coord-check sweeps/width_lr.yaml --set lr.rules=[constant,gat,mup] --widths 16,32,64,128,256

      gat-sweep coord-check sweeps/width_lr.yaml --dry-run

      gat-sweep coord-check sweeps/width_lr_wide.yaml --set lr.rules=[gat,power0.62] --steps 10 --seeds 3

      gat-sweep coord-check sweeps/width_lr.yaml --lr 4e-3 --out outputs/coord_lr4e-3 --no-log
    """
    with user_errors():
        spec = load_spec(sweep_file, set_ or [])
        trials = coord_check_trials(spec, widths, lr, seeds, batch)
        out_dir = (out or spec.output_path() / COORD_CHECK_DIR).absolute()
        print_coord_plan(spec, trials, steps, out_dir, console)
        if dry_run:
            return
        from core.gan.coord_check import run as run_coord_check
        from core.gan.coord_check import save

        def report(width: int, runs: int, seconds: float) -> None:
            console.print(f"width {width}: {runs} runs in {seconds:.1f} s", highlight=False)

        records, info = run_coord_check([(t.lr_rule, t.config) for t in trials], steps, report=report)
        settings = {"sweep": spec.name, "sweep_file": str(sweep_file.absolute()), "rules": list(spec.lr.rules),
                    "widths": sorted({t.config.g.width for t in trials}), "base_lr": trials[0].base_lr,
                    "base_width": spec.lr.base_width, "steps": steps, "seeds": seeds, "batch": batch,
                    "depth": trials[0].config.g.depth, "patch": trials[0].config.patch, **info,
                    "load_average": os.getloadavg()}
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = save(out_dir / f"{COORD_CHECK_DIR}.json", records, settings)
    from analysis import coord_check as analysis

    loaded_settings, loaded = analysis.load(json_path)
    png = analysis.plot(loaded, loaded_settings, out_dir / f"{COORD_CHECK_DIR}.png")
    print_coord_check(analysis.slope_table(loaded), [json_path, png], console)
    if log:
        _log_coord_check(spec, [json_path, png])


def _log_coord_check(spec: SweepSpec, files: list[Path]) -> None:
    """Log a coordinate check's files to the sweep's MLflow parent run (artifacts coord_check/), if the
    sweep's output directory records one; say where they went, or why not."""
    from scaling.plan import recorded_parent_run

    parent = recorded_parent_run(spec.output_path())
    if parent is None:
        console.print(f"not logged to MLflow: {spec.output_path()} holds no run of sweep {spec.name} yet",
                      highlight=False, markup=False)
        return
    from mlflow.exceptions import MlflowException

    from scaling.tracking import log_files

    uri, run_id = parent
    try:
        log_files(uri, run_id, files, COORD_CHECK_DIR)
    except (MlflowException, OSError) as err:  # the files on disk stand; say why MLflow has no copy
        console.print(f"not logged to MLflow ({uri}): {type(err).__name__}: {err}", highlight=False, markup=False)
    else:
        console.print(f"logged to MLflow parent run {run_id} (artifacts {COORD_CHECK_DIR}/)", highlight=False,
                      markup=False)
