"""The sweep a report suggests running next, written as a sweep file beside the report.

``gat-sweep plot`` hands :func:`write_next_sweep` the analysed sweep's file (as run: the text its
output directory recorded as ``sweep.yaml``) and the report's suggestion
(``analysis.answer.NextSweep``: rules, base LRs, seeds, widths); the result is that file with those
values in place, a new name (``<name>_next``) and its own output directory, validated as any
sweep file is, so ``gat-sweep run FILE --dry-run`` works as printed.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from core.cache import atomic_write_bytes
from scaling.display import installed_command
from scaling.spec import load_spec
from scaling.yamlio import parse_yaml

NEXT_SWEEP_FILE = "next_sweep.yaml"
"""File name of the suggested sweep in the report directory."""


def write_next_sweep(sweep_text: str, name: str, suggestion, report_dir: Path) -> str:
    """Write the suggested sweep into ``report_dir`` and return the command that runs it.

    ``sweep_text``: the analysed sweep file's YAML (comments are not kept); ``name``: its name;
    ``suggestion``: an ``analysis.answer.NextSweep`` (empty ``base_lrs`` keep the file's; widths
    replace ``model.widths`` only where the file lists widths). Raises ConfigError or
    SweepFileError when the result is not a valid sweep file (nothing is written then).
    """
    data = parse_yaml(sweep_text)
    data["name"] = f"{name}_next"
    data.pop("output_dir", None)
    data["description"] = f"suggested by the report of sweep {name}: {suggestion.why}"
    data["lr"]["rules"] = list(suggestion.rules)
    if suggestion.base_lrs:
        data["lr"]["base_lrs"] = list(suggestion.base_lrs)
    data["seeds"] = list(suggestion.seeds)
    if data.get("model", {}).get("widths"):
        data["model"]["widths"] = list(suggestion.widths)
    text = (f"# Suggested by `gat-sweep plot` from the report of sweep {name}:\n# {suggestion.why}.\n"
            + yaml.safe_dump(data, sort_keys=False))
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / NEXT_SWEEP_FILE
    staging = report_dir / f".{NEXT_SWEEP_FILE}.check"
    staging.write_text(text)
    try:
        load_spec(staging)   # the file must be one `gat-sweep run` accepts
    finally:
        staging.unlink()
    atomic_write_bytes(path, text.encode())
    return f"{installed_command('gat-sweep')} run {shlex.quote(str(path))}"
