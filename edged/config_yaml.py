"""YAML loading that remembers the line of every key, so errors can point at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Location = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: a repeated key silently wins in plain
    PyYAML, which hides mistakes in hand-written configs."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _walk(node: yaml.Node, loc: Location, lines: dict[Location, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, Any], int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*loc, key)
            # Caught here rather than only in _Loader, so the message names the whole path.
            tagged = (key_node.tag, key)
            if tagged in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key '{'.'.join(str(p) for p in child)}' "
                    f"(first on line {seen[tagged]})",
                    key_node.start_mark,
                )
            seen[tagged] = key_node.start_mark.line + 1
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines)
            # A nested mapping's own entries start below its key; keep the key's line.
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), lines)


def load_yaml(text: str, filename: str) -> tuple[Any, dict[Location, int]]:
    """Parse ``text``; return the data and a map from key path to 1-based line number.

    Raises ``yaml.YAMLError`` (with marks naming the line) on a syntax error.
    """
    node = yaml.compose(text, Loader=_Loader)
    if node is None:
        return {}, {}
    lines: dict[Location, int] = {}
    _walk(node, (), lines)
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    return data, lines


def read_yaml(path: Path) -> tuple[Any, dict[Location, int]]:
    return load_yaml(path.read_text(encoding="utf-8"), str(path))


def line_of(lines: dict[Location, int], loc: Location) -> int | None:
    """The line of ``loc`` or, for a key that is missing, of its nearest parent."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())
