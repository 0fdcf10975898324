"""Evaluation of the EMA generator: FD/FID, KID, precision and recall, and its sample grids.

``make_evaluator(cfg, data, device)`` validates everything evaluation needs before training starts
and warms the reference-feature cache; ``Evaluator.evaluate(G_ema)`` then draws a fixed set of
``cfg.eval_samples`` latents (z and labels fixed per run by ``cfg.seed``; labels cycle through the
classes), decodes them with the dataset's VAE (dividing by the scaling factor once), converts
them to uint8 [0, 255] (clamped, never wrapped) and hands them to torch-fidelity
(:mod:`core.evaluation.fidelity`).

Two feature extractors (``cfg.eval_metric``; 'auto' = fd_domain for the embedded digits, and for
an encoded folder fid when ``cfg.inception_weights`` is set, fd_domain otherwise; see
:func:`core.metrics.resolve_metric`):

* ``fd_domain``: a domain classifier of :mod:`core.evaluation.features`, a small CNN trained on the dataset's
  own labelled images, so evaluation needs no download (a Frechet distance in that network's 64-d
  feature space, not Inception FID). The embedded digits use the classifier of their cache entry
  -> ``eval/fd_digits_<n>``, ``eval/kid_digits_<n>``, ``eval/precision_digits_<n>``,
  ``eval/recall_digits_<n>``. An encoded folder uses its own classifier, trained on first use on
  the reference images (:func:`core.evaluation.domain.prepare_folder_classifier`, cached under ``<cache>/domain/``)
  -> ``eval/fd_domain_<n>``, ``eval/kid_domain_<n>``, ``eval/precision_domain_<n>``,
  ``eval/recall_domain_<n>``. Distances of different folders are in different feature spaces
  and are not comparable with each other. Provenance names the classifier file and its held-out
  accuracy (``eval.classifier_heldout_accuracy``);
* ``fid``: torch-fidelity's ``inception-v3-compat`` (the TF-FID Inception, 2048-d pool features)
  from the local file ``cfg.inception_weights`` -> ``eval/fid<n>``, ``eval/kid<n>``,
  ``eval/precision<n>``, ``eval/recall<n>`` (precision/recall in Inception space, not the
  VGG-16 space of Kynkaanniemi et al. 2019).

``<n>`` is the sample count, '1k' for 1000 ('5k', '50k'; other counts written out in full).

References: the reference statistics are the real images of the dataset (digits: all 1,797
images; an encoded folder: up to :data:`core.evaluation.domain.REFERENCE_MAX` images of ``images_dir``, a seeded subset,
ADM-cropped at the encode resolution), their features cached (safetensors, never a pickle) under
``<cache>/fidelity/`` with a name holding (dataset, resolution, sample count, and a folder
classifier's key) and the extractor, so a second run does not recompute them
(:func:`core.evaluation.fidelity.reference_features`). Or
``cfg.fid_ref_npz``: ADM-style ``mu``/``sigma`` (Dhariwal & Nichol 2021, evaluations/), FID only
(KID and precision/recall need features).

Sample grids: :class:`Sampler` (``make_sampler``) holds the dataset's VAE and a fixed grid of z;
the evaluator decodes through it, and a run that does not evaluate still writes grids with it.

Invalid results: non-finite generated latents or images, or a non-finite metric, raise
:class:`InvalidMetricError`; a NaN is never returned.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_features_to_statistics

from core.cache import atomic_write_bytes, content_hash
from core.config import ConfigError, TrainConfig
from core.data.digits import load_entry
from core.evaluation.domain import folder_images_dir, prepare_folder_classifier, reference_indices
from core.evaluation.features import EXTRACTOR_NAME, FOLDER_EXTRACTOR_NAME
from core.evaluation.fidelity import (
    DOMAIN_LAYER,
    EVAL_BATCH,
    INCEPTION,
    INCEPTION_LAYER,
    FolderImages,
    GeneratedImages,
    UInt8Images,
    check_inception_weights,
    dataset_features,
    fidelity_metrics,
    frechet_distance,
    make_extractor,
    read_npz,
    reference_features,
)
from core.data.latents import LatentData
from core.metrics import feature_space, resolve_metric, too_few_samples
from core.gan.model import Generator
from core.records import (
    CLASSIFIER_ACCURACY_PARAM,
    EVAL_EMA_PARAM,
    EVAL_SAMPLES_PARAM,
    EXTRACTOR_PARAM,
    METRIC_KEY_PARAM,
    REFERENCE_PARAM,
    TRUNCATION_PARAM,
    count_label,
    eval_keys,
)
from core.data.vae import decode_latents, load_vae, to_uint8

GRID_COLUMNS, GRID_MAX_ROWS = 8, 10
"""Sample grid: one row per class (at most 10 classes, evenly spaced), 8 samples per row."""
GRID_SEED_OFFSET = 1
"""The grid's z come from seed ``cfg.seed + 1`` (evaluation uses ``cfg.seed``)."""


class InvalidMetricError(RuntimeError):
    """Evaluation produced no valid number (non-finite samples or result): the run has diverged."""


class Sampler:
    """Turns an EMA generator's latents into images: the dataset's VAE, and a fixed grid of z
    (``GRID_COLUMNS`` samples for each of up to ``GRID_MAX_ROWS`` classes) for sample grids.
    Built by :func:`make_sampler`; needs no metric, so runs that do not evaluate write grids too."""

    def __init__(self, cfg: TrainConfig, data: LatentData, device: torch.device) -> None:
        self.device, self.psi, self.scaling_factor = device, cfg.truncation_psi, data.scaling_factor
        self.vae = load_vae(data.vae).to(device)
        rows = min(data.num_classes, GRID_MAX_ROWS)
        grid_classes = torch.linspace(0, data.num_classes - 1, rows).round().long()
        self.grid_labels = grid_classes.repeat_interleave(GRID_COLUMNS)
        grid_gen = torch.Generator().manual_seed(cfg.seed + GRID_SEED_OFFSET)
        self.grid_z = torch.randn(len(self.grid_labels), cfg.z_dim, generator=grid_gen)

    @torch.no_grad()
    def render(self, generator: Generator, z: Tensor, labels: Tensor) -> Tensor:
        """EMA samples for (z (n, z_dim), labels (n,)) -> uint8 images (n, 3, H, W) on CPU.

        Raises InvalidMetricError if the latents or decoded images are not finite.
        """
        latents = generator.sample(z.to(self.device), labels.to(self.device), psi=self.psi)
        if not torch.isfinite(latents).all():
            raise InvalidMetricError("the generator produced non-finite latents; the run has diverged")
        images = decode_latents(self.vae, latents, self.scaling_factor, batch=EVAL_BATCH)
        if not torch.isfinite(images).all():
            raise InvalidMetricError("decoding the generated latents gave non-finite pixels")
        return to_uint8(images).cpu()

    def sample_grid(self, generator: Generator, path: Path) -> Path:
        """Write a PNG grid of EMA samples (a row per class, fixed z) atomically; returns ``path``.
        Raises InvalidMetricError for non-finite samples."""
        images = self.render(generator, self.grid_z, self.grid_labels)
        buffer = io.BytesIO()
        torchvision.utils.save_image(images.float() / 255.0, buffer, nrow=GRID_COLUMNS, padding=2, format="png")
        atomic_write_bytes(Path(path), buffer.getvalue())
        return Path(path)


def make_sampler(cfg: TrainConfig, data: LatentData, device: torch.device) -> Sampler | None:
    """The :class:`Sampler` of a run; None for dataset 'random' (no VAE, nothing to look at).
    Raises FileNotFoundError / OSError (``core.data.vae.load_vae``) when the dataset's VAE is missing."""
    return None if data.kind == "random" else Sampler(cfg, data, device)


class Evaluator:
    """Evaluates an EMA generator against a dataset's reference; built by :func:`make_evaluator`.
    Its samples are decoded by ``sampler`` (:class:`Sampler`)."""

    def __init__(self, cfg: TrainConfig, data: LatentData, device: torch.device, metric: str,
                 sampler: Sampler) -> None:
        self.device, self.num_samples, self.sampler = device, cfg.eval_samples, sampler
        self.seed = cfg.seed
        n = count_label(cfg.eval_samples)
        classifier_accuracy, classifier_key = None, ""
        if metric == "fid":
            self.extractor, self.layer, self.weights = INCEPTION, INCEPTION_LAYER, cfg.inception_weights
        elif data.kind == "digits":
            digits = load_entry(data.root)
            self.extractor, self.layer, self.weights = EXTRACTOR_NAME, DOMAIN_LAYER, str(digits.classifier_path)
            classifier_accuracy = digits.meta["classifier_heldout_accuracy"]
        else:  # an encoded folder's own classifier
            folder = prepare_folder_classifier(data.root)
            self.extractor, self.layer, self.weights = FOLDER_EXTRACTOR_NAME, DOMAIN_LAYER, str(folder.classifier_path)
            classifier_accuracy, classifier_key = folder.heldout_accuracy, folder.key
        self.keys = eval_keys(feature_space(metric, data.kind), n)
        self.metric_key = self.keys["fd"]
        self.npz = read_npz(Path(cfg.fid_ref_npz)) if cfg.fid_ref_npz else None
        self.reference, self.reference_name, reference_desc = _reference(cfg, data, classifier_key)
        self.provenance = {
            METRIC_KEY_PARAM: self.metric_key,
            EXTRACTOR_PARAM: f"{self.extractor} ({self.weights})",
            EVAL_SAMPLES_PARAM: str(cfg.eval_samples),
            REFERENCE_PARAM: reference_desc,
            EVAL_EMA_PARAM: "true",
            TRUNCATION_PARAM: str(cfg.truncation_psi),
        }
        if classifier_accuracy is not None:
            self.provenance[CLASSIFIER_ACCURACY_PARAM] = f"{classifier_accuracy:.4f}"
        eval_gen = torch.Generator().manual_seed(cfg.seed)
        self.z = torch.randn(cfg.eval_samples, cfg.z_dim, generator=eval_gen)
        self.labels = torch.arange(cfg.eval_samples) % data.num_classes

    def warm_reference(self) -> None:
        """Compute and cache the reference features now (no-op for an npz reference or a cache hit)."""
        if self.npz is None:
            reference_features(self.reference, self.reference_name, self.extractor, self.layer, self.weights,
                               self.device)

    # -- metrics -------------------------------------------------------------------------------
    def evaluate(self, generator: Generator) -> dict[str, float]:
        """Metrics of ``generator`` (EMA G, eval mode, on the evaluator's device).

        Returns {metric_key: FD/FID, kid key, precision key, recall key} (FD/FID only with an npz
        reference). Raises InvalidMetricError instead of returning a non-finite value.
        """
        generated = GeneratedImages(
            lambda start, stop: self.sampler.render(generator, self.z[start:stop], self.labels[start:stop]),
            self.num_samples, EVAL_BATCH,
        )
        if self.npz is None:
            values = fidelity_metrics(generated, self.reference, self.extractor, self.layer, self.weights,
                                      self.device, self.reference_name, seed=self.seed)
        else:
            extractor = make_extractor(self.extractor, self.layer, self.weights, self.device)
            features = dataset_features(generated, extractor, self.device)
            values = {"fd": frechet_distance(fid_features_to_statistics(features), self.npz)}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if bad:
            raise InvalidMetricError(f"non-finite evaluation result {bad}")
        return {self.keys[name]: float(value) for name, value in values.items()}


def make_evaluator(cfg: TrainConfig, data: LatentData, device: torch.device,
                   sampler: Sampler | None = None) -> Evaluator | None:
    """Validate evaluation settings, build the :class:`Evaluator` and cache the reference features.

    ``sampler``: the run's :class:`Sampler` (built here when not given). For 'fd_domain' on an
    encoded folder this trains the folder's classifier on first use (:func:`prepare_folder_classifier`).
    Returns None for dataset 'random' with eval_metric 'auto' (no images to compare with).
    Raises ConfigError for: an explicit eval_metric on dataset 'random'; 'fid' without a readable
    ``inception_weights`` file (the message says where to get it); ``fid_ref_npz`` with
    'fd_domain', or unreadable or malformed; a folder whose images are gone (its reference and
    classifier are made from them); ``eval_samples`` below the feature dimension (64 for the
    domain extractor, 2048 for Inception: the sample covariance would be singular and the
    distance unstable).
    """
    metric = resolve_metric(cfg.eval_metric, data.kind, cfg.inception_weights)
    if metric == "none":
        return None
    if data.kind == "random":
        raise ConfigError(
            f"eval_metric={cfg.eval_metric!r} needs real images, and dataset 'random' has none: use "
            "dataset 'digits' or an encoded folder, or eval_every=-1 (eval.every: -1 in a sweep file)")
    if metric == "fd_domain" and cfg.fid_ref_npz:
        raise ConfigError("fid_ref_npz holds Inception statistics; it applies only with eval_metric='fid' "
                          "(and inception_weights, without which eval_metric 'auto' means 'fd_domain')")
    if metric == "fid":
        check_inception_weights(cfg.inception_weights)
    problem = too_few_samples(metric, cfg.eval_samples, "eval_samples")
    if problem:
        raise ConfigError(problem)
    evaluator = Evaluator(cfg, data, device, metric, sampler or Sampler(cfg, data, device))
    evaluator.warm_reference()
    return evaluator


def _reference(cfg: TrainConfig, data: LatentData, classifier_key: str) -> tuple[Dataset | None, str | None, str]:
    """(reference dataset, its feature-cache name, provenance text); no dataset for an npz.
    ``classifier_key``: the folder classifier's cache key, part of the cache name so that a
    retrained classifier never meets features of another ('' for Inception and the digits)."""
    if cfg.fid_ref_npz:
        return None, None, f"npz {cfg.fid_ref_npz}"
    if data.kind == "digits":
        digits = load_entry(data.root)
        name = f"{digits.name}-{digits.key}-{digits.images.shape[-1]}px-n{len(digits.images)}"
        return UInt8Images(digits.images), name, f"{data.name}: all {len(digits.images)} real images ({digits.key})"
    manifest, images_dir = folder_images_dir(data.root)
    resolution = int(manifest["resolution"])
    indices = reference_indices(int(manifest["count"]))
    count = len(indices)
    name = f"folder-{content_hash(str(images_dir), manifest['fingerprint'], length=12)}-{resolution}px-n{count}"
    if classifier_key:
        name += f"-{classifier_key}"
    return FolderImages(images_dir, resolution, indices), name, f"{images_dir} at {resolution}px, {count} images"
