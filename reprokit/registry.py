"""Names the kit resolves to code: an importable ``"package.module:attribute"`` path, the one door for rewards,
callbacks and (through their tables) models, example sets and benchmarks.
"""

from __future__ import annotations

import importlib

__all__ = ["import_object"]


def import_object(spec: str, what: str = "object"):
    """The attribute that ``"package.module:attribute"`` names (the attribute may be dotted: ``module:Class.method``).

    Raises ValueError naming ``what`` (the option it came from), the spec and what to write instead.
    """
    if not isinstance(spec, str):
        raise TypeError(f"{what}: expected a 'package.module:attribute' string, got a {type(spec).__name__}")
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r} is malformed: write an import path 'package.module:attribute'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj
