"""No file a user, a cache or shared storage supplies is unpickled: a crafted Inception weights
file and crafted torch-fidelity cache files, whose unpickling would create a marker directory,
run nothing through `gat-sweep train`, `gat-sweep run` or an evaluation (docs/TRACKING.md,
"Guarantees")."""

import os
import shutil
import stat

import pytest
import torch

from core.evaluation import fidelity
from core.cache import cache_root
from core.config import ConfigError
from core.evaluation.evaluate import make_evaluator
from core.evaluation.fidelity import UnsafeWeightsError, tensor_only_weights
from core.data.latents import load_latents
from core.gan.repa import load_encoder
from core.data.vae import load_vae
from test_cli import invoke, one_trial_sweep
from test_evaluate import CPU, eval_cfg, generator


class _Payload:
    """Unpickling this calls os.mkdir(marker): what a crafted weights file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def crafted_file(path, marker):
    """A torch file whose full unpickling (weights_only=False) creates the directory ``marker``."""
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    return path


def test_the_crafted_file_would_run_code_under_a_full_load(tmp_path):
    # the premise of the tests below: torch-fidelity's torch.load(weights_only=False) runs it
    path = crafted_file(tmp_path / "w.pth", tmp_path / "marker")
    torch.load(path, weights_only=False)
    assert (tmp_path / "marker").is_dir()


def test_tensor_only_weights_refuses_code_and_copies_tensors_privately(tmp_path):
    with pytest.raises(UnsafeWeightsError, match="pickled objects"):
        tensor_only_weights(str(crafted_file(tmp_path / "w.pth", tmp_path / "marker")))
    assert not (tmp_path / "marker").exists()
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(UnsafeWeightsError, match="a list, not a state dict"):
        tensor_only_weights(str(tmp_path / "list.pth"))
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float64)}
    torch.save(state, tmp_path / "ok.pth")
    copy = tensor_only_weights(str(tmp_path / "ok.pth"))
    assert copy != str(tmp_path / "ok.pth") and tensor_only_weights(str(tmp_path / "ok.pth")) == copy
    assert stat.S_IMODE(os.stat(os.path.dirname(copy)).st_mode) == 0o700  # only this user writes it
    loaded = torch.load(copy, weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_train_refuses_crafted_inception_weights_without_running_them(tmp_path, tiny_digits_cache):
    weights = crafted_file(tmp_path / "inception.pth", tmp_path / "marker")
    result = invoke("train", "tiny", "--set", "dataset=digits", "--set", "latent_size=8",
                    "--set", "eval_metric=fid", "--set", "eval_every=1", "--set", f"inception_weights={weights}",
                    "--set", "eval_samples=2048", "--set", "iterations=2", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2, result.output
    assert f"inception_weights={weights} cannot be loaded" in result.output and "pickled objects" in result.output
    assert not (tmp_path / "marker").exists()


def test_run_refuses_crafted_inception_weights_before_anything_starts(tmp_path):
    weights = crafted_file(tmp_path / "inception.pth", tmp_path / "marker")
    sweep = one_trial_sweep(tmp_path, "digits", "{every: 0, metric: fid, samples: 2048}",
                            f"inception_weights: {weights}")
    result = invoke("run", str(sweep))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: inception_weights={weights} cannot be loaded")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out").exists()


def test_crafted_files_in_the_shared_feature_cache_are_never_unpickled(tmp_path, tiny_digits_cache, monkeypatch):
    cfg = eval_cfg()
    evaluator = make_evaluator(cfg, load_latents(cfg), CPU)  # writes the tensor-only cache
    folder = cache_root() / "fidelity"
    # what torch-fidelity's cache would hold for this reference (features, FD statistics), crafted
    prefix = f"{evaluator.reference_name}-{evaluator.extractor}"
    for name in (f"{prefix}-features-features.pt", f"{prefix}-stat-fid-features.pt"):
        crafted_file(folder / name, tmp_path / f"marker-{name}")
    expected = evaluator.evaluate(generator(cfg))
    again = make_evaluator(cfg, load_latents(cfg), CPU).evaluate(generator(cfg))
    assert again == expected
    assert not list(tmp_path.glob("marker-*"))
    # a damaged cache file is extracted again, not a crash
    cached = fidelity.reference_cache_path(evaluator.reference_name, evaluator.extractor, evaluator.layer)
    cached.write_bytes(b"not a safetensors file")
    assert make_evaluator(cfg, load_latents(cfg), CPU).evaluate(generator(cfg)) == expected


def test_a_vae_directory_with_pickled_weights_is_refused(tmp_path, tiny_digits_cache):
    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_digits_cache.vae_dir, vae_dir)
    for weights in vae_dir.glob("*.safetensors"):
        weights.unlink()
    crafted_file(vae_dir / "diffusion_pytorch_model.bin", tmp_path / "marker")
    with pytest.raises(FileNotFoundError, match="only safetensors weights are read"):
        load_vae(str(vae_dir))
    assert not (tmp_path / "marker").exists()


def test_a_dinov2_directory_with_pickled_weights_is_refused(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                             patch_size=14, image_size=42)).save_pretrained(tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").unlink()  # transformers 5 writes only safetensors; a user's .bin:
    crafted_file(tmp_path / "d" / "pytorch_model.bin", tmp_path / "marker")
    with pytest.raises(ConfigError, match="repa_encoder=.* cannot be loaded"):
        load_encoder(str(tmp_path / "d"), 24, CPU)
    assert not (tmp_path / "marker").exists()
