"""Sweep files: YAML -> a validated :class:`SweepSpec` (pydantic, unknown keys rejected).

A sweep file names the dataset, a model grid (named sizes and/or widths x depths), base learning
rates and LR rules, seeds, a training budget, the evaluation, resources per trial and where results
go. ``gat-sweep schema`` prints the JSON schema of this file for editors. Example::

    name: width_lr
    dataset: digits                # 'digits', 'random' or a directory from `gat-sweep encode`
    preset: digits                 # optional starting TrainConfig (core.presets)
    model: {widths: [16, 32, 64], depths: [4], head_dim: 16, patch: 2}
    lr: {base_lrs: [2e-3, 4e-3, 8e-3, 1.6e-2], rules: [gat, constant], base_width: 32}
    seeds: [0]
    budget: {iterations: 200}      # or {kimg: 6.4}
    eval: {every: 100, metric: auto, samples: 1000}
    train: {d_proj_dim: 256, ema_decay: 0.97}   # any other TrainConfig field
    resources: {cpus: 1, gpus: 0, workers: 1}
    max_concurrent: 2

Relative paths (``dataset``, ``output_dir``, ``train.inception_weights``, ``train.repa_encoder``,
``train.fid_ref_npz``) are relative to the directory the command runs in.
Numbers in scientific notation without a dot (``1e-4``, which YAML 1.1 reads as a string) are
read as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlparse

import yaml
import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from core.config import MAX_ITERATIONS, MNG_LEVELS, PATH_FIELDS, SIZES, SWEEP_FIELDS, ConfigError, TrainConfig
from core.metrics import EMBEDDED_DATASETS, dataset_kind, resolve_metric, too_few_samples
from core.presets import PRESETS, get_preset
from core.lr_rules import POWER_PATTERN, RULES, needs_base_width, rule_name
from scaling.yamlio import apply_set, read_yaml

NODE_LOCAL_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")
"""Directories private to each machine of a cluster (refused for output_dir with a Ray address)."""

RAY_ADDRESS_ENV, TRACKING_URI_ENV = "RAY_ADDRESS", "MLFLOW_TRACKING_URI"
"""The environment variables Ray and MLflow read themselves; a sweep honours them below its own
settings: command-line flag > sweep file > environment > default (docs/CLUSTER.md)."""



# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
def _as_list(value: Any) -> Any:
    """Let a single value stand for a one-element list (``widths: 64``)."""
    return value if isinstance(value, list) else [value]


def _not_bool(value: Any) -> Any:
    """Refuse true/false where a number is expected (pydantic reads ``widths: [true]`` as width 1)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


_NUMBER = BeforeValidator(_not_bool)
Int = Annotated[int, _NUMBER]
Float = Annotated[float, _NUMBER]
PositiveInt = Annotated[pydantic.PositiveInt, _NUMBER]
PositiveFloat = Annotated[pydantic.PositiveFloat, _NUMBER]
NonNegativeInt = Annotated[pydantic.NonNegativeInt, _NUMBER]
"""Numbers of a sweep file: never a boolean, and (``_Strict``) never infinite or NaN."""
IntList = Annotated[list[PositiveInt], BeforeValidator(_as_list)]
FloatList = Annotated[list[PositiveFloat], BeforeValidator(_as_list)]
RuleName = Annotated[str, AfterValidator(rule_name), WithJsonSchema({
    "anyOf": [{"enum": list(RULES)}, {"type": "string", "pattern": POWER_PATTERN}],
    "description": "constant, gat, mup, or power<a> (a decimal exponent: power0.5, power1, power-0.25)"})]
"""An LR rule's name (``core.lr_rules``), in its canonical spelling (``power0.50`` -> ``power0.5``);
the JSON schema lists the named rules and the pattern of ``power<a>``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


class NetGrid(_Strict):
    """Transformer shapes to sweep: named sizes and/or every width x depth combination."""

    sizes: Annotated[list[Literal[tuple(SIZES)]], BeforeValidator(_as_list)] = []  # type: ignore[valid-type]
    """Named sizes of the paper (S, B, L, XL: depth, width and heads from its Table 1)."""
    widths: IntList = []
    """Widths C to combine with every depth."""
    depths: IntList = []
    """Depths (number of blocks); the generator needs multiples of 4 (one MNG head per quarter)."""
    heads: PositiveInt | None = None
    """Fixed number of attention heads for every width (head dim grows with width)."""
    head_dim: PositiveInt | None = None
    """Fixed head dimension (heads = width / head_dim); give heads or head_dim with widths."""

    @model_validator(mode="after")
    def _check_shapes(self) -> NetGrid:
        if not self.sizes and not self.widths:
            raise ValueError("give sizes (S, B, L, XL) and/or widths with depths")
        if bool(self.widths) != bool(self.depths):
            raise ValueError("widths and depths go together: give both lists")
        if self.widths and (self.heads is None) == (self.head_dim is None):
            raise ValueError("with widths, give exactly one of heads (fixed count) or head_dim (fixed size)")
        if not self.widths and (self.heads is not None or self.head_dim is not None):
            raise ValueError("heads/head_dim apply to widths; named sizes fix their own heads")
        bad = []
        for width in self.widths:
            rule = f"heads={self.heads}" if self.heads is not None else f"head_dim={self.head_dim}"
            if width % (self.heads or self.head_dim):
                bad.append(f"width {width} is not divisible by {rule}")
            elif (head_dim := self.head_dim or width // self.heads) % 4:
                bad.append(f"width {width} with {rule} gives head dim {head_dim}, "
                           "not divisible by 4 (2-D RoPE)")
        if bad:
            raise ValueError("; ".join(bad))
        return self

    def shapes(self) -> list[tuple[str, int, int, int]]:
        """(label, width, depth, heads) for every grid point: named sizes first, then widths x depths."""
        out = [(name, SIZES[name].width, SIZES[name].depth, SIZES[name].heads) for name in self.sizes]
        for width in self.widths:
            heads = self.heads if self.heads is not None else width // self.head_dim
            out += [(f"w{width}-d{depth}", width, depth, heads) for depth in self.depths]
        return out


class ModelGrid(NetGrid):
    """The generator grid, the patch size(s) and the discriminator (tied to G or its own grid)."""

    patch: IntList = [2]
    """Patch size(s) p, shared by G and D (the '/2' in GAT-B/2)."""
    discriminator: NetGrid | None = None
    """Omit (the paper's setting) for D = G at every grid point; or a grid of its own, crossed with G's."""

    @model_validator(mode="after")
    def _check_generator_depths(self) -> ModelGrid:
        bad = [d for d in self.depths if d % MNG_LEVELS]
        if bad:
            raise ValueError(f"generator depths {bad} are not multiples of {MNG_LEVELS} "
                             "(one MNG output head after each quarter of the blocks)")
        return self


class LRSpec(_Strict):
    """Base learning rates and the rules that turn them into per-width LRs (core/lr_rules.py)."""

    base_lrs: FloatList = Field(min_length=1)
    """Learning rates at the base width (e.g. [1e-4, 2e-4, 4e-4])."""
    rules: Annotated[list[RuleName], BeforeValidator(_as_list), Field(min_length=1)] = ["gat"]
    """LR rules to cross with the base LRs: constant, gat (the paper's), mup, or power<a> (lr = base_lr *
    (base_width / width)^a for a decimal a, e.g. power0.62, power-0.25; power0.50 is written power0.5)."""
    base_width: PositiveInt | None = Field(None, validate_default=True)
    """Width at which a rule returns the base LR unchanged (the paper: 768, GAT-B); required with
    the width-aware rules (gat, mup, power<a>), unused by constant."""

    @field_validator("rules")
    @classmethod
    def _each_rule_once(cls, value: list[str]) -> list[str]:
        twice = sorted({rule for rule in value if value.count(rule) > 1})
        if twice:
            hint = " (a power<a> rule is named by its number: power0.50 is power0.5)" if any(
                rule not in RULES for rule in twice) else ""
            raise ValueError(f"{', '.join(twice)} listed more than once{hint}")
        return value

    @field_validator("base_width")
    @classmethod
    def _required_by_width_aware_rules(cls, value: int | None, info: ValidationInfo) -> int | None:
        aware = [rule for rule in info.data.get("rules", []) if needs_base_width(rule)]
        if aware and value is None:
            raise ValueError(
                f"required with the {' and '.join(aware)} rule: the width at which the rule returns the "
                "base LR unchanged (the paper uses 768, GAT-B's width), e.g. base_width: 768")
        return value

    def describe(self) -> str:
        """One line for the dry run: rules, base LRs and the base width."""
        width = f"base width {self.base_width}" if self.base_width is not None else "no base width (constant only)"
        return f"lr rules {', '.join(self.rules)}; base LRs {', '.join(f'{lr:g}' for lr in self.base_lrs)}; {width}"


class Budget(_Strict):
    """Training length of every trial: exactly one of iterations or kimg."""

    iterations: Annotated[PositiveInt, Field(le=MAX_ITERATIONS)] | None = None
    """Iterations (one D step + one G step each)."""
    kimg: PositiveFloat | None = None
    """Thousands of real images; iterations = ceil(kimg * 1000 / batch)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        if (self.iterations is None) == (self.kimg is None):
            raise ValueError("give exactly one of iterations or kimg")
        return self

    def iterations_for(self, batch: int) -> int:
        """Iterations at this batch size (images per iteration)."""
        if self.iterations is not None:
            return self.iterations
        return math.ceil(self.kimg * 1000 / batch)


class EvalSpec(_Strict):
    """When and how trials are evaluated (Frechet distance of the EMA generator)."""

    every: Int = Field(0, ge=-1)
    """Iterations between evaluations; 0 = only at the end, -1 = never."""
    metric: Literal["auto", "fd_domain", "fid"] = "auto"
    """fd_domain (the dataset's own classifier: the digits', or one trained on an encoded folder),
    fid (local Inception weights), or auto (fid for a folder with train.inception_weights,
    fd_domain otherwise)."""
    samples: PositiveInt = 1000
    """Generated samples per evaluation (the 5K in FID-5K)."""


class Resources(_Strict):
    """What one trial reserves. Several DDP workers per trial go through Ray Train."""

    cpus: PositiveFloat = 1.0
    """CPUs per worker (1 gives one torch thread)."""
    gpus: Float = Field(0.0, ge=0.0, le=1.0)
    """GPUs per worker: 0, a fraction (several trials share a GPU) or 1."""
    workers: PositiveInt = 1
    """DDP processes per trial (Ray Train TorchTrainer when > 1)."""

    def torch_threads(self) -> int:
        """CPU threads torch uses in a trial's process: its CPUs, at least 1 (a trial's own
        ``train.num_threads`` overrides it, as ``core.gan.train.train`` applies that)."""
        return max(1, int(self.cpus))

    @model_validator(mode="after")
    def _whole_gpus_for_ddp(self) -> Resources:
        if self.workers > 1 and self.gpus not in (0.0, 1.0):
            raise ValueError("with several DDP workers each worker needs gpus: 1 (or 0 for CPU)")
        return self


def _train_overrides_model() -> type[BaseModel]:
    """A strict pydantic model of every TrainConfig field a sweep does not set itself: numbers are
    never booleans, infinite or NaN, and booleans are true or false (not 1 or 'yes')."""
    hints = get_type_hints(TrainConfig)
    exact = {int: Int, float: Float, bool: Annotated[bool, Strict()]}
    fields: dict[str, Any] = {
        f.name: (exact.get(hints[f.name], hints[f.name]) | None, None)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in SWEEP_FIELDS
    }
    return create_model(
        "TrainOverrides",
        __config__=ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False),
        __doc__="TrainConfig fields (core/config.py) applied to every trial.",
        **fields,
    )


TrainOverrides = _train_overrides_model()


class ReportSpec(_Strict):
    """What ``gat-sweep plot`` reports beyond the fits and verdicts."""

    target_widths: IntList = Field(default_factory=lambda: [net.width for net in SIZES.values()])
    """Widths at which the report predicts the best LR (default the paper's GAT-S/B/L/XL: 384, 768,
    1024, 1152); ``gat-sweep plot --target-widths`` overrides them."""


class SweepSpec(_Strict):
    """One sweep: the grid, the budget, the evaluation and where to run and log it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Sweep name: MLflow experiment and parent run name, default output directory."""
    description: str = ""
    dataset: str
    """'digits' (embedded default), 'random' (Gaussian latents, no evaluation), or a directory of
    latents written by `gat-sweep encode`."""
    preset: str | None = None
    """Optional starting TrainConfig from core.presets (e.g. 'digits'); TrainConfig defaults otherwise."""
    model: ModelGrid
    lr: LRSpec
    seeds: Annotated[list[NonNegativeInt], BeforeValidator(_as_list), Field(min_length=1)] = [0]
    budget: Budget
    eval: EvalSpec = EvalSpec()
    train: TrainOverrides = TrainOverrides()  # type: ignore[valid-type]
    """Any other TrainConfig field, the same for every trial (batch, d_proj_dim, precision, ...)."""
    resources: Resources = Resources()
    max_concurrent: PositiveInt | None = None
    """Most trials running at once (default: as many as the resources allow)."""
    max_failures: NonNegativeInt = 2
    """Retries of a crashed trial; each retry resumes from the trial's last checkpoint."""
    output_dir: str | None = None
    """Where the sweep writes (default outputs/<name>); on a cluster a path every node sees."""
    tracking_uri: str | None = None
    """MLflow tracking URI (http://host:port on a cluster); default $MLFLOW_TRACKING_URI, else a
    sqlite file in output_dir. --tracking-uri overrides it."""
    ray_address: str | None = None
    """Ray cluster to join (e.g. 'auto', 'ray://head:10001'); default $RAY_ADDRESS, else 'local'
    (start a Ray instance on this machine). --address overrides it."""
    report: ReportSpec = ReportSpec()
    """What `gat-sweep plot` reports: the widths at which it predicts the best LR."""
    _text: str | None = PrivateAttr(None)
    """The sweep file as run (:meth:`file_text`); set by :func:`load_spec`."""

    def file_text(self) -> str | None:
        """The sweep file as run, for ``<output_dir>/sweep.yaml``: the file's text, or with
        ``--set`` overrides the merged mapping as YAML under a comment naming the file and the
        overrides; None for a spec that :func:`load_spec` did not read."""
        return self._text

    @model_validator(mode="after")
    def _check_against_config(self) -> SweepSpec:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is unknown; choose one of: {', '.join(PRESETS)}")
        try:
            base = self.base_config()
        except ConfigError as err:
            raise ValueError(f"train: {err}") from err
        bad = [p for p in self.model.patch if base.latent_size % p]
        if bad:
            raise ValueError(f"model.patch {bad} does not divide latent_size={base.latent_size}")
        self._check_eval()
        return self

    def _check_eval(self) -> None:
        """Frechet distances need at least as many samples as feature dimensions (else the sample
        covariance is singular): :func:`core.metrics.too_few_samples`, the evaluator's rule, checked here
        so a sweep fails before anything starts."""
        if self.eval.every < 0 or self.dataset == "random":
            return
        metric = resolve_metric(self.eval.metric, dataset_kind(self.dataset),
                                self.base_config().inception_weights)
        problem = too_few_samples(metric, self.eval.samples, "eval.samples")
        if problem:
            raise ValueError(problem)

    def base_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from: preset, then ``train``, dataset, budget and eval.

        Raises ConfigError for an impossible combination.
        """
        base = get_preset(self.preset) if self.preset else TrainConfig()
        overrides = absolute_paths(self.train.model_dump(exclude_unset=True))
        base = base.replace(**overrides)
        return base.replace(
            dataset=dataset_path(self.dataset), iterations=self.budget.iterations_for(base.batch),
            eval_every=self.eval.every, eval_samples=self.eval.samples, eval_metric=self.eval.metric,
        )

    def output_path(self) -> Path:
        """Absolute output directory: ``output_dir``, else :func:`default_output_dir` of the name."""
        return Path(self.output_dir).expanduser().absolute() if self.output_dir else default_output_dir(self.name)

    def tracking(self) -> str:
        """MLflow tracking URI: ``tracking_uri`` (the sweep file's, or ``--tracking-uri``), else
        :func:`default_tracking_uri` ($MLFLOW_TRACKING_URI or a sqlite file in the output directory)."""
        return self.tracking_uri or default_tracking_uri(self.output_path())

    def ray_target(self) -> str:
        """Ray address to use: ``ray_address`` (the sweep file's, or ``--address``), else
        $RAY_ADDRESS, else 'local' (start a Ray instance on this machine)."""
        return self.ray_address or os.environ.get(RAY_ADDRESS_ENV) or "local"

    def is_cluster(self) -> bool:
        """True if the sweep joins a Ray cluster (:meth:`ray_target` is not 'local')."""
        return self.ray_target() != "local"

    def check_cluster_settings(self) -> None:
        """With a Ray cluster address, refuse storage that other nodes cannot reach.

        Raises ConfigError naming ``tracking_uri`` (a sqlite/file store on this machine) or
        ``output_dir`` (omitted, so the default under the current directory; relative; or under
        /tmp, /var/tmp or /dev/shm). No checks without an address or with ``local``.
        """
        if not self.is_cluster():
            return
        address = self.ray_target()
        uri = self.tracking()
        if is_local_store(uri):
            raise ConfigError(
                f"tracking_uri: {uri} is a file on this machine, which trials on other nodes of the "
                f"Ray cluster at {address} cannot write. Start an MLflow tracking server "
                "(mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///...) and set "
                "tracking_uri: http://<server>:5000 in the sweep file (or pass --tracking-uri)")
        shared = ("Use a shared filesystem path mounted at the same place on every node (NFS, Lustre, "
                  "a cloud bucket mount) for output_dir (or pass --output-dir)")
        if self.output_dir is None:
            raise ConfigError(
                f"output_dir: not set, so the sweep would write to {self.output_path()} on this machine, "
                f"which trials on other nodes of the Ray cluster at {address} cannot reach. {shared}")
        if not Path(self.output_dir).expanduser().is_absolute():
            raise ConfigError(
                f"output_dir: {self.output_dir} is a relative path, which each node of the Ray cluster at "
                f"{address} would resolve against its own working directory. {shared}, as an "
                "absolute path")
        out = self.output_path()
        if any(out == Path(root) or Path(root) in out.parents for root in NODE_LOCAL_ROOTS):
            raise ConfigError(
                f"output_dir: {out} is node-local storage, which trials on other nodes of the Ray "
                f"cluster at {address} cannot reach. {shared}")


def dataset_path(dataset: str) -> str:
    """A dataset setting as TrainConfig wants it: an embedded name (:data:`EMBEDDED_DATASETS`)
    as it is, anything else as an absolute path (``~`` expanded, relative to the current
    directory)."""
    if dataset in EMBEDDED_DATASETS:
        return dataset
    return str(Path(dataset).expanduser().absolute())


def absolute_paths(fields: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields as trials read them in any working directory: ``dataset`` by
    :func:`dataset_path`, and every other path field that is set (:data:`core.config.PATH_FIELDS`:
    ``inception_weights``, ``repa_encoder``, ``fid_ref_npz``) made absolute the same way. Values of
    other types are left for validation to name. The one rule for sweep files and ``gat-sweep
    train`` configs alike; returns a new mapping."""
    out = dict(fields)
    if isinstance(out.get("dataset"), str):
        out["dataset"] = dataset_path(out["dataset"])
    for name in PATH_FIELDS & out.keys():
        if isinstance(out[name], str) and out[name]:
            out[name] = str(Path(out[name]).expanduser().absolute())
    return out


def default_output_dir(name: str) -> Path:
    """Where sweep ``name`` writes when it names no output_dir: ``outputs/<name>`` under the
    current directory, absolute (also where ``gat-sweep plot NAME`` looks for its store)."""
    return Path("outputs", name).absolute()


def default_tracking_uri(output_dir: Path) -> str:
    """The tracking URI of a sweep that names none: $MLFLOW_TRACKING_URI if set, else the absolute
    sqlite file ``<output_dir>/mlflow.db``."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{Path(output_dir).absolute() / 'mlflow.db'}"


TRACKING_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc", "sqlite", "postgresql", "mysql", "mssql")
"""URI schemes of the tracking stores MLflow itself knows (besides paths); plugins add theirs
(entry point group ``mlflow.tracking_store``). A database scheme may name its driver
(``mysql+pymysql://``)."""
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
"""Schemes of the SQL stores MLflow reaches through SQLAlchemy."""
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
"""A read-only request every MLflow tracking server answers with JSON (the experiment, or an
``error_code`` when there is no such experiment)."""


def check_tracking_uri(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Refuse at once a tracking URI that MLflow would refuse late, or only after minutes of
    retries, before anything is written.

    Raises ConfigError for a plain path or file: URI (MLflow's file store, which MLflow refuses
    unless $MLFLOW_ALLOW_FILE_STORE is true), naming the sqlite URI a database file needs; for a
    scheme MLflow has no store for (``ftp://``); for a database URI whose SQLAlchemy driver is
    not installed (``postgresql://`` without psycopg); and for an http(s) URI where no MLflow
    server answers within ``timeout_s`` seconds (:func:`server_problem`). URIs with credentials in
    them are not probed.
    """
    parsed = urlparse(tracking_uri)
    # a Windows path 'C:\\...' parses as scheme 'c'; 'databricks' as a bare path
    if len(parsed.scheme) == 1 or (parsed.scheme in ("", "file") and is_local_store(tracking_uri)):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):
            return
        path = Path(parsed.path if parsed.scheme == "file" else tracking_uri).absolute()
        if path.suffix in (".db", ".sqlite") or path.is_file():
            fix = f"write sqlite:///{path}"
        else:
            fix = (f"write sqlite:///{path / 'mlflow.db'} for a new store; for runs already in this directory "
                   "set MLFLOW_ALLOW_FILE_STORE=true, or move them with `mlflow migrate-filestore`")
        raise ConfigError(f"tracking URI {tracking_uri}: a path is MLflow's file store, which MLflow refuses "
                          f"by default; {fix}")
    scheme = parsed.scheme.partition("+")[0]
    if scheme and scheme not in TRACKING_SCHEMES and parsed.scheme not in _plugin_schemes():
        raise ConfigError(f"tracking URI {tracking_uri}: MLflow has no tracking store for {parsed.scheme}:// "
                          "(it takes http(s)://host:port, sqlite:///path.db, postgresql://, mysql://, mssql://, "
                          "databricks, or a scheme an installed MLflow plugin adds)")
    if scheme in DATABASE_SCHEMES:
        _check_database_driver(tracking_uri)
    if scheme in ("http", "https") and not parsed.username:
        problem = server_problem(tracking_uri, timeout_s)
        if problem:
            raise ConfigError(f"tracking URI {tracking_uri}: {problem}; start one (mlflow server --host 0.0.0.0 "
                              "--port 5000 --backend-store-uri sqlite:///...) or fix the address")


def _plugin_schemes() -> set[str]:
    """Tracking-store schemes that installed MLflow plugins register (no MLflow import)."""
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def _check_database_driver(tracking_uri: str) -> None:
    """Raise ConfigError when SQLAlchemy cannot read a database tracking URI or its driver (the
    dialect's default one, or the one after ``+``) is not installed (the password never shown)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(tracking_uri)
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"tracking URI: SQLAlchemy cannot read it as a database URL ({err})") from None
    shown = url.render_as_string(hide_password=True)
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except NoSuchModuleError as err:
        raise ConfigError(f"tracking URI {shown}: SQLAlchemy has no such database driver ({err})") from None
    except ImportError as err:
        raise ConfigError(
            f"tracking URI {shown}: MLflow reaches this database through "
            f"SQLAlchemy's {dialect.name}+{dialect.driver} driver, whose module {err.name!r} is not installed "
            f"here; install it, or name an installed driver in the URI ({dialect.name}+<driver>://...)") from None


def server_problem(tracking_uri: str, timeout_s: float) -> str | None:
    """Why no MLflow tracking server takes runs at the http(s) URI ``tracking_uri`` now, in words,
    or None when one answers :data:`MLFLOW_PROBE` with JSON within ``timeout_s`` seconds. An answer
    that asks for credentials (401, 403) counts as a server: MLflow may send ones this probe does
    not; the probe sends those of $MLFLOW_TRACKING_TOKEN or $MLFLOW_TRACKING_USERNAME and _PASSWORD
    and honours $MLFLOW_TRACKING_INSECURE_TLS and $MLFLOW_TRACKING_SERVER_CERT_PATH."""
    import base64
    import http.client
    import json
    import ssl
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + MLFLOW_PROBE
    headers = {}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s,
                                    context=context) as answer:
            status, body = answer.status, answer.read(65536)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return None
        status, body = err.code, err.read(65536)
    except (OSError, http.client.HTTPException) as err:  # refused, unknown host, timeout, not HTTP
        return f"no MLflow server answers there ({getattr(err, 'reason', None) or err})"
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and ("experiment" in answer or "error_code" in answer):
        return None
    return f"a server answers there, but not MLflow's tracking API (GET {url} gave HTTP {status} without its JSON)"


def is_local_store(tracking_uri: str) -> bool:
    """True for an MLflow store in this machine's files (sqlite, file URI or a plain path);
    False for a server (http, https, databricks, a database server such as postgresql)."""
    if tracking_uri == "databricks" or tracking_uri.startswith("databricks://"):
        return False
    return urlparse(tracking_uri).scheme in ("", "file", "sqlite")


# ----------------------------------------------------------------------------------------------
# Loading and error messages
# ----------------------------------------------------------------------------------------------
class SweepFileError(ConfigError):
    """A sweep file that does not validate; the message lists every problem with its key path."""


SET_EXAMPLE = "train.batch=64"
"""The form of a sweep override, shown when one is malformed."""


def load_spec(path: Path, sets: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and validate a sweep file, with ``--set key=value`` overrides applied on top.

    An override addresses the file's own keys, dotted (``train.batch=64``, ``budget.iterations=100``,
    ``seeds=[0,1]``, ``lr.base_lrs=[1e-3,2e-3]``, ``name=width_lr_b64``), and is validated exactly
    as if the file said it. Raises FileNotFoundError (missing file), ConfigError (a malformed
    override) or SweepFileError listing every problem, e.g. ``model.widthz: unknown key (did you
    mean 'widths'?)``, headed by the file and the overrides.
    """
    text, data = read_yaml(path)
    if not isinstance(data, dict):
        raise SweepFileError(f"{path}: a sweep file is a YAML mapping (name:, dataset:, model:, ...)")
    for item in sets:
        apply_set(data, item, SET_EXAMPLE, known_only=False)
    where = " ".join([str(path), *(f"--set {item}" for item in sets)])
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SweepFileError(f"{where}: {format_errors(err)}") from None
    if sets:
        overrides = "".join(f"#   --set {item}\n" for item in sets)
        text = (f"# {path} with these overrides applied (gat-sweep run --set):\n{overrides}"
                + yaml.safe_dump(data, sort_keys=False))
    spec._text = text
    return spec


def format_errors(err: ValidationError) -> str:
    """One line per problem: ``key.path: message``, with a suggestion for misspelt keys."""
    lines = []
    for e in err.errors():
        loc = [str(part) for part in e["loc"]]
        where = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = _unknown_key_message(loc)
        elif e["type"] == "missing":
            msg = "missing (required)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] not in ("value_error", "assertion_error") and "input" in e:
                msg += f" (got {e['input']!r})"
        lines.append(f"  {where}: {msg}")
    count = len(lines)
    return f"{count} problem{'s' if count > 1 else ''}:\n" + "\n".join(lines)


def _unknown_key_message(loc: list[str]) -> str:
    key = loc[-1]
    if loc[:1] == ["train"] and len(loc) == 2 and key in SWEEP_FIELDS:
        return f"set by the sweep itself: use {SWEEP_FIELDS[key]} instead of train.{key}"
    known = _keys_at(loc[:-1])
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
    return "unknown key" + hint


def _keys_at(loc: list[str]) -> list[str]:
    """Field names of the model found by following ``loc`` from SweepSpec."""
    cls: type[BaseModel] = SweepSpec
    for part in loc:
        if part.isdigit() or part not in cls.model_fields:
            continue
        cls = _model_in(cls.model_fields[part].annotation) or cls
    return list(cls.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X | None``, ``list[X]``, ``Annotated[...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
