"""What runs record has one home (core/records.py): the result record round-trips, and no other
module spells a metric key or a tag name; the layering rules of docs/ARCHITECTURE.md hold."""

import ast
import re
from pathlib import Path

import pytest

from core.records import (
    DIVERGED,
    DOTTED_PARAMS,
    FINISHED,
    RESULT_FILE,
    RunResult,
    best_key,
    eval_keys,
    is_fd_key,
    quality_keys,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "scaling", "analysis", "benchmarks")
RECORD_NAME = re.compile(r"^(loss|reg|diag|eval|progress|compute|time|best)/|^gat_sweep\.")
"""A metric key (``loss/G``, ``eval/fd_digits_1k``, ``best/step``, ...) or a tag (``gat_sweep.*``)."""


def is_record_name(text: str) -> bool:
    """A metric key, a tag, or a dotted param (``sweep.lr_rule``, ``compute.flops_per_iter``, ``g.width``)."""
    return bool(RECORD_NAME.match(text)) or text in DOTTED_PARAMS


def source_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (f-string pieces included)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    # attribute docstrings (a string statement after an assignment) document, they do not name
    docstrings |= {id(node.value) for node in ast.walk(tree)
                   if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_module_but_records_spells_a_metric_key_or_tag():
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for path in source_files(*PACKAGES) if path.name != "records.py"
             for line, text in code_strings(ast.parse(path.read_text()))
             if is_record_name(text)]
    assert found == []


def test_the_check_finds_a_literal_key():
    tree = ast.parse('"""docstring naming loss/G"""\nstats = {"loss/G": 1.0, "sweep.base_lr": 1e-3}\nX = 1\n'
                     '"""about eval/fd"""\nfiles = ["sweep.yaml", "eval.samples"]\n')
    assert [text for _, text in code_strings(tree) if is_record_name(text)] == ["loss/G", "sweep.base_lr"]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("core", {"ray", "mlflow", "pydantic", "yaml", "scaling", "analysis"}),
    ("analysis", {"torch", "scaling", "ray"}),
])
def test_layering(package, forbidden):
    """core never imports ray, mlflow, pydantic or yaml (nor the layers above it); analysis never
    imports torch (tests/test_analysis_report.py also checks sys.modules) nor scaling."""
    bad = {str(path.relative_to(ROOT)): sorted(imported_modules(path) & forbidden) for path in source_files(package)}
    assert {name: mods for name, mods in bad.items() if mods} == {}


def test_analysis_imports_only_torch_free_core_modules():
    allowed = {"core.records", "core.cache", "core.config", "core.units", "core.lr_rules"}
    used = set()
    for path in source_files("analysis"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core"):
                used.add(node.module)
    assert used <= allowed


def test_result_round_trips_and_says_when_a_run_is_done(tmp_path):
    result = RunResult(FINISHED, 800, 51.2, {"loss/G": 0.7, "eval/fd_digits_500": float("nan")}, tmp_path,
                       best={"value": float("inf"), "iteration": -1})
    result.save()
    loaded = RunResult.load(tmp_path)
    assert loaded.metrics == {"loss/G": 0.7, "eval/fd_digits_500": None}  # JSON has no NaN: null
    assert (loaded.status, loaded.iterations, loaded.kimg, loaded.best) == (FINISHED, 800, 51.2,
                                                                            {"value": None, "iteration": -1})
    assert loaded.is_done(800) and not loaded.is_done(1000)  # a longer budget continues it
    assert RunResult(DIVERGED, 3, 0.2, {}, tmp_path, "loss/D = inf").is_done(1000)
    assert RunResult.load(tmp_path / "nowhere") is None
    assert (tmp_path / RESULT_FILE).read_text().startswith('{\n  "status": "finished"')


def test_metric_key_helpers():
    assert eval_keys("digits", "500") == {"fd": "eval/fd_digits_500", "kid": "eval/kid_digits_500",
                                          "precision": "eval/precision_digits_500",
                                          "recall": "eval/recall_digits_500"}
    assert eval_keys(None, "5k")["fd"] == "eval/fid5k"
    assert quality_keys("eval/fid5k") == ("eval/precision5k", "eval/recall5k")
    assert quality_keys("eval/fd_domain_1k") == ("eval/precision_domain_1k", "eval/recall_domain_1k")
    assert best_key("eval/fd_digits_500") == "best/fd_digits_500"
    assert is_fd_key("eval/fid50k") and is_fd_key("eval/fd_domain_1k") and not is_fd_key("eval/kid5k")
