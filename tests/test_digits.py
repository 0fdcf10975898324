"""Embedded digits dataset: images, the prepared VAE (scaling factor, reconstructions), the domain
classifier, the cache (hits, atomic writes) and the training loader on top of it."""

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from sklearn.datasets import load_digits

from core.data import digits as digits_mod
from core.cache import atomic_directory
from core.config import ConfigError, TrainConfig
from core.data.digits import deterministic_cpu, digits_images, entry_dir, prepare_digits
from core.evaluation.features import accuracy, load_classifier
from core.data.latents import load_latents
from core.data.vae import VAESettings, build_vae, decode_latents, encode_posterior, from_uint8, to_uint8, train_vae

# Class counts of scikit-learn's digits (load_digits().target), 1797 images in all.
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


pytestmark = pytest.mark.usefixtures("one_thread")

def test_images_are_rgb_upsampled_digits():
    images, labels = digits_images(32)
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == CLASS_COUNTS
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images.min() == 0 and images.max() == 255
    # Bilinear 4x upsampling (align_corners=False): output pixel (4k+2, 4m+2) sits at source
    # coordinate (k + 1/8, m + 1/8), so it mixes the 2x2 source block with weights 7/8 and 1/8.
    v = torch.tensor(load_digits().images[:50]) / 16 * 255
    w = torch.tensor([7 / 8, 1 / 8], dtype=torch.float64)
    expected = torch.einsum("i,j,nkimj->nkm", w, w, v.unfold(1, 2, 1).unfold(2, 2, 1).permute(0, 1, 3, 2, 4))
    got = images[:50, 0, 2:30:4, 2:30:4].double()
    assert (got - expected).abs().max() <= 0.5 + 1e-6  # rounding to uint8


def test_cache_keys_are_pinned():
    """The entries behind the README's digits numbers: the digits images, DigitsSettings and
    PREPARATION_VERSION make these keys, so a change of either key must be deliberate."""
    assert entry_dir("full").name == "full-bc91b85ba755ead0"
    assert entry_dir("tiny").name == "tiny-ebf8bb3217e8345f"


def test_prepared_entry(tiny_digits_cache):
    d = tiny_digits_cache
    assert d.name == "digits-tiny" and d.root == entry_dir("tiny")
    assert d.latent_mean.shape == d.latent_std.shape == (1797, 4, 8, 8)
    assert int(d.heldout.sum()) == 360 and torch.bincount(d.labels).tolist() == CLASS_COUNTS
    # Scaling factor = 1 / std of the posterior means, stored in the VAE config.
    assert (d.latent_mean.double() * d.scaling_factor).std().item() == pytest.approx(1.0, rel=1e-6)
    vae = AutoencoderKL.from_pretrained(d.vae_dir)
    assert vae.config.scaling_factor == pytest.approx(d.scaling_factor, rel=1e-12)
    assert (d.latent_std > 0).all()


def test_classifier_heldout_accuracy(tiny_digits_cache):
    d = tiny_digits_cache
    model = load_classifier(d.classifier_path)
    acc = accuracy(model, d.images[d.heldout], d.labels[d.heldout])
    assert acc == pytest.approx(d.meta["classifier_heldout_accuracy"], abs=1e-6)
    assert acc > 0.9


def test_vae_reconstruction_and_scaling_round_trip(tiny_digits_cache):
    d = tiny_digits_cache
    vae = AutoencoderKL.from_pretrained(d.vae_dir).eval()
    pixels = from_uint8(d.images[d.heldout][:64])
    mean, std = encode_posterior(vae, pixels)
    assert torch.allclose(mean, d.latent_mean[d.heldout][:64], atol=1e-5)
    # encode -> scale -> unscale -> decode equals decoding the unscaled mean.
    scaled = mean * d.scaling_factor
    recon = decode_latents(vae, scaled, d.scaling_factor)
    assert torch.allclose(recon, vae.decode(mean).sample.detach(), atol=1e-5)
    mse = F.mse_loss(recon, pixels).item()
    # Even the 40-step tiny VAE halves the error of predicting the mean image; the meta records it.
    baseline = F.mse_loss(pixels.mean(0, keepdim=True).expand_as(pixels), pixels).item()
    assert mse < 0.5 * baseline
    assert d.meta["vae_heldout_mse"] == pytest.approx(
        F.mse_loss(decode_latents(vae, d.latent_mean[d.heldout], 1.0), from_uint8(d.images[d.heldout])).item(),
        rel=1e-5)


def test_vae_training_is_deterministic():
    images = from_uint8(digits_images(32)[0][:64])
    settings = VAESettings(steps=2, batch=8)
    runs = []
    with deterministic_cpu():  # as in the preparation
        for _ in range(2):
            vae = build_vae(settings, 32)
            train_vae(vae, images, settings, progress=False)
            runs.append(vae.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_cache_hit_does_not_retrain(tiny_digits_cache, monkeypatch):
    monkeypatch.setattr(digits_mod, "train_vae", lambda *a, **k: pytest.fail("retrained on a cache hit"))
    again = prepare_digits(progress=False)
    assert again.key == tiny_digits_cache.key
    assert torch.equal(again.latent_mean, tiny_digits_cache.latent_mean)


def test_interrupted_preparation_leaves_no_entry(tiny_digits_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GAT_SWEEP_CACHE", str(tmp_path))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_mod, "train_vae", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_digits(progress=False)
    assert list((tmp_path / "digits").iterdir()) == []


def test_unknown_preset_is_rejected(monkeypatch):
    monkeypatch.setenv(digits_mod.PRESET_ENV, "huge")
    with pytest.raises(ValueError, match="GAT_SWEEP_DIGITS_PRESET"):
        prepare_digits()


def test_loader_samples_scaled_latents(tiny_digits_cache):
    d = tiny_digits_cache
    data = load_latents(TrainConfig(dataset="digits", sample_posterior=False))
    assert (data.name, data.kind, data.num_classes, data.channels, data.size) == ("digits-tiny", "digits", 10, 4, 8)
    assert data.vae == str(d.vae_dir) and json.loads((d.root / "meta.json").read_text())["preset"] == "tiny"
    x, y = data.sample(512, torch.Generator().manual_seed(0))
    index = torch.randint(1797, (512,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, d.labels[index])
    assert torch.equal(x, d.latent_mean[index] * d.scaling_factor)  # scaled exactly once
    # With the posterior: mean + std * eps, eps drawn after the indices from the same generator.
    posterior = load_latents(TrainConfig(dataset="digits", sample_posterior=True))
    x, _ = posterior.sample(512, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(1797, (512,), generator=gen)
    eps = torch.randn((512, 4, 8, 8), generator=gen)
    assert torch.allclose(x, (d.latent_mean[index] + d.latent_std[index] * eps) * d.scaling_factor)


def test_loader_rejects_mismatched_config(tiny_digits_cache):
    with pytest.raises(ConfigError, match="latent_size=16 does not match"):
        load_latents(TrainConfig(dataset="digits", latent_size=16))
    with pytest.raises(ConfigError, match="num_classes=1000"):
        load_latents(TrainConfig(dataset="digits", num_classes=1000))
    with pytest.raises(ConfigError, match="absolute path"):
        load_latents(TrainConfig(dataset="imagenet256-latents"))


def test_random_dataset():
    cfg = TrainConfig(dataset="random", latent_size=4, latent_channels=3, num_classes=5, seed=1)
    data = load_latents(cfg)
    assert (data.kind, data.scaling_factor, data.vae, data.std) == ("random", 1.0, None, None)
    x, y = data.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 4, 4) and y.max() < 5
    assert torch.equal(load_latents(cfg).mean, data.mean)  # fixed pool per seed


def test_pixels_are_clamped_never_wrapped():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 1.0, 7.0]).view(1, 1, 1, 6)
    assert to_uint8(x).flatten().tolist() == [0, 0, 64, 128, 255, 255]  # round(63.75), round(127.5) half-even
    assert torch.equal(to_uint8(from_uint8(torch.arange(256, dtype=torch.uint8))), torch.arange(256, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([0.0, float("nan")]))


def test_atomic_directory_first_writer_wins(tmp_path):
    final = tmp_path / "entry"
    with atomic_directory(final) as tmp:
        (tmp / "mine.txt").write_text("second")
        final.mkdir()  # another process finished first
        (final / "theirs.txt").write_text("first")
    assert [p.name for p in final.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # the losing copy is gone
