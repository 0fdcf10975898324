"""torch-fidelity glue: feature-space metrics (FD/FID, KID, precision, recall) of image datasets.

The metrics and the feature extractors are torch-fidelity's (its ``*_featuresdict_to_metric``
functions, which ``calculate_metrics`` calls too); this module extracts the features, keeps the
reference's features in a tensor-only cache under ``<cache>/fidelity/`` (safetensors), checks a
local Inception weights file before training, reads ADM reference statistics, and provides the
datasets the extractors read: a uint8 tensor, selected images of an image folder, and generator
samples rendered lazily. Every dataset yields bare uint8 tensors (3, H, W), as torch-fidelity
requires.

Nothing a user, a cache or shared storage supplies is unpickled (docs/TRACKING.md, "Guarantees"):
torch-fidelity loads Inception weights and its own feature cache with ``torch.load(...,
weights_only=False)``, which runs any code a crafted file holds. So its cache is never used
(``cache=False``; the reference features live in safetensors files here), and a weights file
for one of its built-in extractors is first read with ``weights_only=True`` (tensors only; a file
holding anything else is refused) and handed to torch-fidelity as a private copy this process
wrote (:func:`tensor_only_weights`).
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from core.cache import atomic_write_bytes, cache_root
from core.config import ConfigError, load_local
from core.data.encode import image_folder
from core.evaluation.features import EXTRACTOR_NAME, FOLDER_EXTRACTOR_NAME
from core.metrics import INCEPTION_DIM

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


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """Frechet distance between Gaussians N(mu_1, sigma_1) and N(mu_2, sigma_2) (Heusel et al. 2017, eq. 6):

    ``|mu_1 - mu_2|^2 + tr(sigma_1 + sigma_2 - 2 (sigma_1 sigma_2)^(1/2))``, computed by torch-fidelity
    (trace of the square root from the eigenvalues of sigma_1 sigma_2) in float64.
    stats_*: {'mu': (d,), 'sigma': (d, d)} numpy arrays.
    """
    as64 = [{key: np.asarray(stats[key], dtype=np.float64) for key in ("mu", "sigma")} for stats in (stats_1, stats_2)]
    return float(fid_statistics_to_metric(as64[0], as64[1], verbose=False)[torch_fidelity.KEY_METRIC_FID])


SAFETENSORS_EXTRACTORS = frozenset({EXTRACTOR_NAME, FOLDER_EXTRACTOR_NAME})
"""Extractors that read their weights with safetensors (ours, :mod:`core.evaluation.features`); the weights
of every other (torch-fidelity's built-in ones unpickle theirs) go through
:func:`tensor_only_weights`."""
_TENSOR_ONLY_COPIES: dict[tuple[str, int, int], str] = {}


class UnsafeWeightsError(ValueError):
    """A weights file holds more than tensors (pickled objects or code): it is not loaded."""


def tensor_only_weights(path: str) -> str:
    """A private, tensor-only copy of the weights file ``path``, for a library that unpickles it.

    The file is read with ``torch.load(weights_only=True)`` (tensors, dicts and numbers only: a
    pickled object or code is refused without running anything) and must be a dict of tensors (a
    state dict); that dict is saved to a file in a directory only this process can write (removed
    at exit), whose path is returned. A file swapped on shared storage after this check is never
    read again. One copy per file version (path, size, mtime) and process.

    Raises:
        UnsafeWeightsError: the file holds anything but a dict of tensors.
        OSError, RuntimeError: unreadable, truncated or not a torch file (torch's own errors).
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _TENSOR_ONLY_COPIES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeWeightsError(
                f"it holds pickled objects that a weights file does not need, and loading them could run "
                f"code; refused ({' '.join(str(err).split())[:160]})") from err
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UnsafeWeightsError(f"it holds a {type(state).__name__}, not a state dict of tensors")
        private = tempfile.mkdtemp(prefix="gat-sweep-weights-")  # mode 0700
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        copy = os.path.join(private, os.path.basename(path))
        torch.save(state, copy)
        _TENSOR_ONLY_COPIES[key] = copy
    return _TENSOR_ONLY_COPIES[key]


def make_extractor(extractor: str, layer: str, weights_path: str, device: torch.device):
    """torch-fidelity's feature extractor ``extractor`` (registered name) giving ``layer``, with its
    weights from ``weights_path`` (read safely, :data:`SAFETENSORS_EXTRACTORS`), on ``device``."""
    if extractor not in SAFETENSORS_EXTRACTORS:
        weights_path = tensor_only_weights(weights_path)
    return create_feature_extractor(extractor, [layer], cuda=device.type == "cuda", verbose=False,
                                    feature_extractor_weights_path=weights_path)


def dataset_features(dataset: Dataset, extractor_model, device: torch.device) -> Tensor:
    """Features (N, d) of every image of ``dataset`` (uint8 (3, H, W) items), in
    :data:`EVAL_BATCH` batches, by a model of :func:`make_extractor` (it gives one layer)."""
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        features = get_featuresdict_from_dataset(dataset, extractor_model, EVAL_BATCH, device.type == "cuda",
                                                 True, False)
    (layer_features,) = features.values()
    return layer_features


def reference_cache_path(cache_name: str, extractor: str, layer: str) -> Path:
    """File of a reference's cached features: ``<cache>/fidelity/<name>-<extractor>-<layer>.safetensors``."""
    return cache_root() / "fidelity" / f"{cache_name}-{extractor}-{layer}.safetensors"


def reference_features(reference: Dataset, cache_name: str | None, extractor: str, layer: str,
                       weights_path: str, device: torch.device) -> Tensor:
    """Features (N, d) of the reference images, from the tensor-only cache when it holds them
    (``cache_name`` None: no caching), else extracted and cached (atomic write)."""
    path = None if cache_name is None else reference_cache_path(cache_name, extractor, layer)
    if path is not None and path.is_file():
        try:
            return safetensors.torch.load_file(path)["features"]
        except (OSError, KeyError, safetensors.SafetensorError):
            pass  # damaged (e.g. a partial copy): extracted again and rewritten below
    features = dataset_features(reference, make_extractor(extractor, layer, weights_path, device), device)
    if path is not None:
        atomic_write_bytes(path, safetensors.torch.save({"features": features.contiguous()}))
    return features


def fidelity_metrics(
    generated: Dataset, reference: Dataset, extractor: str, layer: str, weights_path: str, device: torch.device,
    reference_cache_name: str | None = None, seed: int = 0,
) -> dict[str, float]:
    """FD, KID (mean), precision and recall of ``generated`` against ``reference`` (both datasets
    yield uint8 (3, H, W) tensors), computed by torch-fidelity's functions from the features
    ``layer`` of ``extractor`` (the functions ``torch_fidelity.calculate_metrics`` calls).

    ``reference_cache_name``: cache the reference's features under ``<cache>/fidelity/`` with this
    name (:func:`reference_features`; None: no caching). FD: Heusel et al. 2017, eq. 6 (float64
    statistics); KID (Binkowski et al. 2018): :data:`KID_SUBSETS` subsets of min(1000, both
    counts), cubic polynomial kernel, subsets drawn with ``seed``; precision/recall (Kynkaanniemi
    et al. 2019) with k = 3 neighbours. Returns {'fd', 'kid', 'precision', 'recall'} as floats.
    """
    ref = {layer: reference_features(reference, reference_cache_name, extractor, layer, weights_path, device)}
    gen = {layer: dataset_features(generated, make_extractor(extractor, layer, weights_path, device), device)}
    settings = dict(kid_subsets=KID_SUBSETS, kid_subset_size=min(KID_SUBSET_SIZE, len(generated), len(reference)),
                    rng_seed=seed, save_cpu_ram=True, verbose=False)
    fd = fid_statistics_to_metric(fid_featuresdict_to_statistics(gen, layer), fid_featuresdict_to_statistics(ref, layer),
                                  False)
    kid = kid_featuresdict_to_metric(gen, ref, layer, **settings)
    prc = prc_featuresdict_to_metric(gen, ref, layer, **settings)
    return {
        "fd": fd[torch_fidelity.KEY_METRIC_FID],
        "kid": kid[torch_fidelity.KEY_METRIC_KID_MEAN],
        "precision": prc[torch_fidelity.KEY_METRIC_PRECISION],
        "recall": prc[torch_fidelity.KEY_METRIC_RECALL],
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
               lambda p: make_extractor(INCEPTION, INCEPTION_LAYER, p, torch.device("cpu")))
    # (torch.load and load_state_dict raise many exception types for a bad file: all of them count)


def read_npz(path: Path) -> dict[str, np.ndarray]:
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
