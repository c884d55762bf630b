"""``eval/`` scripts share code through its helper modules, never by importing one another."""

from __future__ import annotations

import ast
from pathlib import Path

EVAL = Path(__file__).resolve().parents[2] / "eval"
HELPERS = {"gpu_timing", "batch_runs", "accuracy_grid", "vl_task_cells", "plots", "paired_tables"}
"""The modules of ``eval/`` that hold shared code (eval/README.md, "Helpers and tasks"); ``paired_tables`` is
also a script (the accuracy scripts write their paired tables with its ``report``)."""


def eval_imports(path: Path) -> set[str]:
    """The modules of ``eval/`` that ``path`` imports (top-level names only)."""
    local = {file.stem for file in EVAL.glob("*.py")}
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & local


def test_scripts_import_only_the_helper_modules():
    imports = {path.name: eval_imports(path) - HELPERS for path in sorted(EVAL.glob("*.py"))}
    assert {name: sorted(found) for name, found in imports.items() if found} == {}


def test_every_helper_module_exists():
    assert HELPERS <= {file.stem for file in EVAL.glob("*.py")}
