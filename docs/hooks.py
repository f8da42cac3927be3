"""MkDocs hook: pages that are generated from the code, so they cannot drift from it.

A page asks for a generated part with a marker line; ``on_page_markdown`` replaces it:

- ``<!-- generated: config -->``: every key of the run configuration (the dataclasses of
  ``visionssl.engine.config``), with its type, default and the comment that documents it;
- ``<!-- generated: methods -->``: every method's ``method.*`` keys with their defaults, and what each
  small recipe (``visionssl/configs/NAME.yaml``) sets;
- ``<!-- generated: augment -->``: every augmentation preset's ``augment.kwargs``;
- ``<!-- generated: api MODULE -->``: an API reference entry (a mkdocstrings ``:::`` directive) for every public
  name of ``MODULE``: its ``__all__``, or else the classes and functions it defines.

``python docs/hooks.py`` prints the three parts.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import tokenize
from pathlib import Path
from typing import Any

MARKER = "<!-- generated: {} -->"


def _code(value: Any) -> str:
    return f"`{value!r}`"


def _row(*cells: str) -> str:
    """A Markdown table row; a ``|`` inside a cell (``str | None``) is escaped."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def field_comments(cls: type) -> dict[str, str]:
    """The comments that document each field of a dataclass: the comment lines right above it and the one on it."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        inside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        found[node.target.id] = " ".join(above + inside)
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def config_keys(cls: type | None = None, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every leaf key of the run configuration as (key, type, default, description), in the order of the code."""
    from visionssl.engine.config import Config

    cls = cls or Config
    comments = field_comments(cls)
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    rows = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            rows += config_keys(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", str(hints[f.name]), default, comments.get(f.name, "")))
    return rows


def config_markdown() -> str:
    """The configuration keys as one Markdown table per section."""
    from visionssl.engine.config_checks import CHOICES

    rows = config_keys()
    rows.sort(key=lambda row: "." in row[0])  # the top-level keys (method, out) first; stable otherwise
    out, section = [], None
    for key, typ, default, doc in rows:
        head = key.split(".")[0] if "." in key else "Top level"
        if head != section:
            section = head
            out += ["", f"### `{head}`" if "." in key else f"### {head}", ""]
            out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        if key in CHOICES:
            doc = f"{doc} (one of: {', '.join(CHOICES[key])})".strip()
        out.append(_row(f"`{key}`", f"`{typ}`", _code(default), doc))
    return "\n".join(out).strip() + "\n"


def methods_markdown() -> str:
    """Each method's ``method.*`` keys with the constructor's default and the small recipe's value."""
    import yaml

    import visionssl as vs
    from visionssl.engine.config import CONFIG_DIR

    out = []
    for name in vs.list_methods():
        recipe_file = CONFIG_DIR / f"{name}.yaml"
        recipe = yaml.safe_load(recipe_file.read_text())["method"] if recipe_file.is_file() else {}
        out += ["", f"### `{name}`", "", "| key | default | small recipe (`" + name + "`) |", "|---|---|---|"]
        for key, default in vs.methods.method_hparams(name).items():
            out.append(_row(f"`method.{key}`", _code(default), _code(recipe[key]) if key in recipe else ""))
    return "\n".join(out).strip() + "\n"


def augment_markdown() -> str:
    """Each augmentation preset's keyword arguments (``augment.kwargs.*``) with their defaults."""
    import visionssl as vs
    from visionssl.augment import AUGMENTATIONS

    out = ["| preset | `augment.kwargs` keys (default) |", "|---|---|"]
    for name in vs.augment.list_augmentations():
        params = inspect.signature(AUGMENTATIONS.get(name)).parameters.values()
        keys = [
            f"`{p.name}` = {_code(p.default)}"
            for p in params
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("image_size", "channels")
        ]
        out.append(_row(f"`{name}`", ", ".join(keys) or "(none)"))
    return "\n".join(out) + "\n"


def public_names(module_name: str) -> list[str]:
    """``__all__`` of the module, or else the public classes and functions it defines itself."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module_name
    ]


def api_path(module_name: str, name: str) -> str | None:
    """Where griffe finds ``module_name.name``: the public path, or the defining one where a submodule of the
    same name hides it (``visionssl.losses.nt_xent`` is also a file); None when only the submodule is reachable."""
    obj = getattr(importlib.import_module(module_name), name)
    package = Path(importlib.import_module(module_name).__file__).parent
    hidden = module_name.count(".") and ((package / f"{name}.py").exists() or (package / name).is_dir())
    if not hidden or inspect.ismodule(obj):
        return f"{module_name}.{name}"
    if getattr(obj, "__module__", module_name) != module_name:
        return f"{obj.__module__}.{obj.__qualname__}"
    return None


def api_markdown(module_name: str) -> str:
    """``:::`` directives for the public names of a module (a subpackage gets a link to its own page)."""
    out = []
    for name in public_names(module_name):
        obj = getattr(importlib.import_module(module_name), name)
        path = api_path(module_name, name)
        if inspect.ismodule(obj):
            out.append(f"- [`{obj.__name__}`]({name}.md)")
        elif path is not None:
            out += ["", f"::: {path}", ""]
        else:  # a function of the package itself that a submodule's name hides from griffe: its text as written
            doc = inspect.getdoc(obj) or ""
            out += [
                "",
                f"## `{name}`",
                "",
                "```python",
                f"{name}{inspect.signature(obj)}",
                "```",
                "",
                "```text",
                doc,
                "```",
                "",
            ]
    return "\n".join(out).strip() + "\n"


GENERATORS = {"config": config_markdown, "methods": methods_markdown, "augment": augment_markdown}
API_MARKER = re.compile(r"<!-- generated: api (\S+) -->")


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name, generate in GENERATORS.items():
        if MARKER.format(name) in markdown:
            markdown = markdown.replace(MARKER.format(name), generate())
    return API_MARKER.sub(lambda m: api_markdown(m.group(1)), markdown)


if __name__ == "__main__":
    for generate in GENERATORS.values():
        print(generate())
    for module in ("visionssl", "visionssl.losses", "visionssl.zoo"):
        print(api_markdown(module))
