"""``--method-option NAME.KEY=VALUE``: parse, and check against what each method takes, before any image.

The parsing is torch-free (``method_specs``); this module checks against the registry's classes.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..method_specs import collect_method_options, parse_method_option, parse_value
from .base import check_options, method_class

__all__ = ["method_options", "parse_method_option", "parse_value"]


def method_options(pairs: Iterable[str], methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse and check every ``--method-option``: a known method of this run, an option it takes."""
    return collect_method_options(pairs, methods, lambda name, opts: check_options(method_class(name), opts))
