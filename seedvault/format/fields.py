"""Checked reading of stored JSON: every value read from storage has the shape the format says, or a catalogued error.

Why: stored bytes are input. A key object that is a JSON list, a ``nonce`` that is a number or a manifest
whose ``features`` is a number must not reach ``dict.get``, ``base64`` or ``set()`` (an AttributeError or
TypeError there is an "internal error" that takes down ``list`` and every "latest backup" lookup). Each
parser reads its object through :func:`load_json` and :class:`Fields` and names its own error class and
message through ``fail``; nothing here catches broadly.

    fail = corrupted("key object of backup 20261125T020000Z-3f9a1c", AuthenticationFailed)
    rec = Fields(load_json(data, fail), fail)
    nonce = rec.text("nonce", max_len=64)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from seedvault.errors import SeedvaultError

Fail = Callable[[str], SeedvaultError]

MAX_INT = 2**63 - 1  # every size, count and parameter of the format fits a signed 64-bit integer
MAX_TEXT = 4096  # a string field of a stored object, unless the field says otherwise
MAX_DEPTH = 64  # nesting of stored JSON (a manifest's source metadata is a few levels deep)


def corrupted(what: str, error: type[SeedvaultError]) -> Fail:
    """The usual ``fail``: ``<what> is corrupted (<why>)`` as ``error``."""
    return lambda why: error(f"{what} is corrupted ({why})")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes | str, fail: Fail) -> Any:
    """Parse stored JSON; malformed, too deeply nested, NaN/Infinity or non-UTF-8 input raises ``fail``."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; so is an over-long integer
        raise fail("not valid JSON") from None
    if _depth(value) > MAX_DEPTH:
        raise fail(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (json.loads already bounded it by the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def is_int(value: Any) -> bool:
    """A JSON integer (``True`` is an ``int`` to Python, not to the format)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Fields:
    """The fields of one stored JSON object, read with their types checked.

    ``where`` is the path of this object inside the stored one (``objects[0]``), so the reason names the
    field exactly. Absent fields are errors unless ``optional``; JSON ``null`` only where ``nullable``.
    """

    def __init__(self, value: Any, fail: Fail, where: str = "") -> None:
        if not isinstance(value, dict):
            raise fail(f"{where or 'the top level'} is {_kind(value)}, not a JSON object")
        self.data: dict[str, Any] = value
        self.fail = fail
        self.where = where

    def name(self, key: str) -> str:
        key = key if len(key) <= 64 else key[:61] + "..."  # a stored key can be anything, even 100 kB
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, *, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise self.fail(f"field {self.name(key)!r} is missing")
        return self.data[key]

    def _bad(self, key: str, value: Any, wanted: str) -> SeedvaultError:
        return self.fail(f"field {self.name(key)!r} is {_kind(value)}, not {wanted}")

    def text(
        self,
        key: str,
        *,
        optional: bool = False,
        nullable: bool = False,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] | None = None,
        max_len: int = MAX_TEXT,
    ) -> str | None:
        """A string field, at most ``max_len`` characters, matching ``pattern`` whole or one of ``choices``."""
        value = self.raw(key, optional=optional)
        if value is None and (nullable or (optional and key not in self.data)):
            return None
        if not isinstance(value, str):
            raise self._bad(key, value, "a string")
        if len(value) > max_len:
            raise self.fail(f"field {self.name(key)!r} is longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(f"field {self.name(key)!r} has an invalid value")
        if choices is not None and value not in choices:
            raise self.fail(f"field {self.name(key)!r} is none of {', '.join(choices)}")
        return value

    def int(
        self, key: str, *, optional: bool = False, nullable: bool = False, lo: int = 0, hi: int = MAX_INT
    ) -> int | None:
        """An integer field in ``lo..hi`` (booleans and floats are not integers here)."""
        value = self.raw(key, optional=optional)
        if value is None and (nullable or (optional and key not in self.data)):
            return None
        if not is_int(value):
            raise self._bad(key, value, "an integer")
        if not lo <= value <= hi:
            raise self.fail(f"field {self.name(key)!r} is out of range ({lo}..{hi})")
        return value

    def obj(self, key: str, *, optional: bool = False, nullable: bool = False) -> Fields | None:
        """A nested object field, as :class:`Fields`."""
        value = self.raw(key, optional=optional)
        if value is None and (nullable or (optional and key not in self.data)):
            return None
        if not isinstance(value, dict):
            raise self._bad(key, value, "a JSON object")
        return Fields(value, self.fail, self.name(key))

    def items(self, key: str, *, optional: bool = False, max_items: int = 100_000) -> list[Any]:
        """A list field (its items unchecked: the caller checks them, e.g. with :meth:`objects`)."""
        value = self.raw(key, optional=optional)
        if value is None and optional and key not in self.data:
            return []
        if not isinstance(value, list):
            raise self._bad(key, value, "a list")
        if len(value) > max_items:
            raise self.fail(f"field {self.name(key)!r} has more than {max_items} entries")
        return value

    def texts(self, key: str, *, optional: bool = False, max_len: int = MAX_TEXT) -> list[str]:
        """A list of strings."""
        out = self.items(key, optional=optional)
        for i, item in enumerate(out):
            if not isinstance(item, str) or len(item) > max_len:
                raise self.fail(f"entry {i} of field {self.name(key)!r} is {_kind(item)}, not a short string")
        return out

    def objects(self, key: str, *, optional: bool = False) -> list[Fields]:
        """A list of objects, each as :class:`Fields`."""
        return [
            Fields(item, self.fail, f"{self.name(key)}[{i}]")
            for i, item in enumerate(self.items(key, optional=optional))
        ]

    def text_map(self, key: str, *, optional: bool = False, max_len: int = MAX_TEXT) -> dict[str, str]:
        """An object of string -> string (labels)."""
        sub = self.obj(key, optional=optional)
        if sub is None:
            return {}
        for k, v in sub.data.items():
            if not isinstance(v, str) or len(v) > max_len or len(k) > max_len:
                raise self.fail(f"field {sub.name(k)!r} is {_kind(v)}, not a short string")
        return sub.data


def short(value: Any, limit: int = 40) -> str:
    """``repr`` of a stored value for a message, cut to ``limit`` characters (it may be anything, of any size)."""
    if isinstance(value, str):
        value = value[:limit]
    text = _kind(value) if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """How a JSON value is named in a message (never its content: it may be anything)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a JSON object"
    return type(value).__name__
