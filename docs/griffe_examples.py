"""Griffe extension for the API reference: the docstrings' ``Example:`` sections render as examples.

The code writes Google-style docstrings with a singular ``Example:`` heading (the Google style guide's own
spelling); griffe recognises only ``Examples:`` as the examples section and would render the doctest as
plain Markdown (``[32, 32]`` read as a link). The docstrings are left as written: the doctests run from them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class SingularExampleHeading(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
