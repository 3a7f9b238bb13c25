"""A Griffe extension for the API reference: reads aray's docstrings the way they are written.

aray's docstrings are Google style, with ``Examples:`` sections and a few reST touches. This
extension adjusts the text Griffe reads (never the source files):

- a stray ``Example:`` line becomes ``Examples:`` (Griffe's Google parser knows only the
  plural, and would render the doctest lines as nested block quotes);
- reST roles such as ``:func:`aray.init``` and ``:class:`~aray.exceptions.TaskError```
  become links to the reference (names outside ``aray`` become plain code);
- a reST literal block (a paragraph ending with ``::``, or a lone ``::`` line, then an
  indented block) becomes a fenced ``text`` block.

Loaded by the mkdocstrings handler in ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):`(~?)([\w.]+)`")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if short else target
    parts = target.split(".")
    if parts[0] == "aray" and len(parts) > 1 and not any(p.startswith("_") for p in parts):
        return f"[`{shown}`][{target}]"  # public: on the reference page
    return f"`{shown}`"


def _literal_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::"):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.strip() != "::":  # "Some text::" keeps "Some text:"
            out.append(stripped[:-1])
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        block = []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        depth = min(len(b) - len(b.lstrip()) for b in block if b.strip()) if block else 0
        pad = " " * indent
        out += ["", pad + "```text", *[pad + b[depth:] for b in block], pad + "```", ""]
    return "\n".join(out)


def rewrite(text: str) -> str:
    """The docstring ``text`` as Griffe's Google parser and Markdown should read it."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(_role, text)
    return _literal_blocks(text)


class ArayDocstrings(griffe.Extension):
    """Rewrite each docstring once, when Griffe has read the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
