"""Typed reads from a parsed TOML table, each failure a one-line `JobError`.

Small on purpose: the job format is flat, and every message must name the field,
the value and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.config.given_files import read_regular
from pipeline.errors import JobError, MissingField

_REQUIRED: Any = object()
MAX_TOML_BYTES = 16 << 20   # a job or preset file: text settings, never data
MAX_DEPTH = 32   # tables and arrays inside one another; a job file needs 4 ([[source.prompts]])


def read_toml(path: Path, what: str) -> dict[str, Any]:
    raw = read_regular(path, what, MAX_TOML_BYTES)   # a FIFO or /dev/zero: refused, unread
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JobError(what, str(path), f"cannot be read as a TOML text file ({err})") from None
    try:
        data = tomllib.loads(text)
    except ValueError as err:  # TOMLDecodeError, or an integer of over 4300 digits
        raise JobError(what, str(path), f"invalid TOML: {err}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise JobError(what, str(path), f"arrays or inline tables nested too deep to read; at most "
                       f"{MAX_DEPTH} levels") from None
    depth = _depth(data)
    if depth > MAX_DEPTH:  # deep data still parses, but repr() and json.dumps() of it recurse
        raise JobError(what, str(path), f"tables and arrays nested {depth} levels deep; at most {MAX_DEPTH}")
    return data


def _depth(data: Any) -> int:
    """How deep tables and arrays nest in parsed TOML (a flat table: 1), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


class Table:
    """One TOML table; unknown keys are rejected when `done()` is called."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, dict):
            raise JobError(prefix, data, "expected a table")
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def _get(self, key: str, default: Any, allowed: str) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            # a misspelt field is the likelier mistake than a missing one: name it
            for other in difflib.get_close_matches(key, [str(k) for k in self.data if k not in self.used], n=1):
                raise JobError(self.name(other), self.data[other], f"unknown field; did you mean {key!r}?")
            raise MissingField(self.name(key), allowed)
        return default

    def table(self, key: str, *, required: bool = True) -> Table:
        value = self._get(key, _REQUIRED if required else {}, "a [" + self.name(key) + "] table")
        return Table(value, self.name(key))

    def integer(self, key: str, default: Any = _REQUIRED, *, lo: int | None = None,
                hi: int | None = None) -> int:
        allowed = _range_text("an integer", lo, hi)
        value = self._get(key, default, allowed)
        if isinstance(value, bool) or not isinstance(value, int):
            raise JobError(self.name(key), value, f"expected {allowed}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise JobError(self.name(key), value, f"expected {allowed}")
        return value

    def number(self, key: str, default: Any = _REQUIRED, *, lo: float | None = None) -> float:
        allowed = _range_text("a finite number", lo, None)
        value = self._get(key, default, allowed)
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise JobError(self.name(key), value, f"expected {allowed}")  # TOML reads nan and inf as floats
        if lo is not None and value < lo:
            raise JobError(self.name(key), value, f"expected {allowed}")
        return float(value)

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default, "true or false")
        if not isinstance(value, bool):
            raise JobError(self.name(key), value, "expected true or false")
        return value

    def string(self, key: str, default: Any = _REQUIRED, *, choices: Iterable[str] | None = None,
               max_len: int = 4096) -> str:
        options = tuple(choices) if choices is not None else None
        allowed = "one of " + ", ".join(options) if options else "a string"
        value = self._get(key, default, allowed)
        if not isinstance(value, str) or (options and value not in options):
            raise JobError(self.name(key), value, f"expected {allowed}")
        if not options and (not value or len(value) > max_len):
            raise JobError(self.name(key), value,
                           f"expected a non-empty string of at most {max_len} characters")
        return value

    def string_list(self, key: str, default: Any = _REQUIRED, *, choices: Iterable[str],
                    allow_empty: bool = False) -> tuple[str, ...]:
        options = tuple(choices)
        allowed = ("a list" if allow_empty else "a non-empty list") + " of distinct values from " + ", ".join(options)
        value = self._get(key, default, allowed)
        if (not isinstance(value, list) or not (value or allow_empty) or len(set(map(str, value))) != len(value)
                or any(v not in options for v in value)):
            raise JobError(self.name(key), value, f"expected {allowed}")
        return tuple(value)

    def tables(self, key: str) -> list[Table]:
        """An array of tables (`[[key]]`), each named key[i] in errors; none when absent."""
        value = self._get(key, [], "an array of tables")
        if not isinstance(value, list):
            raise JobError(self.name(key), value, f"expected an array of tables ([[{self.name(key)}]])")
        return [Table(item, f"{self.name(key)}[{i}]") for i, item in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            key = unknown[0]
            near = difflib.get_close_matches(str(key), sorted(self.used), n=1)
            known = ", ".join(sorted(self.used)) or "none"
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise JobError(self.name(key), self.data[key], f"unknown field; {hint}allowed here: {known}")


def _finite(value: float) -> bool:
    """Whether a number is finite as a float (TOML's integers have no bound; 1e400 is inf)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _range_text(kind: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{kind} from {lo} to {hi}"
    if lo is not None:
        return f"{kind} >= {lo}"
    return kind
