"""`encode`: ADM centre crop, ImageFolder -> latent shards + manifest with a tiny random
AutoencoderKL, read back by the training loader; resume, refusal of non-finite shards, checksums."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from core.data import encode as encode_mod
from core.config import ConfigError, TrainConfig
from core.data.encode import MANIFEST, center_crop_arr, encode_folder, read_encoded
from core.data.latents import load_latents
from core.data.vae import load_vae

CLASSES = ["cat", "dog", "emu"]
PER_CLASS = 5
RES = 16


def test_center_crop_halves_then_resizes_then_crops():
    # 400 x 100: left half red, right half blue. Short side 100 < 2 * 100, so no halving and the
    # bicubic resize keeps the size; the centre crop takes columns 150..249.
    image = np.zeros((100, 400, 3), dtype=np.uint8)
    image[:, :200, 0] = 255
    image[:, 200:, 2] = 255
    out = np.asarray(center_crop_arr(Image.fromarray(image), 100))
    assert out.shape == (100, 100, 3)
    assert (out[:, :50] == [255, 0, 0]).all() and (out[:, 50:] == [0, 0, 255]).all()
    # 800 x 1000 at 60: BOX-halved while the short side >= 120 (-> 400 x 500 -> 200 x 250 ->
    # 100 x 125), bicubic to 60 x 75, centre rows 7..66.
    big = np.full((1000, 800, 3), 7, dtype=np.uint8)
    big[:, :, 1] = (np.arange(1000) // 4)[:, None]
    out = np.asarray(center_crop_arr(Image.fromarray(big), 60))
    assert out.shape == (60, 60, 3) and (out[..., 0] == 7).all()
    expected = Image.fromarray(big)
    for size in ((400, 500), (200, 250), (100, 125)):
        expected = expected.resize(size, Image.BOX)
    expected = np.asarray(expected.resize((60, 75), Image.BICUBIC))[7:67]
    assert np.array_equal(out, expected)


@pytest.fixture()
def folder(tmp_path):
    """3 classes x 5 images of different sizes and colours (PNG), and a tiny random VAE on disk."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, (20 + 2 * i, 24, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4, sample_size=RES,
        scaling_factor=0.5,
    )
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path


def encode(folder, out="out", **kw):
    return encode_folder(folder / "images", folder / out, str(folder / "vae"), resolution=RES, batch=4,
                         shard_size=4, progress=False, **kw)


def test_encode_writes_shards_that_the_loader_reads(folder):
    manifest_path = encode(folder)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["count"] == 15 and manifest["classes"] == CLASSES
    assert manifest["scaling_factor"] == 0.5 and manifest["resolution"] == RES
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["vae"] == str(folder / "vae")
    assert [(s["start"], s["count"]) for s in manifest["shards"]] == [(0, 4), (4, 4), (8, 4), (12, 3)]

    # The stored posterior equals encoding the ADM-cropped image directly.
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    image = Image.open(folder / "images" / "dog" / "3.png")
    pixels = torch.from_numpy(np.asarray(center_crop_arr(image, RES)).copy()).permute(2, 0, 1)
    with torch.no_grad():
        posterior = vae.encode(pixels[None].float() / 127.5 - 1).latent_dist
    encoded = read_encoded(folder / "out")
    index = PER_CLASS + 3
    assert torch.allclose(encoded.mean[index], posterior.mean[0], atol=1e-5)
    assert torch.allclose(encoded.std[index], posterior.std[0], atol=1e-5)
    assert encoded.labels.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]

    cfg = TrainConfig(dataset=str(folder / "out"), num_classes=3, sample_posterior=False)
    data = load_latents(cfg)
    assert (data.kind, data.num_classes, data.size, data.channels, data.scaling_factor) == ("encoded", 3, 8, 4, 0.5)
    x, y = data.sample(6, torch.Generator().manual_seed(1))
    index = torch.randint(15, (6,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, encoded.mean[index] * 0.5) and torch.equal(y, encoded.labels[index])
    with pytest.raises(ConfigError, match="num_classes=10 does not match"):
        load_latents(TrainConfig(dataset=str(folder / "out")))


def test_encode_keeps_the_crops_for_the_alignment(folder):
    """--keep-images stores each latent's ADM crop (uint8) in its shard, and the loader hands the
    batch's crops out with the same draw as the latents (what cfg.repa encodes)."""
    encode(folder, out="kept", keep_images=True)
    manifest = json.loads((folder / "kept" / MANIFEST).read_text())
    assert manifest["keep_images"] is True
    encoded = read_encoded(folder / "kept")
    crop = np.asarray(center_crop_arr(Image.open(folder / "images" / "emu" / "2.png"), RES))
    every = encoded.images[torch.arange(15)]  # read from the image shards, 4 images each
    assert every.dtype == torch.uint8 and every.shape == (15, 3, RES, RES) and len(encoded.images) == 15
    assert np.array_equal(every[2 * PER_CLASS + 2].permute(1, 2, 0).numpy(), crop)
    assert torch.equal(encoded.images[torch.tensor([13, 2, 13])], every[[13, 2, 13]])  # order and repeats kept
    assert sorted(p.name for p in (folder / "kept").glob("images_*")) == [f"images_0000{i}.safetensors" for i in range(4)]
    # The latents are those of the run without images; that run keeps none.
    encode(folder)
    plain = read_encoded(folder / "out")
    assert torch.equal(plain.mean, encoded.mean) and plain.images is None
    data = load_latents(TrainConfig(dataset=str(folder / "kept"), num_classes=3, sample_posterior=False))
    x, y, images = data.sample_with_images(6, torch.Generator().manual_seed(1))
    index = torch.randint(15, (6,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(images, every[index]) and torch.equal(y, encoded.labels[index])
    # a damaged image shard is named when the directory is read
    (folder / "kept" / "images_00001.safetensors").write_bytes(b"cut")
    with pytest.raises(ValueError, match="images_00001.safetensors is not the size"):
        read_encoded(folder / "kept")


def test_encode_resumes_keeping_finished_shards(folder, monkeypatch):
    first = json.loads(encode(folder).read_text())
    (folder / "out" / MANIFEST).unlink()
    (folder / "out" / "shard_00002.safetensors").unlink()
    encoded = []
    original = encode_mod._encode_shard
    monkeypatch.setattr(encode_mod, "_encode_shard",
                        lambda model, subset, path, *a: encoded.append(path.name) or original(model, subset, path, *a))
    second = json.loads(encode(folder).read_text())
    assert encoded == ["shard_00002.safetensors"]
    assert second == first  # same shards, same checksums


def test_encode_refuses_other_runs_output(folder):
    encode(folder)
    with pytest.raises(ValueError, match="different encode run"):
        encode_folder(folder / "images", folder / "out", str(folder / "vae"), resolution=8, progress=False)


def test_encode_bf16_storage(folder):
    encode(folder, out="bf16", precision="bf16")
    encoded = read_encoded(folder / "bf16")
    assert encoded.mean.dtype == torch.bfloat16 and encoded.std.dtype == torch.bfloat16
    data = load_latents(TrainConfig(dataset=str(folder / "bf16"), num_classes=3))
    assert data.sample(4, torch.Generator().manual_seed(0))[0].dtype == torch.float32
    with pytest.raises(ValueError, match="fp16"):
        encode(folder, out="fp16", precision="fp16")


def test_encode_refuses_non_finite_shard(folder):
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    with torch.no_grad():
        vae.encoder.conv_in.bias[0] = float("nan")
    vae.save_pretrained(folder / "vae")
    with pytest.raises(ValueError, match="non-finite latents in shard_00000"):
        encode(folder)
    assert not list((folder / "out").glob("*.safetensors"))


def test_read_encoded_detects_corruption(folder):
    encode(folder)
    shard = folder / "out" / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="SHA-256"):
        read_encoded(folder / "out")
    with pytest.raises(FileNotFoundError, match="gat-sweep encode"):
        read_encoded(folder / "nowhere")


def test_load_vae_accepts_a_pipeline_directory(folder):
    AutoencoderKL.from_pretrained(folder / "vae").save_pretrained(folder / "pipeline" / "vae")
    assert load_vae(str(folder / "pipeline")).config.scaling_factor == 0.5


def test_missing_inputs_are_named(folder):
    with pytest.raises(FileNotFoundError, match="image folder"):
        encode_folder(folder / "none", folder / "out", str(folder / "vae"), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encode_folder(folder / "images", folder / "out", str(folder / "no-vae"), resolution=RES, progress=False)
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        encode_folder(folder / "images", folder / "out", "someone/some-vae", resolution=RES, progress=False)


def test_truncated_image_is_named_and_finished_shards_are_kept(folder):
    # Issue 11, finding 4: a truncated PNG ended in an 87-line traceback that did not name it.
    bad = folder / "images" / CLASSES[-1] / f"{PER_CLASS - 1}.png"  # the last image: shards before it finish
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        encode(folder)
    kept = sorted(p.name for p in (folder / "out").glob("shard_*.safetensors"))
    assert kept and not (folder / "out" / MANIFEST).exists()
    bad.write_bytes(data)  # replaced: the rerun keeps the finished shards and completes
    assert json.loads(encode(folder).read_text())["count"] == len(CLASSES) * PER_CLASS


def test_encode_with_the_embedded_digits_vae_through_the_cli(folder, tiny_digits_cache):
    """`--vae digits` needs no download and no path: it is the embedded VAE of this machine's cache
    (downsampling 4: 32 px -> 8 x 8 latents), and the manifest names its directory."""
    from typer.testing import CliRunner

    from scaling.cli import app

    result = CliRunner().invoke(app, ["encode", str(folder / "images"), str(folder / "digits_out"), "--vae", "digits",
                                      "--resolution", "32", "--batch", "8"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((folder / "digits_out" / MANIFEST).read_text())
    assert manifest["vae"] == str(tiny_digits_cache.vae_dir) and manifest["count"] == 15
    assert manifest["latent_shape"] == [4, 8, 8] and "15 images, 3 classes, latents [4, 8, 8]" in result.output
