"""Session-wide fixtures shared by the test files.

``tiny_digits_cache``: one prepared embedded-digits entry (preset 'tiny': a 40-step VAE, a
4-epoch classifier; about 20 s of CPU time) in a temporary cache directory. While the session runs
it sets

* ``GAT_SWEEP_CACHE`` = that temporary directory (so nothing is written to ``~/.cache``), and
* ``GAT_SWEEP_DIGITS_PRESET`` = 'tiny',

so ``core.latents.load_latents(TrainConfig(dataset='digits'))`` and
``core.evaluate.make_evaluator`` find the tiny entry instead of preparing the full one. Both
variables are restored when the session ends; processes started while it runs (Ray workers)
inherit them. The fixture returns the :class:`core.digits.DigitsCache`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from core.cache import CACHE_ENV
from core.digits import PRESET_ENV, DigitsCache, prepare_digits


@pytest.fixture(scope="session")
def tiny_digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DigitsCache]:
    patch = pytest.MonkeyPatch()
    patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("gat_sweep_cache")))
    patch.setenv(PRESET_ENV, "tiny")
    try:
        yield prepare_digits(progress=False)
    finally:
        patch.undo()


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
