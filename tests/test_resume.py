"""Exact resume through the entry point a user takes: `gat-sweep train` interrupted by Ctrl-C
(SIGINT) mid-run and started again ends bit-for-bit where the uninterrupted command ends: weights,
optimiser moments, EMA, w_avg, every line of stats.jsonl and result.json (wall-clock timings aside);
and a damaged checkpoint is named, passed over for an intact one, or refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from core.gan.checkpoint import load_checkpoint
from helpers import assert_same_states, checkpoint_states, logged
from scaling import cli

BIN = Path(sys.executable).parent
# Small enough for seconds on one thread; grad_clip 1e-3 makes gradient clipping bind at every
# step (clipping over a different parameter set after a restart was the cause of the deviation).
ARGS = ["train", "tiny", "--set", "iterations=60", "--set", "ckpt_every=10", "--set", "log_every=4",
        "--set", "diag_every=6", "--set", "g.width=32", "--set", "d.width=32", "--set", "g.heads=2",
        "--set", "d.heads=2", "--set", "grad_clip=1e-3"]
runner = CliRunner()


def gat_sweep_train(out: Path, **popen) -> subprocess.Popen:
    # A process started from a script inherits SIGINT ignored (Python then never raises
    # KeyboardInterrupt); restore the default so SIGINT acts as Ctrl-C does in a terminal.
    return subprocess.Popen([str(BIN / "gat-sweep"), *ARGS, "--out", str(out)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def checkpoint_iteration(out: Path) -> int:
    path = out / "checkpoints" / "latest.pt"
    try:
        return load_checkpoint(path)["iteration"] if path.exists() else 0
    except Exception:  # being renamed into place right now
        return 0


def test_ctrl_c_and_rerun_equals_the_uninterrupted_command(tmp_path):
    straight = gat_sweep_train(tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    out = tmp_path / "interrupted"
    proc = gat_sweep_train(out)
    deadline = time.monotonic() + 300
    while checkpoint_iteration(out) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again to resume" in stderr
    assert not (out / "result.json").exists()
    stopped_at = checkpoint_iteration(out)
    assert 20 <= stopped_at < 60

    rerun = gat_sweep_train(out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert_same_states(checkpoint_states(tmp_path / "straight")[0], checkpoint_states(out)[0])
    assert logged(tmp_path / "straight") == logged(out)


DAMAGE = {"empty": lambda data: b"", "cut short": lambda data: data[: len(data) // 2],
          "garbage": lambda data: b"not a checkpoint " * 8}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_resume_falls_back_to_an_intact_one(tmp_path, damage):
    # A damaged latest.pt printed only "Aborted." (empty), an UnpicklingError advising
    # weights_only=False (garbage) or a message without the file (cut short), and the intact
    # numbered checkpoint beside it was never tried.
    args = ["train", "tiny", "--set", "iterations=6", "--set", "ckpt_every=2", "--set", "log_every=2",
            "--set", "diag_every=3", "--set", "g.width=32", "--set", "d.width=32", "--set", "g.heads=2",
            "--set", "d.heads=2"]
    assert runner.invoke(cli.app, [*args, "--out", str(tmp_path / "straight")]).exit_code == 0
    out = tmp_path / "damaged"
    assert runner.invoke(cli.app, [*args, "--out", str(out)]).exit_code == 0
    (out / "result.json").unlink()  # as if the run had stopped after its last checkpoint
    ckpt = out / "checkpoints"
    for name in ("latest.pt", "iter_0000006.pt"):
        (ckpt / name).write_bytes(DAMAGE[damage]((ckpt / name).read_bytes()))

    resumed = runner.invoke(cli.app, [*args, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    said = " ".join(resumed.stderr.split())
    assert f"checkpoint {ckpt / 'latest.pt'} cannot be read" in said
    assert "resuming from iter_0000004.pt (iteration 4)" in said and "weights_only" not in said
    assert logged(tmp_path / "straight") == logged(out)  # iterations 5-6 trained again, exactly
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    again = load_checkpoint(ckpt / "latest.pt")
    assert all(torch.equal(t, again["G"][k]) for k, t in straight["G"].items())

    # No checkpoint left that can be read: one message naming them and what to do, exit status 2.
    (out / "result.json").unlink()
    for path in ckpt.glob("*.pt"):
        path.write_bytes(DAMAGE[damage](path.read_bytes()))
    refused = runner.invoke(cli.app, [*args, "--out", str(out)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    message = " ".join(refused.stderr.split())
    assert message.startswith(f"error: checkpoint {ckpt / 'latest.pt'} cannot be read")
    assert f"No checkpoint in {ckpt} can be read: restore one, or delete {ckpt} to train this run again" in message
