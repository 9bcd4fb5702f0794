"""The package's import graph, read with ast: no cycle, and no arrow from quant/ up to lora/."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmq_core"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of `package` -> the package's modules it imports, anywhere in its file (a function's import counts).
    Importing `a.b.c` also runs the package `a.b`'s __init__, so that is an arrow too, unless `a.b` is the importer's
    own package, which is already being imported."""
    modules = {module_name(path, package): path for path in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(name)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
                imported.add(node.module)
        arrows = set()
        for target in imported:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix not in own_packages and prefix != name:
                    arrows.add(prefix)
        graph[name] = arrows
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for successor in sorted(graph[node]):
            if (cycle := visit(successor)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (cycle := visit(node)) is not None:
            return cycle
    return None


def test_llmq_core_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_through_a_package_init(tmp_path):
    package = tmp_path / "llmq_core"
    (package / "quant").mkdir(parents=True)
    (package / "lora").mkdir()
    (package / "__init__.py").write_text("")
    (package / "quant" / "__init__.py").write_text("from llmq_core.lora import qlora\n")
    (package / "quant" / "registry.py").write_text("")
    (package / "lora" / "__init__.py").write_text("")
    (package / "lora" / "qlora.py").write_text("from llmq_core.quant.registry import register_method\n")
    assert find_cycle(import_graph(package)) == ["llmq_core.lora.qlora", "llmq_core.quant", "llmq_core.lora.qlora"]
    (package / "quant" / "__init__.py").write_text("")
    assert find_cycle(import_graph(package)) is None


def test_no_module_of_quant_imports_lora():
    graph = import_graph()
    upward = {name: sorted(arrow for arrow in arrows if arrow.startswith("llmq_core.lora"))
              for name, arrows in graph.items() if name.startswith("llmq_core.quant")}
    assert not any(upward.values()), upward


def test_the_registry_keeps_the_tables_order_when_the_lora_track_is_imported_first():
    order = subprocess.run([sys.executable, "-c", "import llmq_core.evaluate, llmq_core.lora.pipeline; "
                            "from llmq_core.methods import METHODS; print(*METHODS)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert order == ["fp16", "rtn", "gptq", "awq", "quip", "smoothquant", "pbllm", "billm", "dbllm", "qlora", "irqlora"]
