"""The engine's import graph is a layering (docs/ARCHITECTURE.md): a package imports only its own layer and those
below it, and no two packages import each other.

Every import counts, at module level or inside a function (a function-level import is a dependency all the same);
only ``if TYPE_CHECKING:`` blocks are left out. The imports that break the layering today are listed in
:data:`KNOWN`, each with the refactor that removes it (issue 18): the test fails on any *new* one, and on a
listed one that is gone, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "seedvault"

# Lowest first. A package is the first two parts of a module name (seedvault.<package>), except sources.
LAYERS: list[set[str]] = [
    {"seedvault", "errors", "units", "faults", "process", "stream"},
    {"format"},
    {"crypto"},
    {"storage", "storagecost"},
    {"config"},
    {"repository", "writer", "repokey", "catalog", "leases", "audit", "retention"},
    {"sources"},
    {"ops", "metrics"},
    {"cli"},
]

# (importer package, imported package): why it is still here and what removes it.
KNOWN: dict[tuple[str, str], str] = {
    ("format", "crypto"): "chunk/manifest derive keys with crypto.keys.hkdf: the KDF belongs below format",
    ("crypto", "format"): "crypto.keys parses key records with format.fields: the field checks belong below both",
    ("storage", "config"): "storage.open builds a driver from Settings: the factory belongs above config",
    ("storage", "storagecost"): "s3 checks storage-class names from storagecost: one storage-policy module",
    ("storagecost", "storage"): "WritePolicy builds storage.base.WriteOptions: see above",
    ("retention", "sources"): "the planner walks WAL with sources.postgres.wal.plan: WAL naming below both",
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package seedvault.{package} is in no layer of LAYERS: place it (docs/ARCHITECTURE.md)")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("seedvault"):
            out.add(node.module)
            if node.module == "seedvault":  # from seedvault import audit, catalog: the submodules named
                out |= {f"seedvault.{a.name}" for a in node.names
                        if (ROOT / a.name).is_dir() or (ROOT / f"{a.name}.py").exists()}  # fmt: skip
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("seedvault")}
    return out


def edges() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in ROOT.rglob("*.py"):
        importer = _package(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for module in _imports(path):
            imported = _package(module)
            if imported != importer:
                found.add((importer, imported))
    return found


def test_every_package_has_a_layer():
    for path in ROOT.iterdir():
        if path.is_dir() and (path / "__init__.py").exists() or path.suffix == ".py" and path.stem != "__init__":
            _layer(path.stem)


def test_no_package_imports_a_higher_layer_or_one_that_imports_it_back():
    graph = edges()
    upward = {(a, b) for a, b in graph if _layer(b) > _layer(a)}
    cycles = {(a, b) for a, b in graph if (b, a) in graph}
    wrong = (upward | cycles) - set(KNOWN)
    assert not wrong, f"imports that break the layering (docs/ARCHITECTURE.md): {sorted(wrong)}"
    fixed = set(KNOWN) - (upward | cycles)
    assert not fixed, f"no longer broken, remove from KNOWN: {sorted(fixed)}"
