"""Evaluation through torch-fidelity: the Frechet distance against scipy, the domain extractor on
real and noise images, the Evaluator (keys, provenance, fixed seeds, cached reference statistics,
npz references, non-finite samples, sample grids) and make_evaluator's checks before training."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from core.evaluation import evaluate as evaluate_mod
from core.evaluation import fidelity as fidelity_mod
from core import metrics as metrics_mod
from core.gan import train as train_mod
from core.cache import cache_root
from core.config import ConfigError, NetConfig, TrainConfig
from core.evaluation.evaluate import InvalidMetricError, make_evaluator
from core.evaluation.features import EXTRACTOR_NAME, load_classifier
from core.evaluation.fidelity import UInt8Images, fidelity_metrics, frechet_distance
from core.data.latents import load_latents
from core.gan.model import Generator, build_generator
from core.records import count_label
from core.gan.train import train
from core.data.vae import from_uint8

CPU = torch.device("cpu")
NET = NetConfig(width=32, depth=4, heads=2)


def eval_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"dataset": "digits", "g": NET, "d": NET, "eval_samples": 128, "seed": 5, **kw})


def generator(cfg: TrainConfig) -> Generator:
    torch.manual_seed(0)
    return build_generator(cfg).eval().requires_grad_(False)


pytestmark = pytest.mark.usefixtures("one_thread")

def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 2 * d))
    stats_1 = {"mu": rng.normal(size=d), "sigma": a @ a.T / d}
    stats_2 = {"mu": rng.normal(size=d), "sigma": b @ b.T / d}
    covmean = scipy.linalg.sqrtm(stats_1["sigma"] @ stats_2["sigma"]).real
    diff = stats_1["mu"] - stats_2["mu"]
    expected = diff @ diff + np.trace(stats_1["sigma"] + stats_2["sigma"] - 2 * covmean)
    assert frechet_distance(stats_1, stats_2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(stats_1, stats_1) == pytest.approx(0.0, abs=1e-6)


def test_count_label():
    assert [count_label(n) for n in (1000, 5000, 50_000, 1500, 128)] == ["1k", "5k", "50k", "1500", "128"]


def test_domain_distance_real_vs_real_small_noise_vs_real_large(tiny_digits_cache):
    d = tiny_digits_cache
    train, heldout = UInt8Images(d.images[~d.heldout]), UInt8Images(d.images[d.heldout])
    noise = UInt8Images(torch.randint(0, 256, (360, 3, 32, 32), dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(0)))
    weights = str(d.classifier_path)
    real = fidelity_metrics(heldout, train, EXTRACTOR_NAME, "features", weights, CPU)
    fake = fidelity_metrics(noise, train, EXTRACTOR_NAME, "features", weights, CPU)
    assert real["fd"] < 0.05 * fake["fd"]
    assert real["kid"] < 0.05 * fake["kid"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert fake["precision"] == 0.0 and fake["recall"] == 0.0


def test_evaluator_keys_provenance_and_fixed_seeds(tiny_digits_cache):
    cfg = eval_cfg()
    evaluator = make_evaluator(cfg, load_latents(cfg), CPU)
    assert evaluator.metric_key == "eval/fd_digits_128"
    assert evaluator.provenance == {
        "eval.metric_key": "eval/fd_digits_128",
        "eval.extractor": f"{EXTRACTOR_NAME} ({tiny_digits_cache.classifier_path})",
        "eval.num_samples": "128",
        "eval.reference": f"digits-tiny: all 1797 real images ({tiny_digits_cache.key})",
        "eval.ema": "true",
        "eval.truncation_psi": "0.0",
        "eval.classifier_heldout_accuracy": f"{tiny_digits_cache.meta['classifier_heldout_accuracy']:.4f}",
    }
    G = generator(cfg)
    first = evaluator.evaluate(G)
    assert sorted(first) == ["eval/fd_digits_128", "eval/kid_digits_128",
                             "eval/precision_digits_128", "eval/recall_digits_128"]
    assert all(np.isfinite(v) for v in first.values()) and first["eval/fd_digits_128"] > 0
    assert evaluator.evaluate(G) == first  # fixed z and labels, fixed KID subsets
    assert torch.equal(evaluator.labels[:12], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))


def test_reference_statistics_are_cached(tiny_digits_cache, monkeypatch):
    shutil.rmtree(cache_root() / "fidelity", ignore_errors=True)
    reads = []
    original = UInt8Images.__getitem__
    monkeypatch.setattr(UInt8Images, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    cfg = eval_cfg()
    data = load_latents(cfg)
    make_evaluator(cfg, data, CPU)
    assert len(reads) == 1797 + 1  # every real image once (+ torch-fidelity's type check)
    assert sorted(p.name.split("-digits-cnn-")[1] for p in (cache_root() / "fidelity").iterdir()) == [
        "features.safetensors"]  # tensors only: nothing in a shared cache is unpickled
    reads.clear()
    second = make_evaluator(cfg, data, CPU)
    second.evaluate(generator(cfg))
    assert reads == []  # features (and then the FD statistics) come from the cache


def test_npz_reference_gives_the_same_distance(tiny_digits_cache, monkeypatch, tmp_path):
    # The npz path, exercised with the domain extractor standing in for Inception: statistics of
    # the real images written as an ADM-style npz must give the distance of the dataset path.
    d = tiny_digits_cache
    features, _ = load_classifier(d.classifier_path)(from_uint8(d.images))
    features = features.double().numpy()
    np.savez(tmp_path / "ref.npz", mu=features.mean(0), sigma=np.cov(features, rowvar=False))
    (tmp_path / "weights.pth").write_bytes(b"")
    cfg = eval_cfg()
    G = generator(cfg)
    expected = make_evaluator(cfg, load_latents(cfg), CPU).evaluate(G)["eval/fd_digits_128"]
    for module in (evaluate_mod, fidelity_mod):  # the evaluator's extractor and the weights check
        monkeypatch.setattr(module, "INCEPTION", EXTRACTOR_NAME)
        monkeypatch.setattr(module, "INCEPTION_LAYER", "features")
    monkeypatch.setattr(fidelity_mod, "INCEPTION_DIM", 64)  # the npz check
    monkeypatch.setattr(metrics_mod, "INCEPTION_DIM", 64)  # the eval_samples check
    cfg = eval_cfg(eval_metric="fid", inception_weights=str(d.classifier_path), fid_ref_npz=str(tmp_path / "ref.npz"))
    evaluator = make_evaluator(cfg, load_latents(cfg), CPU)
    assert evaluator.provenance["eval.reference"] == f"npz {tmp_path / 'ref.npz'}"
    result = evaluator.evaluate(G)
    assert list(result) == ["eval/fid128"]  # no features of the reference: FID only
    assert result["eval/fid128"] == pytest.approx(expected, rel=1e-5)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ConfigError, match="not \\(64,\\)"):
        make_evaluator(cfg.replace(fid_ref_npz=str(tmp_path / "bad.npz")), load_latents(cfg), CPU)


def test_missing_inception_weights_is_one_clear_error(tiny_digits_cache, tmp_path):
    cfg = eval_cfg(eval_metric="fid", eval_samples=5000)
    data = load_latents(cfg)
    with pytest.raises(ConfigError, match="needs inception_weights .*weights-inception-2015-12-05"):
        make_evaluator(cfg, data, CPU)
    missing = tmp_path / "inception.pth"
    with pytest.raises(ConfigError, match=f"inception_weights={missing} does not exist: download"):
        make_evaluator(cfg.replace(inception_weights=str(missing)), data, CPU)


def test_explicit_metric_on_random_latents_is_refused():
    cfg = TrainConfig(dataset="random", g=NET, d=NET, eval_metric="fid")
    with pytest.raises(ConfigError, match="dataset 'random' has none"):
        make_evaluator(cfg, load_latents(cfg), CPU)
    auto = cfg.replace(eval_metric="auto")
    assert make_evaluator(auto, load_latents(auto), CPU) is None  # 'auto': nothing to evaluate


def test_config_errors_before_training(tiny_digits_cache):
    data = load_latents(eval_cfg())
    with pytest.raises(ConfigError, match="eval_samples=32 is below the 64-d features of the fd_domain extractor"):
        make_evaluator(eval_cfg(eval_samples=32), data, CPU)
    with pytest.raises(ConfigError, match="fid_ref_npz holds Inception statistics"):
        make_evaluator(eval_cfg(fid_ref_npz="/x.npz"), data, CPU)
    assert make_evaluator(eval_cfg(dataset="random"), load_latents(eval_cfg(dataset="random")), CPU) is None


def test_non_finite_samples_raise(tiny_digits_cache):
    cfg = eval_cfg()
    evaluator = make_evaluator(cfg, load_latents(cfg), CPU)
    G = generator(cfg)
    G.heads[-1].out.bias.data[0] = float("nan")
    with pytest.raises(InvalidMetricError, match="non-finite latents"):
        evaluator.evaluate(G)


def test_sample_grid(tiny_digits_cache, tmp_path):
    cfg = eval_cfg()
    evaluator = make_evaluator(cfg, load_latents(cfg), CPU)
    path = evaluator.sampler.sample_grid(generator(cfg), tmp_path / "samples" / "iter_0000010.png")
    image = Image.open(path)
    assert image.size == (8 * 34 + 2, 10 * 34 + 2)  # 8 columns x 10 classes of 32 px, padding 2
    assert list((tmp_path / "samples").iterdir()) == [path]  # no temporary file left
    assert torch.equal(evaluator.sampler.grid_labels[::8], torch.arange(10))


def test_training_logs_evaluation_time_apart_from_training(tiny_digits_cache, tmp_path, monkeypatch):
    """On a fake clock (the trainer's ``time.perf_counter``; 1 ms per reading): an evaluation takes
    100 s and its sample grid another 100 s, and neither is counted as training time."""
    cfg = eval_cfg(iterations=4, eval_every=2, log_every=1, diag_every=4, ckpt_every=4, batch=8)
    clock = {"now": 0.0}

    def perf_counter() -> float:
        clock["now"] += 1e-3
        return clock["now"]

    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=perf_counter))
    evaluate = evaluate_mod.Evaluator.evaluate

    def slow_evaluate(self, generator):
        clock["now"] += 100.0
        return evaluate(self, generator)

    grid = evaluate_mod.Sampler.sample_grid

    def slow_grid(self, generator, path):
        clock["now"] += 100.0
        return grid(self, generator, path)

    monkeypatch.setattr(evaluate_mod.Evaluator, "evaluate", slow_evaluate)
    monkeypatch.setattr(evaluate_mod.Sampler, "sample_grid", slow_grid)
    train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    eval_seconds = {line["step"]: line["time/eval_s"] for line in lines if "time/eval_s" in line}
    assert sorted(eval_seconds) == [2, 4] and all(100.0 <= s < 101.0 for s in eval_seconds.values())
    # The iteration logged right after an evaluation is timed without it and without its grid.
    after = next(line for line in lines if line["step"] == 3)
    assert 0 < after["time/sec_per_kimg"] * cfg.batch / 1000 < 1.0


def test_runs_without_evaluation_still_write_sample_grids(tiny_digits_cache, tmp_path):
    """eval_every=-1 (no metric, no reference statistics): grids of the initialisation, every
    sample_every and at the end, the same pictures an evaluating run writes; sample_every=-1 writes
    none."""
    cfg = eval_cfg(iterations=4, eval_every=-1, sample_every=3, batch=8, ckpt_every=4)
    result = train(cfg, tmp_path / "quiet", progress=False)
    assert result.status == "finished" and not any(k.startswith("eval/") for k in result.metrics)
    grids = sorted(p.name for p in (tmp_path / "quiet" / "samples").iterdir())
    assert grids == ["iter_0000000.png", "iter_0000003.png", "iter_0000004.png"]
    evaluated = train(cfg.replace(eval_every=4), tmp_path / "evaluated", progress=False)
    assert "eval/fd_digits_128" in evaluated.metrics
    for name in grids:  # evaluating or not, the same training draws the same grid
        assert (tmp_path / "quiet" / "samples" / name).read_bytes() == \
            (tmp_path / "evaluated" / "samples" / name).read_bytes()
    train(cfg.replace(sample_every=-1), tmp_path / "none", progress=False)
    assert not (tmp_path / "none" / "samples").exists() or not any((tmp_path / "none" / "samples").iterdir())
