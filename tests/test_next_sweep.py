"""The sweep a report suggests (scaling/next_sweep.py): written beside the report as a sweep file
that `gat-sweep run FILE --dry-run` accepts as printed, with the implied power<a> rule."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis.answer import NextSweep
from core.config import ConfigError
from scaling import cli
from scaling.next_sweep import write_next_sweep
from scaling.spec import load_spec

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def test_the_suggested_sweep_is_a_sweep_file_whose_dry_run_works(tmp_path):
    suggestion = NextSweep(rules=("power0.62", "constant", "gat"), base_lrs=(1.9e-3, 3.8e-3, 7.5e-3, 1.5e-2, 3e-2),
                           seeds=tuple(range(8, 16)), widths=(16, 32, 64, 128), why="8 new seeds")
    command = write_next_sweep((SWEEPS / "width_lr_full.yaml").read_text(), "width_lr_full", suggestion, tmp_path)
    path = tmp_path / "next_sweep.yaml"
    assert command.endswith(f"gat-sweep run {path}")
    spec = load_spec(path)
    assert spec.name == "width_lr_full_next" and spec.lr.rules == ["power0.62", "constant", "gat"]
    assert spec.seeds == list(range(8, 16)) and spec.model.widths == [16, 32, 64, 128]
    assert spec.lr.base_lrs == [1.9e-3, 3.8e-3, 7.5e-3, 1.5e-2, 3e-2] and spec.output_dir is None
    assert spec.budget == load_spec(SWEEPS / "width_lr_full.yaml").budget   # everything else as analysed
    dry = CliRunner().invoke(cli.app, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "power0.62" in dry.output and "width_lr_full_next" in dry.output


def test_an_invalid_suggestion_writes_nothing(tmp_path):
    suggestion = NextSweep(rules=("powerx",), base_lrs=(), seeds=(0,), widths=(16,), why="bad")
    with pytest.raises(ConfigError, match="power"):
        write_next_sweep((SWEEPS / "width_lr.yaml").read_text(), "width_lr", suggestion, tmp_path)
    assert not (tmp_path / "next_sweep.yaml").exists() and not list(tmp_path.glob(".*"))


def test_plot_refuses_malformed_target_widths(tmp_path):
    result = CliRunner().invoke(cli.app, ["plot", str(SWEEPS / "width_lr.yaml"), "--target-widths", "768,x"])
    assert result.exit_code == 2 and "--target-widths takes positive integers" in result.output
