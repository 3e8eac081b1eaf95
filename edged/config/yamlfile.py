"""YAML loading that remembers the line of every key, so errors can point at it, and that
reads any file under bounds: a config is read by a daemon that must keep deciding, and
by ``check-config`` under systemd's ``ExecStartPre``, so no file may take them down.

Bounds (docs/limits.md, "Config files"): the file's size (read at most ``MAX_BYTES``
plus one), its nesting depth (checked by the composer, before anything recurses that
deep) and its node count with aliases expanded (a "billion laughs" file composes to a
few shared nodes, but construction, validation and the line map all walk the expanded
tree). Every failure of reading, decoding or parsing is a :class:`ConfigFileError`
naming the file, the line where known, and the reason it is counted under.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edged.base.durable import read_at_most
from edged.base.errors import ConfigError

Location = tuple[str | int, ...]

#: Largest config file read (bytes); a real one is a few KB.
MAX_BYTES = 1024 * 1024
#: Deepest nesting of mappings and sequences, aliases expanded; a real config needs < 10.
MAX_DEPTH = 64
#: Most nodes (scalars, mappings, sequences), aliases expanded; a real config has < 1,000.
MAX_NODES = 100_000


class ConfigFileError(ConfigError):
    """A config file refused as a whole: ``reason`` names why (unreadable, too_large,
    not_utf8, not_yaml, too_deep, too_many_nodes, invalid), for the refusal's counter."""

    def __init__(self, reason: str, problems: list[str]) -> None:
        super().__init__(problems)
        self.reason = reason


class _Refused(yaml.composer.ComposerError):
    """A bound of this module exceeded while composing, located like any YAML error."""

    def __init__(self, reason: str, problem: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, problem, mark)
        self.reason = reason


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a repeated key silently wins in plain
    PyYAML, which hides mistakes in hand-written configs) and counts, while composing,
    the depth and the nodes of the tree as it will be once aliases are expanded."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0  # nodes open around the one being composed, itself included
        self._peak = 0  # deepest depth reached inside the innermost open node
        self._nodes = 0  # nodes so far, each alias counted as the nodes it expands to
        # An anchored node's expanded size: (nodes, height). An alias to a node that is
        # not in here yet refers to a node still open, i.e. to itself.
        self._extents: dict[yaml.Node, tuple[int, int]] = {}

    def _grow(self, nodes: int, deepest: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        self._peak = max(self._peak, deepest)
        if deepest > MAX_DEPTH:
            raise _Refused("too_deep", f"nested deeper than {MAX_DEPTH} levels", mark)
        if self._nodes > MAX_NODES:
            raise _Refused("too_many_nodes", f"over {MAX_NODES:,} nodes once aliases are "
                           "expanded", mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is the composer's own error
                extent = self._extents.get(target)
                if extent is None:
                    raise _Refused("not_yaml", f"alias *{event.anchor} is used inside its "
                                   "own anchor", event.start_mark)
                nodes, height = extent
                self._grow(nodes, self._depth + height, event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        outer_peak, self._peak = self._peak, self._depth
        start = self._nodes
        self._grow(1, self._depth, event.start_mark)
        node = super().compose_node(parent, index)
        if getattr(event, "anchor", None) is not None:
            self._extents[node] = (self._nodes - start, self._peak - self._depth + 1)
        self._peak = max(outer_peak, self._peak)
        self._depth -= 1
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:
            # A scalar Python refuses (an integer over its digit limit, a date like
            # 2024-13-45): a YAML error at the node's line, like any other.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {str(exc)[:200]}",
                node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # a sequence or mapping as a key
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a scalar (got {type(key).__name__})",
                    key_node.start_mark) from None
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _walk(node: yaml.Node, loc: Location, lines: dict[Location, int],
          duplicates: list[tuple[int, str]]) -> None:
    """Record each key's line; collect every duplicate key (line, message), so that one
    run reports them all. Bounded: the composer capped the expanded tree's size and depth."""
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, Any], int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*loc, key)
            # Caught here rather than only in _Loader, so the message names the whole path.
            tagged = (key_node.tag, key)
            line = key_node.start_mark.line + 1
            if tagged in seen:
                duplicates.append((line, f"duplicate key '{'.'.join(str(p) for p in child)}' "
                                         f"(first on line {seen[tagged]})"))
                continue
            seen[tagged] = line
            lines[child] = line
            _walk(value_node, child, lines, duplicates)
            # A nested mapping's own entries start below its key; keep the key's line.
            lines[child] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), lines, duplicates)


def _yaml_problem(exc: yaml.YAMLError, filename: str, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # located by position, not by a mark
        line = text.count("\n", 0, exc.position) + 1
        return (f"Invalid YAML at {filename}, line {line}: character #x{exc.character:x} "
                f"is not allowed ({exc.reason})")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{filename}, line {mark.line + 1}" if mark else filename
    problem = getattr(exc, "problem", None) or str(exc)
    return f"Invalid YAML at {where}: {problem}"


def check_size(size: int, filename: str) -> None:
    if size > MAX_BYTES:
        raise ConfigFileError("too_large", [
            f"Cannot read config {filename}: {size:,} bytes is over the limit of "
            f"{MAX_BYTES:,}"])


def load_yaml(text: str, filename: str) -> tuple[Any, dict[Location, int]]:
    """Parse ``text``; return the data and a map from key path to 1-based line number.

    Raises :class:`ConfigFileError` for anything that is not a bounded YAML document: a
    syntax error, a value the constructor rejects, a bound exceeded, duplicate keys.
    """
    # The byte count is taken only when the characters alone do not settle it.
    if len(text) > MAX_BYTES // 4:
        check_size(len(text.encode("utf-8", "surrogatepass")), filename)
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses unprintable characters at once
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[Location, int] = {}
        duplicates: list[tuple[int, str]] = []
        _walk(node, (), lines, duplicates)
        if duplicates:
            raise ConfigFileError("invalid", [f"Invalid YAML at {filename}, line {line}: "
                                              f"{problem}" for line, problem in duplicates])
        return loader.construct_document(node), lines
    except _Refused as exc:
        raise ConfigFileError(exc.reason, [_yaml_problem(exc, filename, text)]) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError("not_yaml", [_yaml_problem(exc, filename, text)]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Not seen (the loader turns a value's failure into a located YAML error, and
        # the bounds keep recursion shallow), but no file may end a daemon.
        raise ConfigFileError("not_yaml", [
            f"Invalid YAML at {filename}: {type(exc).__name__}: {str(exc)[:200]}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_config_text(path: Path | str) -> str:
    """The text of a config file, read under the size bound and decoded as UTF-8;
    :class:`ConfigFileError` (unreadable, too_large, not_utf8) otherwise."""
    path = Path(path)
    try:
        # At most one byte over the bound: a 50 MB file (or /dev/zero) costs 1 MiB.
        data = read_at_most(path, MAX_BYTES)
    except OSError as exc:
        raise ConfigFileError("unreadable", [
            f"Cannot read config {path}: {exc.strerror or exc}"]) from None
    if len(data) > MAX_BYTES:
        raise ConfigFileError("too_large", [
            f"Cannot read config {path}: over the limit of {MAX_BYTES:,} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError("not_utf8", [
            f"Cannot read config {path}: not UTF-8 at line {line} (byte {exc.start:,}: "
            f"{data[exc.start:exc.start + 1]!r})"]) from None


def read_yaml(path: Path) -> tuple[Any, dict[Location, int]]:
    return load_yaml(read_config_text(path), str(path))


def line_of(lines: dict[Location, int], loc: Location) -> int | None:
    """The line of ``loc`` or, for a key that is missing, of its nearest parent."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())
