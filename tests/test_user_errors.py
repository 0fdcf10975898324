"""Every user input parsed with its declared type (issue 11, finding 4): a wrong value is one
message naming the field, exit status 2, and nothing is created."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.config import ConfigError, TrainConfig
from scaling import cli

runner = CliRunner()


@pytest.mark.parametrize("setting, message", [
    ("lr_g=abc", "lr_g: expected a number, got 'abc'"),
    ("batch=abc", "batch: expected an integer, got 'abc'"),
    ("g.width=1.5", "g.width: expected an integer, got 1.5"),
    ("augment=maybe", "augment: expected true or false, got 'maybe'"),
    ("precision=fp16", "precision: expected one of 'fp32', 'bf16', got 'fp16'"),
    ("lr_mult_d.hidden=x", "lr_mult_d.hidden: expected a number, got 'x'"),
])
def test_wrong_type_on_the_command_line_is_one_message_and_creates_nothing(tmp_path, setting, message):
    out = tmp_path / "run"
    result = runner.invoke(cli.app, ["train", "tiny", "--set", setting, "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_wrong_type_in_a_config_file_names_the_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: random\nlr_g: abc\n")
    result = runner.invoke(cli.app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "lr_g: expected a number, got 'abc'" in result.output
    assert not (tmp_path / "run").exists()


def test_numbers_keep_working_where_numbers_are_expected():
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), "lr_g": 1, "ema_decay": 0.9})
    assert cfg.lr_g == 1 and cfg.ema_decay == 0.9
    with pytest.raises(ConfigError, match="iterations: expected an integer, got True"):
        TrainConfig(iterations=True)


SMOKE = Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml"


@pytest.mark.parametrize("setting, message", [
    ("lr.base_lrs=[.inf]", "lr.base_lrs.0: Input should be a finite number (got inf)"),
    ("model.widths=[true]", "model.widths.0: expected a number, got true"),
    ("train.ema_decay=.nan", "train.ema_decay: Input should be a finite number"),
    ("budget.iterations=1000000000000", "budget.iterations: Input should be less than or equal to 9999999"),
    ("lr.base_lrs=[1e-3", "--set lr.base_lrs: the value '[1e-3' is not a YAML value (expected ',' or ']'"),
    ("name=!!python/object/apply:os.system [true]", "--set name: the value '!!python/object/apply:os.system [true]' "
                                                    "is not a YAML value (could not determine a constructor"),
    ("tracking_uri=ftp://host/mlflow", "tracking URI ftp://host/mlflow: MLflow has no tracking store for ftp://"),
    ("model.widths=[1000000]", "trial w1000000-d4-p2_gat_lr0.001_s0: G 69,000,263,334,160 and D 48,000,164,335,920 "
                               "parameters at batch 8 need at least"),
    ("resources.cpus=100000", "resources: a trial asks for 100000 CPUs (1 worker(s) x cpus 100000) and this machine has"),
])
def test_every_sweep_value_is_checked_before_anything_starts(tmp_path, setting, message):
    # Issue 23, findings 6 and 10: these reached Ray (a trial diverging at iteration 1, 69T
    # parameters failing on allocation twice, width 1 for `true`) or ended in a raw traceback.
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["run", str(SMOKE), "--output-dir", str(out), "--set", setting])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_a_relative_path_is_made_absolute_before_the_checks(tmp_path, monkeypatch):
    # Finding 6: a relative inception_weights passed the early check here and failed in every
    # trial, which runs in another directory.
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "fid.yaml"
    sweep.write_text(SMOKE.read_text().replace("dataset: random", "dataset: digits")
                     .replace("every: -1", "every: 0\n  metric: fid\n  samples: 2048")
                     .replace("train:\n", "train:\n  inception_weights: weights/inception.pth\n"))
    result = runner.invoke(cli.app, ["run", str(sweep), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"inception_weights={tmp_path / 'weights' / 'inception.pth'} does not exist" in result.output
    shown = runner.invoke(cli.app, ["train", "tiny", "--set", "inception_weights=weights/inception.pth", "--dry-run"])
    assert f"'{tmp_path / 'weights' / 'inception.pth'}'" in shown.output


@pytest.mark.parametrize("setting, message", [
    ("lr_g=.inf", "lr_g: expected a finite number, got inf"),
    ("diverge_loss=.nan", "diverge_loss: expected a finite number, got nan"),
    ("iterations=10000000", "iterations=10,000,000 is above the most a run can have, 9,999,999"),
    ("lr_mult_d.hidden=0", "lr_mult_d.hidden must be a positive multiplier of the learning rate, got 0"),
    ("g.width=[1", "--set g.width: the value '[1' is not a YAML value"),
    ("g.width=100000", "tiny: G 690,026,334,832 and D 480,038,968,528 parameters at batch 32 need at least"),
])
def test_train_checks_values_before_it_starts(tmp_path, setting, message):
    out = tmp_path / "run"
    result = runner.invoke(cli.app, ["train", "tiny", "--set", setting, "--set", "d.width=100000", "--set",
                                     "g.heads=1000", "--set", "d.heads=1000", "--out", str(out)]
                           if setting.startswith("g.width=1") else ["train", "tiny", "--set", setting, "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in " ".join(result.output.split())
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("name", ["..", "."])
def test_a_run_name_cannot_leave_its_directory(tmp_path, monkeypatch, name):
    # Issue 23, finding 7: `train --set name=..` wrote its run into outputs/ instead of outputs/train/<name>.
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["train", "tiny", "--set", f"name={name}", "--dry-run"])
    assert result.exit_code == 2 and f"name: '{name}' cannot name a run directory" in result.output
