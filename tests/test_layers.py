"""The layer map (docs/development.md, Layout): lmdeq is two wings, the library and the application (``lmdeq.app``) on top of
it. A module imports only its own layer and the layers below it in its own wing; an application module may also
import any library module, and the library never imports the application. No module imports itself back through
others (no cycles).

Every import counts, at module level or inside a function (a module's ``__getattr__`` included), and so do
``importlib.import_module("...")`` and ``__import__("...")`` with a literal name. To place a new package, add its
name to its layer in LAYERS (and to the docs' layer map, which this test compares).
"""
import ast
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmdeq"

LIBRARY, APP = "library", "application"
APP_PACKAGE = "lmdeq.app"

# (wing, layer, packages): the library's layers bottom first, then the application's, bottom first. A module
# belongs to the layer of the longest name here that is it or a package above it; the two package tops (PACKAGE_TOPS)
# stand for their own __init__ only: "lmdeq" re-exports the library's API on top of the library, "lmdeq.app" is
# the application package. Only the order within a wing is a layering; the wings are side by side, the
# application importing from the library and never the other way.
LAYERS = [
    (LIBRARY, "shared facts", ["lmdeq.errors", "lmdeq.checks", "lmdeq.numerics", "lmdeq.files"]),
    (LIBRARY, "kernels", ["lmdeq.kernels", "lmdeq._C"]),
    (LIBRARY, "CUDA-graph capture", ["lmdeq.cuda_graphs"]),
    (LIBRARY, "ops", ["lmdeq.ops"]),
    (LIBRARY, "solvers", ["lmdeq.solvers"]),
    (LIBRARY, "deq", ["lmdeq.deq"]),
    (LIBRARY, "models", ["lmdeq.models"]),
    (LIBRARY, "integrations", ["lmdeq.integrations"]),
    (LIBRARY, "package top", ["lmdeq"]),
    (APP, "plumbing", ["lmdeq.app.allocator", "lmdeq.app.argtypes", "lmdeq.app.atomic", "lmdeq.app.faults",
                       "lmdeq.app.torch_files", "lmdeq.app.command", "lmdeq.app.flat_solves"]),
    (APP, "data", ["lmdeq.app.data"]),
    (APP, "training", ["lmdeq.app.train"]),
    (APP, "front ends", ["lmdeq.app.bench", "lmdeq.app.info", "lmdeq.app.cli", "lmdeq.app"]),
]
PACKAGE_TOPS = {"lmdeq", APP_PACKAGE}

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
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            self._add(str(node.args[0].value), node.lineno)
        self.generic_visit(node)


def imports_of(name: str, source: str, is_package: bool, modules: dict) -> list:
    """[(imported lmdeq module, line), ...] of the module ``name`` whose text is ``source``."""
    visitor = _Imports(name, is_package, modules)
    visitor.visit(ast.parse(source, name))
    return [(t, line) for t, line in visitor.found if t != name]


def import_graph() -> dict:
    """{module: [(imported lmdeq module, line), ...]} over every module under lmdeq/."""
    modules = _modules()
    return {name: imports_of(name, path.read_text(), path.name == "__init__.py", modules)
            for name, path in modules.items()}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, _, names) in enumerate(LAYERS):
        for n in names:
            covers = module == n or (n not in PACKAGE_TOPS and module.startswith(n + "."))
            if covers and len(n) > best:
                best, rank = len(n), i
    return rank


def wing_of(module: str) -> str:
    """The wing a module's name puts it in (whether or not LAYERS places it)."""
    return APP if module == APP_PACKAGE or module.startswith(APP_PACKAGE + ".") else LIBRARY


def _describe(module: str) -> str:
    wing, layer, _ = LAYERS[layer_of(module)]
    return f"{module} ({wing}: {layer})"


def may_import(module: str, target: str) -> bool:
    """The map's rule: within a wing, the same layer or one below; across wings, only application -> library."""
    m, t = layer_of(module), layer_of(target)
    if LAYERS[m][0] == LAYERS[t][0]:
        return t <= m
    return LAYERS[m][0] == APP and LAYERS[t][0] == LIBRARY


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if layer_of(m) is None)
    assert not unplaced, f"modules outside the layer map (add them to LAYERS and the docs' layer map): {unplaced}"


def test_every_layer_is_in_the_wing_its_names_say():
    """The application's layers hold lmdeq.app and what is under it, the library's everything else."""
    wrong = [(wing, layer, n) for wing, layer, names in LAYERS for n in names if wing_of(n) != wing]
    assert not wrong, f"packages in the wrong wing of LAYERS: {wrong}"
    assert len({layer for _, layer, _ in LAYERS}) == len(LAYERS), "layer names must be unique"


def _violations(graph: dict) -> dict:
    found = {}
    for module, imports in graph.items():
        for target, line in imports:
            if layer_of(module) is not None and layer_of(target) is not None and not may_import(module, target):
                found[(module, target)] = line
    return found


def test_no_module_imports_a_layer_above_its_own():
    found = _violations(import_graph())
    upward = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert not upward, "imports against the map (module -> target, line): " + "; ".join(
        f"{_describe(m)} -> {_describe(t)}, line {line}" for (m, t), line in sorted(upward.items()))
    stale = sorted(set(KNOWN_VIOLATIONS) - set(found))
    assert not stale, f"KNOWN_VIOLATIONS no longer occur, remove them: {stale}"


def _library_imports_of_the_app(graph: dict) -> dict:
    """{(library module, application module): line} for every import of the application by the library."""
    return {(module, target): line for module, imports in graph.items() if wing_of(module) == LIBRARY
            for target, line in imports if wing_of(target) == APP}


def test_the_library_never_imports_the_application():
    """No module outside lmdeq.app imports lmdeq.app or anything under it, lazily (in a function, a method, a
    module's ``__getattr__``) or through importlib included; no KNOWN_VIOLATIONS entry can excuse one."""
    found = _library_imports_of_the_app(import_graph())
    assert not found, "the library imports the application (module -> target, line): " + "; ".join(
        f"{m} -> {t}, line {line}" for (m, t), line in sorted(found.items()))


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
    modules = _modules()
    backends = {t for t, _ in graph["lmdeq.ops.backends"]}
    assert {"lmdeq.kernels", "lmdeq._C", "lmdeq.errors"} <= backends   # importlib, importlib, relative
    assert "lmdeq.ops.power_iteration" in {t for t, _ in graph["lmdeq.ops"]}
    assert "lmdeq.app.train.checkpoint" in {t for t, _ in graph["lmdeq.app.bench.cli"]}   # inside a function
    assert "lmdeq.models" in {t for t, _ in graph["lmdeq.app.bench.cli"]}   # app -> library, three dots up
    # A module-level __getattr__ (PEP 562) counts like any other function; so do __import__ and a method.
    hook = ("def __getattr__(name):\n    from ..app.train import checkpoint\n    return checkpoint\n"
            "class C:\n    def f(self):\n        return __import__('lmdeq.app.cli')\n")
    assert imports_of("lmdeq.models.presets", hook, False, modules) == [("lmdeq.app.train.checkpoint", 2),
                                                                       ("lmdeq.app.cli", 6)]
    assert _cycles({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}) == [["a", "b", "c"]]
    # Within a wing only downwards; across wings only application -> library.
    synthetic = {"lmdeq.ops.anderson": [("lmdeq.models", 3), ("lmdeq.errors", 4)],
                 "lmdeq.models.presets": [("lmdeq.app.train.checkpoint", 2), ("lmdeq.deq", 1)],
                 "lmdeq": [("lmdeq.app.allocator", 5)],
                 "lmdeq.app.data.folder": [("lmdeq.models", 1), ("lmdeq.app.atomic", 2), ("lmdeq.app.train", 7)],
                 "lmdeq.app.atomic": [("lmdeq.app.data", 8), ("lmdeq.errors", 9)],
                 "lmdeq.app.train.run": [("lmdeq.app.data", 1), ("lmdeq", 2)],
                 "lmdeq.app.cli": [("lmdeq.app.bench.cli", 1), ("lmdeq.integrations.torchdeq", 2)]}
    assert _violations(synthetic) == {("lmdeq.ops.anderson", "lmdeq.models"): 3,
                                      ("lmdeq.models.presets", "lmdeq.app.train.checkpoint"): 2,
                                      ("lmdeq", "lmdeq.app.allocator"): 5,
                                      ("lmdeq.app.data.folder", "lmdeq.app.train"): 7,
                                      ("lmdeq.app.atomic", "lmdeq.app.data"): 8}
    assert _library_imports_of_the_app(synthetic) == {("lmdeq.models.presets", "lmdeq.app.train.checkpoint"): 2,
                                                      ("lmdeq", "lmdeq.app.allocator"): 5}
    assert LAYERS[layer_of("lmdeq")][:2] == (LIBRARY, "package top") and layer_of("lmdeq.kernels.anderson") == 1
    assert LAYERS[layer_of("lmdeq.app")][:2] == (APP, "front ends") and layer_of("lmdeq.app.new_module") is None
    assert layer_of("lmdeq.new_module") is None and wing_of("lmdeq.app.data.folder") == APP


def _readme_map() -> list:
    """The lines of the first code block of the Layout section of the docs' development page (the layer map: the
    application wing, then the library wing, each headed by a ``<wing> wing`` line and listing its layers top
    first)."""
    text = (ROOT / "docs" / "development.md").read_text()
    block = re.search(r"## Layout\n.*?```(?:text)?\n(.*?)```", text, re.S)
    assert block, "docs/development.md has no Layout code block"
    return block.group(1).splitlines()


NAME_COLUMN = 20   # the docs' layer map's layer names are padded to this width; the package names start there


def test_the_readme_shows_the_same_map():
    lines = _readme_map()
    headers = {}
    for wing in (APP, LIBRARY):
        hits = [i for i, line in enumerate(lines) if line.startswith(f"{wing} wing ")]
        assert len(hits) == 1, f"expected one docs' layer map line starting with {wing + ' wing'!r}, found {len(hits)}"
        headers[wing] = hits[0]
    assert headers[APP] < headers[LIBRARY], "the docs' layer map draws the application wing above the library"
    rows = []
    for wing, name, packages in LAYERS:
        hits = [i for i, line in enumerate(lines) if line.startswith(name + "  ")]
        assert len(hits) == 1, f"layer {name!r}: expected one docs' layer map line starting with it, found {len(hits)}"
        row = hits[0]
        rows.append(row)
        wing_end = min([h for h in headers.values() if h > headers[wing]] + [len(lines)])
        assert headers[wing] < row < wing_end, f"layer {name!r} is not drawn in the docs' layer map's {wing} wing"
        entry, k = [lines[row]], row + 1
        while k < len(lines) and lines[k].startswith(" "):   # continuation lines
            entry, k = entry + [lines[k]], k + 1
        for package in packages:
            # one line per package: its name first after the layer-name column, then what it holds
            own = [line for line in entry if re.match(rf"{re.escape(package)}\s+\S", line[NAME_COLUMN:])]
            assert len(own) == 1, (
                f"{package}: expected one line of its own on the docs' layer map's {name!r} layer, found {len(own)}")
        listed = {line[NAME_COLUMN:].split()[0] for line in entry if line[NAME_COLUMN:].strip()}
        assert listed == set(packages), f"docs' layer map's {name!r} layer lists {sorted(listed)}, LAYERS {packages}"
    assert rows == sorted(rows, reverse=True), "the docs' layer map lists the layers top first (LAYERS reversed)"
