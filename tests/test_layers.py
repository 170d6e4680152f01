"""The package's layers, read statically from its source: no import cycles; commands on top.

Every ``import`` statement counts, also those inside functions (a function-level import hides a
cycle from Python but not from a reader).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vitpss

PACKAGE_DIR = Path(vitpss.__file__).parent
#: The one module outside commands/ that may name them: it dispatches to them.
DISPATCHER = "vitpss.cli"
#: What every command may share; otherwise commands know nothing of each other.
COMMAND_HELPERS = {"vitpss.commands", "vitpss.commands.common"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The vitpss modules that ``path`` imports (``from pkg import submodule`` names the submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imported_modules_resolves_relative_and_function_level_imports(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "vitpss"
    (package / "commands").mkdir(parents=True)
    source = package / "commands" / "x.py"
    source.write_text("from ..figures import a\ndef f():\n    from . import common\n    import vitpss.models\n")
    monkeypatch.setitem(globals(), "PACKAGE_DIR", package)
    modules = {"vitpss.figures", "vitpss.commands.common", "vitpss.models", "vitpss.commands.x"}
    assert imported_modules(source, modules) == {"vitpss.figures", "vitpss.commands.common", "vitpss.models"}


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_dispatcher_names_commands_and_commands_do_not_import_each_other() -> None:
    offenders = []
    for module, imports in import_graph().items():
        commands = {m for m in imports if m == "vitpss.commands" or m.startswith("vitpss.commands.")}
        if module.startswith("vitpss.commands"):
            commands -= COMMAND_HELPERS
        if commands and module != DISPATCHER:
            offenders.append(f"{module} imports {', '.join(sorted(commands))}")
    assert not offenders, "; ".join(offenders)


def test_the_dispatcher_lists_every_command_module() -> None:
    from vitpss.cli import COMMAND_MODULES

    on_disk = {module_name(f) for f in (PACKAGE_DIR / "commands").glob("*.py")} - COMMAND_HELPERS
    assert set(COMMAND_MODULES) == on_disk


def test_import_vitpss_stays_light() -> None:
    code = ("import sys, timm, vitpss; heavy = sorted(m for m in ('matplotlib', 'vitpss.commands', 'vitpss.trainer') "
            "if m in sys.modules); assert not heavy, heavy; assert timm.is_model('vitpss_tiny_mnist')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
