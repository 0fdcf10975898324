"""The embedded default dataset: scikit-learn's handwritten digits in a small VAE latent space.

Works on a fresh machine with no downloads. scikit-learn ships the UCI optical digits (1,797
images, 8x8 grey, values 0..16, 10 classes; Alpaydin & Kaynak 1998). Preparation, done once and
cached under ``<cache>/digits/<preset>-<hash>/`` (see :mod:`core.cache`):

1. images: 8x8 -> ``image_size`` px by bilinear upsampling, grey copied to 3 channels (white
   digits on black), stored as uint8 (1797, 3, 32, 32); a seeded split holds out 360 images;
2. a small ``AutoencoderKL`` (:mod:`core.data.vae`) trained on the other images, seeded; its
   ``scaling_factor`` = 1 / std of the posterior means, stored in the VAE config;
3. posterior mean and std of every image (unscaled latents, 4 x 8 x 8), and labels;
4. the domain classifier of :mod:`core.evaluation.features`, trained on the same images, with its
   held-out accuracy and the VAE's held-out reconstruction error (MSE of ``decode(mean)`` in
   [-1, 1] pixel units) recorded in ``meta.json``.

The hash covers the digit pixels, the preparation settings and :data:`PREPARATION_VERSION`, so a
change in any of them prepares a new entry. The entry is written atomically, so a killed
preparation leaves nothing behind and concurrent preparations do not corrupt it.

Two presets: ``full`` (the default; about 100 s of CPU time the first time, on one thread) and
``tiny`` (a 40-step VAE and a 4-epoch classifier, about 20 s, for plumbing tests and smoke runs:
reconstructions are blurry, the classifier is still accurate). ``$GAT_SWEEP_DIGITS_PRESET``
selects the preset that ``load_latents(cfg)`` with ``cfg.dataset == 'digits'`` uses; the preset
name is part of :attr:`DigitsCache.name`, so provenance says which one a run used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from torch import Tensor
from tqdm import tqdm

from core.cache import atomic_directory, cache_root, content_hash
from core.evaluation.features import (
    CLASSIFIER_FILE,
    ClassifierEntry,
    ClassifierSettings,
    accuracy,
    save_classifier,
    train_classifier,
)
from core.data.vae import (
    VAESettings,
    build_vae,
    decode_latents,
    encode_posterior,
    from_uint8,
    scaling_factor_from_latents,
    train_vae,
)

PREPARATION_VERSION = 3
"""Bump when the preparation code changes what it produces (invalidates cached entries)."""
PRESET_ENV = "GAT_SWEEP_DIGITS_PRESET"
"""Environment variable choosing the digits preset ('full' if unset)."""


@dataclass(frozen=True)
class DigitsSettings:
    """Everything that determines a prepared digits entry (hashed into its cache key)."""

    image_size: int = 32
    heldout: int = 360
    """Images held out from VAE and classifier training (about 20%)."""
    split_seed: int = 0
    vae: VAESettings = field(default_factory=VAESettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)


PRESETS: dict[str, DigitsSettings] = {
    "full": DigitsSettings(),
    "tiny": DigitsSettings(vae=VAESettings(steps=40), classifier=ClassifierSettings(epochs=4)),
}


@dataclass(frozen=True)
class DigitsCache(ClassifierEntry):
    """A prepared digits entry, loaded into memory (CPU tensors). Its ``root`` holds ``vae/``
    (save_pretrained), the classifier, ``data.safetensors`` and ``meta.json``."""

    name: str
    """'digits' for the full preset, 'digits-<preset>' otherwise."""
    images: Tensor
    """uint8 (1797, 3, 32, 32) in [0, 255]."""
    labels: Tensor
    """int64 (1797,) digit classes 0..9."""
    heldout: Tensor
    """bool (1797,): held out from VAE and classifier training."""
    latent_mean: Tensor
    """float32 (1797, 4, 8, 8) posterior means, unscaled."""
    latent_std: Tensor
    """float32 (1797, 4, 8, 8) posterior standard deviations, unscaled."""
    scaling_factor: float

    @property
    def vae_dir(self) -> Path:
        return self.root / "vae"


def digits_images(image_size: int = 32) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as RGB images: (uint8 (1797, 3, S, S), int64 labels (1797,)).

    Intensities 0..16 -> [0, 1], bilinear upsampling (``align_corners=False``) to S x S, rounded
    to uint8, the grey value copied to R, G and B.
    """
    bunch = load_digits()
    grey = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (grey.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).expand(-1, 3, -1, -1)
    return images.contiguous(), torch.tensor(bunch.target, dtype=torch.int64)


def preset_name(preset: str | None = None) -> str:
    """``preset`` or ``$GAT_SWEEP_DIGITS_PRESET`` or 'full'; raises ValueError for an unknown name."""
    name = preset or os.environ.get(PRESET_ENV) or "full"
    if name not in PRESETS:
        raise ValueError(f"unknown digits preset {name!r} (from {PRESET_ENV}?); choose one of {sorted(PRESETS)}")
    return name


def entry_dir(preset: str | None = None) -> Path:
    """Cache directory of a preset's entry (exists only once prepared)."""
    name = preset_name(preset)
    settings = PRESETS[name]
    images, labels = digits_images(settings.image_size)
    key = content_hash(
        images.numpy().tobytes(), labels.numpy().tobytes(),
        {"settings": asdict(settings), "version": PREPARATION_VERSION},
    )
    return cache_root() / "digits" / f"{name}-{key}"


def prepare_digits(preset: str | None = None, progress: bool = True) -> DigitsCache:
    """Prepare (first call: minutes on CPU) or load (later calls: about a second) a digits entry.

    ``preset``: 'full' or 'tiny' (default: ``$GAT_SWEEP_DIGITS_PRESET`` or 'full'). Safe to call
    from several processes at once (atomic directory rename; see :mod:`core.cache`). With
    ``progress``, tqdm bars when stderr is a terminal (none in a log file).
    """
    name = preset_name(preset)
    root = entry_dir(name)
    if not (root / "meta.json").is_file():
        with atomic_directory(root) as tmp:
            _build_entry(tmp, name, PRESETS[name], progress)
    return load_entry(root)


def load_entry(root: Path) -> DigitsCache:
    """Read a prepared entry directory (written by :func:`prepare_digits`)."""
    tensors = load_file(str(root / "data.safetensors"))
    meta = json.loads((root / "meta.json").read_text())
    preset = meta["preset"]
    return DigitsCache(
        root=root,
        name="digits" if preset == "full" else f"digits-{preset}",
        key=root.name,
        images=tensors["images"],
        labels=tensors["labels"],
        heldout=tensors["heldout"],
        latent_mean=tensors["latent_mean"],
        latent_std=tensors["latent_std"],
        scaling_factor=float(meta["scaling_factor"]),
        meta=meta,
    )


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """Deterministic algorithms on one intra-op thread for the block, restoring both settings.

    One thread makes the prepared entry independent of the machine's thread count (reductions
    are summed in one order), and it is barely slower: the small convolutions of the digits VAE
    do not parallelise well, and on a busy machine extra threads wait for each other.
    """
    previous_mode, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)


def _build_entry(out: Path, preset: str, settings: DigitsSettings, progress: bool) -> None:
    """Run the four preparation stages into ``out`` (a temporary directory)."""
    seconds: dict[str, float] = {}
    stages = tqdm(total=4, desc=f"preparing digits ({preset})", disable=None if progress else True)
    images, labels = digits_images(settings.image_size)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(settings.split_seed))
    heldout = torch.zeros(len(images), dtype=torch.bool)
    heldout[order[: settings.heldout]] = True
    pixels = from_uint8(images)

    with deterministic_cpu():
        start = time.perf_counter()
        vae = build_vae(settings.vae, settings.image_size)
        train_vae(vae, pixels[~heldout], settings.vae, progress)
        seconds["vae"] = time.perf_counter() - start
        stages.update()

        start = time.perf_counter()
        mean, std = encode_posterior(vae, pixels)
        scaling_factor = scaling_factor_from_latents(mean)
        vae.register_to_config(scaling_factor=scaling_factor)
        recon = decode_latents(vae, mean[heldout], scaling_factor=1.0)
        recon_mse = (recon - pixels[heldout]).square().mean().item()
        seconds["latents"] = time.perf_counter() - start
        stages.update()

        start = time.perf_counter()
        classifier = train_classifier(images[~heldout], labels[~heldout], int(labels.max()) + 1,
                                      settings.classifier, progress)
        heldout_accuracy = accuracy(classifier, images[heldout], labels[heldout])
        seconds["classifier"] = time.perf_counter() - start
        stages.update()

    vae.save_pretrained(out / "vae")
    save_classifier(classifier, out / CLASSIFIER_FILE)
    save_file(
        {"images": images, "labels": labels, "heldout": heldout, "latent_mean": mean, "latent_std": std},
        str(out / "data.safetensors"),
    )
    meta = {
        "preset": preset,
        "settings": asdict(settings),
        "version": PREPARATION_VERSION,
        "scaling_factor": scaling_factor,
        "latent_shape": list(mean.shape[1:]),
        "classifier_heldout_accuracy": heldout_accuracy,
        "vae_heldout_mse": recon_mse,
        "seconds": seconds,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    stages.update()
    stages.close()
