"""The shape of tracer/: stage packages, imports that only point down the data flow, no
cycle, and bcc imported in exactly one module. docs/ARCHITECTURE.md explains the rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "tracer"

# What each stage may import (besides itself). Data flows kernel -> model -> diagnosis ->
# outputs; the command line wires the stages together and may use all of them.
ALLOWED = {
    "errors": set(),
    "model": {"errors"},
    "host": {"errors", "model"},
    "unwind": {"errors", "model"},
    "kernel": {"errors", "model", "host", "unwind"},
    "diagnose": {"errors", "model", "host"},
    "run": {"errors", "model", "diagnose"},
    "recording": {"errors", "model", "run"},
    "views": {"errors", "model", "diagnose", "recording", "run"},
    "cli": {"errors", "model", "host", "kernel", "diagnose", "run", "recording", "views"},
}
TOP_LEVEL_MODULES = {"__init__", "errors", "run"}
BCC_MODULE = "tracer.kernel.loader"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name an import statement of `path` refers to (absolute)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


EDGES = {m: {t for t in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tracer"


def test_every_module_sits_in_the_package_of_its_stage():
    for f in ROOT.glob("*.py"):
        assert f.stem in TOP_LEVEL_MODULES, f"tracer/{f.name}: put it in the package of its stage"
    for d in ROOT.iterdir():
        if d.is_dir() and d.name not in ("__pycache__", "bpf"):
            assert d.name in ALLOWED, f"tracer/{d.name}/ is not a stage (docs/ARCHITECTURE.md)"
            assert (d / "__init__.py").is_file(), f"tracer/{d.name}/ has no __init__.py"


def test_imports_point_down_the_data_flow():
    wrong = []
    for m, targets in EDGES.items():
        stage = _stage(m)
        if stage == "tracer":
            continue
        for t in targets:
            other = _stage(t)
            if other not in ("tracer", stage) and other not in ALLOWED[stage]:
                wrong.append(f"{m} imports {t}")
    assert wrong == []


def test_no_import_cycle():
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(EDGES[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle():
    # the checker itself: two modules importing each other are found
    saved = dict(EDGES)
    try:
        EDGES["tracer.model.failures"] = EDGES["tracer.model.failures"] | {"tracer.run"}
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycle()
    finally:
        EDGES.clear()
        EDGES.update(saved)


def test_only_the_loader_imports_bcc():
    importers = sorted(m for m, p in MODULES.items()
                       if any(t == "bcc" or t.startswith("bcc.") for t in _imports(m, p)))
    assert importers == [BCC_MODULE]
