"""The front door: README stays short, README and docs speak to users only, every README link resolves, the API
reference covers every public name, and the configuration page lists every key of the typed config.

``mkdocs build --strict`` (run by .ci/run) checks the site's own links, anchors and docstrings."""

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import yaml

import visionssl as vs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
# words about issues or how the project is developed: users read these files
PROCESS_WORDS = re.compile(r"issue [0-9]+|#[0-9]{2}\b|session|lent to|not lent|ticket|sprint", re.IGNORECASE)
API_MODULES = ["losses", "augment", "data", "eval", "zoo", "engine", "errors", "methods"]

pytestmark = pytest.mark.skipif(not README.is_file() or not DOCS.is_dir(), reason="runs from a source checkout only")


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_door_not_a_lab_notebook():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move details to a docs/ page and link it"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_or_process_words(path):
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_the_grep_catches_what_it_should():
    for text in ["see issue 19", "(#22)", "no GPU was lent to this project", "GPUs are not lent", "our sprint"]:
        assert PROCESS_WORDS.search(text), text
    for text in ["resnet50 at 224 px", "[link](https://x/y#model-zoo)", "the essential", "#!/bin/bash"]:
        assert not PROCESS_WORDS.search(text), text


def test_every_relative_link_of_the_readme_resolves():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert local, "README links no docs page"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    linked = {(ROOT / link).resolve() for link in local}
    unlinked = [p.relative_to(ROOT) for p in PAGES if p.resolve() not in linked and p.parent == DOCS]
    assert not unlinked, f"README links no docs page {unlinked}"


def test_every_docs_page_is_in_the_site_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    in_nav = set(pages(config["nav"]))
    missing = [str(p.relative_to(DOCS)) for p in PAGES if str(p.relative_to(DOCS)) not in in_nav]
    assert not missing, f"add these pages to nav in mkdocs.yml: {missing}"


def documented_objects() -> list[object]:
    """The objects that the API pages name, once the site's hook has expanded them: each ``::: path`` directive
    resolved as griffe resolves the path (a module before an attribute of the same name), and the plain sections the hook writes for names griffe cannot reach."""
    hooks = load_hooks()
    found = []
    for page in (DOCS / "api").glob("*.md"):
        text = hooks.on_page_markdown(page.read_text(encoding="utf-8"))
        for path in re.findall(r"^::: (\S+)$", text, flags=re.MULTILINE):
            parts = path.split(".")
            for cut in range(len(parts), 0, -1):  # as griffe reads a path: the longest module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
                found.append(obj)
                break
        module = re.search(r"^# `(\S+)`", text, flags=re.MULTILINE).group(1)
        found += [getattr(importlib.import_module(module), name) for name in re.findall(r"^## `(\w+)`$", text, re.M)]
    return found


@pytest.mark.parametrize("module_name", ["visionssl"] + [f"visionssl.{m}" for m in API_MODULES])
def test_the_api_reference_lists_every_public_name(module_name):
    documented = documented_objects()
    module = importlib.import_module(module_name)
    missing = [
        name
        for name in load_hooks().public_names(module_name)
        if not any(getattr(module, name) is obj for obj in documented)
        and not (inspect.ismodule(getattr(module, name)) and (DOCS / "api" / f"{name}.md").is_file())
    ]
    assert not missing, f"docs/api/ has no entry for {missing} of {module_name}"


def test_every_method_class_has_its_section_in_the_api_reference():
    documented = documented_objects()
    missing = [name for name in vs.list_methods() if vs.methods.method_class(name) not in documented]
    assert not missing, missing


def test_the_configuration_page_lists_every_key_of_the_typed_config():
    from omegaconf import OmegaConf

    from visionssl.engine.config import Config

    def leaves(node, prefix=""):
        for key, value in node.items():
            if OmegaConf.is_dict(value) and key != "method" and not key.endswith("kwargs"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    hooks = load_hooks()
    expected = set(leaves(OmegaConf.structured(Config)))
    assert {row[0] for row in hooks.config_keys()} == expected
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert all(hooks.MARKER.format(name) in page for name in hooks.GENERATORS)
    table = hooks.config_markdown()
    assert all(f"| `{key}` |" in table for key in expected)
    assert "| `train.precision` | `str` | `'auto'` |" in table and "one of: auto, fp32, bf16, fp16" in table
    # a field's documenting comment reaches the page, even one written above the field or inside parentheses
    keys = {row[0]: row[3] for row in hooks.config_keys()}
    assert "(image_size unused)" in keys["data.stream"] and keys["optim.batch_size"].startswith("the GLOBAL batch")
    methods = hooks.methods_markdown()
    for name in vs.list_methods():
        assert all(f"| `method.{key}` |" in methods for key in vs.methods.method_hparams(name)), name
    assert all(f"| `{name}` |" in hooks.augment_markdown() for name in vs.augment.list_augmentations())


def test_the_hook_fills_in_the_markers():
    hooks = load_hooks()
    out = hooks.on_page_markdown("a\n<!-- generated: augment -->\nb")
    assert "<!-- generated" not in out and "| `simclr` |" in out
    for page in (DOCS / "api").glob("*.md"):
        module = re.search(r"^# `(\S+)`", page.read_text(encoding="utf-8"), flags=re.MULTILINE).group(1)
        assert f"<!-- generated: api {module} -->" in page.read_text(encoding="utf-8"), page
    api = hooks.api_markdown("visionssl.losses")
    # a submodule of the same name hides the function from griffe: the entry names the defining module
    assert "::: visionssl.losses.nt_xent.nt_xent" in api and "::: visionssl.losses.patchify" in api


def test_ci_builds_the_site_strictly_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = README.read_text(encoding="utf-8")
    assert 'pip install -e ".[dev]" && python -m pytest' in readme
    assert 'pip install -e ".[dev]"' in ci and "&& python -m pytest\n" in ci
    assert "mkdocs build --strict" in ci and 'pip install -e ".[docs]" && mkdocs serve' in readme
    mkdocs = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in mkdocs["plugins"]]
    assert set(plugins) <= {"search", "mkdocstrings"}, "a plugin that downloads (social, privacy) breaks offline CI"
    assert mkdocs["theme"]["font"] is False


def test_the_backbones_page_example_runs():
    text = (DOCS / "backbones.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    scope: dict = {}
    exec(compile(code, "docs/backbones.md", "exec"), scope)
    assert scope["backbone"].num_features == 2048 and scope["vit"].num_features == 192
    assert "resnet18_cifar" in vs.list_backbones("resnet1*")
