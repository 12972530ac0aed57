"""``--method-option NAME.KEY=VALUE``: parse, and check against what each method takes, before any image."""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import UsageError
from .base import check_options, method_class


def parse_value(text: str) -> Any:
    """Read an option value as bool (true/false), int, float, or else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method_option(text: str) -> tuple[str, str, Any]:
    """Split ``cam:scorecam.batch_size=32`` into (method, key, value); the key is after the last dot."""
    left, eq, value = text.partition("=")
    method, dot, key = left.rpartition(".")
    if not eq or not dot or not method or not key.isidentifier():
        raise UsageError(f"--method-option {text!r}: expected METHOD.OPTION=VALUE, e.g. cam:scorecam.batch_size=32")
    return method, key, parse_value(value)


def method_options(pairs: Iterable[str], methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse and check every ``--method-option``: a known method of this run, an option it takes."""
    wanted = list(methods)
    out: dict[str, dict[str, Any]] = {}
    for text in pairs:
        name, key, value = parse_method_option(text)
        cls = method_class(name)
        check_options(cls, {key: value})
        if name not in wanted:
            raise UsageError(
                f"--method-option {text!r}: {name} is not among this run's methods ({', '.join(wanted)}); add -m {name}"
            )
        out.setdefault(name, {})[key] = value
    return out
