"""Encode an image folder into VAE latents for training (``gat-sweep encode``).

Input: an ImageFolder (``IMAGES_DIR/<class name>/<image>``, classes sorted by name, images
sorted by path; torchvision's ``ImageFolder`` scan). Each image is centre-cropped the ADM way
(:func:`center_crop_arr`) to ``resolution`` px, mapped to [-1, 1] and encoded with a pretrained
``AutoencoderKL``.

Output (``OUT_DIR``):

* ``shard_00000.safetensors``, ... : tensors ``mean`` and ``std`` (posterior, unscaled, float32
  for precision 'fp32' or bfloat16 for 'bf16'), shape (n, c, h, w), and ``labels`` int64 (n,);
* with ``keep_images``, ``images_00000.safetensors``, ... beside them: tensor ``images`` uint8
  (n, 3, resolution, resolution), the ADM crops the latents were encoded from, which the DINOv2
  alignment (``cfg.repa``) reads batch by batch from disk (:class:`ShardImages`; 192 KiB per
  image at 256 px, so not held in memory);
  shard k holds images ``[k * shard_size, (k + 1) * shard_size)`` of the sorted list. Each shard's
  safetensors metadata carries the run fingerprint.
* ``manifest.json`` (written last): ``format``, ``vae`` (as given), ``scaling_factor`` (from the VAE
  config), ``resolution``, ``count``, ``classes``, ``latent_shape`` [c, h, w], ``precision``,
  ``keep_images``,
  ``images_dir`` (absolute), ``shard_size``, ``fingerprint`` and ``shards`` (file, start, count,
  sha256 of the file; with kept images also ``images_file`` and its size ``images_bytes``).

Resumable: run the same command again after an interruption; shards already written (each is
written atomically) are kept and skipped. A shard containing any non-finite value is refused
(fp16 VAEs are known to overflow; use 'fp32' or 'bf16'). :func:`read_encoded` reads it back.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from core.cache import atomic_write, atomic_write_bytes, content_hash, file_sha256
from core.metrics import MANIFEST
from core.data.vae import from_uint8, load_vae

FORMAT = "gat-sweep-latents/1"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Encoding precision -> dtype of the VAE and of the stored latents (no fp16: it overflows)."""
DEFAULT_SHARD_SIZE = 2048
"""Images per shard (SD-VAE at 256 px: 2048 x 4 x 32 x 32 x 2 tensors = 64 MiB in fp32)."""


def center_crop_arr(image: Image.Image, resolution: int) -> Image.Image:
    """ADM centre crop (Dhariwal & Nichol 2021, guided-diffusion ``image_datasets.py``).

    While the short side is at least 2 * resolution, halve the image with BOX filtering (cheap
    anti-aliasing); then resize with BICUBIC so the short side equals ``resolution``; then cut
    the central ``resolution`` x ``resolution`` square. Returns an RGB image of that size.
    """
    image = image.convert("RGB")
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - resolution) // 2
    top = (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class CenterCropToTensor:
    """Transform: PIL image -> :func:`center_crop_arr` -> uint8 tensor (3, R, R) in [0, 255]."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution

    def __call__(self, image: Image.Image) -> Tensor:
        return torch.from_numpy(np.asarray(center_crop_arr(image, self.resolution)).copy()).permute(2, 0, 1)


def read_rgb(path: str) -> Image.Image:
    """Load an image file as RGB (fully decoded, so a truncated file fails here).

    Raises ValueError naming the file if it cannot be read or decoded.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for corrupt or truncated files
        raise ValueError(f"cannot read image {path}: {err}; remove or replace it and run the same "
                         "command again (finished shards are kept)") from None


def image_folder(images_dir: Path, resolution: int) -> ImageFolder:
    """torchvision ``ImageFolder`` over ``images_dir`` with the ADM crop; items are (uint8 image
    (3, R, R), label).

    Raises FileNotFoundError naming the directory if it is missing or has no class folders/images;
    reading an item raises ValueError naming the file if it is corrupt (:func:`read_rgb`).
    """
    if not Path(images_dir).is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    return ImageFolder(str(images_dir), transform=CenterCropToTensor(resolution), loader=read_rgb)


@dataclass(frozen=True)
class EncodedLatents:
    """An ``encode`` output directory read into memory (CPU tensors, stored dtype)."""

    manifest: dict
    mean: Tensor
    """(N, c, h, w) posterior means, unscaled."""
    std: Tensor
    """(N, c, h, w) posterior standard deviations, unscaled."""
    labels: Tensor
    """(N,) int64 class indices into ``manifest['classes']``."""
    images: ShardImages | None
    """The ADM crops when encoded with ``keep_images`` (read from disk on indexing), else None."""


def encode_folder(
    images_dir: Path,
    out_dir: Path,
    vae: str,
    resolution: int = 256,
    batch: int = 32,
    precision: str = "fp32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str | torch.device = "cpu",
    *,
    allow_download: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    keep_images: bool = False,
) -> Path:
    """Encode an ImageFolder into latent shards plus a manifest; returns the manifest path.

    Args:
        images_dir: folder with one sub-folder per class.
        out_dir: output directory (created); re-running resumes, keeping finished shards.
        vae: local ``save_pretrained`` directory of an ``AutoencoderKL`` (e.g. SD-VAE), or a hub
            id, which is only fetched when ``allow_download`` is True (offline by default).
        resolution: image side in px after the ADM centre crop (latents are resolution / 8 for SD-VAE).
        batch: images per VAE forward pass.
        precision: 'fp32' or 'bf16' for both the VAE computation and the stored latents.
        shard_size: images per shard file.
        device: torch device for the VAE.
        num_workers: DataLoader workers decoding images (0: in this process).
        progress: show a tqdm bar (images) when stderr is a terminal (tqdm's disable=None).
        keep_images: also store the uint8 crops, in image shards beside the latent shards (for
            ``cfg.repa``; 192 KiB per image at 256 px, read per batch when training).

    Raises:
        ValueError: bad precision / sizes, a VAE with a ``shift_factor`` (not supported: the
            loader applies the scaling factor only), ``out_dir`` holding shards of a different
            run, or a shard with non-finite latents (nothing is written for it).
        FileNotFoundError: missing image folder or VAE.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)} (fp16 VAEs overflow), got {precision!r}")
    for name, value in (("resolution", resolution), ("batch", batch), ("shard_size", shard_size)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    images_dir, out_dir = Path(images_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    dataset = image_folder(images_dir, resolution)
    files = [str(Path(path).relative_to(images_dir)) for path, _ in dataset.samples]
    settings = {"format": FORMAT, "files": files, "labels": dataset.targets, "classes": dataset.classes,
                "vae": vae, "resolution": resolution, "precision": precision, "shard_size": shard_size}
    # keep_images joins the hash only when set, so an earlier run's directory keeps its fingerprint
    fingerprint = content_hash({**settings, "keep_images": True} if keep_images else settings)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        if json.loads(manifest_path.read_text()).get("fingerprint") != fingerprint:
            raise ValueError(f"{out_dir} already holds latents of a different encode run; use an empty directory")
        return manifest_path

    dtype = PRECISIONS[precision]
    model = load_vae(vae, allow_download=allow_download, dtype=dtype).to(device)
    if model.config.get("shift_factor"):
        raise ValueError(f"VAE {vae!r} has shift_factor={model.config['shift_factor']}; only scaling is supported")
    out_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(dataset), shard_size)
    shards = []
    with tqdm(total=len(dataset), desc="encoding", unit="img", disable=None if progress else True) as bar:
        for index, start in enumerate(starts):
            stop = min(start + shard_size, len(dataset))
            path = out_dir / f"shard_{index:05d}.safetensors"
            crops = out_dir / f"images_{index:05d}.safetensors" if keep_images else None
            if path.is_file():  # written after its image shard: both are there
                _check_shard(path, fingerprint)
            else:
                _encode_shard(model, Subset(dataset, range(start, stop)), path, fingerprint, batch, num_workers, bar,
                              crops)
            bar.n = stop
            bar.refresh()
            shards.append({"file": path.name, "start": start, "count": stop - start, "sha256": file_sha256(path),
                           **({"images_file": crops.name, "images_bytes": crops.stat().st_size} if crops else {})})

    with safe_open(str(out_dir / shards[0]["file"]), "pt") as first:  # the shape, without the data
        c, h, w = first.get_slice("mean").get_shape()[1:]
    manifest = {
        "format": FORMAT,
        "vae": vae,
        "scaling_factor": float(model.config.scaling_factor),
        "resolution": resolution,
        "count": len(dataset),
        "classes": dataset.classes,
        "latent_shape": [c, h, w],
        "precision": precision,
        "keep_images": keep_images,
        "images_dir": str(images_dir),
        "shard_size": shard_size,
        "fingerprint": fingerprint,
        "shards": shards,
    }
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=2).encode())
    return manifest_path


def _check_shard(path: Path, fingerprint: str) -> None:
    """Raise ValueError unless an existing shard belongs to this run (same fingerprint)."""
    with safe_open(str(path), framework="pt") as handle:
        found = (handle.metadata() or {}).get("fingerprint")
    if found != fingerprint:
        raise ValueError(f"{path} belongs to a different encode run; use an empty output directory")


@torch.no_grad()
def _encode_shard(model: AutoencoderKL, subset: Subset, path: Path, fingerprint: str, batch: int,
                  num_workers: int, bar: tqdm, crops_path: Path | None) -> None:
    """Encode one shard's images (uint8 crops) and write it atomically, after its image shard
    ``crops_path`` if the crops are kept; refuse non-finite latents."""
    means, stds, labels, crops = [], [], [], []
    for images, targets in DataLoader(subset, batch_size=batch, num_workers=num_workers):
        posterior = model.encode(from_uint8(images).to(model.device, model.dtype)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
        labels.append(targets.to(torch.int64))
        if crops_path is not None:
            crops.append(images)
        bar.update(len(targets))
    mean, std = torch.cat(means), torch.cat(stds)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        first, last = subset.indices[0], subset.indices[-1]
        raise ValueError(
            f"non-finite latents in {path.name} (images {first}..{last}); not written. "
            "If the VAE runs in fp16, use precision 'fp32' or 'bf16'"
        )
    metadata = {"fingerprint": fingerprint}
    if crops_path is not None:
        atomic_write(crops_path, lambda tmp: save_file({"images": torch.cat(crops)}, tmp, metadata=metadata))
    tensors = {"mean": mean.contiguous(), "std": std.contiguous(), "labels": torch.cat(labels)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_encoded(out_dir: Path, verify: bool = True) -> EncodedLatents:
    """Read an :func:`encode_folder` output back (all shards, in order).

    ``verify`` checks every latent shard's SHA-256 against the manifest; kept images are checked
    by size only (hashing them would read the whole image set at every start) and read per batch
    (:class:`ShardImages`). Raises FileNotFoundError when ``manifest.json`` or a shard is missing
    and ValueError on a checksum, size or format mismatch.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found; write it with `gat-sweep encode IMAGES_DIR {out_dir}`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    means, stds, labels = [], [], []
    for shard in manifest["shards"]:
        path = out_dir / shard["file"]
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in {manifest_path} is missing")
        raw = path.read_bytes()  # read once: checksum and tensors
        if verify and hashlib.sha256(raw).hexdigest() != shard["sha256"]:
            raise ValueError(f"shard {path} does not match its SHA-256 in {manifest_path} (corrupt or replaced)")
        tensors = safetensors.torch.load(raw)
        means.append(tensors["mean"])
        stds.append(tensors["std"])
        labels.append(tensors["labels"])
    kept = ShardImages(out_dir, manifest["shards"]) if manifest.get("keep_images") else None
    return EncodedLatents(manifest, torch.cat(means), torch.cat(stds), torch.cat(labels), kept)


class ShardImages:
    """The kept crops of an encode output directory, read from its image shards on indexing
    (safetensors memory-maps the files), so a training process holds only the batch it draws.

    ``images[index]``: index (n,) int64 -> uint8 (n, 3, R, R) in that order. Raises
    FileNotFoundError / ValueError naming an image shard that is missing or of the wrong size.
    """

    def __init__(self, out_dir: Path, shards: list[dict]) -> None:
        self.paths, self.starts = [], []
        for shard in shards:
            path = Path(out_dir) / shard["images_file"]
            if not path.is_file():
                raise FileNotFoundError(f"image shard {path} listed in {out_dir / MANIFEST} is missing")
            if path.stat().st_size != shard["images_bytes"]:
                raise ValueError(f"image shard {path} is not the size {out_dir / MANIFEST} records (corrupt or replaced)")
            self.paths.append(path)
            self.starts.append(shard["start"])
        self.count = shards[-1]["start"] + shards[-1]["count"]
        self._slices: dict[int, Any] = {}  # opened on first use (handles do not pickle)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: Tensor) -> Tensor:
        rows = []
        for i in index.tolist():
            k = bisect.bisect_right(self.starts, i) - 1
            if k not in self._slices:
                self._slices[k] = safe_open(str(self.paths[k]), "pt").get_slice("images")
            row = i - self.starts[k]
            rows.append(self._slices[k][row:row + 1])
        return torch.cat(rows)
