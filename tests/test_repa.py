"""DINOv2 alignment of D (cfg.repa, core/gan/repa.py): loss values, the pixel augmentation, the D step,
training through the real entry point, and the errors before training. The encoder is a tiny
randomly initialised transformers Dinov2Model saved to a temporary directory (offline)."""

import json

import pytest
import torch
import torch.nn.functional as F

from core.gan.augment import AugmentParams, apply_augment, apply_to_pixels, sample_augment
from core.config import ConfigError, NetConfig, TrainConfig
from core.gan.loss import rpgan_d_loss
from core.gan.mng import nested_noise, perturb
from core.gan.model import build_models, count_parameters
from core.gan.repa import alignment_loss, encoder_input, encoder_targets, load_encoder, resize_tokens
from core.gan.step import GATStep
from core.gan.train import train

NET = NetConfig(width=32, depth=4, heads=2)
DIM = 24
"""Hidden size of the tiny encoder (= repa_dim of the tests)."""


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                          patch_size=14, image_size=224)
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(path)
    return path


def cfg(encoder_dir, **kw) -> TrainConfig:
    return TrainConfig(dataset="random", g=NET, d=NET, d_proj_dim=32, batch=4, repa=True,
                       repa_encoder=str(encoder_dir), repa_dim=DIM, **kw)


def test_alignment_loss_on_known_inputs():
    f_cls = torch.tensor([[1.0, 0.0, 0.0]])
    f_patch = torch.tensor([[[0.0, 1.0, 0.0]] * 4])  # a 2 x 2 grid
    same = torch.cat([f_cls, f_patch[0]]).unsqueeze(0) * 3.0  # cosine is scale-free
    assert alignment_loss(same, f_cls, f_patch).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(-same, f_cls, f_patch).item() == pytest.approx(4.0)  # 2 (CLS) + mean of 2
    # CLS orthogonal (1), half the patch tokens opposite (2) and half equal (0): 1 + 1
    mixed = torch.tensor([[[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.0, -2.0, 0.0], [0.0, 5.0, 0.0]]])
    assert alignment_loss(mixed, f_cls, f_patch).item() == pytest.approx(2.0)


def test_patch_grid_is_resized_to_d_tokens():
    grid = torch.arange(16.0).view(1, 4, 4)  # one channel over a 4 x 4 grid
    tokens = grid.reshape(1, 16, 1)
    out = resize_tokens(tokens, 2)
    expected = F.interpolate(grid.unsqueeze(0), size=(2, 2), mode="bicubic", align_corners=False).reshape(1, 4, 1)
    torch.testing.assert_close(out, expected)
    assert resize_tokens(tokens, 4) is tokens
    with pytest.raises(ValueError, match="square"):
        resize_tokens(torch.zeros(1, 5, 1), 2)


def test_image_and_latent_get_the_same_translation_and_flip():
    """A latent and its image made by blowing each latent pixel up to 28 x 28 pixels: the image's
    augmentation equals the blown-up augmented latent (colour and cutout, which the raw image
    does not get, switched off)."""
    n, size, scale = 6, 8, 28
    params = sample_augment(n, size, generator=torch.Generator().manual_seed(3))
    params = AugmentParams(color=torch.zeros(n, dtype=torch.bool), brightness=params.brightness,
                           saturation=params.saturation, contrast=params.contrast, shift=params.shift,
                           cutout_corner=torch.full((n, 2), 100), cutout_size=params.cutout_size, flip=params.flip)
    assert params.shift.abs().sum() > 0 and params.flip.any() and not params.flip.all()
    latent = torch.randn(n, 3, size, size)
    blow_up = lambda t: t.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # noqa: E731
    torch.testing.assert_close(apply_to_pixels(blow_up(latent), params, size), blow_up(apply_augment(latent, params)))
    with pytest.raises(ValueError, match="batch"):
        apply_to_pixels(torch.zeros(2, 3, 16, 16), params, size)


def test_encoder_input_matches_the_reference_preprocessing():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = encoder_input(images, None, latent_size=8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.interpolate((images / 255.0 - mean) / std, size=224, mode="bicubic")
    assert x.shape == (2, 3, 224, 224)
    torch.testing.assert_close(x, expected)


def test_d_step_adds_the_alignment_loss_and_only_d_learns_from_it(encoder_dir):
    c = cfg(encoder_dir, gamma_r1=0.0, gamma_r2=0.0)
    encoder = load_encoder(str(encoder_dir), DIM, torch.device("cpu"))
    torch.manual_seed(0)
    G, D = build_models(c)
    D_before = build_models(c)[1]
    D_before.load_state_dict(D.state_dict())
    step = GATStep(c, G, D, torch.device("cpu"), encoder=encoder)
    x, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 3])
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        fake = step.generate(torch.randn(4, 64), y)
    torch.manual_seed(7)
    stats = step.d_step(x, y, fake, images)

    # The same draws by hand: D's logits and projector on the pre-step weights, the encoder's
    # tokens of the augmented images, the formula of core.gan.repa.
    torch.manual_seed(7)
    clean = torch.cat([x.unsqueeze(0).expand_as(fake), fake], dim=1)
    aug = sample_augment(8, 8)
    noise = nested_noise(tuple(clean.shape), step.t)
    with torch.no_grad():
        logits, projected = D_before(perturb(apply_augment(clean, aug), noise, step.t), torch.cat([y, y]), align=4)
        f_cls, f_patch = encoder_targets(encoder, encoder_input(images, aug.head(4), 8))
    expected = alignment_loss(projected, f_cls, f_patch).mean()
    torch.testing.assert_close(stats["loss/repa"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["loss/D"], rpgan_d_loss(logits[:4], logits[4:]), rtol=1e-5, atol=1e-6)
    assert 0.5 < expected.item() < 3.5  # random projector and encoder: cosines near 0, loss near 2

    # The projector is trained (only the alignment loss reaches it); the encoder is frozen.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.repa.parameters())
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not torch.equal(D.repa[0].weight, D_before.repa[0].weight)
    # With weight 0 the projector gets exactly zero gradient: the term is in D's loss, nowhere else.
    step0 = GATStep(c.replace(repa_weight=0.0), G, D, torch.device("cpu"), encoder=encoder)
    step0.d_step(x, y, fake, images)
    assert all(p.grad.abs().sum() == 0 for p in D.repa.parameters())
    # The G step never runs the projector.
    step.g_step(x, y, step.generate(torch.randn(4, 64), y))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in D.repa.parameters())


def test_training_on_digits_logs_the_alignment_loss(encoder_dir, tiny_digits_cache, tmp_path):
    c = TrainConfig(dataset="digits", g=NET, d=NET, d_proj_dim=32, batch=8, iterations=4, log_every=2,
                    eval_every=-1, sample_every=-1, repa=True, repa_encoder=str(encoder_dir), repa_dim=DIM,
                    num_threads=1)
    result = train(c, tmp_path / "run", progress=False)
    assert result.status == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    logged = [row["loss/repa"] for row in rows if "loss/repa" in row]
    assert len(logged) == 2 and all(0.0 < v < 4.0 for v in logged)
    # Weight 0 trains exactly as alignment off (the projector is drawn after D's other weights and
    # gets zero gradient); weight 1 changes D from the first step on.
    off = train(c.replace(repa=False), tmp_path / "off", progress=False)
    zero = train(c.replace(repa_weight=0.0), tmp_path / "zero", progress=False)
    assert zero.metrics["loss/D"] == off.metrics["loss/D"] and zero.metrics["loss/G"] == off.metrics["loss/G"]
    assert result.metrics["loss/D"] != off.metrics["loss/D"]


def test_projector_parameters_are_counted_in_d(encoder_dir):
    on = cfg(encoder_dir)
    _, D = build_models(on, "meta")
    _, D_off = build_models(on.replace(repa=False), "meta")
    # Linear(32 -> 2048) + Linear(2048 -> 2048) + Linear(2048 -> 24), with biases
    assert count_parameters(D) - count_parameters(D_off) == 32 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * DIM + DIM


def test_missing_encoder_or_images_is_one_error_before_training(encoder_dir, tiny_digits_cache, tmp_path):
    digits = dict(dataset="digits", g=NET, d=NET, d_proj_dim=32, iterations=2, eval_every=-1, sample_every=-1)
    with pytest.raises(ConfigError, match="repa=true needs repa_encoder"):
        train(TrainConfig(repa=True, **digits), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="is not a directory"):
        train(TrainConfig(repa=True, repa_encoder=str(tmp_path / "nowhere"), **digits), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="repa_dim=768; set repa_dim: 24"):
        train(TrainConfig(repa=True, repa_encoder=str(encoder_dir), **digits), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="keeps none"):
        train(cfg(encoder_dir, iterations=2, eval_every=-1), tmp_path / "d", progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="absolute path"):
        TrainConfig(repa=True, repa_encoder="weights/dinov2")


def test_projector_reads_tokens_before_the_final_norm(encoder_dir):
    """As the reference: its projector reads the last block's output, not the normalised tokens
    the logit head reads (docs/METHOD.md §2)."""
    torch.manual_seed(0)
    _, D = build_models(cfg(encoder_dir))
    with torch.no_grad():
        D.norm.weight.mul_(3.0)  # a final-norm gain the projector must not see
        x, y = torch.randn(3, 16, 8, 8), torch.tensor([0, 1, 2])
        logits, projected = D(x, y, align=2)
        tokens = D.tokens(x)
    assert projected.shape == (2, 1 + 16, DIM)
    torch.testing.assert_close(projected, D.repa(tokens[:2]))
    torch.testing.assert_close(logits, D(x, y))
    assert not torch.allclose(projected, D.repa(D.norm(tokens[:2])), atol=1e-3)


def test_d_is_initialised_alike_with_and_without_the_projector(encoder_dir):
    torch.manual_seed(0)
    _, off = build_models(cfg(encoder_dir).replace(repa=False))
    torch.manual_seed(0)
    _, on = build_models(cfg(encoder_dir))
    shared = off.state_dict()
    assert all(torch.equal(on.state_dict()[k], v) for k, v in shared.items())
    assert set(on.state_dict()) - set(shared) == {f"repa.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def test_position_table_is_resampled_once_as_the_reference_does(tmp_path):
    """A DINOv2 trained at another size (here 42 px: a 3 x 3 grid) gets its table resampled once to
    16 x 16, bicubic with antialiasing (timm's resample_abs_pos_embed), which transformers then uses
    as it is at 224 px."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                             patch_size=14, image_size=42)).save_pretrained(tmp_path / "d")
    original = Dinov2Model.from_pretrained(tmp_path / "d").embeddings.position_embeddings.detach()
    encoder = load_encoder(str(tmp_path / "d"), DIM, torch.device("cpu"))
    table = encoder.embeddings.position_embeddings
    grid = original[:, 1:].reshape(1, 3, 3, DIM).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 256, DIM)
    assert table.shape == (1, 257, DIM) and not table.requires_grad
    torch.testing.assert_close(table[:, :1], original[:, :1])
    torch.testing.assert_close(table[:, 1:], expected)
    f_cls, f_patch = encoder_targets(encoder, encoder_input(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), None, 8))
    assert f_cls.shape == (2, DIM) and f_patch.shape == (2, 256, DIM)
    # the table transformers uses at 224 px is this one, not an interpolation of it
    used = encoder.embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + 256, DIM), 224, 224)  # CLS + patches
    assert used is encoder.embeddings.position_embeddings


def test_a_folder_that_is_not_a_dinov2_is_refused(tmp_path):
    """transformers would load a ViT's weights into a randomly initialised DINOv2 with a warning,
    and a DINOv2 of another shape raises its own error: both are one ConfigError."""
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                       patch_size=14, image_size=42)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ConfigError, match="model_type 'vit', not 'dinov2'"):
        load_encoder(str(tmp_path / "vit"), DIM, torch.device("cpu"))
