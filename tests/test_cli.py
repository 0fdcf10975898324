"""The gat-sweep command line (scaling/cli.py): help with examples, schema, dry runs that start
nothing, user errors as one message with exit status 2, a real in-process training run, and the
summary and exit status of `run`."""

import contextlib
import importlib.util
import json
import http.server
import socket
import subprocess
import sys
import threading
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from scaling import cli
from scaling.spec import check_tracking_uri
from scaling.tune import SweepOutcome, TrialOutcome

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(cli.app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("command", ["run", "train", "schema", "plot", "encode", "coord-check"])
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"gat-sweep {command}" in result.output


def test_schema_prints_the_sweep_json_schema():
    result = invoke("schema")
    schema = json.loads(result.output)
    assert result.exit_code == 0 and schema["title"] == "SweepSpec"
    assert schema["additionalProperties"] is False


def test_run_dry_run_prints_trials_and_starts_nothing(tmp_path):
    out = tmp_path / "never"
    result = invoke("run", str(SWEEPS / "smoke.yaml"), "--dry-run", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    for name in ("w32-d4-p2_gat_lr0.001_s0", "w64-d4-p2_gat_lr0.001_s0", "w64-d4-p2_constant_lr0.001_s0"):
        assert name in result.output
    # gat halves the LR at twice the base width: 0.0005 appears for the w64 gat trial only (one LR
    # column: G and D of one width train with one LR).
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip().startswith("w")}
    assert "lr_D" not in result.output
    assert rows["w64-d4-p2_gat_lr0.001_s0"][7] == "0.0005"
    assert rows["w64-d4-p2_constant_lr0.001_s0"][7] == "0.001"
    assert "budget 6 iterations x batch 8" in result.output and str(out) in result.output
    assert not out.exists()


def test_run_dry_run_of_power_rules_names_trials_and_gives_their_lrs(tmp_path):
    args = ["run", str(SWEEPS / "smoke.yaml"), "--set", "lr.rules=[gat,power0.50,power-0.25]", "--dry-run",
            "--output-dir", str(tmp_path / "never")]
    plan = invoke(*args, "--json")
    assert plan.exit_code == 0, plan.output
    lrs = {r["name"]: (r["lr_g"], r["lr_d"]) for r in json.loads(plan.stdout)["trials"]}
    assert lrs["w64-d4-p2_power0.5_lr0.001_s0"] == pytest.approx((7.0711e-4, 7.0711e-4), rel=1e-4)  # 1e-3 * (32/64)^0.5
    assert lrs["w64-d4-p2_power-0.25_lr0.001_s0"] == pytest.approx((1.18921e-3, 1.18921e-3), rel=1e-4)  # 1e-3 * 2^0.25
    assert lrs["w32-d4-p2_power0.5_lr0.001_s0"] == (1e-3, 1e-3)  # the base width
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "w64-d4-p2_power0.5_lr0.001_s0" in result.output and "0.0007071" in result.output
    assert "lr rules gat, power0.5, power-0.25" in result.output
    bad = invoke("run", str(SWEEPS / "smoke.yaml"), "--set", "lr.rules=[powerx]", "--dry-run")
    assert bad.exit_code == 2 and "lr.rules.0: unknown LR rule 'powerx'; choose constant, gat, mup, or power<a>" in bad.output


def test_dry_run_refuses_what_the_run_would_refuse_in_its_output_directory(tmp_path):
    # A review: the dry run did not read the output directory, so it could not say that a sweep
    # grows, resumes, or would be refused there.
    out = tmp_path / "o"
    out.mkdir()
    args = ["run", str(SWEEPS / "smoke.yaml"), "--dry-run", "--output-dir", str(out)]
    state = {"name": "smoke", "spec_hash": "x", "tracking_uri": "sqlite:////elsewhere/mlflow.db", "trials": {}}
    (out / "sweep.json").write_text(json.dumps(state))
    result = invoke(*args)
    assert result.exit_code == 2 and "Use the same tracking URI to resume it" in result.output
    state.update(tracking_uri=f"sqlite:///{out.absolute() / 'mlflow.db'}", trials={"w8-d1-p2_gat_lr0.1_s0": {}})
    (out / "sweep.json").write_text(json.dumps(state))
    result = invoke(*args)
    assert result.exit_code == 2 and "trials dropped: w8-d1-p2_gat_lr0.1_s0" in result.output


def test_dry_run_of_a_new_sweep_does_not_import_mlflow(tmp_path):
    """The dry run answers in about a second; importing MLflow alone takes several."""
    code = ("import sys; from typer.testing import CliRunner; from scaling import cli; "
            f"r = CliRunner().invoke(cli.app, ['run', {str(SWEEPS / 'smoke.yaml')!r}, '--dry-run', "
            f"'--output-dir', {str(tmp_path / 'never')!r}]); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'ray')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_an_empty_seed_or_rule_list_is_a_sweep_file_error(tmp_path):
    # A review: `seeds: []` passed validation and the dry run ended in an IndexError.
    for key in ("seeds=[]", "lr.rules=[]"):
        result = invoke("run", str(SWEEPS / "smoke.yaml"), "--set", key, "--dry-run", "--output-dir", str(tmp_path))
        assert result.exit_code == 2 and "should have at least 1 item" in result.output


@pytest.mark.parametrize("command", ["run", "plot"])
def test_a_tracking_uri_mlflow_would_refuse_late_is_refused_before_anything_starts(command, tmp_path):
    """A review: a database path without sqlite:/// ended in MLflow's file-store traceback, and a
    server that is not there in a traceback after about four minutes of retries."""
    target = [str(SWEEPS / "smoke.yaml"), "--output-dir", str(tmp_path / "o")] if command == "run" else ["smoke"]
    db = tmp_path / "mlflow.db"
    result = invoke(command, *target, "--tracking-uri", str(db))
    assert result.exit_code == 2
    assert f"tracking URI {db}: a path is MLflow's file store" in result.output and f"write sqlite:///{db}" in result.output
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = invoke(command, *target, "--tracking-uri", url)
    assert result.exit_code == 2 and f"tracking URI {url}: no MLflow server answers there" in result.output
    # Issue 23, finding 6: a server that is not MLflow's, a scheme MLflow has no store for and a
    # database whose driver is missing were refused only after Ray started (and sweep.yaml and
    # trials.csv were written).
    with answering(200, b"<html>a web page</html>") as web:
        result = invoke(command, *target, "--tracking-uri", web)
    assert result.exit_code == 2 and (f"tracking URI {web}: a server answers there, but not MLflow's tracking API "
                                      f"(GET {web}/api/2.0/mlflow/experiments/get-by-name") in result.output
    result = invoke(command, *target, "--tracking-uri", "ftp://files/mlflow")
    assert result.exit_code == 2 and "MLflow has no tracking store for ftp://" in result.output
    result = invoke(command, *target, "--tracking-uri", "mssql+nosuchdriver://user:secret@db/mlflow")
    assert result.exit_code == 2 and "SQLAlchemy has no such database driver" in result.output
    assert "secret" not in result.output
    if importlib.util.find_spec("psycopg") is None:  # SQLAlchemy's default PostgreSQL driver
        result = invoke(command, *target, "--tracking-uri", "postgresql://user:secret@db/mlflow")
        assert result.exit_code == 2 and ("tracking URI postgresql://user:***@db/mlflow: MLflow reaches this database "
                                          "through SQLAlchemy's postgresql+psycopg driver, whose module 'psycopg' is not "
                                          "installed here") in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


@contextlib.contextmanager
def answering(status: int, body: bytes):
    """An HTTP server on 127.0.0.1 answering every GET with ``status`` and ``body``; yields its URL."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_an_mlflow_answer_or_a_non_path_scheme_passes_the_tracking_uri_check(monkeypatch):
    """MLflow's JSON (an experiment, or an error code) passes, and so does a proxy that wants
    credentials (401): MLflow may send ones the probe does not; databricks and database URIs whose
    driver is installed are not paths."""
    with answering(401, b"") as proxy:
        check_tracking_uri(f"{proxy}/prefix")
    with answering(404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}') as mlflow_server:
        check_tracking_uri(mlflow_server)
    for uri in ("databricks", "databricks://profile", "sqlite:///x.db"):
        check_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-in to its file store
    check_tracking_uri("mlruns")


def test_bad_sweep_file_is_one_message_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SWEEPS / "smoke.yaml").read_text().replace("widths:", "widthz:").replace(
        "rules: [gat, constant]", "rules: [gat, sqrt]"))
    result = invoke("run", str(bad))
    assert result.exit_code == 2
    assert "model.widthz: unknown key (did you mean 'widths'?)" in result.output
    assert "lr.rules.1: unknown LR rule 'sqrt'; choose constant, gat, mup, or power<a>" in result.output
    missing = invoke("run", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "sweep file not found" in missing.output
    odd = tmp_path / "[" / "x].yaml"  # a message containing '[/x]' is text, not rich markup
    result = invoke("run", str(odd))
    assert result.exit_code == 2 and f"sweep file not found: {odd}" in result.output


def test_train_dry_run_resolves_preset_and_overrides(tmp_path):
    result = invoke("train", "tiny", "--set", "g.width=128", "--set", "lr_g=1e-4", "--dry-run",
                    "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    lines = {tuple(line.split()[:2]) for line in result.output.splitlines() if line.split()}
    assert ("g.width", "128") in lines and ("lr_g", "0.0001") in lines and ("d.width", "64") in lines
    assert "G parameters" in result.output and "FLOPs per iteration" in result.output
    assert not (tmp_path / "r").exists()


def test_imagenet_preset_dry_run_shows_the_alignment_and_its_projector(tmp_path):
    """GAT-B/2 trains with the DINOv2 alignment on (the reference's recipe): the dry run says so,
    with the projector's parameters (Linear 768->2048->2048->768) inside D's count (97.33M
    without it, docs/METHOD.md §6), and needs no encoder."""
    result = invoke("train", "GAT-B/2", "--dry-run", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    projector = 768 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768
    assert projector == 7_344_896
    text = " ".join(result.output.split())
    assert f"D's projector has {projector:,} (7.34M) parameters, included in D's count" in text
    assert "D parameters 104,676,864" in text and "encoder not set" in text
    off = invoke("train", "GAT-B/2", "--set", "repa=false", "--dry-run", "--out", str(tmp_path / "r"))
    assert "D parameters 97,331,968" in " ".join(off.output.split()) and "projector has" not in off.output


def test_train_reads_a_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: mine\ndataset: random\ng: {width: 32, depth: 4, heads: 2}\nbatch: 4\n")
    result = invoke("train", str(cfg), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "config mine" in result.output and str(Path("outputs/train/mine").absolute()) in result.output


@pytest.mark.parametrize("args, message", [
    (["huge"], "'huge' is neither a preset (tiny, digits"),
    (["tiny", "--set", "g.widht=3"], "--set g.widht: unknown field; choose one of: width, depth, heads"),
    (["tiny", "--set", "batch"], "write key=value"),
    (["tiny", "--set", "g.width=30"], "g.width=30 is not divisible by g.heads=4"),
])
def test_train_user_errors(args, message):
    result = invoke("train", *args, "--dry-run")
    assert result.exit_code == 2 and message in result.output


def test_train_runs_in_process_and_resumes_at_once(tmp_path):
    args = ["train", "tiny", "--set", "iterations=3", "--set", "ckpt_every=2", "--set", "g.width=32",
            "--set", "g.heads=2", "--set", "d.width=32", "--set", "d.heads=2", "--set", "batch=4",
            "--out", str(tmp_path / "r")]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "finished after 3 iterations (0.012 kimg)" in result.output
    assert json.loads((tmp_path / "r" / "result.json").read_text())["iterations"] == 3
    again = invoke(*args)  # a finished run returns at once
    assert again.exit_code == 0 and "finished after 3 iterations" in again.output


def test_run_prints_summary_and_exits_1_when_a_trial_failed(monkeypatch, tmp_path):
    outcome = SweepOutcome("smoke", tmp_path, f"sqlite:///{tmp_path}/mlflow.db", "1", [
        TrialOutcome("a", "finished", 6, 0.048, {"loss/G": 0.7, "loss/D": 1.3, "eval/fd_digits_1k": 1290.0,
                                                   "final/fd_digits_1k": 1285.4}),
        TrialOutcome("b", "diverged", 1, 0.008, {}),
        TrialOutcome("c", "error", error="RuntimeError: boom")])
    monkeypatch.setattr("scaling.tune.run_checked_sweep", lambda spec, path, console, started: outcome)
    monkeypatch.chdir(tmp_path)  # the sweep's default output directory is created and locked
    result = invoke("run", str(SWEEPS / "smoke.yaml"))
    assert result.exit_code == 1
    # the final FD (not the last evaluation), formatted for people
    assert "1,285" in result.output and "1,290" not in result.output and "c: RuntimeError: boom" in result.output
    assert "1 finished, 1 diverged, 1 error" in result.output
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in result.output
    outcome.trials.pop()
    assert invoke("run", str(SWEEPS / "smoke.yaml")).exit_code == 0


def test_run_tables_fit_100_columns_without_a_broken_cell(monkeypatch, tmp_path):
    # At 120 and 160 columns the tables broke every row mid-cell. The dry run leaves out the columns
    # that do not fit (and says which); the summary fits as it is.
    from rich.console import Console

    from scaling.grid import expand
    from scaling.spec import load_spec

    monkeypatch.setattr(cli, "console", Console(width=100))
    monkeypatch.chdir(tmp_path)
    for name in ("width_lr", "imagenet256_gat", "smoke"):
        lines = invoke("run", str(SWEEPS / f"{name}.yaml"), "--dry-run").output.splitlines()
        trials = expand(load_spec(SWEEPS / f"{name}.yaml"))
        for t in trials:  # each trial one line, its name whole; every line within 100 columns
            row = [line for line in lines if line.startswith(f"  {t.name} ")]
            assert len(row) == 1 and len(row[0].rstrip()) <= 100, (name, t.name)
        table = lines[:next(i for i, line in enumerate(lines) if line.startswith("budget "))]
        assert max(len(line.rstrip()) for line in table) <= 100
    assert "left out at 100 columns: heads, G params, D params, FLOPs/iter (--json shows every column)" in [
        line.strip() for line in invoke("run", str(SWEEPS / "width_lr.yaml"), "--dry-run").output.splitlines()]

    trials = expand(load_spec(SWEEPS / "width_lr.yaml"))
    metrics = {"eval/fd_digits_500": 1285.4, "final/fd_digits_500": 1301.2, "loss/G": 1.2345, "loss/D": 0.5678}
    outcome = SweepOutcome("width_lr", tmp_path, f"sqlite:///{tmp_path}/mlflow.db", "1",
                           [TrialOutcome(t.name, "finished", 800, 51.2, metrics) for t in trials])
    monkeypatch.setattr("scaling.tune.run_checked_sweep", lambda spec, path, console, started: outcome)
    lines = invoke("run", str(SWEEPS / "width_lr.yaml")).output.splitlines()
    for t in trials:
        row = [line for line in lines if line.startswith(f"  {t.name} ")]
        assert len(row) == 1 and row[0].split() == [t.name, "finished", "800", "51.2", "1,301", "1.234", "0.5678"]
        assert len(row[0].rstrip()) <= 100


def test_encode_writes_latents_from_an_image_folder(tmp_path, tiny_digits_cache):
    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(images / label / f"{i}.png")
    args = [str(images), str(tmp_path / "latents"), "--vae", str(tiny_digits_cache.vae_dir), "--resolution", "32"]
    dry = invoke("encode", *args, "--dry-run")
    assert dry.exit_code == 0 and "6 images in 2 classes" in dry.output
    assert not (tmp_path / "latents").exists()
    result = invoke("encode", *args, "--batch", "4", "--shard-size", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "6 images, 2 classes, latents [4, 8, 8]" in result.output
    manifest = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert manifest["count"] == 6 and [s["count"] for s in manifest["shards"]] == [4, 2]
    missing = invoke("encode", str(tmp_path / "none"), str(tmp_path / "l2"), "--vae", "x", "--dry-run")
    assert missing.exit_code == 2 and f"image folder {tmp_path / 'none'} does not exist" in missing.output
    # A damaged shard is the user's data to restore: one line naming it, not a traceback (a
    # ValueError before; in a sweep it would have been retried as a crash).
    (tmp_path / "latents" / "shard_00001.safetensors").write_bytes(b"cut")
    train = invoke("train", "tiny", "--set", f"dataset={tmp_path / 'latents'}", "--set", "num_classes=2",
                   "--set", "iterations=1", "--set", "eval_every=-1", "--set", "sample_every=-1",
                   "--out", str(tmp_path / "run"))
    assert train.exit_code == 2, train.output
    assert " ".join(train.output.split()).startswith(
        f"error: dataset {tmp_path / 'latents'}: shard {tmp_path / 'latents' / 'shard_00001.safetensors'} does not "
        "match its SHA-256")


def test_plot_of_an_unknown_sweep_is_a_user_error(tmp_path):
    result = invoke("plot", "no_such_sweep", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                    "--out", str(tmp_path / "report"))
    assert result.exit_code == 2 and f"no MLflow database at {tmp_path}/mlflow.db" in result.output


def test_run_dry_run_shows_the_base_width(tmp_path):
    # Issue 11, finding 9: the base width the LR rules scale from is part of the plan.
    result = invoke("run", str(SWEEPS / "smoke.yaml"), "--dry-run", "--output-dir", str(tmp_path / "never"))
    assert result.exit_code == 0 and "lr rules gat, constant; base LRs 0.001; base width 32" in result.output


def test_run_unwritable_output_dir_is_one_message_before_ray(tmp_path):
    # Issue 11, finding 4 (driver side): an unwritable output directory failed after Ray started.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke("run", str(SWEEPS / "smoke.yaml"), "--output-dir", str(blocker / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: output_dir: {blocker / 'out'} cannot be written (NotADirectoryError: Not a directory); "
        "choose a directory this user can write"]


def one_trial_sweep(tmp_path: Path, dataset: str, evaluation: str, train: str) -> Path:
    """A one-trial sweep file of 2 iterations on ``dataset`` (8x8 latents, 10 classes) writing to
    ``tmp_path / 'out'``; ``evaluation``: its eval mapping, ``train``: extra train fields."""
    sweep = tmp_path / "one.yaml"
    sweep.write_text(f"""
name: one
dataset: {dataset}
model: {{widths: [32], depths: [4], head_dim: 16}}
lr: {{base_lrs: [1e-3], rules: [constant]}}
budget: {{iterations: 2}}
eval: {evaluation}
train: {{{train}, latent_size: 8, num_classes: 10}}
output_dir: {tmp_path / 'out'}
""")
    return sweep


@pytest.mark.parametrize("problem", ["missing", "truncated", "vae"])
def test_run_checks_weights_files_before_anything_starts(tmp_path, problem):
    # Issue 11, finding 8: a missing Inception file started Ray and failed in every trial; a
    # truncated one ended in a raw _pickle.UnpicklingError that did not name the file.
    weights = tmp_path / "inception.pth"
    if problem == "truncated":
        weights.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00")  # the first bytes of a pickle, cut off
    dataset = "digits"
    if problem == "vae":
        (tmp_path / "latents").mkdir()
        (tmp_path / "latents" / "manifest.json").write_text(json.dumps({"vae": str(tmp_path / "no-vae")}))
        dataset = str(tmp_path / "latents")
    result = invoke("run", str(one_trial_sweep(tmp_path, dataset, "{every: 0, metric: fid, samples: 2048}",
                                               f"inception_weights: {weights}")))
    assert result.exit_code == 2, result.output
    message = {"missing": f"inception_weights={weights} does not exist",
               "truncated": f"inception_weights={weights} cannot be loaded as torch-fidelity's Inception-v3 weights",
               "vae": f"the VAE {tmp_path / 'no-vae'} named in {tmp_path / 'latents' / 'manifest.json'}"}[problem]
    assert result.output.startswith(f"error: {message}") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing created, Ray not started


@pytest.mark.parametrize("problem", ["no encoder", "no images"])
def test_run_checks_the_alignment_inputs_before_anything_starts(tmp_path, problem):
    """repa: true reads a local DINOv2 and the dataset's raw images: a missing one is one error
    from the driver, before Ray starts or anything is written."""
    dataset = "digits"
    if problem == "no images":
        (tmp_path / "latents").mkdir()
        (tmp_path / "latents" / "manifest.json").write_text(json.dumps({"vae": "unused"}))
        dataset = str(tmp_path / "latents")
    result = invoke("run", str(one_trial_sweep(tmp_path, dataset, "{every: -1}", "repa: true, sample_every: -1")))
    assert result.exit_code == 2, result.output
    message = {"no encoder": "repa=true needs repa_encoder (a DINOv2 model directory)",
               "no images": f"repa=true aligns D with DINOv2 features of the raw images, and dataset "
                            f"'{dataset}' keeps none: re-encode the folder with `gat-sweep encode ... --keep-images`"}
    assert " ".join(result.output.split()).startswith(f"error: {message[problem]}")
    assert not (tmp_path / "out").exists()  # nothing created, Ray not started


def test_run_summary_names_retried_failed_config_error_and_diverged_trials(monkeypatch, tmp_path):
    # Issue 11, findings 5, 11 and 12: the summary says what happened to which trial, and why.
    outcome = SweepOutcome("smoke", tmp_path, f"sqlite:///{tmp_path}/mlflow.db", "1", [
        TrialOutcome("a", "finished", 6, 0.048, {"loss/G": 0.7}, starts=2,
                     failures=["RuntimeError: node lost"]),
        TrialOutcome("b", "diverged", 3, 0.024, {}, reason="loss/D = 3.2e+05 > diverge_loss 100 at iteration 3"),
        TrialOutcome("c", "config_error", error="ConfigError: device='cuda' but CUDA is not available"),
        TrialOutcome("d", "finished", 6, 0.048, {}, starts=2)],
        store_problems=["d: no MLflow child run"])
    monkeypatch.setattr("scaling.tune.run_checked_sweep", lambda spec, path, console, started: outcome)
    monkeypatch.chdir(tmp_path)  # the sweep's default output directory is created and locked
    result = invoke("run", str(SWEEPS / "smoke.yaml"))
    assert result.exit_code == 1
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "retried a (2 starts, 1 failed): RuntimeError: node lost" in lines
    assert "retried d (2 starts, 0 failed): resumed after the driver stopped" in lines
    assert "diverged b: loss/D = 3.2e+05 > diverge_loss 100 at iteration 3" in lines
    assert "config error c: ConfigError: device='cuda' but CUDA is not available" in lines
    assert "d: no MLflow child run" in lines
    assert "Run the same command again to resume" not in result.output  # a config error needs a fix first
    assert "A configuration error is not retried" in result.output


# ----------------------------------------------------------------------------------------------
# Issue 13: conventions of the ecosystem (help, overrides, dry run, next steps, --json, exit codes)
# ----------------------------------------------------------------------------------------------
def plain_words(text: str) -> list[str]:
    """Words of a help text, without the markup characters markdown drops (` and *) and box edges."""
    return [word.replace("`", "").replace("*", "").strip("│") for word in text.split()]


@pytest.mark.parametrize("command", ["run", "train", "schema", "plot", "encode", "coord-check"])
def test_help_shows_every_word_of_its_text(command):
    # Finding 4: markdown mode dropped <...> as HTML ("default outputs/train/)", "outputs//mlflow.db").
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    shown = set(plain_words(result.output))
    click_command = typer.main.get_command(cli.app).commands[command]
    texts = [click_command.help or ""] + [p.help or "" for p in click_command.params]
    missing = sorted(word for text in texts for word in plain_words(text) if word not in shown)
    assert not missing, missing
    assert "//" not in result.output.replace("://", "")


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"gat-sweep {package_version('gat-sweep')}"


def test_run_set_overrides_sweep_keys_with_the_files_validation(tmp_path):
    # Finding 2: `run --set` was "No such option".
    args = ["run", str(SWEEPS / "smoke.yaml"), "--dry-run", "--json", "--output-dir", str(tmp_path / "never")]
    result = invoke(*args, "--set", "budget.iterations=3", "--set", "seeds=[0, 1]", "--set", "train.batch=4")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["trials"]
    assert {(r["iterations"], r["batch"]) for r in rows} == {(3, 4)} and {r["seed"] for r in rows} == {0, 1}
    bad = invoke(*args, "--set", "train.batch=abc", "--set", "model.widthz=3")
    assert bad.exit_code == 2
    lines = [line.strip() for line in bad.output.splitlines()]
    assert lines[0] == f"error: {SWEEPS / 'smoke.yaml'} --set train.batch=abc --set model.widthz=3: 2 problems:"
    assert "model.widthz: unknown key (did you mean 'widths'?)" in lines
    assert "train.batch: Input should be a valid integer, unable to parse string as an integer (got 'abc')" in lines
    grid_field = invoke(*args, "--set", "train.lr_g=0.1")
    assert grid_field.exit_code == 2 and "use lr.base_lrs / lr.rules instead of train.lr_g" in grid_field.output
    malformed = invoke(*args, "--set", "train.batch")
    assert malformed.exit_code == 2 and "--set 'train.batch': write key=value, e.g. --set train.batch=64" in malformed.output
    nested = invoke(*args, "--set", "seeds.x=1")
    assert nested.exit_code == 2 and "--set seeds.x: 'seeds' is not a nested field" in nested.output


def test_dry_run_ends_with_what_would_run_where(tmp_path, monkeypatch):
    # Finding 3: the dry run ended with "ray local instance".
    args = ["run", str(SWEEPS / "smoke.yaml"), "--dry-run", "--output-dir", str(tmp_path / "never")]
    last = invoke(*args).output.strip().splitlines()[-1]
    assert last.startswith("Dry run, nothing started. The sweep would train 3 runs on a new Ray instance on "
                           "this machine (") and f"write to {tmp_path / 'never'} and log to MLflow at sqlite:///" in last
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    last = invoke(*args).output.strip().splitlines()[-1]
    assert "on the Ray cluster at 10.0.0.1:6379 (from $RAY_ADDRESS)" in last
    plan = json.loads(invoke(*args, "--json", "--address", "auto").output)
    assert plan["ray_address"] == "auto" and plan["trainings"] == 3 and len(plan["trials"]) == 4
    assert plan["output_dir"] == str(tmp_path / "never")


def interrupted_outcome(tmp_path) -> SweepOutcome:
    return SweepOutcome("smoke", tmp_path, f"sqlite:///{tmp_path}/mlflow.db", "1", [
        TrialOutcome("a", "finished", 6, 0.048, {"loss/G": 0.7}), TrialOutcome("b", "incomplete")])


def test_run_json_outcome_and_exit_130_when_interrupted(monkeypatch, tmp_path):
    # Finding 9 / what to build: --json for scripts, exit status 130 after Ctrl-C (Ray Tune catches
    # the first Ctrl-C and returns with trials unfinished; a second one raises KeyboardInterrupt).
    monkeypatch.setattr("scaling.tune.run_checked_sweep", lambda spec, path, console, started: interrupted_outcome(tmp_path))
    monkeypatch.chdir(tmp_path)  # the sweep's default output directory is created and locked
    result = runner.invoke(cli.app, ["run", str(SWEEPS / "smoke.yaml"), "--json"])
    assert result.exit_code == 130
    summary = json.loads(result.stdout)  # the table and next steps went to stderr
    assert (summary["interrupted"], summary["exit_status"]) == (True, 130)
    assert [(t["name"], t["status"]) for t in summary["trials"]] == [("a", "finished"), ("b", "incomplete")]
    assert "Run the same command again to resume" in result.stderr

    def ctrl_c(spec, path, console, started):
        raise KeyboardInterrupt
    monkeypatch.setattr("scaling.tune.run_checked_sweep", ctrl_c)
    result = invoke("run", str(SWEEPS / "smoke.yaml"))
    assert result.exit_code == 130 and "interrupted; run the same command again to resume" in result.output


def test_next_step_lines_work_as_printed(monkeypatch, tmp_path):
    # Finding 5: `mlflow ui ...` and `gat-sweep plot width_lr --tracking-uri ...` failed outside the
    # venv and differed from the README's `gat-sweep plot sweeps/width_lr.yaml`.
    monkeypatch.setattr("scaling.tune.run_checked_sweep", lambda spec, path, console, started: interrupted_outcome(tmp_path))
    monkeypatch.chdir(tmp_path)  # the venv is not under the current directory
    monkeypatch.setenv("PATH", "/nonexistent")  # and not on PATH: absolute paths are printed
    bin_dir = Path(cli.sys.executable).parent
    result = invoke("run", str(SWEEPS / "smoke.yaml"))
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert f"MLflow UI: {bin_dir / 'mlflow'} ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in lines
    # MLflow 3's UI opens on its GenAI pages unless the link names the workflow type; the sweep's view
    # sorts the runs by final FD (tests/test_mlflow_ui.py)
    ui = lines.index(f"MLflow UI: {bin_dir / 'mlflow'} ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db")
    assert lines[ui + 1] == ("then open http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=gat-sweep"
                             "&workflowType=machine_learning")
    assert f"Report: {bin_dir / 'gat-sweep'} plot {SWEEPS / 'smoke.yaml'}" in lines
    renamed = invoke("run", str(SWEEPS / "smoke.yaml"), "--set", "name=smoke2", "--output-dir", str(tmp_path / "o"))
    report = [" ".join(line.split()) for line in renamed.output.splitlines() if line.startswith("Report:")]
    assert report == [f"Report: {bin_dir / 'gat-sweep'} plot smoke2 --tracking-uri sqlite:///{tmp_path}/o/mlflow.db "
                      f"--out {tmp_path}/o/report"]


def test_plot_of_a_missing_sweep_file_names_the_file(tmp_path):
    # Finding 5: it talked about a missing database, after 8 s of imports.
    result = invoke("plot", str(tmp_path / "width_lr.yaml"))
    assert result.exit_code == 2 and result.output.strip() == f"error: sweep file not found: {tmp_path / 'width_lr.yaml'}"


@pytest.mark.parametrize("dry_run", [True, False])
def test_renaming_a_sweep_in_its_output_directory_is_refused_with_its_name(tmp_path, dry_run):
    # Issue 23, finding 7: `--set name=X` on the output directory of sweep 'smoke' (same trials)
    # was accepted; its runs stayed in experiment 'smoke' and the printed `gat-sweep plot X` failed.
    from scaling.grid import expand, sweep_hash, trial_records
    from scaling.spec import load_spec

    out = tmp_path / "o"
    out.mkdir()
    trials = expand(load_spec(SWEEPS / "smoke.yaml"))
    (out / "sweep.json").write_text(json.dumps({
        "name": "smoke", "spec_hash": sweep_hash(trials), "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
        "experiment_id": "1", "parent_run_id": "x", "trials": trial_records(trials)}))
    result = invoke("run", str(SWEEPS / "smoke.yaml"), "--set", "name=smoke_b", "--output-dir", str(out),
                    *(["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    assert (f"error: {out} holds sweep 'smoke', and this run calls it 'smoke_b' (name: or --set name=)"
            in " ".join(result.output.split()))
    assert {p.name for p in out.iterdir()} <= {"sweep.json", "sweep.lock"}  # nothing else written
