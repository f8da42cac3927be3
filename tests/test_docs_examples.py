"""The runnable example of docs/methods.md "Adding a method" runs as printed, registers its method, and its\ndeclared contract parts (``hparam_ranges``, ``check_config``) are what the config reader checks."""

import contextlib
import io
import re
from pathlib import Path

import pytest

import visionssl as vs
from visionssl.engine.config import load_config
from visionssl.errors import ConfigError
from visionssl.methods import METHODS

DOC = Path(__file__).resolve().parent.parent / "docs" / "methods.md"


def python_blocks(section: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8").split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_adding_a_method_example_runs(monkeypatch):
    (code,) = python_blocks("Adding a method")
    monkeypatch.setattr(METHODS, "_factories", dict(METHODS._factories))  # the example's registration is undone after
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
    assert stdout.getvalue() == "['embedding', 'loss'] True\n"  # what the comment in the example says
    assert "tiny_simclr" in vs.list_methods() and vs.methods.method_hparams("tiny_simclr") == {
        "proj_dim": 128,
        "temperature": 0.5,
    }
    # the contract parts it declares are the ones the config reader uses: its own range and its own check
    load_config(method="tiny_simclr")
    with pytest.raises(ConfigError, match=re.escape("method.proj_dim=4 must be >= 8 (tiny_simclr)")):
        load_config(method="tiny_simclr", overrides=["method.proj_dim=4"])
    with pytest.raises(ConfigError, match="method.temperature=2.0 is above 1"):
        load_config(method="tiny_simclr", overrides=["method.temperature=2.0"])
