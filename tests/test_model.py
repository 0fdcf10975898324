"""Architecture tests: parameter counts against the paper, the fixed embeddings, shapes, init."""

import math

import pytest
import torch

from core.config import ConfigError, NetConfig, TrainConfig
from core.gan.model import (
    Attention, apply_rope, build_models, count_parameters, parameter_kinds, parameters_by_kind, rope_2d,
    sincos_pos_embed_2d,
)

# docs/METHOD.md §6: (G params, D params) in millions, ImageNet-256 (1000 classes, 32x32x4 latents).
PAPER_COUNTS = {
    ("S", 2): (29.36, 32.65), ("B", 2): (116.75, 97.33), ("L", 2): (408.75, 315.17),
    ("XL", 2): (602.25, 459.55), ("S", 4): (29.38, 32.65), ("B", 4): (116.79, 97.33),
}


def imagenet_cfg(size: str, patch: int = 2, **kw) -> TrainConfig:
    net = NetConfig.named(size)
    return TrainConfig(g=net, d=net, latent_size=32, num_classes=1000, patch=patch, **kw)


@pytest.mark.parametrize("size,patch", sorted(PAPER_COUNTS))
def test_parameter_counts_match_paper(size, patch):
    G, D = build_models(imagenet_cfg(size, patch), "meta")
    g_paper, d_paper = PAPER_COUNTS[(size, patch)]
    assert count_parameters(G) / 1e6 == pytest.approx(g_paper, rel=1e-3)
    assert count_parameters(D) / 1e6 == pytest.approx(d_paper, rel=1e-3)


def test_exact_small_counts():
    # Hand count for width 64, depth 4, heads 4, 10 classes, 8x8 latents, patch 2, P = 256:
    # G: class 10*64 + mapping (128*64+64) + (64*64+64) + pos 16*64
    #    + 4 blocks * [mod 64*256+256, qkv 64*192+192, proj 64*64+64, qk-norm 2*16, fc1 64*340+340, fc2 170*64+64]
    #    + 4 heads * [mod 64*64+64, out 64*16+16]
    g = 640 + 8256 + 4160 + 1024 + 4 * (16640 + 12480 + 4160 + 32 + 22100 + 10944) + 4 * (4160 + 1040)
    # D: patch conv 16*4*64+64, pos 16*64, cls 64, 4 blocks * [2 norms 128, attn 16672, mlp 33044, ls 128],
    #    final norm 64, head 64*256+256, class embed 10*256, class MLP 2*(256*256+256)
    d = 4160 + 1024 + 64 + 4 * (128 + 16672 + 33044 + 128) + 64 + 16640 + 2560 + 2 * 65792
    G, D = build_models(TrainConfig(d_proj_dim=256), "meta")
    assert (count_parameters(G), count_parameters(D)) == (g, d)


@pytest.mark.parametrize("size,gmacs", [("S", 6.1), ("B", 23), ("L", 80), ("XL", 118)])
def test_generator_forward_macs_match_paper(size, gmacs):
    from core.gan.flops import flop_counter
    G, _ = build_models(imagenet_cfg(size), "meta")
    with flop_counter() as fc:
        G.synthesize(torch.zeros(1, G.width, device="meta"))
    assert fc.get_total_flops() / 2 / 1e9 == pytest.approx(gmacs, rel=0.04)


def test_sincos_embedding_layout():
    width, grid = 16, 3
    emb = sincos_pos_embed_2d(width, grid)
    assert emb.shape == (9, 16)
    token = 1 * grid + 2  # row 1, column 2
    omega = [10000 ** (-k / 4) for k in range(4)]
    expected_col = [math.sin(2 * w) for w in omega] + [math.cos(2 * w) for w in omega]
    expected_row = [math.sin(1 * w) for w in omega] + [math.cos(1 * w) for w in omega]
    torch.testing.assert_close(emb[token], torch.tensor(expected_col + expected_row), atol=1e-6, rtol=0)


def test_rope_rotates_pairs_by_row_then_column():
    head_dim, grid = 8, 4
    cos, sin = rope_2d(head_dim, grid)
    x = torch.arange(head_dim, dtype=torch.float32).repeat(grid * grid, 1)[None, None]  # (1,1,T,hd)
    out = apply_rope(x, cos, sin)[0, 0]
    token = 2 * grid + 3  # row 2, column 3
    # freqs for the 2 pairs of each half: 10000^(-2m/4), m = 0, 1
    angles = [2 * 1.0, 2 * 0.01, 3 * 1.0, 3 * 0.01]
    expected = []
    for pair, angle in enumerate(angles):
        a, b = 2.0 * pair, 2.0 * pair + 1
        expected += [a * math.cos(angle) - b * math.sin(angle), b * math.cos(angle) + a * math.sin(angle)]
    torch.testing.assert_close(out[token], torch.tensor(expected), atol=1e-5, rtol=0)
    # RoPE preserves norms and is relative: <q_i, k_j> depends only on i - j along an axis.
    assert torch.allclose(out.norm(dim=-1), x[0, 0].norm(dim=-1))


def test_discriminator_cls_token_not_rotated():
    torch.manual_seed(0)
    attn = Attention(16, 2)
    cos, sin = rope_2d(8, 2, prefix=1)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    torch.testing.assert_close(cos[1:], rope_2d(8, 2)[0])
    x = torch.randn(1, 5, 16)
    # Compare with a manual computation that rotates the 4 spatial tokens and leaves CLS alone.
    out = attn(x, cos, sin)
    assert out.shape == (1, 5, 16)
    q, k, v = attn.qkv(x).view(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q = torch.cat([q[:, :, :1], apply_rope(q[:, :, 1:], cos[1:], sin[1:])], 2)
    k = torch.cat([k[:, :, :1], apply_rope(k[:, :, 1:], cos[1:], sin[1:])], 2)
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    torch.testing.assert_close(out, attn.proj(ref.transpose(1, 2).reshape(1, 5, 16)), atol=1e-5, rtol=1e-5)


def test_generator_levels_accumulate_and_shapes():
    torch.manual_seed(0)
    cfg = TrainConfig(d_proj_dim=64)
    G, D = build_models(cfg)
    z, y = torch.randn(3, 64), torch.tensor([0, 1, 2])
    w = G.style(z, y)
    levels = G.synthesize(w)
    assert levels.shape == (4, 3, 4, 8, 8)
    # x_k = x_{k-1} + head_k: each head's own output, read off the token stream after the block
    # it follows (G.head_after), is the difference of consecutive levels.
    x = G.pos_embed.unsqueeze(0).expand(3, -1, -1)
    heads = []
    for i, block in enumerate(G.blocks):
        x = block(x, w, G.rope_cos, G.rope_sin)
        if i in G.head_after:
            heads.append(G.unpatchify(G.heads[G.head_after.index(i)](x, w)))
    assert G.head_after == [0, 1, 2, 3]  # depth 4: a head after every block
    torch.testing.assert_close(levels[0], heads[0])
    for k in range(1, 4):
        torch.testing.assert_close(levels[k] - levels[k - 1], heads[k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(G.sample(z, y), levels[-1])
    assert D(torch.cat(list(levels), 1), y).shape == (3,)


def test_truncation_and_w_avg():
    torch.manual_seed(0)
    G, _ = build_models(TrainConfig(d_proj_dim=64))
    z, y = torch.randn(4, 64), torch.tensor([1, 1, 2, 2])
    w = G.style(z, y)
    G.update_w_avg(w, y)
    # beta 0.995 from zeros: w_avg[c] = 0.005 * mean(w[y == c]); untouched classes stay 0.
    torch.testing.assert_close(G.w_avg[1], 0.005 * w[:2].mean(0))
    assert G.w_avg[0].abs().sum() == 0
    torch.testing.assert_close(G.truncate(w, y, psi=1.0), G.w_avg[y])
    torch.testing.assert_close(G.truncate(w, y, psi=0.5), (w + G.w_avg[y]) / 2)
    assert G.truncate(w, y, psi=0.0) is w


def test_init_scales():
    G, D = build_models(TrainConfig(d_proj_dim=64))
    assert G.class_embed.weight.std().item() == pytest.approx(0.02, rel=0.25)
    assert torch.all(D.blocks[0].ls1 == 0.1)
    # EqualLinear: stored weight xavier with gain 100, effective weight 1% of it.
    fan = 128 + 64
    bound = 100 * math.sqrt(6 / fan)
    assert G.mapping[0].weight.abs().max().item() <= bound
    assert G.mapping[0].weight.abs().max().item() > 0.9 * bound
    mod = G.blocks[0].modulation.weight
    assert mod.abs().max().item() <= 0.1 * math.sqrt(6 / (64 + 256))


def test_parameter_kinds():
    c = TrainConfig(d_proj_dim=64, repa=True)
    G, D = build_models(c, "meta")
    kinds = parameter_kinds(c, "g")
    assert kinds["heads.0.out.weight"] == "output" and kinds["heads.0.out.bias"] == "vector"
    assert kinds["blocks.0.attn.qkv.weight"] == "hidden" and kinds["mapping.2.weight"] == "hidden"
    assert kinds["mapping.0.weight"] == "vector" and kinds["class_embed.weight"] == "vector"
    assert kinds["blocks.0.attn.q_norm.weight"] == "vector" and kinds["pos_embed"] == "vector"
    d_kinds = parameter_kinds(c, "d")
    assert d_kinds["head.weight"] == "output" and d_kinds["patch_embed.weight"] == "vector"
    assert d_kinds["class_map.0.weight"] == "vector" and d_kinds["blocks.1.mlp.fc2.weight"] == "hidden"
    # The REPA projector (issue 14, finding 3): width -> 2048 reads out of D's width; the two
    # fixed-size layers (2048 -> 2048 -> 768) are not tied to width at all.
    assert (d_kinds["repa.0.weight"], d_kinds["repa.2.weight"], d_kinds["repa.4.weight"]) == ("output", "vector", "vector")
    assert set(kinds) == {n for n, _ in G.named_parameters()} and set(d_kinds) == {n for n, _ in D.named_parameters()}
    groups = parameters_by_kind(G, c)
    assert sum(p.numel() for ps in groups.values() for p in ps) == count_parameters(G) - G.pos_embed.numel()


@pytest.mark.parametrize("changes,field", [
    ({"g": NetConfig(width=60, depth=4, heads=4)}, "g.width"),  # 60 % 4 ok, head dim 15 not % 4
    ({"g": NetConfig(width=64, depth=4, heads=3)}, "g.width=64 is not divisible by g.heads=3"),
    ({"g": NetConfig(width=64, depth=6, heads=4)}, "g.depth=6"),
    ({"latent_size": 9}, "latent_size=9"),
    ({"lr_d": 0.0}, "lr_d"),
    ({"d": NetConfig(width=64, depth=0, heads=4)}, "d.depth"),
])
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        TrainConfig(**changes)


def test_config_round_trip():
    cfg = TrainConfig(g=NetConfig(128, 8, 8), lr_g=3e-4, name="x")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="widht"):
        TrainConfig.from_dict({**cfg.to_dict(), "widht": 3})


def test_class_projection_table_path_equals_per_sample():
    torch.manual_seed(0)
    _, D = build_models(TrainConfig(d_proj_dim=64))
    y_long = torch.randint(10, (25,))  # more rows than classes: table then gather
    per_sample = D.class_map(D.class_embed(y_long))
    torch.testing.assert_close(D.class_projection(y_long), per_sample, rtol=1e-6, atol=1e-6)
    y_short = torch.tensor([3, 1])
    torch.testing.assert_close(D.class_projection(y_short), D.class_map(D.class_embed(y_short)))
    # ... and so are the gradients of the class table and the MLP (the embedding-style lookup).
    weights = [D.class_embed.weight, *D.class_map.parameters()]
    table_grads = torch.autograd.grad(D.class_projection(y_long).square().sum(), weights)
    sample_grads = torch.autograd.grad(per_sample.square().sum(), weights)
    for a, b in zip(table_grads, sample_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_precomputed_projection_equals_default():
    torch.manual_seed(0)
    _, D = build_models(TrainConfig(d_proj_dim=64))
    x, y = torch.randn(12, 16, 8, 8), torch.randint(10, (12,))
    torch.testing.assert_close(D(x, y, projection=D.class_projection(y)), D(x, y), rtol=0, atol=0)
