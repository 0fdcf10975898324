"""Session-wide fixtures shared by the test files.

``tiny_digits_cache``: one prepared embedded-digits entry (preset 'tiny': a 40-step VAE, a
4-epoch classifier; about 20 s of CPU time) in a temporary cache directory. While the session runs
it sets

* ``GAT_SWEEP_CACHE`` = that temporary directory (so nothing is written to ``~/.cache``), and
* ``GAT_SWEEP_DIGITS_PRESET`` = 'tiny',

so ``core.data.latents.load_latents(TrainConfig(dataset='digits'))`` and
``core.evaluation.evaluate.make_evaluator`` find the tiny entry instead of preparing the full one. Both
variables are restored when the session ends; processes started while it runs (Ray workers)
inherit them. The fixture returns the :class:`core.data.digits.DigitsCache`.

``digits_image_folder``: a labelled ImageFolder of PNGs written from the first
:data:`FOLDER_IMAGES` digits images (32 px, class sub-folders ``0/`` ... ``9/``), and
``encoded_digits_folder``: that folder encoded at 32 px with the tiny digits VAE (what
``gat-sweep encode DIR OUT --vae digits --resolution 32`` writes; about 2 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.cache import CACHE_ENV
from core.data.digits import PRESET_ENV, DigitsCache, digits_images, prepare_digits
from core.data.encode import encode_folder

FOLDER_IMAGES = 500
"""Images in the generated labelled folder (enough for its classifier to reach 99% held-out accuracy)."""


@pytest.fixture(scope="session")
def tiny_digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DigitsCache]:
    patch = pytest.MonkeyPatch()
    patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("gat_sweep_cache")))
    patch.setenv(PRESET_ENV, "tiny")
    try:
        yield prepare_digits(progress=False)
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def digits_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits_folder")
    images, labels = digits_images(32)
    for index in range(FOLDER_IMAGES):
        folder = root / str(int(labels[index]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def encoded_digits_folder(tiny_digits_cache: DigitsCache, digits_image_folder: Path,
                          tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits_folder_latents")
    encode_folder(digits_image_folder, out, str(tiny_digits_cache.vae_dir), resolution=32, progress=False)
    return out


@pytest.fixture(autouse=True)
def no_cluster_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see neither the caller's Ray cluster nor MLflow server ($RAY_ADDRESS,
    $MLFLOW_TRACKING_URI, which a sweep honours): a test that wants them sets them."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores, two threads wait for each other (and Ray trials use one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
