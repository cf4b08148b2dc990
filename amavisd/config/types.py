"""Value converters for settings: each takes a raw value and returns it checked.

A converter raises ``ValueError`` with a short reason; the caller adds the origin
(``file:line``) and the setting name.  Config files are written by admins used
to Perl, so numbers may arrive as strings and booleans as 0/1 or ``undef``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Converter = Callable[[Any], Any]


def anything(value: Any) -> Any:
    """Accept any value unchanged (structured settings checked by their users)."""
    return value


def boolean(value: Any) -> bool | None:
    """Perl truth: undef, 0, '' and '0' are false; None stays None (undef)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "0")
    raise ValueError(f"expected a boolean (0/1), got {type(value).__name__}")


def integer(minimum: int | None = None, maximum: int | None = None,
            raise_to_minimum: bool = False) -> Converter:
    """An integer, optionally bounded; strings of digits are accepted."""

    def convert(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("-").isdigit():
                raise ValueError(f"expected a number, got {value!r}")
            value = int(text)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        if minimum is not None and value < minimum:
            if raise_to_minimum:
                return minimum
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return convert


def number(value: Any) -> float | None:
    """A float (scores, levels); strings are accepted."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def string(value: Any) -> str | None:
    """A string; numbers are turned into their text, as Perl would."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a string, got a boolean")
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def string_list(value: Any) -> list[str]:
    """A list of strings; a single string becomes a one-element list."""
    if value is None:
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if item is None:
                out.append("")
            elif isinstance(item, (str, int)) and not isinstance(item, bool):
                out.append(str(item))
            else:
                raise ValueError(f"list items must be strings, got {type(item).__name__}")
        return out
    raise ValueError(f"expected a list, got {type(value).__name__}")


def ports(value: Any) -> list[int]:
    """``$inet_socket_port``: a port number or a list of them."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        port = integer(1, 65535)(item)
        out.append(port)
    return out


def mapping(value: Any) -> dict:
    """A dict (hash); None is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a dict, got {type(value).__name__}")
    return value


def sequence(value: Any) -> list:
    """A list (array) of anything; None is an empty one."""
    if value is None:
        return []
    if isinstance(value, tuple):
        return list(value)
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


def delivery_method(value: Any) -> str | list[str] | None:
    """A delivery method string (spec/protocols.md 5.1) or a failover list of them."""
    if value is None or value == "":
        return value
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a method string, got {type(item).__name__}")
        scheme = item.split(":", 1)[0].lower()
        if scheme not in ("smtp", "lmtp", "bsmtp", "pipe", "local", "sql"):
            raise ValueError(f"unknown delivery method scheme {scheme!r} in {item!r}")
    return list(value) if isinstance(value, (list, tuple)) else value


def choice(*allowed: str | None) -> Converter:
    """One of a fixed set of strings (case-insensitive), or None if allowed."""

    def convert(value: Any) -> str | None:
        if value is None and None in allowed:
            return None
        text = string(value)
        for option in allowed:
            if option is not None and text is not None and text.upper() == option.upper():
                return option
        names = ", ".join(repr(a) for a in allowed if a is not None)
        raise ValueError(f"must be one of {names}, got {value!r}")

    return convert
