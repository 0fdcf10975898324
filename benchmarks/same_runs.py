"""Do two output directories of one sweep hold the same runs? Compares, trial by trial, every value
the trials logged (``stats.jsonl``) except their timings (``time/*``), their ``result.json`` (timings
and run directory aside) and ``config.json``, and the sweep's ``trials.csv`` byte for byte.

A refactor that must leave behaviour unchanged runs the same sweep file at two commits into two
directories and checks them with this script, e.g. the default sweep::

    python benchmarks/same_runs.py OLD/outputs/width_lr outputs/width_lr

Prints how many values it compared and every difference (the first 20); exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.records import CONFIG_FILE, RESULT_FILE, STATS_FILE, TIME_PREFIX

MOST_SHOWN = 20


def _records(run_dir: Path) -> list[dict]:
    """The complete lines of a run's stats.jsonl (a line cut by a killed process is not one)."""
    return [json.loads(line) for line in (run_dir / STATS_FILE).read_text().splitlines() if line.endswith("}")]


def _result(run_dir: Path) -> dict:
    result = json.loads((run_dir / RESULT_FILE).read_text())
    result.pop("run_dir", None)
    result["metrics"] = {k: v for k, v in result.get("metrics", {}).items() if not k.startswith(TIME_PREFIX)}
    return result


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    """(values compared, differences in words) between the sweep output directories ``a`` and ``b``."""
    trials_a = sorted(p.name for p in (a / "trials").iterdir())
    trials_b = sorted(p.name for p in (b / "trials").iterdir())
    diffs = [f"trials only in {a}: {sorted(set(trials_a) - set(trials_b))}, only in {b}: "
             f"{sorted(set(trials_b) - set(trials_a))}"] if trials_a != trials_b else []
    n = 0
    for trial in sorted(set(trials_a) & set(trials_b)):
        ra, rb = _records(a / "trials" / trial), _records(b / "trials" / trial)
        if len(ra) != len(rb):
            diffs.append(f"{trial}: {len(ra)} records against {len(rb)}")
        for x, y in zip(ra, rb):
            for key, value in x.items():
                if key.startswith(TIME_PREFIX):
                    continue
                n += 1
                if y.get(key) != value:
                    diffs.append(f"{trial} step {x.get('step')}: {key} {value!r} against {y.get(key)!r}")
        if _result(a / "trials" / trial) != _result(b / "trials" / trial):
            diffs.append(f"{trial}: {RESULT_FILE} differs")
        if (a / "trials" / trial / CONFIG_FILE).read_text() != (b / "trials" / trial / CONFIG_FILE).read_text():
            diffs.append(f"{trial}: {CONFIG_FILE} differs")
    if (a / "trials.csv").read_bytes() != (b / "trials.csv").read_bytes():
        diffs.append("trials.csv differs")
    return n, diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="one sweep output directory")
    parser.add_argument("b", type=Path, help="the other")
    args = parser.parse_args()
    n, diffs = compare(args.a, args.b)
    print(f"{n} logged values compared (timings excluded); {len(diffs)} difference(s)")
    for line in diffs[:MOST_SHOWN]:
        print(f"  {line}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
