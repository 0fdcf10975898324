"""Offline evaluation of an encoded image folder with its own domain classifier (issue 12): what
'auto' means per dataset, the classifier's input resizing, the folder classifier (accuracy, cache
key and reuse), the evaluator's keys and provenance, the checks before training, and one run from
a folder of PNGs to falling Frechet distances through the real CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from core.evaluation import domain
from core.cache import cache_root
from core.config import ConfigError, NetConfig, TrainConfig
from core.evaluation.domain import FolderClassifierSettings, prepare_folder_classifier, reference_indices
from core.evaluation.evaluate import make_evaluator
from core.evaluation.features import FOLDER_EXTRACTOR_NAME, DomainFeatureExtractor, resize_for_classifier
from core.data.latents import load_latents
from core.metrics import feature_dim, resolve_metric
from core.gan.model import build_generator
from scaling import cli
from scaling.spec import SweepSpec
from scaling.tune import _check_inputs

CPU = torch.device("cpu")
NET = NetConfig(width=32, depth=4, heads=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def folder_cfg(root: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"dataset": str(root), "latent_size": 8, "num_classes": 10, "g": NET, "d": NET,
                          "eval_samples": 128, "seed": 5, **kw})


@pytest.mark.parametrize("metric, kind, weights, expected", [
    ("auto", "digits", "", "fd_domain"),
    ("auto", "digits", "/w/inception.pth", "fd_domain"),
    ("auto", "encoded", "", "fd_domain"),           # a folder offline: its own classifier
    ("auto", "encoded", "/w/inception.pth", "fid"),  # Inception weights given: real FID
    ("auto", "random", "", "none"),
    ("fid", "encoded", "", "fid"),
    ("fd_domain", "encoded", "/w/inception.pth", "fd_domain"),
])
def test_auto_metric_per_dataset(metric, kind, weights, expected):
    assert resolve_metric(metric, kind, weights) == expected


def test_fd_domain_needs_64_samples_on_any_dataset():
    assert feature_dim("fd_domain") == 64 and feature_dim("fid") == 2048
    spec = {"name": "t", "model": {"widths": [32], "depths": [4], "head_dim": 16},
            "lr": {"base_lrs": [1e-3], "rules": ["constant"]}, "budget": {"iterations": 2},
            "train": {"latent_size": 8, "num_classes": 10}}
    SweepSpec.model_validate({**spec, "dataset": "/data/latents", "eval": {"samples": 1000}})
    SweepSpec.model_validate({**spec, "dataset": "/data/latents", "eval": {"metric": "fd_domain", "samples": 64}})
    with pytest.raises(ValueError, match="eval.samples=63 is below the 64-d features of the fd_domain"):
        SweepSpec.model_validate({**spec, "dataset": "/data/latents", "eval": {"samples": 63}})
    weights = {**spec["train"], "inception_weights": "/w/inception.pth"}
    with pytest.raises(ValueError, match="eval.samples=1000 is below the 2048-d features of the fid"):
        SweepSpec.model_validate({**spec, "dataset": "/data/latents", "eval": {"samples": 1000}, "train": weights})


def test_classifier_input_is_resized_to_32_px():
    gen = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen)
    assert resize_for_classifier(small) is small  # the digits path: untouched
    flat = torch.full((1, 3, 64, 64), 77, dtype=torch.uint8)
    assert torch.equal(resize_for_classifier(flat), torch.full((1, 3, 32, 32), 77, dtype=torch.uint8))
    # Antialiased 2x shrink: a 1-px checkerboard (0/254) averages to mid-grey, not to aliasing.
    checker = ((torch.arange(64)[:, None] + torch.arange(64)) % 2 * 254).to(torch.uint8).expand(1, 3, 64, 64)
    assert resize_for_classifier(checker)[..., 4:-4, 4:-4].unique().tolist() == [127]
    assert resize_for_classifier(small[:, :, :16, :16]).shape == (2, 3, 32, 32)


def test_folder_classifier_accuracy_and_cache(encoded_digits_folder, monkeypatch):
    """500 digits PNGs: 400 train the classifier, 100 held out give 99% (measured 0.99)."""
    folder = prepare_folder_classifier(encoded_digits_folder, progress=False)
    assert folder.root == cache_root() / "domain" / folder.key and folder.classifier_path.is_file()
    assert (folder.meta["images"], folder.meta["heldout"], folder.meta["num_classes"]) == (500, 100, 10)
    assert folder.heldout_accuracy >= 0.95
    assert folder.meta["version"] == domain.FOLDER_CLASSIFIER_VERSION
    assert reference_indices(500) == list(range(500)) and len(reference_indices(500, 50)) == 50
    other = prepare_folder_classifier(encoded_digits_folder, FolderClassifierSettings(split_seed=1), progress=False)
    assert other.key != folder.key and other.meta["settings"]["split_seed"] == 1  # other settings: another entry
    monkeypatch.setattr(domain, "train_classifier", lambda *a, **k: pytest.fail("retrained on a cache hit"))
    again = prepare_folder_classifier(encoded_digits_folder, progress=False)
    assert again.key == folder.key and again.meta == folder.meta


def test_extractor_accepts_any_image_size(encoded_digits_folder):
    folder = prepare_folder_classifier(encoded_digits_folder, progress=False)
    extractor = DomainFeatureExtractor(FOLDER_EXTRACTOR_NAME, ["features", "logits"],
                                       feature_extractor_weights_path=str(folder.classifier_path))
    big = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features, logits = extractor(big)
    assert features.shape == (4, 64) and logits.shape == (4, 10)
    assert torch.equal(features, extractor(resize_for_classifier(big))[0])
    with pytest.raises(ValueError, match="expects uint8 images"):
        extractor(big.float())


def test_folder_evaluator_keys_and_provenance(encoded_digits_folder):
    cfg = folder_cfg(encoded_digits_folder)
    evaluator = make_evaluator(cfg, load_latents(cfg), CPU)
    folder = prepare_folder_classifier(encoded_digits_folder, progress=False)
    assert evaluator.metric_key == "eval/fd_domain_128"
    assert evaluator.provenance["eval.extractor"] == f"{FOLDER_EXTRACTOR_NAME} ({folder.classifier_path})"
    assert evaluator.provenance["eval.classifier_heldout_accuracy"] == f"{folder.heldout_accuracy:.4f}"
    assert evaluator.provenance["eval.reference"].endswith("at 32px, 500 images")
    assert evaluator.reference_name.endswith(f"-n500-{folder.key}")  # a new classifier: new features
    torch.manual_seed(0)
    metrics = evaluator.evaluate(build_generator(cfg).eval().requires_grad_(False))
    assert sorted(metrics) == ["eval/fd_domain_128", "eval/kid_domain_128", "eval/precision_domain_128",
                               "eval/recall_domain_128"]
    assert metrics["eval/fd_domain_128"] > 0


def test_folder_checks_before_training(encoded_digits_folder, tmp_path):
    cfg = folder_cfg(encoded_digits_folder)
    data = load_latents(cfg)
    with pytest.raises(ConfigError, match="inception_weights=/nowhere/inception.pth does not exist"):
        make_evaluator(cfg.replace(inception_weights="/nowhere/inception.pth"), data, CPU)  # auto -> fid
    with pytest.raises(ConfigError, match="fid_ref_npz holds Inception statistics"):
        make_evaluator(cfg.replace(fid_ref_npz="/x.npz"), data, CPU)
    with pytest.raises(ConfigError, match="eval_samples=32 is below the 64-d"):
        make_evaluator(cfg.replace(eval_samples=32), data, CPU)
    _check_inputs(cfg)  # no Inception file asked for: the folder is evaluated offline
    moved = tmp_path / "latents"
    shutil.copytree(encoded_digits_folder, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    (moved / "manifest.json").write_text(json.dumps({**manifest, "images_dir": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match=f"the reference images {tmp_path / 'gone'} of {moved} are gone"):
        make_evaluator(cfg.replace(dataset=str(moved)), load_latents(cfg.replace(dataset=str(moved))), CPU)


def test_image_folder_to_falling_domain_fd_through_the_cli(digits_image_folder, tiny_digits_cache, tmp_path):
    """`gat-sweep encode` a folder of 500 digit PNGs, then `gat-sweep train` on it with no
    Inception weights: evaluation is the folder's own classifier. Measured on 2 CPU cores
    (about 40 s): eval/fd_domain_128 = 3071, 2278, 1793 at iterations 100, 200, 300."""
    runner = CliRunner()
    latents = tmp_path / "latents"
    encoded = runner.invoke(cli.app, ["encode", str(digits_image_folder), str(latents), "--vae", "digits",
                                      "--resolution", "32", "--device", "cpu"])
    assert encoded.exit_code == 0, encoded.output
    assert "500 images, 10 classes, latents [4, 8, 8]" in encoded.output
    run = tmp_path / "run"
    settings = [f"dataset={latents}", "latent_size=8", "num_classes=10", "iterations=300", "eval_every=100",
                "eval_samples=128", "ckpt_every=300"]
    trained = runner.invoke(cli.app, ["train", "digits", *(a for s in settings for a in ("--set", s)),
                                      "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    fd = {line["step"]: line["eval/fd_domain_128"] for line in lines if "eval/fd_domain_128" in line}
    assert sorted(fd) == [100, 200, 300]
    assert fd[300] < 0.75 * fd[100], fd  # measured 0.58
    grids = sorted((run / "samples").glob("iter_*.png"))
    assert [p.name for p in grids] == ["iter_0000000.png", "iter_0000100.png", "iter_0000200.png", "iter_0000300.png"]
    assert Image.open(grids[-1]).size == (8 * 34 + 2, 10 * 34 + 2)  # 8 samples x 10 classes of 32 px


def test_sweep_driver_trains_the_folder_classifier_once_before_trials(encoded_digits_folder, monkeypatch):
    """A folder sweep evaluated with fd_domain gets its classifier from the driver, so the trials
    only read the cache entry (they would otherwise each train a copy at once)."""
    from scaling import tune

    calls = []
    monkeypatch.setattr(domain, "prepare_folder_classifier", lambda root, *a, **k: calls.append(root))
    base = TrainConfig(dataset=str(encoded_digits_folder), eval_every=0)
    tune._prepare_data(base)
    tune._prepare_data(base.replace(eval_every=-1))  # no evaluation: nothing to prepare
    tune._prepare_data(base.replace(eval_metric="fid", inception_weights="/w/inception.pth"))
    assert calls == [encoded_digits_folder]


@pytest.mark.parametrize("per_class", [[6], [6, 2]], ids=["one class", "a class of 2 images"])
def test_domain_fd_refuses_a_folder_with_too_few_classes_or_images(digits_image_folder, tiny_digits_cache, tmp_path,
                                                                   per_class):
    # Issue 23, finding 7: a one-class folder trained and reported FD 0.021 after 5 iterations, a
    # number with no meaning (the classifier has nothing to tell apart).
    images = tmp_path / "images"
    for label, count in enumerate(per_class):
        (images / f"c{label}").mkdir(parents=True)
        for path in sorted((digits_image_folder / str(label)).glob("*.png"))[:count]:
            shutil.copyfile(path, images / f"c{label}" / path.name)
    runner = CliRunner()
    latents = tmp_path / "latents"
    encoded = runner.invoke(cli.app, ["encode", str(images), str(latents), "--vae", "digits", "--resolution", "32",
                                      "--device", "cpu"])
    assert encoded.exit_code == 0, encoded.output
    settings = [f"dataset={latents}", "latent_size=8", f"num_classes={len(per_class)}", "iterations=5",
                "eval_every=0", "eval_samples=64"]
    trained = runner.invoke(cli.app, ["train", "tiny", *(a for s in settings for a in ("--set", s)),
                                      "--out", str(tmp_path / "run")])
    assert trained.exit_code == 2, trained.output
    message = " ".join(trained.output.split())
    expected = (f"dataset {latents} holds 1 class (c0); eval_metric fd_domain compares samples" if len(per_class) == 1
                else f"{images}: classes with fewer than 5 images, too few for the domain classifier of eval_metric "
                     "fd_domain to learn and be measured on them: c1 (2)")
    assert message.startswith(f"error: {expected}"), message
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
