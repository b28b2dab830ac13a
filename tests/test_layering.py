"""The rules of the house about who imports whom (DESIGN, "Where things live"), read from the source."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stream", "clients", "benchmarks", "chunking", "policies", "models")
MATH = ("chunking", "policies", "models")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


SOURCES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
IMPORTS = {name: imported(path) for name, path in SOURCES.items()}


def importers(of: tuple[str, ...], by: tuple[str, ...]) -> list[str]:
    return sorted(f"{name} imports {target}" for name, targets in IMPORTS.items() if name.split(".")[0] in by
                  for target in targets if target.split(".")[0] in of)


def test_stream_imports_no_client_or_benchmark_code():
    assert importers(of=("clients", "benchmarks"), by=("stream",)) == []


def test_clients_import_nothing_from_stream_but_the_wire_codec():
    # The wire format is the contract between them (DESIGN, "Where things live").
    assert [line for line in importers(of=("stream",), by=("clients",))
            if line.split(" imports ")[1] not in ("stream", "stream.wire")
            and not line.split(" imports ")[1].startswith("stream.wire.")] == []


def test_the_math_packages_import_nothing_from_io():
    assert importers(of=("stream", "clients", "benchmarks"), by=MATH) == []


def test_the_wire_codec_depends_on_no_other_module_of_the_project():
    assert IMPORTS["stream.wire"] == set()


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    graph = {name: {t for t in targets if t in SOURCES and t != name} for name, targets in IMPORTS.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    circles = sorted(f"{a} <-> {b}" for a in graph if a.split(".")[0] == package for b in graph[a] if reaches(b, a))
    assert circles == []
