"""Typed, frozen training configuration for one GAT run.

Every field a trial can vary lives here, with its default taken from the paper
(Hyun et al., "Scalable GANs with Transformers", arXiv 2509.24935, §4 and App. A) or the
authors' reference implementation (github.com/hse1032/GAT). Configs are validated in
``__post_init__``: an impossible combination raises :class:`ConfigError` naming the field.

``TrainConfig.to_dict()`` / ``TrainConfig.from_dict()`` round-trip through plain JSON types:
how a config is written to ``config.json`` of a run directory, to ``sweep.json`` and to MLflow
(flattened). Ray Tune trials receive the ``TrainConfig`` objects themselves, inside the sweep
plan (``scaling.tune``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin, get_type_hints

MNG_LEVELS = 4
"""Number of MNG output heads / noise levels K (docs/METHOD.md §1, §3)."""

PARAM_KINDS = ("vector", "hidden", "output")
"""Parameter kinds for per-kind LR multipliers (muP-style rules), inferred from shapes by
``core.gan.model.parameter_kinds``: ``hidden`` = matrices whose fan-in and fan-out grow with width;
``output`` = read-outs, whose fan-in grows and fan-out does not (G's latent heads, D's logit head,
the REPA projector's input layer); ``vector`` = everything else (embeddings, biases, norm gains,
LayerScale, CLS token, matrices with a width-independent fan-in)."""


MAX_ITERATIONS = 9_999_999
"""The longest run: checkpoint and sample-grid names hold the iteration in 7 digits
(``iter_0000500.pt``), and longer ones would sort before shorter ones when old checkpoints are
pruned."""


class ConfigError(ValueError):
    """A configuration value a user can fix; the message names the field."""


def load_local(field_name: str, path: str, what: str, needed_by: str, how: str, load: Callable[[str], Any],
               directory: bool = False, errors: tuple[type[BaseException], ...] = (Exception,)) -> Any:
    """``load(path)`` for a file or directory the user supplies (weights that cannot be downloaded
    at run time), with one clear ConfigError for each way it can be wrong.

    Args:
        field_name: the config field holding the path (named in every message).
        path: its value ('' = not set).
        what: what the path must hold ("torch-fidelity's Inception-v3 weights").
        needed_by: the setting that needs it ("eval_metric 'fid'").
        how: where to get it (ends every message).
        load: reads it; its ``errors`` mean the content is wrong (truncated, another model's).
        directory: the path is a directory, not a file.
    Raises ConfigError: not set, missing, or ``load`` raised one of ``errors``.
    """
    if not path:
        raise ConfigError(f"{needed_by} needs {field_name} ({what}): {how}")
    exists = Path(path).is_dir() if directory else Path(path).is_file()
    if not exists:
        raise ConfigError(f"{field_name}={path} {'is not a directory' if directory else 'does not exist'}: {how}")
    try:
        return load(path)
    except errors as err:
        detail = " ".join(str(err).split())  # a state-dict mismatch lists hundreds of keys
        raise ConfigError(f"{field_name}={path} cannot be loaded as {what} ({type(err).__name__}: "
                          f"{detail[:200]}); it may be truncated or another model's: {how}") from err


def check_field_types(config: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` naming the first field of a config dataclass whose value does
    not have its declared type: ``int`` (not bool), ``float`` (a finite int or float, not bool),
    ``bool``, ``str``, a ``Literal`` member, or a nested config class. Values from the command line or a
    YAML file arrive untyped (``--set lr_g=abc`` is the string 'abc'); this names the field
    before any comparison fails on the wrong type."""
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    for name, kind in get_type_hints(type(config)).items():
        value = getattr(config, name)
        if get_origin(kind) is Literal:
            if value not in get_args(kind):
                choices = ", ".join(repr(c) for c in get_args(kind))
                raise ConfigError(f"{prefix}{name}: expected one of {choices}, got {value!r}")
            continue
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                raise ConfigError(f"{prefix}{name}: expected a finite number, got {value!r}")
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            expected = names.get(kind.__name__, f"a {kind.__name__} mapping")
            raise ConfigError(f"{prefix}{name}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class NetConfig:
    """Transformer shape of one network (generator or discriminator)."""

    width: int = 64
    """Hidden size C (tokens are C-dimensional)."""
    depth: int = 4
    """Number of transformer blocks; G needs a multiple of 4 (one MNG head per quarter)."""
    heads: int = 4
    """Attention heads; ``width / heads`` is the head dim, which must be divisible by 4 (2-D RoPE)."""

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def check(self, where: str, need_depth_multiple: int = 1) -> None:
        """Raise :class:`ConfigError` naming ``where.<field>`` if this shape is impossible."""
        for name in ("width", "depth", "heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(
                f"{where}.width={self.width} is not divisible by {where}.heads={self.heads}"
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"{where}.width / {where}.heads = {self.head_dim} (the head dim) must be divisible "
                f"by 4 for 2-D RoPE (two axes, channel pairs); change {where}.width or {where}.heads"
            )
        if self.width % 4:
            raise ConfigError(f"{where}.width={self.width} must be divisible by 4 (2-D sin-cos embedding)")
        if self.depth % need_depth_multiple:
            raise ConfigError(
                f"{where}.depth={self.depth} must be a multiple of {need_depth_multiple} "
                f"(one MNG output head after each quarter of the generator)"
            )

    @classmethod
    def named(cls, size: str) -> "NetConfig":
        """The paper's named size ('S', 'B', 'L', 'XL'); raises ConfigError for an unknown name."""
        if size not in SIZES:
            raise ConfigError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
        return SIZES[size]


SIZES: dict[str, NetConfig] = {
    "S": NetConfig(width=384, depth=12, heads=6),
    "B": NetConfig(width=768, depth=12, heads=12),
    "L": NetConfig(width=1024, depth=24, heads=16),
    "XL": NetConfig(width=1152, depth=28, heads=16),
}
"""The paper's named sizes (docs/METHOD.md §6, the paper's Table 1)."""


@dataclass(frozen=True)
class LRMultipliers:
    """Per-parameter-kind LR multipliers applied on top of a network's scalar LR (see PARAM_KINDS)."""

    vector: float = 1.0
    hidden: float = 1.0
    output: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return {"vector": self.vector, "hidden": self.hidden, "output": self.output}


def _field(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, compute: bool = False,
           resumable: bool = False, sweep: str | None = None, path: bool = False) -> Any:
    """A :class:`TrainConfig` field that states its role in its metadata, from which the lists
    below are derived (one place to say what a new field is):

    * ``compute``: it changes the counted FLOPs of an iteration (``core.gan.flops`` measures once per
      setting of the compute fields);
    * ``resumable``: it may differ between a run directory and the call that resumes it;
    * ``sweep``: the sweep-file key that sets it (a sweep's ``train:`` section may not);
    * ``path``: it names a local file or directory, which a sweep file or the command line may give
      relative to the current directory (made absolute there: trials run in other directories).
    """
    return field(default=default, default_factory=factory,
                 metadata={"compute": compute, "resumable": resumable, "sweep": sweep, "path": path})


@dataclass(frozen=True)
class TrainConfig:
    """Everything one GAT training run needs. Units are given per field."""

    name: str = _field("gat", resumable=True, sweep="name (trial names are derived from the grid)")
    """Run / trial name (also the MLflow run name)."""

    # ---- data -------------------------------------------------------------------------------
    dataset: str = _field("digits", sweep="dataset")
    """'digits' (embedded default, prepared offline), 'random' (Gaussian latents, for tests and
    benchmarks) or an absolute path to a directory written by ``gat-sweep encode``."""
    latent_size: int = _field(8, compute=True)
    """Latent height = width H in latent pixels (SD-VAE on 256 px gives 32)."""
    latent_channels: int = _field(4, compute=True)
    """Latent channels c (SD-VAE: 4)."""
    num_classes: int = _field(10, compute=True)
    """Number of classes (labels 0 .. num_classes - 1)."""
    sample_posterior: bool = _field(True, compute=True)
    """Train on ``mean + std * eps`` (True) or on the posterior mean (False)."""

    # ---- model ------------------------------------------------------------------------------
    g: NetConfig = _field(factory=NetConfig, compute=True, sweep="model")
    """Generator shape (docs/METHOD.md §1)."""
    d: NetConfig = _field(factory=NetConfig, compute=True, sweep="model.discriminator")
    """Discriminator shape (docs/METHOD.md §2)."""
    patch: int = _field(2, compute=True, sweep="model.patch")
    """Patch size p (the '/2' in GAT-B/2), shared by G and D."""
    z_dim: int = _field(64, compute=True)
    """Size of the latent code z and of G's class embedding (the mapping network's two inputs)."""
    d_proj_dim: int = _field(2048, compute=True)
    """Width of D's class-projection head (paper: 2048). Small sweeps may lower it; always logged."""
    repa: bool = _field(False, compute=True)
    """Align D with a frozen DINOv2 encoder, as the GAT reference's published recipe does
    (``core/gan/repa.py``; REPA, Yu et al. 2025, applied to D): a projector MLP on D's tokens of the
    real batch is pulled towards the encoder's normalised CLS and patch tokens of the raw image,
    weight ``repa_weight``, in the D loss only. Needs ``repa_encoder`` and a dataset with raw
    images (the embedded digits, or ``gat-sweep encode --keep-images``). On in the ImageNet
    presets, off in the embedded default."""
    repa_encoder: str = _field("", path=True)
    """Absolute path to a local DINOv2 model directory (transformers ``Dinov2Model``
    ``save_pretrained``, e.g. of facebook/dinov2-base = ViT-B/14, the reference's encoder)."""
    repa_dim: int = _field(768, compute=True)
    """Projector output size = the encoder's hidden size (768 for DINOv2 ViT-B/14); checked
    against the encoder when it is loaded."""
    repa_weight: float = _field(1.0)
    """Weight of the alignment loss in the D loss (reference ``proj_coeff`` 1.0)."""
    train_pos_embed: bool = _field(False)
    """Train the sin-cos positional embeddings of G (its constant input tokens) and D. Off (the
    paper's fixed 2-D sin-cos embedding, as DiT): they stay at their initial values, receive no
    gradient and are left out of gradient clipping. On: the GAT reference's behaviour in effect
    (its optimisers hold both and it re-enables their gradients every step, so they train from
    the sin-cos initialisation, as muP 'vector' parameters)."""

    # ---- optimisation (docs/METHOD.md §5) ---------------------------------------------------
    batch: int = _field(32, compute=True)
    """Global batch size in images per iteration."""
    lr_g: float = _field(2e-4, sweep="lr.base_lrs / lr.rules")
    """Generator learning rate (Adam; before the per-kind multipliers)."""
    lr_d: float = _field(2e-4, sweep="lr.base_lrs / lr.rules")
    """Discriminator learning rate (Adam; before the per-kind multipliers)."""
    lr_mult_g: LRMultipliers = _field(factory=LRMultipliers, sweep="lr.rules")
    """Per-parameter-kind multipliers of ``lr_g`` (muP-style rules; all 1 = one LR)."""
    lr_mult_d: LRMultipliers = _field(factory=LRMultipliers, sweep="lr.rules")
    """Per-parameter-kind multipliers of ``lr_d``."""
    beta1: float = _field(0.0)
    """Adam beta1 (docs/METHOD.md §5: 0)."""
    beta2: float = _field(0.99)
    """Adam beta2 (0.99)."""
    adam_eps: float = _field(1e-8)
    """Adam epsilon."""
    weight_decay: float = _field(0.0)
    """AdamW weight decay (0)."""
    grad_clip: float = _field(1.0)
    """Gradient-norm clipping threshold of each network's optimised parameters."""
    ema_decay: float = _field(0.999)
    """EMA decay of G per iteration (paper: 0.999 at batch 512)."""
    ema_warmup: bool = _field(False)
    """Use ``min(ema_decay, (1 + t) / (10 + t))`` at iteration t (TensorFlow's
    ExponentialMovingAverage with ``num_updates``), so that a run of a few hundred iterations is
    not evaluated on an EMA still dominated by the initialisation. Off = the paper's constant."""
    w_avg_beta: float = _field(0.995)
    """Decay of G's per-class running mean of w (truncation centre), per G step."""

    # ---- losses and regularisers (docs/METHOD.md §4) ----------------------------------------
    gamma_r1: float = _field(0.1, compute=True)
    """R1 weight: the D loss adds gamma_r1 / 2 x the squared gradient norm on reals."""
    gamma_r2: float = _field(0.1, compute=True)
    """R2 weight: the same on fakes."""
    reg_mode: Literal["finite_difference", "exact"] = _field("finite_difference", compute=True)
    """R1/R2 estimator: the reference's finite difference, or exact double backprop."""
    reg_fd_eps: float = _field(0.01, compute=True)
    """Step of the finite-difference R1/R2 (reference ``approximated_GP_std`` 0.01)."""
    reg_fd_precision: Literal["autocast", "fp32"] = _field("autocast")
    """With precision 'bf16' and the finite-difference R1/R2: 'autocast' keeps the D step in bf16
    as the reference does (its published results came with it), although the penalty is then
    mostly the rounding of two nearly equal logits (R1 1.3-26x, R2 1.9-22x the fp32 value,
    benchmarks/fd_precision.py, docs/BENCHMARKS.md); 'fp32' runs the D step's forward (reals, fakes
    and their perturbed twins) in fp32, exact but slower on GPUs (not yet measured: run
    benchmarks/gpu.py --reg-fd-precision fp32). No effect in fp32 or with reg_mode 'exact'."""
    augment: bool = _field(True, compute=True)
    """Latent DiffAugment (color, translation, cutout, flip) with probability 1."""

    # ---- budget and cadence -----------------------------------------------------------------
    iterations: int = _field(100, resumable=True, sweep="budget")
    """Training length in iterations (kimg = iterations * batch / 1000), at most
    :data:`MAX_ITERATIONS`."""
    eval_every: int = _field(0, sweep="eval.every")
    """Evaluate FD/FID every this many iterations (0: only at the end; <0: never)."""
    eval_samples: int = _field(1000, sweep="eval.samples")
    """Generated samples per evaluation (the '1k' / '5K' in the metric name)."""
    eval_metric: Literal["auto", "fd_domain", "fid"] = _field("auto", sweep="eval.metric")
    """'fid' needs local Inception weights (``inception_weights``); 'fd_domain' uses the dataset's
    own classifier as feature extractor (the digits' classifier, or for an encoded folder one
    trained on its own images and labels on first use, cached under ``<cache>/domain/``); 'auto'
    picks fd_domain for the embedded default, and for an encoded folder fid when
    ``inception_weights`` is set and fd_domain otherwise (no download)."""
    inception_weights: str = _field("", path=True)
    """Absolute path to torch-fidelity's ``inception-v3-compat`` weights file (for FID)."""
    fid_ref_npz: str = _field("", path=True)
    """Optional ADM-style reference statistics (.npz with mu, sigma)."""
    truncation_psi: float = _field(0.0)
    """Truncation for evaluation samples; 0 = none (training-time FID uses 0)."""
    ckpt_every: int = _field(50)
    """Checkpoint every this many iterations; the last iteration always checkpoints."""
    keep_checkpoints: int = _field(3)
    """Numbered checkpoints kept besides ``latest`` and ``best``."""
    diag_every: int = _field(25)
    """Failure-mode diagnostics (early-block utilisation, update size) every this many iterations."""
    log_every: int = _field(10)
    """Average the training statistics over, and log them every, this many iterations."""
    sample_every: int = _field(0)
    """Write an EMA sample grid every this many iterations, besides one of the initialisation (a
    fresh run's iteration 0), one at every evaluation and one at the end, also when evaluation is
    off (0: only those; <0: never, and the dataset's VAE is then not needed unless the run
    evaluates). Grids need a dataset with a VAE (not 'random')."""
    diverge_loss: float = _field(100.0)
    """A D or G loss above this at any iteration ends the run as 'diverged' (RpGAN losses start at
    log 2 = 0.69; 100 means the real and fake logits are about 100 apart: a blow-up, not training).
    0: only non-finite losses count. A non-finite loss always ends the run."""
    diverge_fd_ratio: float = _field(3.0)
    """An evaluation more than this many times the run's best so far ends the run as 'diverged'
    (an FD series 70, 52, 49, 480 has blown up). 0: off."""

    # ---- execution --------------------------------------------------------------------------
    seed: int = _field(0, sweep="seeds")
    """Seed of the initialisation, the data draws and the augmentation/noise draws (per iteration)."""
    device: str = _field("auto", resumable=True)
    """'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:N'."""
    precision: Literal["fp32", "bf16"] = _field("fp32")
    """bf16 = autocast to bfloat16 on the run's device (CUDA or CPU; master weights fp32)."""
    grad_checkpointing: bool = _field(False)
    """Recompute each block's activations in the backward pass (less memory, more time)."""
    compile: bool = _field(False, resumable=True)
    """``torch.compile`` both networks."""
    num_threads: int = _field(0, resumable=True)
    """torch intra-op threads on CPU (0: leave torch's default)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        for key in ("g", "d", "lr_mult_g", "lr_mult_d"):
            check_field_types(getattr(self, key), f"{key}.")
        self.g.check("g", need_depth_multiple=MNG_LEVELS)
        self.d.check("d")
        positive = ("latent_size", "latent_channels", "num_classes", "patch", "z_dim", "d_proj_dim", "repa_dim",
                    "batch", "iterations", "eval_samples", "ckpt_every", "log_every", "diag_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.iterations > MAX_ITERATIONS:
            raise ConfigError(f"iterations={self.iterations:,} is above the most a run can have, {MAX_ITERATIONS:,} "
                              "(checkpoint names hold 7 digits)")
        if self.latent_size % self.patch:
            raise ConfigError(
                f"latent_size={self.latent_size} is not divisible by patch={self.patch}"
            )
        for name in ("lr_g", "lr_d"):
            if not self.__dict__[name] > 0:
                raise ConfigError(f"{name} must be a positive learning rate, got {getattr(self, name)}")
        for name in ("lr_mult_g", "lr_mult_d"):
            for kind, mult in getattr(self, name).as_dict().items():
                if not mult > 0:
                    raise ConfigError(f"{name}.{kind} must be a positive multiplier of the learning rate, got {mult}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.truncation_psi <= 1.0:
            raise ConfigError(f"truncation_psi must be in [0, 1], got {self.truncation_psi}")
        if self.gamma_r1 < 0 or self.gamma_r2 < 0:
            raise ConfigError("gamma_r1 and gamma_r2 must be >= 0")
        if self.repa_weight < 0:
            raise ConfigError(f"repa_weight must be >= 0, got {self.repa_weight}")
        if self.repa_encoder and not Path(self.repa_encoder).is_absolute():
            raise ConfigError(f"repa_encoder must be an absolute path (Ray workers change directory), "
                              f"got {self.repa_encoder!r}")
        if self.diverge_loss < 0:
            raise ConfigError(f"diverge_loss must be >= 0 (0: off), got {self.diverge_loss}")
        if self.diverge_fd_ratio != 0 and not self.diverge_fd_ratio > 1:
            raise ConfigError(f"diverge_fd_ratio must be above 1 (0: off), got {self.diverge_fd_ratio}")

    # ---- derived quantities -----------------------------------------------------------------
    @property
    def tokens(self) -> int:
        """Number of image tokens (H/p)^2."""
        return (self.latent_size // self.patch) ** 2

    @property
    def kimg(self) -> float:
        """Training length in thousands of real images shown to D."""
        return self.kimg_at(self.iterations)

    def kimg_at(self, iterations: int) -> float:
        """Thousands of real images D has seen after ``iterations`` iterations (global batch)."""
        return iterations * self.batch / 1000.0

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (nested for g, d, lr_mult_*); inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from :meth:`to_dict` output. Unknown keys raise :class:`ConfigError`; missing
        keys take their defaults (a config written before a field existed: fields are only ever
        added with the default that keeps the earlier behaviour, so old run directories and sweeps
        resume and grow under a newer version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        kwargs = dict(data)
        for key in ("g", "d"):
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = NetConfig(**kwargs[key])
        for key in ("lr_mult_g", "lr_mult_d"):
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = LRMultipliers(**kwargs[key])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _fields_with(key: str) -> dict[str, Any]:
    """{field name: metadata value} of the TrainConfig fields whose ``key`` metadata is set."""
    return {f.name: f.metadata[key] for f in dataclasses.fields(TrainConfig) if f.metadata.get(key)}


COMPUTE_FIELDS = frozenset(_fields_with("compute"))
"""TrainConfig fields that change the FLOPs of a training iteration."""
RESUMABLE_FIELDS = frozenset(_fields_with("resumable"))
"""TrainConfig fields that may change between a run directory and the call resuming it (a longer
budget continues a finished run; execution settings may change between machines)."""
SWEEP_FIELDS: dict[str, str] = _fields_with("sweep")
"""TrainConfig fields a sweep sets itself -> the sweep-file key to use instead."""
PATH_FIELDS = frozenset(_fields_with("path"))
"""TrainConfig fields naming a local file or directory (besides ``dataset``, which may also name an
embedded dataset)."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with '.' keys: {'g': {'width': 64}} -> {'g.width': 64} (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out
