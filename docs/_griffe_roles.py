"""A griffe extension for the API reference: Sphinx-style roles become Markdown.

The docstrings use reST roles (``:class:`~resilient_connect.Backoff```) and
``::`` before literal blocks, which read well in ``help()`` and in an editor.
mkdocstrings renders Markdown, so this extension rewrites, when the API pages
are built: a role becomes inline code (``~`` keeps the last dotted part, as in
Sphinx) and a paragraph ending in ``::`` ends in ``:``. The source is not
changed. mkdocs.yml loads this file (``extensions:`` of the python handler).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj|const):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"::$", re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    return f"`{shown}`"


def markdown(text: str) -> str:
    """``text`` with reST roles as inline code and ``::`` paragraph ends as ``:``."""
    text = _ROLE.sub(_code, text)
    return _LITERAL_BLOCK.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package as :func:`markdown` says."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
