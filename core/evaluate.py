"""Evaluation of the EMA generator through torch-fidelity: FD/FID, KID, precision and recall.

``make_evaluator(cfg, data, device)`` validates everything evaluation needs before training starts
and warms the reference-feature cache; ``Evaluator.evaluate(G_ema)`` then draws a fixed set of
``cfg.eval_samples`` latents (z and labels fixed per run by ``cfg.seed``; labels cycle through the
classes), decodes them with the dataset's VAE (dividing by the scaling factor once), converts
them to uint8 [0, 255] (clamped, never wrapped) and hands them to ``torch_fidelity.calculate_metrics``.

Two feature extractors (``cfg.eval_metric``; 'auto' = fd_domain for the embedded digits, and for
an encoded folder fid when ``cfg.inception_weights`` is set, fd_domain otherwise; see
:func:`core.metrics.resolve_metric`):

* ``fd_domain``: a domain classifier of :mod:`core.features`, a small CNN trained on the dataset's
  own labelled images, so evaluation needs no download (a Frechet distance in that network's 64-d
  feature space, not Inception FID). The embedded digits use the classifier of their cache entry
  -> ``eval/fd_digits_<n>``, ``eval/kid_digits_<n>``, ``eval/precision_digits_<n>``,
  ``eval/recall_digits_<n>``. An encoded folder uses its own classifier, trained on first use on
  the reference images (:func:`prepare_folder_classifier`, cached under ``<cache>/domain/``)
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
images; an encoded folder: up to :data:`REFERENCE_MAX` images of ``images_dir``, a seeded subset,
ADM-cropped at the encode resolution), their features cached by torch-fidelity under
``<cache>/fidelity/`` with a name holding (dataset, resolution, sample count, and a folder
classifier's key) and the extractor, so a second run does not recompute them. Or
``cfg.fid_ref_npz``: ADM-style ``mu``/``sigma`` (Dhariwal & Nichol 2021, evaluations/), FID only
(KID and precision/recall need features).

Sample grids: :class:`Sampler` (``make_sampler``) holds the dataset's VAE and a fixed grid of z;
the evaluator decodes through it, and a run that does not evaluate still writes grids with it.

Invalid results: non-finite generated latents or images, or a non-finite metric, raise
:class:`InvalidMetricError`; a NaN is never returned.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.utils import (
    create_feature_extractor,
    extract_featuresdict_from_input_id_cached,
    get_featuresdict_from_dataset,
)
from tqdm import tqdm

from core.cache import atomic_directory, atomic_write_bytes, cache_root, content_hash
from core.config import ConfigError, TrainConfig, load_local
from core.digits import deterministic_cpu, load_entry
from core.encode import MANIFEST, image_folder
from core.features import (
    CLASSIFIER_FILE,
    EXTRACTOR_NAME,
    FOLDER_EXTRACTOR_NAME,
    ClassifierEntry,
    ClassifierSettings,
    accuracy,
    resize_for_classifier,
    save_classifier,
    train_classifier,
)
from core.latents import LatentData
from core.metrics import INCEPTION_DIM, feature_dim, resolve_metric
from core.model import Generator
from core.records import METRIC_KEY_PARAM, eval_keys
from core.vae import decode_latents, load_vae, to_uint8

INCEPTION = "inception-v3-compat"
INCEPTION_LAYER = "2048"
DOMAIN_LAYER = "features"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
EVAL_BATCH = 64
"""Generated images per generator/VAE/extractor batch."""
KID_SUBSET_SIZE = 1000
"""KID subset size (Binkowski et al. 2018 use 1000), capped at the sample counts."""
KID_SUBSETS = 10
"""KID subsets averaged (torch-fidelity's default is 100). Each costs three 1000 x 1000 kernel
matrices; with 100 subsets KID took 3/4 of a 1000-sample digits evaluation on one CPU core, and
with <= 1000 generated samples every subset holds all of them, so only the real side varies."""
REFERENCE_MAX = 50_000
"""At most this many real images of an encoded folder form its reference statistics."""
GRID_COLUMNS, GRID_MAX_ROWS = 8, 10
"""Sample grid: one row per class (at most 10 classes, evenly spaced), 8 samples per row."""
GRID_SEED_OFFSET = 1
"""The grid's z come from seed ``cfg.seed + 1`` (evaluation uses ``cfg.seed``)."""


FOLDER_CLASSIFIER_VERSION = 1
"""Bump when :func:`prepare_folder_classifier` changes what it produces (invalidates cached entries)."""


@dataclass(frozen=True)
class FolderClassifierSettings:
    """Everything but the folder that determines a folder's domain classifier (hashed into its
    cache key with the folder's path, the manifest's fingerprint and :data:`FOLDER_CLASSIFIER_VERSION`)."""

    max_images: int = REFERENCE_MAX
    """At most this many images, the seeded subset that also forms the reference (:func:`reference_indices`)."""
    heldout_fraction: float = 0.2
    """Share of those images held out from training to measure the accuracy (digits: 360 of 1,797)."""
    split_seed: int = 0
    """Seed of the held-out split."""
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    """Training schedule (the digits classifier's)."""


FOLDER_CLASSIFIER = FolderClassifierSettings()
"""The settings every folder's classifier is trained with."""


@dataclass(frozen=True)
class FolderClassifier(ClassifierEntry):
    """A prepared folder classifier: ``<cache>/domain/<key>/`` with the classifier and ``meta.json``
    (folder, resolution, fingerprint, settings, version, class and image counts, held-out
    accuracy, seconds)."""

    @property
    def heldout_accuracy(self) -> float:
        """Top-1 accuracy in [0, 1] on the held-out images."""
        return float(self.meta["heldout_accuracy"])


class InvalidMetricError(RuntimeError):
    """Evaluation produced no valid number (non-finite samples or result): the run has diverged."""


def count_label(n: int) -> str:
    """Sample count as written in metric keys: 1000 -> '1k', 50000 -> '50k', 1500 -> '1500'."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """Frechet distance between Gaussians N(mu_1, sigma_1) and N(mu_2, sigma_2) (Heusel et al. 2017, eq. 6):

    ``|mu_1 - mu_2|^2 + tr(sigma_1 + sigma_2 - 2 (sigma_1 sigma_2)^(1/2))``, computed by torch-fidelity
    (trace of the square root from the eigenvalues of sigma_1 sigma_2) in float64.
    stats_*: {'mu': (d,), 'sigma': (d, d)} numpy arrays.
    """
    as64 = [{key: np.asarray(stats[key], dtype=np.float64) for key in ("mu", "sigma")} for stats in (stats_1, stats_2)]
    return float(fid_statistics_to_metric(as64[0], as64[1], verbose=False)[torch_fidelity.KEY_METRIC_FID])


def _fidelity_settings(reference: Dataset | None, reference_cache_name: str | None, extractor: str,
                       weights_path: str, device: torch.device) -> dict:
    """torch-fidelity arguments shared by every call here: the same values must reach the metric
    computation and the cache warm-up, or the warm-up's cache entry would not be hit."""
    return dict(
        input2=reference, input2_cache_name=reference_cache_name, feature_extractor=extractor,
        feature_extractor_weights_path=weights_path, cuda=device.type == "cuda", save_cpu_ram=True,
        verbose=False, batch_size=EVAL_BATCH, cache_root=str(cache_root() / "fidelity"),
    )


def fidelity_metrics(
    generated: Dataset, reference: Dataset, extractor: str, weights_path: str, device: torch.device,
    reference_cache_name: str | None = None, seed: int = 0,
) -> dict[str, float]:
    """FD, KID (mean), precision and recall of ``generated`` against ``reference`` via
    ``torch_fidelity.calculate_metrics`` (both datasets yield uint8 (3, H, W) tensors).

    ``reference_cache_name``: cache the reference's features and statistics under
    ``<cache>/fidelity/`` with this name (None: no caching). KID (Binkowski et al. 2018):
    :data:`KID_SUBSETS` subsets of min(1000, both counts), cubic polynomial kernel;
    precision/recall (Kynkaanniemi et al. 2019) with k = 3 neighbours.
    Returns {'fd', 'kid', 'precision', 'recall'} as floats.
    """
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        metrics = torch_fidelity.calculate_metrics(
            input1=generated, fid=True, kid=True, prc=True, kid_subsets=KID_SUBSETS,
            kid_subset_size=min(KID_SUBSET_SIZE, len(generated), len(reference)), rng_seed=seed,
            **_fidelity_settings(reference, reference_cache_name, extractor, weights_path, device),
        )
    return {
        "fd": metrics[torch_fidelity.KEY_METRIC_FID],
        "kid": metrics[torch_fidelity.KEY_METRIC_KID_MEAN],
        "precision": metrics[torch_fidelity.KEY_METRIC_PRECISION],
        "recall": metrics[torch_fidelity.KEY_METRIC_RECALL],
    }


class UInt8Images(Dataset):
    """A uint8 image tensor (N, 3, H, W) as a torch-fidelity input (bare tensors, no labels)."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


class FolderImages(Dataset):
    """Selected images of an ImageFolder, ADM-cropped, as uint8 (3, R, R) tensors."""

    def __init__(self, images_dir: Path, resolution: int, indices: list[int]) -> None:
        self.folder = image_folder(images_dir, resolution)
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tensor:
        return self.folder[self.indices[index]][0]


def reference_indices(count: int, max_images: int = REFERENCE_MAX) -> list[int]:
    """Sorted indices of the images of an encoded folder (``count`` images, in ``image_folder``
    order) that its reference and its classifier use: all of them, or a subset of ``max_images``
    drawn by a permutation seeded with 0."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    return sorted(order[: min(count, max_images)].tolist())


def folder_images_dir(root: Path) -> tuple[dict, Path]:
    """(manifest, images directory) of the encode output directory ``root``.

    Raises ConfigError when the images the manifest names are gone (the reference and the
    folder's classifier are made from them).
    """
    manifest = json.loads((root / MANIFEST).read_text())
    images_dir = Path(manifest["images_dir"])
    if not images_dir.is_dir():
        raise ConfigError(
            f"the reference images {images_dir} of {root} are gone; restore them, or set fid_ref_npz "
            "(eval_metric 'fid'), or turn evaluation off (eval_every=-1)"
        )
    return manifest, images_dir


def prepare_folder_classifier(root: Path, settings: FolderClassifierSettings = FOLDER_CLASSIFIER,
                              progress: bool = True) -> FolderClassifier:
    """Train (first call) or load (later calls) the domain classifier of an encoded image folder.

    ``root``: a ``gat-sweep encode`` output directory. The classifier is trained on the folder's
    own labels, on the ADM-cropped images at the encode resolution (``images_dir`` of the
    manifest) resized to 32 px (:func:`core.features.resize_for_classifier`): the
    :func:`reference_indices` subset, less a held-out share (seeded split) whose accuracy is
    recorded. Training is seeded and runs on one CPU thread in deterministic mode
    (:func:`core.digits.deterministic_cpu`), so the weights do not depend on the machine's thread
    count. Cached under ``<cache>/domain/<key>`` (atomic; concurrent preparations are safe), the
    key hashing the folder's path, the manifest's fingerprint, ``settings`` and
    :data:`FOLDER_CLASSIFIER_VERSION`. With ``progress``, tqdm bars when stderr is a terminal.
    Cost: 1 s for 500 images of 32 px on one CPU thread (about 14 ms per training step of 64
    images, 10 epochs), plus reading and cropping the images once.

    Raises ConfigError when the images are gone or fewer than 2 (one to train on, one held out);
    ValueError naming a corrupt image file (:func:`core.encode.read_rgb`).
    """
    manifest, images_dir = folder_images_dir(root)
    key = content_hash(str(images_dir), manifest["fingerprint"],
                       {"settings": asdict(settings), "version": FOLDER_CLASSIFIER_VERSION})
    entry = cache_root() / "domain" / key
    if not (entry / "meta.json").is_file():
        with atomic_directory(entry) as tmp:
            _train_folder_classifier(tmp, manifest, images_dir, settings, progress)
    return FolderClassifier(entry, key, json.loads((entry / "meta.json").read_text()))


def _train_folder_classifier(out: Path, manifest: dict, images_dir: Path, settings: FolderClassifierSettings,
                             progress: bool) -> None:
    """Read the folder's images, train and evaluate its classifier, write it and meta.json into ``out``."""
    start = time.perf_counter()
    resolution = int(manifest["resolution"])
    indices = reference_indices(int(manifest["count"]), settings.max_images)
    if len(indices) < 2:
        raise ConfigError(f"{images_dir} holds {len(indices)} image(s); its domain classifier needs at least 2 "
                          "(one to train on, one held out)")
    images, labels = [], []
    loader = DataLoader(Subset(image_folder(images_dir, resolution), indices), batch_size=EVAL_BATCH)
    with tqdm(total=len(indices), desc="folder classifier: reading images", unit="img",
              disable=None if progress else True) as bar:
        for batch_images, batch_labels in loader:
            images.append(resize_for_classifier(batch_images))
            labels.append(batch_labels.to(torch.int64))
            bar.update(len(batch_labels))
    images_u8, labels_all = torch.cat(images), torch.cat(labels)
    read_seconds = time.perf_counter() - start

    n = len(indices)
    heldout_count = min(max(round(settings.heldout_fraction * n), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.split_seed))
    heldout = torch.zeros(n, dtype=torch.bool)
    heldout[order[:heldout_count]] = True
    start = time.perf_counter()
    with deterministic_cpu():
        model = train_classifier(images_u8[~heldout], labels_all[~heldout], len(manifest["classes"]),
                                 settings.classifier, progress)
        heldout_accuracy = accuracy(model, images_u8[heldout], labels_all[heldout])
    save_classifier(model, out / CLASSIFIER_FILE)
    meta = {
        "images_dir": str(images_dir),
        "resolution": resolution,
        "fingerprint": manifest["fingerprint"],
        "settings": asdict(settings),
        "version": FOLDER_CLASSIFIER_VERSION,
        "num_classes": len(manifest["classes"]),
        "images": n,
        "heldout": heldout_count,
        "heldout_accuracy": heldout_accuracy,
        "seconds": {"read": read_seconds, "train": time.perf_counter() - start},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


class GeneratedImages(Dataset):
    """Generator samples rendered lazily, one chunk of ``chunk`` images at a time, in index order.

    torch-fidelity reads a dataset sequentially (``save_cpu_ram=True``: no worker processes), so
    each chunk is rendered once and only one chunk of images is held in memory at a time.
    """

    def __init__(self, render: Callable[[int, int], Tensor], count: int, chunk: int) -> None:
        self.render, self.count, self.chunk = render, count, chunk
        self._start, self._images = -1, torch.empty(0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Tensor:
        start = index - index % self.chunk
        if start != self._start:
            self._images, self._start = self.render(start, min(start + self.chunk, self.count)), start
        return self._images[index - start]


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
    Raises FileNotFoundError / OSError (``core.vae.load_vae``) when the dataset's VAE is missing."""
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
            space = None  # Inception: eval/fid<n>
            self.extractor, self.layer, self.weights = INCEPTION, INCEPTION_LAYER, cfg.inception_weights
        elif data.kind == "digits":
            space = "digits"
            digits = load_entry(data.root)
            self.extractor, self.layer, self.weights = EXTRACTOR_NAME, DOMAIN_LAYER, str(digits.classifier_path)
            classifier_accuracy = digits.meta["classifier_heldout_accuracy"]
        else:  # an encoded folder's own classifier
            space = "domain"
            folder = prepare_folder_classifier(data.root)
            self.extractor, self.layer, self.weights = FOLDER_EXTRACTOR_NAME, DOMAIN_LAYER, str(folder.classifier_path)
            classifier_accuracy, classifier_key = folder.heldout_accuracy, folder.key
        self.keys = eval_keys(space, n)
        self.metric_key = self.keys["fd"]
        self.npz = _read_npz(Path(cfg.fid_ref_npz)) if cfg.fid_ref_npz else None
        self.reference, self.reference_name, reference_desc = _reference(cfg, data, classifier_key)
        self.provenance = {
            METRIC_KEY_PARAM: self.metric_key,
            "eval.extractor": f"{self.extractor} ({self.weights})",
            "eval.num_samples": str(cfg.eval_samples),
            "eval.reference": reference_desc,
            "eval.ema": "true",
            "eval.truncation_psi": str(cfg.truncation_psi),
        }
        if classifier_accuracy is not None:
            self.provenance["eval.classifier_heldout_accuracy"] = f"{classifier_accuracy:.4f}"
        eval_gen = torch.Generator().manual_seed(cfg.seed)
        self.z = torch.randn(cfg.eval_samples, cfg.z_dim, generator=eval_gen)
        self.labels = torch.arange(cfg.eval_samples) % data.num_classes

    def warm_reference(self) -> None:
        """Compute and cache the reference features now (no-op for an npz reference or a cache hit)."""
        if self.npz is not None:
            return
        extractor, kwargs = self._feature_extractor()
        with torch.cuda.device(self.device) if kwargs["cuda"] else nullcontext():
            extract_featuresdict_from_input_id_cached(2, extractor, **kwargs)

    def _feature_extractor(self) -> tuple[object, dict]:
        """torch-fidelity's extractor object and the settings it was made with."""
        kwargs = _fidelity_settings(self.reference, self.reference_name, self.extractor, self.weights, self.device)
        return create_feature_extractor(self.extractor, [self.layer], **kwargs), kwargs

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
            values = fidelity_metrics(generated, self.reference, self.extractor, self.weights, self.device,
                                      self.reference_name, seed=self.seed)
        else:
            extractor, kwargs = self._feature_extractor()
            with torch.cuda.device(self.device) if kwargs["cuda"] else nullcontext():
                features = get_featuresdict_from_dataset(
                    generated, extractor, EVAL_BATCH, kwargs["cuda"], True, False)[self.layer]
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
    dim = feature_dim(metric)
    if cfg.eval_samples < dim:
        raise ConfigError(
            f"eval_samples={cfg.eval_samples} is below the {dim}-d feature size of the {metric} extractor; "
            f"the covariance estimate would be singular. Use eval_samples >= {dim}"
        )
    evaluator = Evaluator(cfg, data, device, metric, sampler or Sampler(cfg, data, device))
    evaluator.warm_reference()
    return evaluator


def check_inception_weights(path: str) -> None:
    """Check that ``path`` holds torch-fidelity's Inception-v3 weights by building the extractor
    from it (what an evaluation does first; about a second on CPU).

    Raises ConfigError naming the file when it is not set, missing, or cannot be loaded (truncated,
    not a torch file, or another model's weights), with where to get the right one.
    """
    how = (f"download {INCEPTION_WEIGHTS_URL} on a machine with internet access, copy it here and set "
           "inception_weights to its absolute path (or use the digits dataset, whose eval_metric "
           "'fd_domain' needs no download)")
    load_local("inception_weights", path, "torch-fidelity's Inception-v3 weights", "eval_metric 'fid'", how,
               lambda p: create_feature_extractor(INCEPTION, [INCEPTION_LAYER], cuda=False, verbose=False,
                                                  feature_extractor_weights_path=p))
    # (torch.load and load_state_dict raise many exception types for a bad file: all of them count)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """ADM reference batch statistics: ``mu`` (2048,) and ``sigma`` (2048, 2048)."""
    if not path.is_file():
        raise ConfigError(f"fid_ref_npz={path} does not exist")
    with np.load(path) as npz:
        if "mu" not in npz or "sigma" not in npz:
            raise ConfigError(f"fid_ref_npz={path} lacks 'mu' and 'sigma' (ADM reference statistics)")
        stats = {"mu": npz["mu"], "sigma": npz["sigma"]}
    if stats["mu"].shape != (INCEPTION_DIM,) or stats["sigma"].shape != (INCEPTION_DIM, INCEPTION_DIM):
        raise ConfigError(
            f"fid_ref_npz={path}: mu {stats['mu'].shape} / sigma {stats['sigma'].shape} are not "
            f"({INCEPTION_DIM},) / ({INCEPTION_DIM}, {INCEPTION_DIM}) Inception pool statistics"
        )
    return stats


def _reference(cfg: TrainConfig, data: LatentData, classifier_key: str) -> tuple[Dataset | None, str | None, str]:
    """(reference dataset, its torch-fidelity cache name, provenance text); no dataset for an npz.
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
