"""GPU validation in one command: the CUDA tests, a sweep whose trials share the GPU, the GPU benchmark.

Run it once on a machine with one CUDA GPU (an H100 or H200), from the repository root after the
README's install (`python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'`). It needs no
network, installs nothing and stops each stage at its time budget, 8 minutes in all (listed
below). The stages run in order; the first that fails ends the check with its message and exit
status 1. Every command it runs uses the Python that runs it (and the gat-sweep beside it).

Everything lands under --out, rewritten after each stage: <stage>.log (each command's output),
cuda_tests.xml (pytest's report), sweep/ (the sweep's output directory: MLflow store, run
directories without their checkpoints, report/ with its figures), <stage>.json (the benchmark's
figures), summary.json (per stage: status, budget, wall time, figures or error) and summary.md (the
same as tables for docs/BENCHMARKS.md). Outside it only gat-sweep's cache is written (the tiny
digits preparation and FLOP counts, as any gat-sweep command writes them).

--dry-run needs no GPU and runs in seconds (tests/test_benchmarks.py runs it, so the check cannot
rot): the CUDA tests are collected and skipped, the sweep with its overrides is expanded by
`gat-sweep run --dry-run`, and the benchmark resolves its rows with `gpu.py --dry-run`.

Examples:
  python benchmarks/gpu_check.py --out gpu_check                  # on the GPU machine, as .venv/bin/python
  python benchmarks/gpu_check.py --out /tmp/gpu_check --dry-run   # anywhere: does every stage still start?
  python benchmarks/gpu_check.py --out gpu_check_2 --stages benchmark,compile   # some stages again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from core.records import METRIC_KEY_PARAM, TAG_ROLE, TAG_SAME_AS, TAG_TRIAL
from scaling.grid import ATTEMPTS_FILE, TRIALS_DIR

ROOT = Path(__file__).resolve().parents[1]
GAT_SWEEP = str(Path(sys.executable).parent / "gat-sweep")
SIZES, BATCHES = "GAT-B/2,GAT-XL/2", "16,32"
"""The benchmark's presets and per-GPU batch sizes (XL/2 at batch 64 would not fit in 80 GB)."""
GPU_SHARE = 4
"""Trials of the sweep that share the GPU (each reserves 1 / GPU_SHARE of it)."""
SWEEP_FILE = "sweeps/smoke.yaml"
SWEEP_SETTINGS = ("dataset=digits", "eval.every=3", "eval.samples=500", "train.precision=bf16",
                  "train.device=cuda", f"resources.gpus={1 / GPU_SHARE}", f"max_concurrent={GPU_SHARE}",
                  "seeds=[0,1]")
"""--set overrides of the smoke sweep: the embedded digits (so that trials evaluate), bf16, on CUDA
(a trial without a GPU fails instead of training on the CPU), GPU_SHARE trials per GPU, and a second
seed, so that more than GPU_SHARE trainings run (the two rules repeat each other at the base width)."""


class StageFailed(Exception):
    """A stage's command failed, ran past the stage's budget, or its result is wrong."""


class Runner:
    """Runs the commands of one stage from the repository root within what is left of its budget,
    their output appended to ``<out>/<stage>.log``; ``dry_run`` tells the stage which commands to run."""

    def __init__(self, out: Path, name: str, budget_s: float, dry_run: bool) -> None:
        self.out, self.name, self.budget_s, self.dry_run = out, name, budget_s, dry_run
        self.log = out / f"{name}.log"
        self.deadline = time.monotonic() + budget_s

    def command(self, *argv: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
        """Run ``argv`` and return its stdout (its stderr and stdout go to the log).

        Raises StageFailed when its exit status is not in ``ok`` (with the last lines of the log)
        or when the stage's budget runs out (the command's process group is killed).
        """
        what = shlex.join([Path(argv[0]).name, *argv[1:3]])
        with self.log.open("a") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                    stderr=log, text=True, start_new_session=True)
            try:
                stdout, _ = proc.communicate(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                log.write(proc.communicate()[0])
                raise StageFailed(f"stopped at the stage's budget of {self.budget_s:g} s: {what} had not ended "
                                  f"(its output so far: {self.log})") from None
            log.write(stdout)
        if proc.returncode not in ok:
            raise StageFailed(f"{what} exited with status {proc.returncode}; the end of {self.log}:\n{tail(self.log)}")
        return stdout


def tail(path: Path, lines: int = 12, width: int = 300) -> str:
    """The last ``lines`` lines of a text file, each cut to ``width`` characters."""
    return "\n".join(line[:width] for line in path.read_text(errors="replace").splitlines()[-lines:])


def cuda_tests(run: Runner) -> dict[str, Any]:
    """``pytest -m cuda -n 0 tests/test_cuda.py``: every test passes, and on a GPU none is skipped."""
    report = run.out / "cuda_tests.xml"
    # one process (-n 0): the CUDA tests time and compare runs on the one GPU
    run.command(sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs", "-n", "0", "-p",
                "no:cacheprovider", f"--junitxml={report}")
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    if not counts["tests"]:
        raise StageFailed("pytest collected no CUDA tests")
    if counts["skipped"] and not run.dry_run:
        raise StageFailed(f"{counts['skipped']} of {counts['tests']} CUDA tests were skipped (does torch see the "
                          f"GPU?):\n{tail(run.log)}")
    return {**counts, "note": f"{counts['tests'] - counts['skipped']} passed, {counts['skipped']} skipped"}


def sweep(run: Runner) -> dict[str, Any]:
    """The smoke sweep on the GPU (SWEEP_SETTINGS) through ``gat-sweep run --json`` and ``gat-sweep
    plot``, then :func:`check_sweep`, and its checkpoints deleted; in a dry run, its plan from
    ``gat-sweep run --dry-run --json`` (enough trainings to share the GPU) with the device and GPU
    share set back to the CPU's, which the sweep file's check refuses where torch sees no GPU."""
    out = run.out / "sweep"
    argv = [GAT_SWEEP, "run", SWEEP_FILE, *(arg for setting in SWEEP_SETTINGS for arg in ("--set", setting)),
            "--output-dir", str(out), "--json"]
    if run.dry_run:
        plan = json.loads(run.command(*argv, "--set", "train.device=cpu", "--set", "resources.gpus=0", "--dry-run"))
        if plan["trainings"] < GPU_SHARE:
            raise StageFailed(f"the sweep trains {plan['trainings']} runs: too few to share the GPU {GPU_SHARE} ways")
        return {"trials": len(plan["trials"]), "trainings": plan["trainings"],
                "note": f"{len(plan['trials'])} trials ({plan['trainings']} trainings) planned"}
    from core.data.digits import PRESET_ENV  # torch: imported only where the sweep trains

    # The tiny digits preparation takes seconds (the full one about 100 s of CPU); exit status 1
    # (a trial failed) still prints the outcome, which says which trial failed and why.
    outcome = json.loads(run.command(*argv, env={PRESET_ENV: "tiny"}, ok=(0, 1)))
    failed = [f"{t['name']}: {t['status']} {t['error'] or ''}" for t in outcome["trials"] if t["status"] != "finished"]
    if failed:
        raise StageFailed("trials that did not finish: " + "; ".join(failed))
    run.command(GAT_SWEEP, "plot", outcome["name"], "--tracking-uri", outcome["tracking_uri"], "--out",
                str(out / "report"))
    figures = check_sweep(outcome, out)
    for checkpoints in (out / TRIALS_DIR).glob("*/checkpoints"):  # over 90% of its size; an ended sweep needs none
        shutil.rmtree(checkpoints)
    return figures


def check_sweep(outcome: dict[str, Any], out: Path) -> dict[str, Any]:
    """The sweep's MLflow record: one parent run; one FINISHED child run per trial, nested under it,
    trained on CUDA and evaluated (its FD metric finite); the report logged to the parent.

    Returns the figures: trials, trainings, the processes that trained and the most trainings
    that ran at once (from the child runs' start and end times). Raises StageFailed naming every
    problem found.
    """
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from scaling.state import read_jsonl  # imports mlflow

    client = MlflowClient(outcome["tracking_uri"])
    experiment = [outcome["experiment_id"]]
    parents = client.search_runs(experiment, f"tags.`{TAG_ROLE}` = 'parent'")
    children = {r.data.tags[TAG_TRIAL]: r for r in client.search_runs(experiment, f"tags.`{TAG_ROLE}` = 'trial'")}
    if len(parents) != 1:
        raise StageFailed(f"{len(parents)} parent runs in the sweep's experiment, not 1")
    parent = parents[0].info.run_id
    trials = sorted(t["name"] for t in outcome["trials"])
    problems = [] if sorted(children) == trials else [f"child runs {sorted(children)} but trials {trials}"]
    for name, child in sorted(children.items()):
        key = child.data.params.get(METRIC_KEY_PARAM)
        checks = {f"not a child of the parent run {parent}": child.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent,
                  f"MLflow status {child.info.status}": child.info.status == "FINISHED",
                  f"device {child.data.params.get('device')}": child.data.params.get("device") == "cuda",
                  f"no finite {key}": math.isfinite(child.data.metrics.get(key, math.nan))}
        problems += [f"{name}: {problem}" for problem, ok in checks.items() if not ok]
    if "report/report.html" not in [a.path for a in client.list_artifacts(parent, "report")]:
        problems.append("the report is not logged to the parent run")
    if problems:
        raise StageFailed("; ".join(problems))

    trained = [r for r in children.values() if TAG_SAME_AS not in r.data.tags]
    processes = {(a["host"], a["pid"]) for r in trained
                 for a in read_jsonl(out / TRIALS_DIR / r.data.tags[TAG_TRIAL] / ATTEMPTS_FILE)}
    at_once = most_at_once([(r.info.start_time, r.info.end_time) for r in trained])
    return {"trials": len(children), "trainings": len(trained), "processes": len(processes), "most_at_once": at_once,
            "note": f"{len(children)} trials finished ({len(trained)} trainings in {len(processes)} processes, "
                    f"up to {at_once} at once), nested under one parent run, report logged"}


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """The largest number of (start, end) intervals that overlap at one instant (an end before a
    start at the same instant)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def gpu_benchmark(*options: str, batch: str = BATCHES) -> Callable[[Runner], dict[str, Any]]:
    """A stage running ``benchmarks/gpu.py`` on SIZES at ``batch`` with ``options``; its figures
    are saved as ``<out>/<stage>.json``. A dry run resolves the same rows on the CPU (--dry-run)."""
    def stage(run: Runner) -> dict[str, Any]:
        argv = [sys.executable, "benchmarks/gpu.py", "--sizes", SIZES, "--batch", batch, "--precision", "bf16",
                "--warmup", "3", "--iters", "10", *options]
        figures = json.loads(run.command(*argv, *(("--device", "cpu", "--dry-run") if run.dry_run else ()))
                             .splitlines()[-1])
        (run.out / f"{run.name}.json").write_text(json.dumps(figures, indent=2))
        rows = ", ".join(f"{row['size']} x {row['batch']}" for row in figures["rows"])
        return {**figures, "note": f"{'planned' if run.dry_run else 'measured'}: {rows}"}
    return stage


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float
    """Wall seconds it may take on one H100, its commands' start-up included."""
    what: str
    run: Callable[[Runner], dict[str, Any]]


STAGES = (
    Stage("cuda_tests", 75, "pytest -m cuda: bf16 against fp32, resume on CUDA, fused attention", cuda_tests),
    Stage("sweep", 130, f"{SWEEP_FILE} on the digits with evaluation, {GPU_SHARE} trials per GPU: run, plot, "
          "MLflow nesting", sweep),
    Stage("benchmark", 70, f"gpu.py {SIZES} at batch {BATCHES}, bf16", gpu_benchmark()),
    Stage("reg_fd_fp32", 55, "the same at batch 32 with the R1/R2 D step in fp32 (reg_fd_precision)",
          gpu_benchmark("--reg-fd-precision", "fp32", batch="32")),
    Stage("compile", 150, "the benchmark's rows under torch.compile", gpu_benchmark("--compile")),
)


def gpu_name() -> str:
    """The GPU as nvidia-smi names it (name, memory, driver); exits naming --dry-run without one."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        sys.exit(f"no NVIDIA GPU here ({err}); on a machine without one, run with --dry-run")


def markdown(summary: dict[str, Any]) -> str:
    """summary.json as tables: the stages, every measured benchmark row, the cost of fp32 R1/R2."""
    lines = [f"GPU check ({summary['mode']}), {summary['date']}: {summary['device']}"]
    lines += [f"torch {s['torch']} (CUDA {s['cuda']}), bf16 matmul {s['matmul_bf16_tflops']:.0f} TFLOP/s, SDPA "
              f"enabled: {s['sdpa_enabled']}" for s in summary["stages"][:3] if "matmul_bf16_tflops" in s]
    lines += ["", "| stage | status | wall s | budget s | result |", "|---|---|---:|---:|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['wall_s']:.1f} | {s['budget_s']:g} | "
              f"{(s.get('note') or s['error']).splitlines()[0]} |" for s in summary["stages"]]
    rows = [(stage["name"], row) for stage in summary["stages"] for row in stage.get("rows", []) if "ms_per_iter" in row]
    if rows:
        lines += ["", "| stage | size | batch | ms / iteration | images / s | TFLOP/s | MFU | peak GiB | warm-up s "
                  "| attention kernels |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {name} | {r['size']} | {r['batch']} | {r['ms_per_iter']:.1f} | {r['images_per_s']:.1f} | "
                  f"{r['achieved_tflops']:.1f} | {r['mfu']:.1%} | {r['peak_mem_gib']:.1f} | {r['warmup_s']:.1f} | "
                  f"{', '.join(r['attention_kernels'])} |" for name, r in rows]
    autocast = {(r["size"], r["batch"]): r for name, r in rows if name == "benchmark"}
    lines += [f"\nreg_fd_precision fp32 against autocast, {r['size']} batch {r['batch']}: "
              f"x{r['ms_per_iter'] / autocast[r['size'], r['batch']]['ms_per_iter']:.2f} ms / iteration"
              for name, r in rows if name == "reg_fd_fp32" and (r["size"], r["batch"]) in autocast]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    epilog = "stages (budget on one H100):\n" + "\n".join(f"  {s.name:<12} {s.budget_s:4g} s  {s.what}" for s in STAGES)
    parser = argparse.ArgumentParser(description=__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; files in it are replaced)")
    parser.add_argument("--dry-run", action="store_true", help="what runs without a GPU, in seconds")
    parser.add_argument("--stages", default=",".join(s.name for s in STAGES), help="comma-separated stages to run")
    args = parser.parse_args(argv)
    chosen = args.stages.split(",")
    unknown = sorted(set(chosen) - {s.name for s in STAGES})
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(s.name for s in STAGES)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"mode": "dry-run" if args.dry_run else "gpu", "date": time.strftime("%Y-%m-%d %H:%M"),
               "device": "no GPU (dry run)" if args.dry_run else gpu_name(), "stages": []}
    stages = [s for s in STAGES if s.name in chosen]
    print(f"GPU check ({summary['mode']}) on {summary['device']}: {len(stages)} stages, at most "
          f"{sum(s.budget_s for s in stages):g} s; output {out}", flush=True)
    failed = None
    for number, stage in enumerate(stages, 1):
        print(f"[{number}/{len(stages)}] {stage.name} (budget {stage.budget_s:g} s): {stage.what}", flush=True)
        start = time.monotonic()
        try:
            result = {"status": "ok", **stage.run(Runner(out, stage.name, stage.budget_s, args.dry_run))}
        except Exception as err:  # recorded like a failed check: the summary says where the check stopped
            error = str(err) if isinstance(err, StageFailed) else f"{type(err).__name__}: {err}"
            result, failed = {"status": "failed", "error": error}, stage.name
        result = {"name": stage.name, "budget_s": stage.budget_s, "wall_s": time.monotonic() - start, **result}
        summary["stages"].append(result)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "summary.md").write_text(markdown(summary))
        print(f"    {result['status']} in {result['wall_s']:.1f} s: {result.get('note') or result['error']}", flush=True)
        if failed:
            break
    total = sum(s["wall_s"] for s in summary["stages"])
    print(f"GPU check {'FAILED at ' + failed if failed else 'passed'} after {total:.0f} s; summary {out / 'summary.md'}",
          file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
