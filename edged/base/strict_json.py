"""JSON from outside, read strictly: a size bound, a nesting bound, no repeated keys.

Plain ``json.loads`` lets the last of two equal keys win (a signed manifest that lists a
file twice would be checked against one entry and unpacked with another), recurses once
per nesting level (a 12 KB message of ``{"a":`` x2000 raises RecursionError, which is not
a ValueError), and reads whatever size it is given. :func:`loads` refuses all three with
one exception type, :class:`JsonError` (a ValueError), whose message says what and where.

Where repeated keys are allowed (sensor rows, replies from AWS), documents are read by
orjson, four times as fast as json; whatever it refuses, and any document with a run of
19 digits (an integer that may be beyond 64 bits, which orjson turns into a float), is
read by json, so the value or the refusal is always json's (a property test holds it to
that).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

#: Deepest nesting accepted by default: every document edged reads needs fewer than 10.
MAX_DEPTH = 32
#: Largest document accepted by default (bytes).
MAX_BYTES = 1024 * 1024


# A whole string (escapes included), or one bracket: what nesting depends on.
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
_OPEN = frozenset("[{")
_CLOSE = frozenset("]}")
# For _bounded: keep only brackets (both kinds as [ and ]), quotes and backslashes.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"\\')
# Longer documents skip the bracket count: it would cost more than _bounded saves.
_SHORT = 2048
# For _long_digits: a digit becomes 0, any other byte a space.
_ONLY_DIGITS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))
_DIGIT_RUN = b"0" * 19


class JsonError(ValueError):
    """A JSON document was refused; the message says why (and where, when known)."""


class TooDeep(JsonError):
    """Refused for its nesting, before it was parsed (a reader may count it apart)."""


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"key {key[:60]!r} appears twice in one object")
            seen.add(key)
    return result


def nesting_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in ``text``, strings skipped. Visits
    only brackets and strings (found by one regex, in C), so a batch of many small rows
    costs about a microsecond a row."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = deepest = 0
    for token in _STRUCTURE.findall(text):
        if token in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif token in _CLOSE:
            depth -= 1
    return deepest


def check_depth(text: str | bytes, max_depth: int = MAX_DEPTH) -> None:
    """JsonError if ``text`` nests deeper than ``max_depth``, before anything parses it.
    Costs two C-speed counts for a short document with few brackets (a sensor row: a
    seventh of its parse), a few C passes (:func:`_bounded`) otherwise (a batch of rows:
    a tenth of its parse)."""
    if len(text) <= _SHORT:
        if isinstance(text, bytes):
            brackets = text.count(b"[") + text.count(b"{")
        else:
            brackets = text.count("[") + text.count("{")
        if brackets <= max_depth:
            return
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    bounded = _bounded(data, max_depth)
    if bounded is False or (bounded is None and nesting_depth(text) > max_depth):
        raise TooDeep(f"nested deeper than {max_depth} levels")


def _bounded(data: bytes, max_depth: int) -> bool | None:
    """True if ``data`` nests at most ``max_depth`` deep, False if deeper, None if this
    quick test cannot tell. In C: a batch of rows costs a tenth of its parse here, where
    :func:`nesting_depth`'s token loop costs twice the parse.

    Everything but brackets and quotes goes; then, when no string holds a bracket, a
    quote or a backslash, the strings are the pairs ``""`` (quote 0 can only pair with
    quote 1, quote 2 with quote 3, ...), and what is left is the structure. Each
    ``replace`` removes every innermost pair, one level: empty after ``max_depth``
    rounds means no deeper nesting; a ``[]`` still there is a pair nested deeper.
    """
    structure = data.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure or b"\\" in structure:
        return None  # escapes, or brackets inside strings: only the tokenizer can tell
    for _ in range(max_depth):
        if not structure:
            return True
        structure = structure.replace(b"[]", b"")
    if not structure:
        return True
    return False if b"[]" in structure else None  # unbalanced: let the tokenizer say


def _long_digits(text: str | bytes) -> bool:
    """Whether ``text`` has 19 digits in a row: one C pass and a search, no regex (whose
    search would cost four times orjson's parse)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return _DIGIT_RUN in data.translate(_ONLY_DIGITS)


def loads(text: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
          repeated_keys: bool = False) -> Any:
    """Parse ``text`` (str, or UTF-8 bytes) under the bounds; JsonError otherwise (for
    bytes in another encoding too).

    ``repeated_keys=True`` allows a key twice in one object (the last wins), for data
    whose keys carry no trust; manifests, job documents and requests keep the default.
    """
    size = len(text)
    if size > max_bytes:
        raise JsonError(f"{size} bytes is over the limit of {max_bytes}")
    # json.loads would take UTF-16 and UTF-32 bytes too (it guesses from the first four);
    # JSON between systems is UTF-8 (RFC 8259, 8.1), and nothing edged reads is other.
    if isinstance(text, bytes) and json.detect_encoding(text) != "utf-8":
        raise JsonError(f"not UTF-8 (it reads as {json.detect_encoding(text)})")
    check_depth(text, max_depth)
    if repeated_keys and not _long_digits(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # json decides: it takes NaN and lone surrogates, and says where it fails
    try:
        if repeated_keys:
            return json.loads(text)
        return json.loads(text, object_pairs_hook=_no_repeats)
    except JsonError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonError(f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") \
            from None
    except UnicodeDecodeError as exc:
        raise JsonError(f"not UTF-8 at byte {exc.start}") from None
    except (ValueError, RecursionError, MemoryError, TypeError) as exc:
        # Integer strings over Python's digit limit (ValueError), a stack deeper than the
        # interpreter allows: whatever the parser raises, the caller sees one type.
        raise JsonError(f"not JSON: {type(exc).__name__}: {str(exc)[:100]}") from None
