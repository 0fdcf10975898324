"""An encoded image folder's domain classifier, prepared once and cached (``eval_metric: fd_domain``).

The embedded digits carry their classifier in their cache entry (:mod:`core.data.digits`); an image
folder written by ``gat-sweep encode`` gets one here, trained on the folder's own labelled images
(a :class:`core.evaluation.features.DomainClassifier` at 32 px), so that FD/KID/precision/recall need no
Inception weights offline. Its features are the folder's own: distances of different folders are
not comparable. The same seeded subset of the folder's images (:func:`reference_indices`) forms
the evaluation's reference statistics (:mod:`core.evaluation.evaluate`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from core.cache import atomic_directory, cache_root, content_hash
from core.config import ConfigError
from core.data.digits import deterministic_cpu
from core.data.encode import MANIFEST, image_folder
from core.evaluation.features import (
    CLASSIFIER_FILE,
    ClassifierEntry,
    ClassifierSettings,
    accuracy,
    resize_for_classifier,
    save_classifier,
    train_classifier,
)
from core.evaluation.fidelity import EVAL_BATCH

REFERENCE_MAX = 50_000
"""At most this many real images of an encoded folder form its reference statistics."""
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


def reference_indices(count: int, max_images: int = REFERENCE_MAX) -> list[int]:
    """Sorted indices of the images of an encoded folder (``count`` images, in ``image_folder``
    order) that its reference and its classifier use: all of them, or a subset of ``max_images``
    drawn by a permutation seeded with 0."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    return sorted(order[: min(count, max_images)].tolist())


def check_classes(root: Path, manifest: dict) -> None:
    """Refuse an encoded folder with fewer than 2 classes for a domain Frechet distance: its
    classifier learns to tell the folder's classes apart, and with one class its features carry
    nothing (a one-class folder measured FD 0.02 after 5 iterations). Raises ConfigError."""
    classes = manifest["classes"]
    if len(classes) < 2:
        raise ConfigError(
            f"dataset {root} holds {len(classes)} class ({', '.join(classes) or 'none'}); eval_metric fd_domain "
            "compares samples in the features of a classifier trained to tell the folder's classes apart, which "
            "needs at least 2 (with 1 any distance is meaningless): encode a folder with a sub-folder per class, "
            "set inception_weights (FID), or turn evaluation off (eval_every=-1)")


def _check_images_per_class(images_dir: Path, labels: torch.Tensor, classes: list[str],
                            settings: FolderClassifierSettings) -> None:
    """Refuse a folder some class of which has too few images for its classifier: fewer than
    1 / heldout_fraction (5), so that each class can be among the held-out images. Raises ConfigError."""
    need = math.ceil(1 / settings.heldout_fraction)
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    few = [f"{name} ({count})" for name, count in zip(classes, counts) if count < need]
    if few:
        raise ConfigError(
            f"{images_dir}: classes with fewer than {need} images, too few for the domain classifier of eval_metric "
            f"fd_domain to learn and be measured on them: {', '.join(few[:5])}{' ...' if len(few) > 5 else ''}; add "
            "images, merge or drop those classes, set inception_weights (FID), or turn evaluation off (eval_every=-1)")


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
    manifest) resized to 32 px (:func:`core.evaluation.features.resize_for_classifier`): the
    :func:`reference_indices` subset, less a held-out share (seeded split) whose accuracy is
    recorded. Training is seeded and runs on one CPU thread in deterministic mode
    (:func:`core.data.digits.deterministic_cpu`), so the weights do not depend on the machine's thread
    count. Cached under ``<cache>/domain/<key>`` (atomic; concurrent preparations are safe), the
    key hashing the folder's path, the manifest's fingerprint, ``settings`` and
    :data:`FOLDER_CLASSIFIER_VERSION`. With ``progress``, tqdm bars when stderr is a terminal.
    Cost: 1 s for 500 images of 32 px on one CPU thread (about 14 ms per training step of 64
    images, 10 epochs), plus reading and cropping the images once.

    Raises ConfigError when the images are gone, the folder has fewer than 2 classes
    (:func:`check_classes`) or a class has too few images (fewer than 1 / heldout_fraction);
    ValueError naming a corrupt image file (:func:`core.data.encode.read_rgb`).
    """
    manifest, images_dir = folder_images_dir(root)
    check_classes(root, manifest)
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
    _check_images_per_class(images_dir, labels_all, manifest["classes"], settings)

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
