"""The coordinate check of G and D: how activations and their per-step change scale with width.

The standard muP diagnostic (Yang et al. 2022, "Tensor Programs V", §7 and Fig. 5; the
``coord_check`` of github.com/microsoft/mup): train a network of each width for a few steps and
measure, per layer group, the typical size of a coordinate of its activations on a fixed probe
batch, and of their change per optimiser step. Under a parametrisation whose learning rate
transfers across widths these sizes do not depend on width; a change that grows with width means
the updates blow up as the network widens (the LR is too high at large widths), one that shrinks
means they vanish.

Here G and D are measured separately, each trained by the trainer's own step
(:class:`core.gan.step.GATStep`: RpGAN loss, MNG, augmentation, R1/R2, AdamW with the config's
per-kind LRs), on random latents of the config's shape (the ``random`` dataset of
:mod:`core.data.latents`, so nothing is prepared and nothing evaluated), without the DINOv2 alignment
(``repa``, which needs images). Measured after every step, on a probe batch fixed per seed:

* G (``network = "g"``): ``mapping`` (the style w, (P, C)), ``block1`` .. ``blockL`` (the tokens
  after each block, (P, T, C)), ``output`` (the last MNG level, the sample, (P, c, H, W));
* D (``network = "d"``): ``block1`` .. ``blockL`` (the tokens after each block, (P, 1 + T, C)),
  ``cls_feature`` (``head(norm(h)[:, 0])``, the CLS token's feature that D projects onto the
  class embedding, (P, d_proj_dim)), ``logit`` ((P,)).

D's probe input is fixed too: the probe's real latents at all K levels, perturbed by one fixed MNG
noise chain (no augmentation). The activations are read by forward hooks registered only around
the probe's forward passes (the models carry no measurement code); the probe runs in float32
without gradients, so it changes nothing that training sees.

Quantities (``quantity``), per group, as the root mean square over all elements of the tensor
(the size of a typical coordinate):

* ``rms``: of the activation after ``step`` optimiser steps (``step`` 0 = initialisation);
* ``delta_rms``: of the activation after ``step`` minus the activation after ``step - 1``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.cache import atomic_write_bytes, json_text
from core.config import MNG_LEVELS, TrainConfig
from core.data.latents import load_latents
from core.gan.mng import nested_noise, noise_levels, perturb
from core.gan.model import Discriminator, Generator, build_models
from core.gan.step import GATStep
from core.gan.train import resolve_device

PROBE_SAMPLES = 32
"""Samples in the fixed probe batch (more gives steadier RMS values at the cost of forward time)."""
PROBE_SEED_OFFSET = 54_321
"""The probe batch is drawn from ``seed + PROBE_SEED_OFFSET``, apart from the training draws."""
DATA_SEED_OFFSET = 12_345
"""The training batches are drawn from ``seed + DATA_SEED_OFFSET`` (the initialisation from ``seed``)."""
QUANTITIES = {
    "rms": "activation RMS",
    "delta_rms": "RMS of the change per step",
}
"""The measured quantities and what they are (also written into the JSON file)."""

Select = Callable[[Any], Tensor]
"""Picks the measured tensor out of a module's forward output."""


def probe_points(G: Generator, D: Discriminator) -> dict[tuple[str, str], tuple[nn.Module, Select]]:
    """{(network, group): (module, selector)} of the layer groups measured (module docstring):
    a forward hook on ``module`` records ``selector(output)``. In network order, G first."""
    whole: Select = lambda out: out  # noqa: E731
    points: dict[tuple[str, str], tuple[nn.Module, Select]] = {("g", "mapping"): (G.mapping, whole)}
    points |= {("g", f"block{i + 1}"): (block, whole) for i, block in enumerate(G.blocks)}
    points[("g", "output")] = (G, lambda levels: levels[-1])  # (K, P, c, H, W): the last level is the sample
    points |= {("d", f"block{i + 1}"): (block, whole) for i, block in enumerate(D.blocks)}
    points[("d", "cls_feature")] = (D.head, whole)
    points[("d", "logit")] = (D, whole)
    return points


@contextlib.contextmanager
def captured(points: dict[tuple[str, str], tuple[nn.Module, Select]]) -> Iterator[dict[tuple[str, str], Tensor]]:
    """Forward hooks on every probe point for the duration of the block: yields a dict that each
    forward pass fills with {(network, group): float32 copy of the selected output}; the hooks
    are removed on exit."""
    found: dict[tuple[str, str], Tensor] = {}

    def hook(key: tuple[str, str], select: Select) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            found[key] = select(output).detach().float().clone()
        return record

    handles = [module.register_forward_hook(hook(key, select)) for key, (module, select) in points.items()]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def _rms(x: Tensor) -> float:
    """Root mean square over all elements (the size of a typical coordinate)."""
    return x.square().mean().sqrt().item()


def measure(cfg: TrainConfig, rule: str, steps: int, device: torch.device,
            probe: int = PROBE_SAMPLES) -> list[dict[str, Any]]:
    """Coordinate check of one config (one width, one rule's LRs, one seed): ``steps`` training
    iterations of G and D from the seed's initialisation, measured before the first and after every
    step (module docstring).

    Args:
        cfg: the config as a trial would train it (widths, LRs and per-kind multipliers, batch,
            precision, seed); trained here on random latents of its latent shape, without ``repa``,
            evaluation, compilation or gradient checkpointing (forward hooks need the eager modules).
        rule: the LR rule's name, only copied into the records.
        steps: optimiser steps of G and of D (>= 1).
        device: where to train.
        probe: samples in the probe batch.
    Returns: tidy records ``{rule, network, group, width, seed, step, quantity, value}`` (width =
        G's, which is D's in a coordinate check; value None where it is not finite).
    Raises: ValueError for ``steps`` < 1; ConfigError for an impossible config.
    """
    if steps < 1:
        raise ValueError(f"a coordinate check needs at least 1 step, got {steps}")
    cfg = cfg.replace(dataset="random", repa=False, eval_every=-1, compile=False, grad_checkpointing=False)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data = load_latents(cfg)
    torch.manual_seed(cfg.seed)  # the initialisation, then the step's own draws (augmentation, noise)
    G, D = build_models(cfg, device)
    trainer = GATStep(cfg, G, D, device)

    draws = torch.Generator().manual_seed(cfg.seed + PROBE_SEED_OFFSET)
    x_probe, y_probe = data.sample(probe, draws)
    z_probe = torch.randn(probe, cfg.z_dim, generator=draws)
    levels, t = x_probe.unsqueeze(0).expand(MNG_LEVELS, *x_probe.shape), noise_levels(MNG_LEVELS)
    d_probe = perturb(levels, nested_noise(tuple(levels.shape), t, generator=draws), t)
    z_probe, y_probe, d_probe = z_probe.to(device), y_probe.to(device), d_probe.to(device)
    points = probe_points(G, D)

    def activations() -> dict[tuple[str, str], Tensor]:
        with torch.no_grad(), captured(points) as found:
            G(z_probe, y_probe)
            D(d_probe, y_probe)
        return found

    records: list[dict[str, Any]] = []

    def add(key: tuple[str, str], step: int, quantity: str, value: float) -> None:
        records.append({"rule": rule, "network": key[0], "group": key[1], "width": cfg.g.width, "seed": cfg.seed,
                        "step": step, "quantity": quantity, "value": value if math.isfinite(value) else None})

    before = activations()
    for key, act in before.items():
        add(key, 0, "rms", _rms(act))
    batches = torch.Generator().manual_seed(cfg.seed + DATA_SEED_OFFSET)
    for step in range(1, steps + 1):
        x, y = data.sample(cfg.batch, batches)
        z = torch.randn(cfg.batch, cfg.z_dim, generator=batches)
        trainer.iteration(x.to(device), y.to(device), z.to(device))
        after = activations()
        for key, act in after.items():
            add(key, step, "rms", _rms(act))
            add(key, step, "delta_rms", _rms(act - before[key]))
        before = after
    return records


def run(runs: Sequence[tuple[str, TrainConfig]], steps: int, probe: int = PROBE_SAMPLES,
        report: Callable[[int, int, float], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`measure` every (rule name, config) of ``runs``, width by width (smallest first), on the
    device the first config names (``cfg.device``: 'auto' is CUDA when there is one).

    ``report(width, runs, seconds)`` is called after each width's last run. Returns the records of
    all runs and what they ran on: ``{"device", "threads" (torch's CPU threads), "probe" (samples),
    "seconds_per_width" ({width: wall-clock seconds})}``. Raises as :func:`measure`.
    """
    device = resolve_device(runs[0][1].device)
    records: list[dict[str, Any]] = []
    seconds: dict[int, float] = {}
    by_width = sorted(runs, key=lambda item: item[1].g.width)
    for width, group in itertools.groupby(by_width, key=lambda item: item[1].g.width):
        start, group = time.perf_counter(), list(group)
        for rule, cfg in group:
            records += measure(cfg, rule, steps, device, probe)
        seconds[width] = time.perf_counter() - start
        if report is not None:
            report(width, len(group), seconds[width])
    info = {"device": str(device), "threads": torch.get_num_threads(), "probe": probe, "seconds_per_width": seconds}
    return records, info


def save(path: Path, records: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Write a coordinate check's JSON atomically: ``{"settings": settings, "quantities":
    QUANTITIES, "records": records}`` (the records as :func:`measure` returns them; read by
    ``analysis.coord_check``). Returns ``path``."""
    atomic_write_bytes(path, json_text({"settings": settings, "quantities": QUANTITIES, "records": records},
                                       indent=1).encode())
    return path
