"""Domain feature extractor: a small classifier trained on a dataset's own labelled images,
registered with torch-fidelity.

Inception-v3 weights cannot be downloaded on an offline machine, and Inception features of small
upsampled images say little anyway. A dataset with class labels therefore gets its own feature
space: a small CNN (:class:`DomainClassifier`) trained once to classify the dataset's real images,
the same idea as FID (Heusel et al. 2017) with a different network. The embedded digits dataset
trains one during its preparation (:mod:`core.data.digits`); an image folder encoded with
``gat-sweep encode`` gets one trained on its images when it is first evaluated
(:func:`core.evaluation.domain.prepare_folder_classifier`). Metrics computed with it are named
``fd_digits`` / ``fd_domain`` (Frechet distance), never "FID".

The extractor follows torch-fidelity's plug-in contract (``FeatureExtractorBase``): it takes a
uint8 batch (N, 3, H, W) in [0, 255], resizes it to the classifier's 32 x 32 input when H x W
differs (:func:`resize_for_classifier`), and returns a tuple of the requested features in the
order asked for: ``"features"`` (64-d penultimate activations, used for FD, KID and
precision/recall) and ``"logits"`` (one per class). Its weights come from
``feature_extractor_weights_path`` (a safetensors file written by :func:`save_classifier`; the
class count is read from it). It is registered twice, as :data:`EXTRACTOR_NAME` for the digits
classifier and :data:`FOLDER_EXTRACTOR_NAME` for a folder's, so that provenance and
torch-fidelity's cached reference features say which kind of classifier they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_fidelity
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from tqdm import tqdm

from core.metrics import DOMAIN_FEATURE_DIM as FEATURE_DIM
from core.data.vae import from_uint8

EXTRACTOR_NAME = "digits-cnn"
"""torch-fidelity name of the extractor with the embedded digits dataset's classifier."""
FOLDER_EXTRACTOR_NAME = "domain-cnn"
"""torch-fidelity name of the same extractor with an encoded image folder's classifier."""
IMAGE_SIZE = 32
"""Side in px of the classifier's input; other sizes are resized to it."""


@dataclass(frozen=True)
class ClassifierSettings:
    """Training schedule of the domain classifier (Adam, cross-entropy)."""

    epochs: int = 10
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0


class DomainClassifier(nn.Module):
    """Small CNN: three 3x3 conv stages (16, 32, 64 channels; 32 -> 16 -> 8 -> 4 px by max
    pooling), a 64-unit hidden layer on the flattened 4x4 map (the features) and a
    ``num_classes``-way linear read-out.

    forward: float images (N, 3, 32, 32) in [-1, 1] -> (features (N, 64), logits (N, num_classes)).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 -> 16
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 -> 4
        )
        self.hidden = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.readout = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.convs(images).flatten(1)  # (N, 64 * 4 * 4)
        features = F.relu(self.hidden(x))  # (N, FEATURE_DIM)
        return features, self.readout(features)


def resize_for_classifier(images: Tensor) -> Tensor:
    """uint8 images (N, 3, H, W) -> uint8 (N, 3, 32, 32), the classifier's input size.

    32 x 32 images are returned as they are; others are resized with bilinear interpolation and
    antialiasing (``F.interpolate(..., antialias=True)``, which low-pass filters when shrinking) in
    float and rounded back to uint8, so a folder's classifier is trained on exactly the pixels its
    extractor later sees.
    """
    if tuple(images.shape[-2:]) == (IMAGE_SIZE, IMAGE_SIZE):
        return images
    resized = F.interpolate(images.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def train_classifier(
    images: Tensor, labels: Tensor, num_classes: int, settings: ClassifierSettings, progress: bool = True
) -> DomainClassifier:
    """Train a :class:`DomainClassifier` from a seeded init on CPU; returned in eval mode.

    images: uint8 (N, 3, H, W) (resized to 32 x 32 by :func:`resize_for_classifier`); labels: int64
    (N,) in [0, num_classes). Each epoch visits the images in a fresh permutation drawn from a
    generator seeded by ``settings.seed``. With ``progress``, a tqdm bar when stderr is a terminal.
    """
    torch.manual_seed(settings.seed)
    model = DomainClassifier(num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    x = from_uint8(resize_for_classifier(images))
    model.train()
    steps = [
        order[i : i + settings.batch]
        for _ in range(settings.epochs)
        for order in [torch.randperm(len(x), generator=generator)]
        for i in range(0, len(x), settings.batch)
    ]
    for idx in tqdm(steps, desc="domain classifier", disable=None if progress else True, leave=False):
        _, logits = model(x[idx])
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: DomainClassifier, images: Tensor, labels: Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on uint8 images (N, 3, H, W) with labels (N,),
    classified ``batch`` images at a time (bounded memory for a large held-out set)."""
    hits = [
        model(from_uint8(resize_for_classifier(images[i : i + batch])))[1].argmax(dim=1) == labels[i : i + batch]
        for i in range(0, len(images), batch)
    ]
    return torch.cat(hits).float().mean().item()


CLASSIFIER_FILE = "classifier.safetensors"
"""Name of a prepared entry's classifier weights (written by :func:`save_classifier`)."""


@dataclass(frozen=True)
class ClassifierEntry:
    """A prepared cache entry that holds a domain classifier: the embedded digits
    (:class:`core.data.digits.DigitsCache`) or an encoded folder's (:class:`core.evaluation.domain.FolderClassifier`)."""

    root: Path
    """Absolute entry directory, holding :data:`CLASSIFIER_FILE` and ``meta.json``."""
    key: str
    """The entry's cache key (its directory name)."""
    meta: dict
    """``meta.json``: what the entry was prepared from, with its classifier's held-out accuracy."""

    @property
    def classifier_path(self) -> Path:
        """The weights file torch-fidelity's extractor loads."""
        return self.root / CLASSIFIER_FILE


def save_classifier(model: DomainClassifier, path: Path) -> None:
    """Write the classifier's state dict as safetensors (the file torch-fidelity is pointed at)."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def load_classifier(path: Path) -> DomainClassifier:
    """Load a classifier written by :func:`save_classifier` (its class count read from the read-out's
    shape); raises FileNotFoundError naming the path."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"domain classifier weights {path} not found (prepare the dataset first)")
    state = load_file(str(path))
    model = DomainClassifier(num_classes=state["readout.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor wrapping a trained :class:`DomainClassifier`.

    Constructed by torch-fidelity as ``cls(name, features_list, **kwargs)``; the weights file is
    the ``feature_extractor_weights_path`` keyword of ``torch_fidelity.calculate_metrics``
    (required: there is nothing to download). Input: uint8 (N, 3, H, W), any H x W (resized to
    32 x 32 by :func:`resize_for_classifier`).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"feature extractor {name!r} needs feature_extractor_weights_path "
                "(the classifier.safetensors of a prepared digits cache or folder classifier)"
            )
        self.classifier = load_classifier(Path(feature_extractor_weights_path))

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects uint8 images (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        features, logits = self.classifier(from_uint8(resize_for_classifier(x)))
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)


for _name in (EXTRACTOR_NAME, FOLDER_EXTRACTOR_NAME):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, DomainFeatureExtractor)
