"""Names and feature sizes of the evaluation metrics, and the kinds of datasets, importable
without torch.

A sweep file's evaluation settings are checked when it is loaded (``scaling.spec``), including by
``gat-sweep run --dry-run``; these facts live here so that the check does not import
:mod:`core.evaluation.evaluate` (torch, torch-fidelity, torchvision: seconds of imports).
"""

from __future__ import annotations

from core.config import TrainConfig
from core.records import count_label, eval_keys

INCEPTION_DIM = 2048
"""Size of the Inception-v3 pool features that FID compares."""
DOMAIN_FEATURE_DIM = 64
"""Size of the domain classifier's ``"features"`` layer (penultimate activations, core/evaluation/features.py)."""


EMBEDDED_DATASETS = ("digits", "random")
"""Dataset names that are not paths: the embedded default and Gaussian test latents."""
MANIFEST = "manifest.json"
"""The file ``gat-sweep encode`` writes last into an encoded dataset's directory (core/data/encode.py):
a directory without it is not (yet) a dataset."""


def dataset_kind(dataset: str) -> str:
    """The kind of a ``TrainConfig.dataset`` value: 'digits' and 'random' are themselves, anything
    else (a path) is 'encoded' (a ``gat-sweep encode`` directory)."""
    return dataset if dataset in EMBEDDED_DATASETS else "encoded"


def resolve_metric(metric: str, data_kind: str, inception_weights: str) -> str:
    """The extractor an ``eval_metric`` means for a dataset kind ('digits', 'random', 'encoded')
    and the ``inception_weights`` setting (a path, or '' when unset).

    'auto' is 'fd_domain' for the embedded digits; for an encoded folder, 'fid' when Inception
    weights are given and 'fd_domain' (the folder's own classifier, no download) otherwise; and
    'none' for 'random' (no images to compare with). Other values are themselves.
    """
    if metric != "auto":
        return metric
    if data_kind == "random":
        return "none"
    return "fid" if data_kind == "encoded" and inception_weights else "fd_domain"


def feature_space(metric: str, data_kind: str) -> str | None:
    """The feature space a resolved metric ('fid' or 'fd_domain') measures in, as metric keys name
    it (:func:`core.records.eval_keys`): None for Inception, 'digits' for the embedded digits'
    classifier, 'domain' for an encoded folder's own classifier."""
    if metric == "fid":
        return None
    return "digits" if data_kind == "digits" else "domain"


def fd_metric_key(cfg: TrainConfig) -> str | None:
    """The FD/FID key a run of ``cfg`` logs (``eval/fd_digits_500``, ``eval/fid5k``), or None for a
    run that does not evaluate."""
    kind = dataset_kind(cfg.dataset)
    metric = resolve_metric(cfg.eval_metric, kind, cfg.inception_weights)
    if cfg.eval_every < 0 or metric == "none":
        return None
    return eval_keys(feature_space(metric, kind), count_label(cfg.eval_samples))["fd"]


def feature_dim(metric: str) -> int:
    """Feature size of a resolved metric's extractor: the fewest samples a Frechet distance needs
    (fewer give a singular sample covariance)."""
    return DOMAIN_FEATURE_DIM if metric == "fd_domain" else INCEPTION_DIM


def too_few_samples(metric: str, samples: int, field: str) -> str | None:
    """Why ``samples`` generated images are too few for a Frechet distance with ``metric``'s
    extractor (fewer than its feature size: the sample covariance is singular), or None when they
    suffice. ``field`` names the setting in the message ('eval.samples' in a sweep file,
    'eval_samples' in a TrainConfig). The one rule behind the sweep check and the evaluator's."""
    need = feature_dim(metric)
    if samples >= need:
        return None
    return (f"{field}={samples} is below the {need}-d features of the {metric} extractor (the sample "
            f"covariance would be singular); use {field} >= {need}")
