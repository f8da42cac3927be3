"""pytest settings for the docstring examples (``--doctest-modules`` over ``visionssl/``); not imported by the library.

Every example runs with ``VISIONSSL_HOME``, the working directory and ``tempfile``'s directory in its own
temp dir, so an example writes nothing outside it (caches, trust key, run directories, ``mkdtemp``).
"""

import tempfile

import pytest


@pytest.fixture(autouse=True)
def _doctest_sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import torch

    torch.manual_seed(0)
