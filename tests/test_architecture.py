"""The core never imports its front ends: `workers/` and the CLI build on `pipeline`,
never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "pipeline"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level + (node.module or "")
            names.add(prefix)
            names |= {f"{prefix}.{alias.name}" if node.module else prefix + alias.name
                      for alias in node.names}
    return names


def test_core_imports_neither_workers_nor_cli() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "cli.py" and path.parent == CORE:
            continue
        for name in imported_modules(path):
            parts = name.lstrip(".").split(".")
            if parts[0] == "workers" or "cli" in parts:
                offenders.append(f"{path.relative_to(CORE.parent)} imports {name}")
    assert offenders == []


def test_the_check_sees_imports() -> None:
    assert "..cli" in imported_modules_of("from .. import cli")
    assert "workers.queue" in imported_modules_of("import workers.queue")


def imported_modules_of(source: str) -> set[str]:
    tmp = CORE.parent / "tests" / ".import_probe.py"
    try:
        tmp.write_text(source)
        return imported_modules(tmp)
    finally:
        tmp.unlink()
