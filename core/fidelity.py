"""torch-fidelity glue: feature-space metrics (FD/FID, KID, precision, recall) of image datasets.

The metrics themselves are torch-fidelity's (``calculate_metrics``); this module fixes the settings
every call shares (so that a cache warm-up and a metric computation hit the same reference cache
under ``<cache>/fidelity/``), checks a local Inception weights file before training, reads ADM
reference statistics, and provides the datasets torch-fidelity reads: a uint8 tensor, selected
images of an image folder, and generator samples rendered lazily. Every dataset yields bare uint8
tensors (3, H, W), as torch-fidelity requires.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.utils import create_feature_extractor

from core.cache import cache_root
from core.config import ConfigError, load_local
from core.encode import image_folder
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


def fidelity_settings(reference: Dataset | None, reference_cache_name: str | None, extractor: str,
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
            **fidelity_settings(reference, reference_cache_name, extractor, weights_path, device),
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
               lambda p: create_feature_extractor(INCEPTION, [INCEPTION_LAYER], cuda=False, verbose=False,
                                                  feature_extractor_weights_path=p))
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
