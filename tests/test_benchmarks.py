"""The benchmark scripts still run (CI guard against rot): each is run at a tiny setting on CPU in
a subprocess, as a user would, and its output is checked for the figures it promises."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.gan.model import build_models, count_parameters
from core.presets import PRESETS
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_gpu_benchmark_runs_on_cpu_at_tiny_size():
    out = run_script("benchmarks/gpu.py", "--device", "cpu", "--sizes", "tiny", "--batch", "2,4",
                     "--smoke", "--threads", "1")
    lines = out.splitlines()
    assert lines[0].startswith("device cpu (1 threads)") and "fp32 matmul" in lines[0]
    assert lines[1].startswith("FLOPs = 2 x multiply-accumulates", len("FLOPs: "))
    assert lines[2].split() == ["size", "batch", "ms/it", "img/s", "TFLOP/it", "TFLOP/s", "MFU", "peak", "GiB",
                                "loss", "D", "loss", "G", "attention", "kernels"]
    table = [line.split() for line in lines[3:5]]
    assert [row[:2] for row in table] == [["tiny", "2"], ["tiny", "4"]]
    assert all(row[7] == "n/a" for row in table)  # no peak memory on CPU

    figures = json.loads(lines[-1])
    assert figures["precision"] == "fp32" and figures["matmul_fp32_tflops"] > 0
    assert (figures["warmup"], figures["iters"]) == (2, 3)
    b2, b4 = figures["rows"]
    for row, batch in ((b2, 2), (b4, 4)):
        assert (row["size"], row["batch"], row["finite"]) == ("tiny", batch, True)
        assert math.isfinite(row["loss_D"]) and math.isfinite(row["loss_G"])
        assert row["images_per_s"] * row["ms_per_iter"] / 1e3 == pytest.approx(batch)
        assert row["achieved_tflops"] / figures["matmul_fp32_tflops"] == pytest.approx(row["mfu"])
        assert row["warmup_s"] > 0  # one warm-up iteration after the first (--smoke: 2 warm-ups)
        assert row["attention_kernels"] == ["_scaled_dot_product_flash_attention_for_cpu[float32]",
                                            "_scaled_dot_product_flash_attention_for_cpu_backward[float32]"]
    G, D = build_models(PRESETS["tiny"], "meta")
    assert (b2["g_params"], b2["d_params"]) == (count_parameters(G), count_parameters(D))
    # FLOPs grow with the batch size, all but D's class projection linearly (its MLP runs once
    # on the class table when the batched D step has more rows than classes)
    assert 1.9 * b2["tflop_per_iter"] < b4["tflop_per_iter"] < 2 * b2["tflop_per_iter"]


def test_gpu_benchmark_rejects_unknown_size():
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--sizes", "GAT-XXL/2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "unknown preset(s) GAT-XXL/2" in proc.stderr and "GAT-XL/2" in proc.stderr


def test_gpu_check_dry_run_starts_every_stage_on_cpu(tmp_path):
    """The GPU check's dry run: every stage's command starts and checks what it can without a GPU,
    and the summary says so (this is what keeps the one-command GPU validation from rotting)."""
    out = run_script("benchmarks/gpu_check.py", "--out", str(tmp_path), "--dry-run")
    assert out.splitlines()[-1].startswith("GPU check passed after ")
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert summary["mode"] == "dry-run" and list(stages) == ["cuda_tests", "sweep", "benchmark", "reg_fd_fp32", "compile"]
    assert all(s["status"] == "ok" and 0 < s["wall_s"] < s["budget_s"] for s in stages.values())
    assert sum(s["budget_s"] for s in stages.values()) <= 8 * 60
    tests = stages["cuda_tests"]
    assert tests["tests"] == tests["skipped"] == 5 and tests["failures"] == tests["errors"] == 0
    assert (stages["sweep"]["trials"], stages["sweep"]["trainings"]) == (8, 6)  # 2 widths x 2 rules x 2 seeds
    for name, compiled, fd, batches in (("benchmark", False, "autocast", [16, 32]), ("reg_fd_fp32", False, "fp32", [32]),
                                        ("compile", True, "autocast", [16, 32])):
        figures = json.loads((tmp_path / f"{name}.json").read_text())
        assert figures["dry_run"] and figures["precision"] == "bf16"
        assert (figures["compile"], figures["reg_fd_precision"]) == (compiled, fd)
        assert figures["rows"] == [{"size": size, "batch": b} for size in ("GAT-B/2", "GAT-XL/2") for b in batches]
    assert "| cuda_tests | ok |" in (tmp_path / "summary.md").read_text()
    assert "5 skipped" in (tmp_path / "cuda_tests.log").read_text()


def test_gpu_check_stops_at_the_first_failure_and_at_a_stage_budget(tmp_path, monkeypatch, capsys):
    check = load_benchmark("gpu_check")
    python = sys.executable

    def never(run):
        raise AssertionError("a stage after a failure ran")

    monkeypatch.setattr(check, "STAGES", (
        check.Stage("passes", 60, "", lambda run: {"note": run.command(python, "-c", "print('fine')").strip()}),
        check.Stage("fails", 60, "", lambda run: run.command(python, "-c", "print('boom'); raise SystemExit(3)")),
        check.Stage("after", 60, "", never)))
    assert check.main(["--out", str(tmp_path / "a"), "--dry-run"]) == 1
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    passes, fails = summary["stages"]
    assert (passes["status"], passes["note"]) == ("ok", "fine") and fails["status"] == "failed"
    assert fails["error"].startswith(f"{Path(python).name} -c ") and "exited with status 3" in fails["error"]
    assert fails["error"].endswith("\nboom")  # the end of its log
    assert "GPU check FAILED at fails after" in capsys.readouterr().err

    monkeypatch.setattr(check, "STAGES", (
        check.Stage("raises", 60, "", lambda run: json.loads(run.command(python, "-c", "print('not json')"))),))
    assert check.main(["--out", str(tmp_path / "c"), "--dry-run"]) == 1
    (raises,) = json.loads((tmp_path / "c" / "summary.json").read_text())["stages"]
    assert raises["error"].startswith("JSONDecodeError: Expecting value")

    monkeypatch.setattr(check, "STAGES", (
        check.Stage("slow", 1, "", lambda run: run.command(python, "-c", "import time; time.sleep(60)")),))
    start = time.monotonic()
    assert check.main(["--out", str(tmp_path / "b"), "--dry-run"]) == 1
    assert time.monotonic() - start < 30  # killed at its budget, not after the 60 s sleep
    (slow,) = json.loads((tmp_path / "b" / "summary.json").read_text())["stages"]
    assert slow["error"].startswith("stopped at the stage's budget of 1 s")


def test_gpu_check_summary_tables_and_the_cost_of_fp32_r1_r2():
    check = load_benchmark("gpu_check")
    row = {"size": "GAT-B/2", "batch": 32, "ms_per_iter": 200.0, "images_per_s": 160.0, "achieved_tflops": 140.5,
           "mfu": 0.25, "peak_mem_gib": 20.25, "warmup_s": 1.5, "attention_kernels": ["flash[bfloat16]"]}
    summary = {"mode": "gpu", "date": "today", "device": "H100", "stages": [
        {"name": "benchmark", "status": "ok", "wall_s": 60.0, "budget_s": 70, "note": "measured", "rows": [row],
         "torch": "2.14.1", "cuda": "13.0", "matmul_bf16_tflops": 700.2, "sdpa_enabled": {"flash": True}},
        {"name": "reg_fd_fp32", "status": "ok", "wall_s": 50.0, "budget_s": 55, "note": "measured",
         "rows": [{**row, "ms_per_iter": 300.0}]},
        {"name": "compile", "status": "failed", "wall_s": 150.0, "budget_s": 150, "error": "stopped\nmore"}]}
    lines = check.markdown(summary).splitlines()
    assert lines[:2] == ["GPU check (gpu), today: H100",
                         "torch 2.14.1 (CUDA 13.0), bf16 matmul 700 TFLOP/s, SDPA enabled: {'flash': True}"]
    assert "| compile | failed | 150.0 | 150 | stopped |" in lines
    assert "| benchmark | GAT-B/2 | 32 | 200.0 | 160.0 | 140.5 | 25.0% | 20.2 | 1.5 | flash[bfloat16] |" in lines
    assert lines[-1] == "reg_fd_precision fp32 against autocast, GAT-B/2 batch 32: x1.50 ms / iteration"
    assert check.most_at_once([(0, 10), (5, 15), (10, 20), (30, 40)]) == 2  # an end and a start at 10 do not overlap


def test_train_step_benchmark_runs_at_tiny_setting():
    out = run_script("benchmarks/train_step.py", "--widths", "32", "--depth", "4", "--latent", "8", "--iters", "1",
                     "--no-small", "--batch", "4", "--d-proj", "32", "--threads", "1")
    lines = out.splitlines()
    assert lines[0].startswith("device cpu, 1 threads, fp32 matmul")
    assert lines[1].split() == ["width", "depth", "heads", "tokens", "proj", "ms/it", "img/s", "GFLOP/it", "GFLOP/s",
                                "matmul", "MFU"]
    row = lines[2].split()
    assert row[:5] == ["32", "4", "1", "16", "32"] and row[-1].endswith("%")
    assert float(row[-1][:-1]) == pytest.approx(100 * float(row[8]) / float(row[9]), abs=0.1)  # MFU = achieved / matmul
    assert lines[4].startswith("split of one iteration (ms)")
    assert len(lines) == 6 and lines[5].split()[:8] == ["width", "32", "depth", "4", "tokens", "16", "proj", "32:"]
    parts = dict(re.findall(r"(Gfwd|D|D-noreg|R1/R2|G|EMA)\s+(-?[\d.]+)", lines[5]))
    assert list(parts) == ["Gfwd", "D", "D-noreg", "R1/R2", "G", "EMA"]
    assert all(float(parts[key]) > 0 for key in ("Gfwd", "D", "D-noreg", "EMA"))


def test_evaluation_benchmark_runs_on_tiny_digits(tiny_digits_cache):
    out = run_script("benchmarks/evaluation.py", "--widths", "16", "--samples", "64", "--iterations", "2")
    lines = out.splitlines()
    assert lines[0].startswith("torch threads 1, 64 samples per evaluation; reference statistics")
    figures = json.loads(lines[-1])
    assert figures["reference_cold_s"] > 0 and figures["reference_cached_s"] > 0  # times, not compared: no timed tests
    (row,) = figures["rows"]
    assert row["width"] == 16 and row["images_per_s"] == pytest.approx(64 / row["eval_s"], rel=0.01)
    # trial_s and trial_eval_s are printed rounded to 0.01 s, eval_share from the unrounded times
    e, t = row["trial_eval_s"], row["trial_s"]
    assert 0 < e < t and (e - 0.005) / (t + 0.005) - 1e-4 <= row["eval_share"] <= (e + 0.005) / (t - 0.005) + 1e-4


def test_eval_noise_benchmark_repeats_evaluations_of_a_run(tiny_digits_cache, tmp_path):
    from core.config import NetConfig, TrainConfig
    from core.gan.train import train

    net = NetConfig(width=32, depth=4, heads=2)
    cfg = TrainConfig(dataset="digits", g=net, d=net, d_proj_dim=32, batch=8, iterations=2, ckpt_every=2,
                      eval_every=-1, eval_samples=128)
    train(cfg, tmp_path / "run", progress=False)
    out = run_script("benchmarks/eval_noise.py", "--repeats", "2", "--samples", "192", str(tmp_path / "run"))
    lines = out.splitlines()
    for line, samples in zip(lines, (128, 192)):
        assert line.startswith(f"run  iter 2  {samples} samples: FD ")
        fds = [float(v) for v in line.split("FD ")[1].split("  SD")[0].split()]
        sd = float(line.split("SD(log FD) ")[1].split()[0])
        assert len(fds) == 2 and sd == pytest.approx(abs(math.log(fds[0] / fds[1])) / math.sqrt(2), abs=2e-3)
    assert lines[-2].startswith("pooled SD(log FD) of one evaluation, 128 samples: ")
    assert lines[-1].startswith("pooled SD(log FD) of one evaluation, 192 samples: ")


def test_sweep_overhead_benchmark_runs_two_short_trials():
    out = run_script("benchmarks/sweep_overhead.py", "--trials", "2", "--iterations", "3")
    figures = json.loads(out.splitlines()[-1])
    assert (figures["trials"], figures["iterations"], figures["concurrent"]) == (2, 3, 1)
    assert figures["sweep_wall_s"] > figures["first_iteration_s"] > 0 and figures["in_process_s"] > 0
    assert figures["overhead"] == pytest.approx(figures["sweep_wall_s"] / figures["in_process_s"], rel=1e-2)  # rounded figures


def test_transfer_simulation_prints_its_table():
    out = run_script("benchmarks/transfer_simulation.py", "--reps", "8", "--boot", "30", "--seeds", "3",
                     "--noise", "0.2", "--slopes", "0,-1", "--shapes", "symmetric,cliff1.5", "--curvature", "0.5")
    lines = out.splitlines()
    assert lines[1].split() == ["design", "b", "shape", "seeds", "rule", "shift", "truth", "transfers", "not",
                                "moves", "inconcl.", "false", "power", "bias"]
    # designs 16-64 and 16-128, two slopes, two shapes, one seed count, both rules from one fit
    rows = [line.split() for line in lines[2:18]]
    assert [r[:2] + r[-11:-7] for r in rows[:4]] == [
        ["16-64", "0.00", "3", "constant", "x1.00", "transfers"], ["16-64", "0.00", "3", "gat", "x4.00", "no"],
        ["16-64", "0.00", "3", "constant", "x1.00", "transfers"], ["16-64", "0.00", "3", "gat", "x4.00", "no"]]
    assert [" ".join(r[2:-11]) for r in rows[:4]] == ["symmetric", "symmetric", "cliff 1.5x", "cliff 1.5x"]
    assert [r[0] for r in rows] == ["16-64"] * 8 + ["16-128"] * 8
    assert [r[-9] for r in rows[8:16:2]] == ["x1.00", "x1.00", "x0.13", "x0.13"]   # constant over 16-128: 8^b
    table = json.loads(lines[-1])
    assert table["reps"] == 8 and len(table["rows"]) == 16 and len(table["designs"]) == 2
    assert table["worst_false_rate"] == max(r["false_rate"] for r in table["rows"])
    assert all(0 <= r["false_rate"] <= 1 and r["transfers"] + r["not_transfers"] + r["moves"]
               + r["inconclusive"] == pytest.approx(1.0) for r in table["rows"])


def test_transfer_simulation_reads_a_sweep_files_design(tmp_path):
    """--sweep takes widths, base LRs and base width from the file, --optimum places the true optimum
    where a pilot measured it, and the JSON names the design."""
    out = run_script("benchmarks/transfer_simulation.py", "--sweep", "sweeps/width_lr_wide.yaml", "--optimum",
                     "1.07e-2@16", "--reps", "4", "--boot", "20", "--seeds", "2", "--curvature", "0.5",
                     "--shapes", "symmetric")
    lines = out.splitlines()
    assert "widths 16/32/64/128" in lines[0] and "optimum 0.0107 at width 16" in lines[0]
    assert [row.split()[1:2] + row.split()[4:7] for row in lines[2:8]] == [
        ["0.00", "constant", "x1.00", "transfers"], ["0.00", "gat", "x8.00", "no"],
        ["-0.50", "constant", "x0.35", "no"], ["-0.50", "gat", "x2.83", "no"],
        ["-1.00", "constant", "x0.13", "no"], ["-1.00", "gat", "x1.00", "transfers"]]
    designs = json.loads(lines[-1])["designs"]
    assert designs == [{"widths": [16, 32, 64, 128], "base_lrs": [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2],
                      "base_width": 32, "anchor": [1.07e-2, 16]}]
    # a design the simulation cannot represent is refused by name
    constant_only = tmp_path / "constant.yaml"
    constant_only.write_text((ROOT / "sweeps/smoke.yaml").read_text().replace("rules: [gat, constant]",
                                                                                "rules: [constant]"))
    bad = subprocess.run([sys.executable, "benchmarks/transfer_simulation.py", "--sweep", str(constant_only)],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "simulates sweeps of rules constant and gat" in bad.stderr

def test_dry_run_benchmark_times_cold_and_warm_runs():
    out = run_script("benchmarks/dry_run.py", "--reps", "2", "sweeps/smoke.yaml")
    figures = json.loads(out.splitlines()[-1])
    assert figures["reps"] == 2 and list(figures["files"]) == ["smoke.yaml"]
    times = figures["files"]["smoke.yaml"]
    assert times["cold_s"] > 0 and len(times["warm_s"]) == 1 and times["warm_s"][0] > 0
    assert out.splitlines()[1].split() == ["sweep", "file", "cold", "s", "warm", "min", "s", "warm", "median", "s"]


def test_coord_check_benchmark_times_each_width():
    out = run_script("benchmarks/coord_check.py", "--sweep", "sweeps/smoke.yaml", "--rules", "constant,gat",
                     "--widths", "16,32", "--steps", "1", "--seeds", "1", "--batch", "4")
    lines = out.splitlines()
    assert lines[0].startswith("load average before")
    assert "smoke.yaml, rules constant,gat, 1 seed(s) x 1 steps at batch 4" in lines[0]
    assert lines[1].split() == ["width", "runs", "wall", "s", "CPU", "s"]
    assert [row.split()[:2] for row in lines[2:4]] == [["16", "2"], ["32", "2"]]
    figures = json.loads(lines[-1])
    assert (figures["rules"], figures["steps"], figures["seeds"], figures["batch"]) == (["constant", "gat"], 1, 1, 4)
    assert set(figures["seconds_per_width"]) == {"16", "32"} and figures["threads"] == 1
    assert figures["total_s"] > figures["measurement_s"] >= sum(figures["seconds_per_width"].values()) > 0
    assert set(figures["cpu_seconds_per_width"]) == {"16", "32"} and figures["measurement_cpu_s"] > 0


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmark_help_shows_the_whole_docstring(script, monkeypatch, capsys):
    """`--help` is where a user meets a benchmark: it prints the module docstring with its example
    command lines, not a first line cut mid-sentence (three scripts did that)."""
    module = load_benchmark(script[:-3])
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    examples = [line.strip() for line in module.__doc__.splitlines() if line.strip().startswith("python ")]
    assert examples, f"{script}'s docstring shows no example command line"
    for example in examples:
        assert " ".join(example.split()) in printed


def _sweep_dir(root: Path, fd: float, seconds: float) -> Path:
    run = root / "trials" / "w16-d4-p2_gat_lr0.004_s0"
    run.mkdir(parents=True)
    (run / "stats.jsonl").write_text(
        json.dumps({"step": 0, "loss/G": 0.7}) + "\n"
        + json.dumps({"step": 100, "eval/fd_digits_500": fd, "time/sec_per_kimg": seconds}) + "\n")
    (run / "result.json").write_text(json.dumps({"status": "finished", "iteration": 100, "run_dir": str(run),
                                                 "metrics": {"eval/fd_digits_500": fd, "time/eval_sec": seconds}}))
    (run / "config.json").write_text('{"name": "w16"}')
    (root / "trials.csv").write_text("name\nw16-d4-p2_gat_lr0.004_s0\n")
    return root


def test_same_runs_finds_equal_runs_equal_whatever_their_timings_and_names_a_changed_value(tmp_path):
    a = _sweep_dir(tmp_path / "a", 1285.45, 3.8)
    same = subprocess.run([sys.executable, "benchmarks/same_runs.py", str(a), str(_sweep_dir(tmp_path / "b", 1285.45, 9.1))],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and "4 logged values compared (timings excluded); 0 difference(s)" in same.stdout
    other = subprocess.run([sys.executable, "benchmarks/same_runs.py", str(a), str(_sweep_dir(tmp_path / "c", 1285.46, 3.8))],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "2 difference(s)" in other.stdout
    assert "step 100: eval/fd_digits_500 1285.45 against 1285.46" in other.stdout and "result.json differs" in other.stdout
