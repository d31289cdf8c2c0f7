"""Reading a config file into a document: ${ENV} interpolated, YAML parsed, duplicate keys
found, and every problem named by its path. Validation is configcheck's job."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import _ENV, substitute
from gateway.config.yamldoc import compose, construct, duplicate_keys, scalar_paths


@dataclass
class Document:
    data: Any
    errors: list[str] = field(default_factory=list)
    # name -> value of every variable taken from the environment: never shown in messages.
    secrets: dict[str, str] = field(default_factory=dict)
    # Paths whose value is an unset variable: their validation errors would only repeat it.
    unset_paths: set[str] = field(default_factory=set)


def read_document(path: str | Path, env: dict[str, str] | None = None) -> Document:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return Document(None, [f"{path}: cannot read ({exc.strerror})"])
    result, missing, used = substitute(text, env)
    doc = Document(None, secrets=used)
    if missing:
        for where, name in _locate_unset(text, set(missing)):
            doc.errors.append(f"{where}: environment variable {name} is not set")
            doc.unset_paths.add(where)
    try:
        node = compose(result)
    except yaml.YAMLError as exc:
        doc.errors.append(f"{path}: invalid YAML: {exc}")
        return doc
    doc.errors.extend(duplicate_keys(node))
    doc.data = construct(node)
    return doc


def _locate_unset(text: str, missing: set[str]) -> list[tuple[str, str]]:
    """(path, name) of each use of an unset variable. Every ${…} becomes a plain word first:
    `timeout: ${T}` is not valid YAML as written inside a flow mapping, the word is."""
    uses: list[str] = []

    def mark(match: re.Match[str]) -> str:
        uses.append(match.group(1) if match.group(2) is None else "")
        return f"FNGATEENVREF{len(uses) - 1}X"

    marked = _ENV.sub(mark, text)
    try:
        node = compose(marked)
    except yaml.YAMLError:
        node = None
    found: list[tuple[str, str]] = []
    for index, name in enumerate(uses):
        if name not in missing:
            continue
        paths = scalar_paths(node, f"FNGATEENVREF{index}X") if node is not None else []
        if not paths:  # not a YAML document even so: the line will do
            offset = marked.index(f"FNGATEENVREF{index}X")
            paths = [f"line {marked.count(chr(10), 0, offset) + 1}"]
        found.extend((where, name) for where in paths)
    return list(dict.fromkeys(found))
