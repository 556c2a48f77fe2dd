"""The stylesheet shared by everything durablenb draws in notebooks (timelines, history
tables): JupyterLab's theme variables, and state colours readable on light and dark."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["STYLESHEET", "css"]

#: The stylesheet's file (the live widget loads it as is).
STYLESHEET = resources.files(__package__).joinpath("_static/timeline.css")


@cache
def css() -> str:
    """The stylesheet without comments and line breaks, to embed in a saved output."""
    text = STYLESHEET.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"\s*\n\s*", "", text)
