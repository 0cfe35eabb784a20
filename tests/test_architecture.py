"""The house rules of the code, checked on its import statements (lazy ones inside
functions included): each room of `pipeline/` imports only the rooms below it, there
are no import cycles, no stage imports another stage, the front ends (`pipeline/cli.py`,
`workers/`) are imported by nothing in the core, only the queue opener imports the
queue backends, and reading a job loads neither torch nor PyAV."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Which rooms each room may import. A room is a folder of pipeline/ or one of its
# top-level modules; `workers` is the farm. Read it from the bottom up.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "kernels": {"errors"},
    "watermark": {"errors"},
    "colour": {"errors", "config"},
    "gpu": {"errors", "config"},
    "files": {"errors", "config", "colour"},
    "models": {"errors", "config", "kernels"},
    "decode": {"errors", "config", "kernels", "models", "colour"},
    "flow": {"errors", "config", "gpu", "decode"},
    "plan": {"errors", "config", "files", "models", "decode", "colour"},
    "stages": {"errors", "config", "colour", "kernels", "watermark", "gpu", "files", "models", "decode", "flow"},
    "run": {"errors", "config", "colour", "watermark", "gpu", "files", "models", "decode", "flow", "plan", "stages"},
    "summary": {"plan", "run"},
    "report": {"errors", "config", "files"},
    "workers": {"errors", "config", "gpu", "files", "flow", "models", "plan", "run", "summary"},
    "cli": {"errors", "config", "gpu", "files", "watermark", "plan", "run", "summary", "report", "workers"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, by absolute name (relative imports resolved; for
    `from a import b`, a.b when that is a module of ours, else a)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in OURS else base)
    return found


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "workers":
        return "workers"
    if parts[0] != "pipeline" or len(parts) == 1:
        return None
    return parts[1]


SOURCES = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "workers").rglob("*.py")])
OURS = {module_name(p) for p in SOURCES}
GRAPH = {module_name(p): {m for m in imports(p) if m in OURS} for p in SOURCES}


def test_every_room_is_known() -> None:
    rooms = {room(m) for m in OURS} - {None}
    assert rooms == set(MAY_IMPORT), f"rooms without rules: {rooms - set(MAY_IMPORT)}"


def test_rooms_import_only_the_rooms_below_them() -> None:
    offenders = [f"{module} ({room(module)}) imports {target} ({room(target)})"
                 for module, targets in GRAPH.items() for target in targets
                 if room(module) is not None and room(target) is not None and room(target) != room(module)
                 and room(target) not in MAY_IMPORT[room(module)]]
    assert offenders == []


def test_no_import_cycles() -> None:
    cycles = []
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_stage_imports_another_stage() -> None:
    stages = {m for m in OURS if m.startswith("pipeline.stages.")}
    offenders = [f"{m} imports {t}" for m in stages for t in GRAPH[m] if t in stages]
    assert offenders == []


def test_only_the_opener_imports_the_queue_backends() -> None:
    backends = {"workers.sqlite_queue", "workers.redis_queue"}
    importers = {m for m, targets in GRAPH.items() if targets & backends}
    assert importers == {"workers.queue"}


def test_the_core_imports_no_front_end() -> None:
    offenders = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
                 if m.startswith("pipeline.") and m != "pipeline.cli"
                 and (t == "pipeline.cli" or t.startswith("workers"))]
    assert offenders == []


def test_reading_a_job_loads_neither_torch_nor_pyav() -> None:
    config = sorted(m for m in OURS if m.startswith("pipeline.config"))
    probe = ("import sys\n" + "".join(f"import {m}\n" for m in config)
             + "print(sorted(m for m in ('torch', 'av', 'diffusers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_check_sees_imports(tmp_path: Path) -> None:
    """The rules above would pass vacuously if `imports` missed a form of import."""
    assert "pipeline.gpu.device" in GRAPH["pipeline.gpu.ring"]                     # from a.b import c
    assert "pipeline.config.patterns" in GRAPH["pipeline.plan"]                  # from a import module
    assert "workers.sqlite_queue" in GRAPH["workers.queue"]                      # lazy, inside a function
    assert any(t.startswith("workers") for t in GRAPH["pipeline.cli"])
    relative = ROOT / "pipeline" / "stages" / "_probe_relative.py"
    try:
        relative.write_text("from ..gpu import device\nfrom . import decode\n")
        assert {"pipeline.gpu.device", "pipeline.stages.decode"} <= imports(relative)
    finally:
        relative.unlink()
