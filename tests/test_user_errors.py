"""Every user input parsed with its declared type (issue 11, finding 4): a wrong value is one
message naming the field, exit status 2, and nothing is created."""

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
