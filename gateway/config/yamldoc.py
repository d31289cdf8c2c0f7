"""YAML as fngate reads it: safe types only, a duplicate key is an error, and every node
is known by its config path (`functions.resize.timeout`, `triggers.inbox.path`), so that
problems found before validation can name where they are."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml


def compose(text: str) -> yaml.Node | None:
    """The node tree of a document; raises yaml.YAMLError."""
    node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    return node


def construct(node: yaml.Node | None) -> Any:
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _label(item: yaml.Node, index: int) -> str:
    """A list entry is named by its `name:` where it has one, as validation errors name it."""
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return str(index)


def walk(node: yaml.Node | None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], yaml.Node]]:
    """Every node with its path, depth first; aliases are visited once."""
    seen: set[int] = set()
    stack: list[tuple[tuple[str, ...], yaml.Node]] = [] if node is None else [(path, node)]
    while stack:
        where, current = stack.pop()
        yield where, current
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for key, value in reversed(current.value):
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                stack.append(((*where, name), value))
        elif isinstance(current, yaml.SequenceNode):
            for index, item in reversed(list(enumerate(current.value))):
                stack.append(((*where, _label(item, index)), item))


def dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(root)"


def duplicate_keys(node: yaml.Node | None) -> list[str]:
    """One error per key given twice in the same mapping (YAML would keep the last silently)."""
    errors = []
    for where, current in walk(node):
        if not isinstance(current, yaml.MappingNode):
            continue
        first_line: dict[str, int] = {}
        for key, _value in current.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in first_line:
                lines = f"lines {first_line[key.value]} and {line}"
                errors.append(f"{dotted((*where, key.value))}: duplicate key ({lines})")
            else:
                first_line[key.value] = line
    return errors


def scalar_paths(node: yaml.Node | None, needle: str) -> list[str]:
    """The paths of the scalars (values, or keys) whose text contains `needle`."""
    found = []
    for where, current in walk(node):
        if isinstance(current, yaml.MappingNode):
            for key, _ in current.value:
                if isinstance(key, yaml.ScalarNode) and needle in str(key.value):
                    found.append(dotted((*where, str(key.value))))
        elif isinstance(current, yaml.ScalarNode) and needle in str(current.value):
            found.append(dotted(where))
    return list(dict.fromkeys(found))
