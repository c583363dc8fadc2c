"""The engine stays free of UI: no dssm_core module imports streamlit or prints."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "dssm_core"
# The CLI is the one module whose job is writing to stdout.
PRINT_ALLOWED = {"cli.py"}


def _modules() -> list[Path]:
    mods = sorted(CORE.rglob("*.py"))  # the io/ package too
    assert len(mods) >= 5, "dssm_core modules not found"
    return mods


def test_no_core_module_imports_streamlit() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "streamlit" for n in names):
                offenders.append(path.name)
    assert offenders == []


def test_no_core_module_prints() -> None:
    offenders = []
    for path in _modules():
        if path.name in PRINT_ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
