"""The package's layering, read from the imports (docs/architecture.md, "Layers"):
config/db/cda/hl7/dicom/http → dmp/trust/auth → source/conso/ops → web → node/cli/demo.

Every import (module level, function level or under TYPE_CHECKING) must point to the same layer
or a lower one; the packages' import graph has no cycle; `sim/` (simulators, test PKI, synthetic
studies) is only imported by the entry points that run simulators (`demo`, the `sim` commands of
`cli`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "drimbox"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {"__init__", "config", "failpoints", "logs", "metrics", "samples", "db", "cda", "hl7"}
        | {"dicom", "http", "french", "errors"}
    ),
    frozenset({"dmp", "trust", "auth"}),
    frozenset({"source", "conso", "ops"}),
    frozenset({"web"}),
    frozenset({"node", "selftest", "cli", "demo", "__main__"}),
)
SIM_IMPORTERS = frozenset({"cli", "demo"})
LAYER_OF = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """`drimbox.web.viewer` → `web`; `drimbox` → `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, imported drimbox module) for every import statement of the file."""
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target


def production_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.py")) if p.relative_to(root).parts[0] != "sim"]


def violations(root: Path) -> list[str]:
    found = []
    for path in production_files(root):
        unit = unit_of(module_name(path, root))
        for line, target in imports_of(path, root):
            if target != "drimbox" and not target.startswith("drimbox."):
                continue
            other = unit_of(target)
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if other == "sim":
                if unit not in SIM_IMPORTERS:
                    found.append(f"{where} (production code must not import sim/)")
                continue
            if other not in LAYER_OF:
                found.append(f"{where} ({other!r} has no layer: add it to LAYERS)")
            elif unit not in LAYER_OF:
                found.append(f"{where} ({unit!r} has no layer: add it to LAYERS)")
            elif LAYER_OF[other] > LAYER_OF[unit]:
                found.append(f"{where} (layer {LAYER_OF[unit]} imports layer {LAYER_OF[other]})")
    return found


def package_cycles(root: Path) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for path in production_files(root):
        unit = unit_of(module_name(path, root))
        for _line, target in imports_of(path, root):
            if target.startswith("drimbox.") and unit_of(target) != unit:
                graph.setdefault(unit, set()).add(unit_of(target))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_every_import_points_down_and_sim_stays_out_of_production() -> None:
    assert violations(SRC) == []


def test_packages_import_each_other_without_cycles() -> None:
    assert package_cycles(SRC) == []


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    # Same checker on a fake tree: a lower layer importing a higher one, production code
    # importing sim/, a relative import climbing into web/, and a two-package cycle.
    root = tmp_path / "drimbox"
    for name, text in {
        "__init__.py": "",
        "dicom/__init__.py": "",
        "dicom/retrieve.py": "from drimbox.web.viewer import page\n",
        "source/__init__.py": "",
        "source/wado.py": "def f():\n    from drimbox.sim.studies import x\n",
        "conso/__init__.py": "",
        "conso/export.py": "from ..web import pages\n",
        "dmp/__init__.py": "from drimbox.trust import store\n",
        "trust/__init__.py": "",
        "trust/store.py": "import drimbox.dmp.client\n",
        "web/__init__.py": "",
        "web/viewer.py": "from drimbox.source import wado\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = violations(root)
    cycles = package_cycles(root)
    assert any("dicom/retrieve.py:1 imports drimbox.web.viewer" in v for v in found)
    assert any("source/wado.py:2" in v and "sim/" in v for v in found)
    assert any("conso/export.py:1 imports drimbox.web" in v for v in found)
    assert not any("web/viewer.py" in v for v in found)
    assert cycles == [["dmp", "trust", "dmp"]]
