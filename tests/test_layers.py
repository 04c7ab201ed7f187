"""The layer map (README, Layout): lmdeq's modules import only their own layer and the layers below it, and no
module imports itself back through others (no cycles).

Every import counts, at module level or inside a function, and so does ``importlib.import_module("...")`` with a
literal name; the one exception is a module's ``__getattr__`` (PEP 562), the hook through which a moved name
stays reachable with a DeprecationWarning. To place a new package, add its name to its layer in LAYERS (and to
the README's map, which this test compares).
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmdeq"

# Bottom first. A module belongs to the layer of the longest name here that is it or a package above it; the
# package's own __init__ ("lmdeq") re-exports the public API and sits on top.
LAYERS = [
    ("shared facts", ["lmdeq.errors", "lmdeq.checks", "lmdeq.numerics", "lmdeq.deprecation", "lmdeq.allocator",
                      "lmdeq.argtypes", "lmdeq.faults", "lmdeq.atomic", "lmdeq.torch_files", "lmdeq.command"]),
    ("kernels", ["lmdeq.kernels", "lmdeq._C"]),
    ("CUDA-graph capture", ["lmdeq.cuda_graphs"]),
    ("ops", ["lmdeq.ops"]),
    ("solvers", ["lmdeq.solvers"]),
    ("deq", ["lmdeq.deq"]),
    ("models", ["lmdeq.models"]),
    ("data", ["lmdeq.data"]),
    ("training", ["lmdeq.train"]),
    ("front ends", ["lmdeq.bench", "lmdeq.integrations", "lmdeq.info", "lmdeq.cli", "lmdeq"]),
]

# Imports that break the map today, each with why it is tolerated; an entry that no longer occurs fails the
# test, so the list only shrinks.
KNOWN_VIOLATIONS: dict = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_module(name: str, modules: dict) -> bool:
    return name in modules or name == "lmdeq._C"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found = []   # (imported module, line)
        self.depth = 0

    def visit_FunctionDef(self, node):
        if self.depth == 0 and node.name == "__getattr__":   # PEP 562 deprecation hook
            return
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def _add(self, name: str, line: int):
        if name == "lmdeq" or name.startswith("lmdeq."):
            while not _is_module(name, self.modules) and "." in name:
                name = name.rsplit(".", 1)[0]
            self.found.append((name, line))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node):
        base = _resolve(self.module, self.is_package, node)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if _is_module(full, self.modules) else base, node.lineno)

    def visit_Call(self, node):
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            self._add(str(node.args[0].value), node.lineno)
        self.generic_visit(node)


def import_graph() -> dict:
    """{module: [(imported lmdeq module, line), ...]} over every module under lmdeq/."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = [(t, line) for t, line in visitor.found if t != name]
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            covers = module == n or (n != "lmdeq" and module.startswith(n + "."))
            if covers and len(n) > best:
                best, rank = len(n), i
    return rank


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if layer_of(m) is None)
    assert not unplaced, f"modules outside the layer map (add them to LAYERS and the README): {unplaced}"


def _violations(graph: dict) -> dict:
    found = {}
    for module, imports in graph.items():
        for target, line in imports:
            if layer_of(module) is not None and layer_of(target) is not None and layer_of(target) > layer_of(module):
                found[(module, target)] = line
    return found


def test_no_module_imports_a_layer_above_its_own():
    found = _violations(import_graph())
    upward = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert not upward, "upward imports (module -> higher layer, line): " + "; ".join(
        f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]}), line {line}"
        for (m, t), line in sorted(upward.items()))
    stale = sorted(set(KNOWN_VIOLATIONS) - set(found))
    assert not stale, f"KNOWN_VIOLATIONS no longer occur, remove them: {stale}"


def _cycles(graph: dict, skip=frozenset()) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    edges = {m: sorted({t for t, _ in imports if t in graph and (m, t) not in skip}) for m, imports in graph.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(import_graph(), skip=frozenset(KNOWN_VIOLATIONS))
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_find_what_they_look_for():
    """The graph walk sees lazy, relative and importlib imports, and the cycle finder finds a cycle."""
    graph = import_graph()
    backends = {t for t, _ in graph["lmdeq.ops.backends"]}
    assert {"lmdeq.kernels", "lmdeq._C", "lmdeq.errors"} <= backends   # importlib, importlib, relative
    assert "lmdeq.ops.power_iteration" in {t for t, _ in graph["lmdeq.ops"]}
    assert "lmdeq.train.checkpoint" in {t for t, _ in graph["lmdeq.bench.cli"]}   # inside a function
    assert "lmdeq.models.classifier" not in {t for t, _ in graph["lmdeq.models.presets"]}   # only in __getattr__
    assert _cycles({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}) == [["a", "b", "c"]]
    assert _violations({"lmdeq.ops.anderson": [("lmdeq.models", 3)]}) == {("lmdeq.ops.anderson", "lmdeq.models"): 3}
    assert layer_of("lmdeq") == len(LAYERS) - 1 and layer_of("lmdeq.kernels.anderson") == 1


def _readme_map() -> list:
    """The lines of the first code block of the README's Layout section (the layer map, top layer first)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S)
    assert block, "README.md has no Layout code block"
    return block.group(1).splitlines()


def test_the_readme_shows_the_same_map():
    lines = _readme_map()
    rows = []
    for name, packages in LAYERS:
        hits = [i for i, line in enumerate(lines) if line.startswith(name + "  ")]
        assert len(hits) == 1, f"layer {name!r}: expected one README map line starting with it, found {len(hits)}"
        rows.append(hits[0])
        entry, k = lines[hits[0]], hits[0] + 1
        while k < len(lines) and lines[k].startswith(" "):   # continuation lines
            entry, k = entry + " " + lines[k], k + 1
        for package in packages:
            if package != "lmdeq":
                assert re.search(rf"(?<![\w.]){re.escape(package)}(?![\w])", entry), (
                    f"{package} is not on the README map's {name!r} line")
    assert rows == sorted(rows, reverse=True), "the README's map lists the layers top first (LAYERS reversed)"
