"""Architecture rules, read from the source (AST): imports point one way and never form a cycle.

Layers, lowest first (a module may import its own layer's package and any lower layer, never a higher one;
the packages of one layer do not import each other):

   -1  errors                               (the user-error hierarchy: imports nothing of visionssl)
    0  registry, distributed, files          (generic helpers: no visionssl imports above them)
    1  data | augment | backbones | losses   (siblings: independent of each other)
    2  methods
    3  engine
    4  eval
    5  zoo
    6  the package root (visionssl/__init__.py re-exports the public API)
    7  cli;  8  __main__
"""

from __future__ import annotations

import ast
from pathlib import Path

import visionssl

PACKAGE = Path(visionssl.__file__).resolve().parent
LAYERS = {
    "registry": 0,
    "distributed": 0,
    "files": 0,
    "errors": -1,
    "data": 1,
    "augment": 1,
    "backbones": 1,
    "losses": 1,
    "methods": 2,
    "engine": 3,
    "eval": 4,
    "zoo": 5,
    "": 6,
    "cli": 7,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files() -> list[Path]:
    """The package's Python files; ``conftest.py`` is pytest's configuration (the doctest sandbox), never imported."""
    return [p for p in PACKAGE.rglob("*.py") if p.name != "conftest.py"]


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in library_files()}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """visionssl modules imported anywhere in the file (top level or inside functions), relative imports included."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()  # a module's relative imports start from its package
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute_module(node, package)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "visionssl" or n.startswith("visionssl."))
    return found


def absolute_module(node: ast.ImportFrom, package: list[str]) -> str:
    """The module a ``from ... import`` names, with a relative one (``from . import x``) resolved in ``package``."""
    if not node.level:
        return node.module or ""
    return ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_relative_imports_are_resolved():
    here = ["visionssl", "eval"]  # the package of visionssl/eval/knn.py
    assert absolute_module(ast.parse("from .features import x").body[0], here) == "visionssl.eval.features"
    assert absolute_module(ast.parse("from .. import cli").body[0], here) == "visionssl"
    assert absolute_module(ast.parse("from visionssl.zoo import load").body[0], here) == "visionssl.zoo"


def test_every_top_level_package_has_a_layer():
    assert {top_package(m) for m in all_modules()} <= set(LAYERS), "add new packages to LAYERS"


def test_imports_point_down_the_layers():
    modules = all_modules()
    wrong = []
    for name, path in modules.items():
        here = top_package(name)
        for target in imported_modules(path, modules):
            there = top_package(target)
            if there == here:
                continue
            if LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] and here != ""):
                wrong.append(f"{name} imports {target} (layer {LAYERS[here]} -> {LAYERS[there]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    modules = all_modules()
    graph = {m: {t for t in imported_modules(p, modules) if t in modules and t != m} for m, p in modules.items()}
    # the package root and each package's __init__ re-export their submodules; an import of `visionssl.x.y`
    # runs `visionssl.x` first, so a submodule importing its own package root is not a cycle worth reporting
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if node.startswith(nxt + "."):  # a submodule using its own package (e.g. a register decorator)
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    private = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("visionssl"):
                private += [
                    f"{name} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not private, "\n".join(private)


def test_no_module_is_longer_than_a_newcomer_reads_in_one_sitting():
    long = {module_name(p): n for p in library_files() if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def method_names(tree: ast.AST) -> set[str]:
    """Local names bound to a method: ``method = self.method`` (also in a tuple assignment) or ``m: SSLMethod``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (
                    zip(target.elts, node.value.elts)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                    else [(target, node.value)]
                )
                names |= {t.id for t, v in pairs if isinstance(t, ast.Name) and ast.unparse(v) == "self.method"}
        elif isinstance(node, ast.arg) and node.annotation is not None and "SSLMethod" in ast.unparse(node.annotation):
            names.add(node.arg)
    return names


def is_method(node: ast.expr, names: set[str]) -> bool:
    """``self.method``, a name bound to it, ``method_class(...)`` or ``METHODS.get(...)``: an expression that is a
    method (or its class)."""
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.Attribute):
        return node.attr == "method" and isinstance(node.value, ast.Name) and node.value.id == "self"
    if isinstance(node, ast.Call):
        return ast.unparse(node.func) in ("method_class", "METHODS.get")
    return False


def method_reads(source: str, filename: str) -> tuple[list[str], set[str]]:
    """In one file: ``getattr``/``hasattr`` calls on a method (each a contract part found by name) and the
    attribute names read on a method."""
    tree = ast.parse(source)
    names = method_names(tree)
    by_name, attributes = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            if node.args and (is_method(node.args[0], names) or "method" in ast.unparse(node.args[0]).lower()):
                by_name.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and is_method(node.value, names):
            attributes.add(node.attr)
    return by_name, attributes


def test_method_reads_are_found_in_the_source():
    source = (
        "def f(self, name, m: SSLMethod, sd: dict):\n"
        "    cfg, method = self.config, self.method\n"
        "    x = getattr(self.method, 'needs_indices', False)\n"
        "    y = METHODS.get(name).hparam_ranges + method.num_views + m.backbone + sd.items()\n"
        "    self.method.on_step_end(1)\n"
    )
    assert method_reads(source, "probe.py") == (
        ["probe.py:3: getattr(self.method, 'needs_indices', False)"],
        {"hparam_ranges", "num_views", "backbone", "on_step_end"},
    )


def test_the_engine_reads_only_what_sslmethod_declares():
    """The method contract is written down: every part the trainer or the config reader uses is declared on
    ``SSLMethod`` (with its default), never looked up with ``getattr(method, "...", default)``."""
    from visionssl.methods import SSLMethod

    declared = set(dir(SSLMethod)) | {n for c in SSLMethod.__mro__ for n in getattr(c, "__annotations__", {})}
    by_name, undeclared = [], []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        found, attributes = method_reads(path.read_text(encoding="utf-8"), path.name)
        by_name += found
        undeclared += [f"{path.name}: method.{a}" for a in sorted(attributes - declared)]
    assert not by_name, "declare these on SSLMethod and read them as attributes:\n" + "\n".join(by_name)
    assert not undeclared, "read on a method but not declared on SSLMethod:\n" + "\n".join(undeclared)


def test_the_trainer_is_made_of_parts_not_mixins():
    """The Trainer inherits nothing: its checkpointer, run log and guards are objects it builds with explicit
    arguments, so every coupling between them shows in a constructor call or an import."""
    from visionssl.engine import Trainer

    assert Trainer.__bases__ == (object,)


def test_one_checkpoint_resolver_decides_what_a_spec_is():
    """Only visionssl/zoo/resolve.py reads a run's checkpoint to say which backbone it names, and only
    zoo/safe_load.py's ``is_safetensors`` looks at the ``.safetensors`` suffix."""
    import re

    suffix_test = re.compile(r"""suffix\s*(?:[!=]=|(?:not\s+)?in)\s*[^\n]*["']\.safetensors["']""")
    resolver_parts = re.compile(r"\b(?:checkpoint_backbone|run_dir_of)\(")
    wrong = []
    for path in library_files():
        name = module_name(path)
        text = path.read_text(encoding="utf-8")
        if suffix_test.search(text) and name != "visionssl.zoo.safe_load":
            wrong.append(f"{name} tests for the .safetensors suffix (use zoo.safe_load.is_safetensors)")
        calls = [
            m for m in resolver_parts.finditer(text) if "def " not in text[text.rfind("\n", 0, m.start()) : m.start()]
        ]
        if calls and name not in ("visionssl.zoo.resolve", "visionssl.engine.checkpoint", "visionssl.backbones.trust"):
            wrong.append(f"{name} decides what a checkpoint names itself (use zoo.resolve_checkpoint)")
    assert not wrong, "\n".join(wrong)
