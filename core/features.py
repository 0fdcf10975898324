"""Domain feature extractor for the embedded digits dataset, registered with torch-fidelity.

Inception-v3 weights cannot be downloaded on an offline machine, and Inception features of 32x32
upsampled digits say little anyway. The embedded default therefore measures distances in the
feature space of a small CNN trained once to classify the digits (the "domain classifier"),
the same idea as FID (Heusel et al. 2017) with a different network. Metrics computed with it are
named ``fd_digits`` (Frechet distance), never "FID".

The extractor follows torch-fidelity's plug-in contract (``FeatureExtractorBase``): it takes a
uint8 batch (N, 3, 32, 32) in [0, 255] and returns a tuple of the requested features in the order
asked for: ``"features"`` (64-d penultimate activations, used for FD, KID and precision/recall)
and ``"logits"`` (10 classes). Its weights come from ``feature_extractor_weights_path``
(a safetensors file written by :func:`save_classifier`).
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

from core.metrics import DIGITS_FEATURE_DIM as FEATURE_DIM
from core.vae import from_uint8

EXTRACTOR_NAME = "digits-cnn"
"""Name under which the domain classifier is registered with torch-fidelity."""
NUM_CLASSES = 10
IMAGE_SIZE = 32


@dataclass(frozen=True)
class ClassifierSettings:
    """Training schedule of the domain classifier (Adam, cross-entropy)."""

    epochs: int = 10
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0


class DigitsClassifier(nn.Module):
    """Small CNN: three 3x3 conv stages (16, 32, 64 channels; 32 -> 16 -> 8 -> 4 px by max
    pooling), a 64-unit hidden layer on the flattened 4x4 map (the features) and a 10-way linear
    read-out.

    forward: float images (N, 3, 32, 32) in [-1, 1] -> (features (N, 64), logits (N, 10)).
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 -> 16
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 -> 8
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 -> 4
        )
        self.hidden = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.readout = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.convs(images).flatten(1)  # (N, 64 * 4 * 4)
        features = F.relu(self.hidden(x))  # (N, FEATURE_DIM)
        return features, self.readout(features)


def train_classifier(
    images: Tensor, labels: Tensor, settings: ClassifierSettings, progress: bool = True
) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` from a seeded init on CPU; returned in eval mode.

    images: uint8 (N, 3, 32, 32); labels: int64 (N,). Each epoch visits the images in a fresh
    permutation drawn from a generator seeded by ``settings.seed``.
    """
    torch.manual_seed(settings.seed)
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    x = from_uint8(images)
    model.train()
    steps = [
        order[i : i + settings.batch]
        for _ in range(settings.epochs)
        for order in [torch.randperm(len(x), generator=generator)]
        for i in range(0, len(x), settings.batch)
    ]
    for idx in tqdm(steps, desc="digits classifier", disable=None if progress else True, leave=False):
        _, logits = model(x[idx])
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on uint8 images (N, 3, 32, 32) with labels (N,)."""
    _, logits = model(from_uint8(images))
    return (logits.argmax(dim=1) == labels).float().mean().item()


def save_classifier(model: DigitsClassifier, path: Path) -> None:
    """Write the classifier's state dict as safetensors (the file torch-fidelity is pointed at)."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def load_classifier(path: Path) -> DigitsClassifier:
    """Load a classifier written by :func:`save_classifier`; raises FileNotFoundError naming the path."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"digits classifier weights {path} not found (prepare the digits dataset first)")
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor wrapping a trained :class:`DigitsClassifier`.

    Constructed by torch-fidelity as ``cls(name, features_list, **kwargs)``; the weights file is
    the ``feature_extractor_weights_path`` keyword of ``torch_fidelity.calculate_metrics``
    (required: there is nothing to download). Input: uint8 (N, 3, 32, 32).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"feature extractor {EXTRACTOR_NAME!r} needs feature_extractor_weights_path "
                "(the classifier.safetensors of a prepared digits cache)"
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
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"{EXTRACTOR_NAME} expects uint8 images (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        features, logits = self.classifier(from_uint8(x))
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)
