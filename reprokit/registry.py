"""Names the kit resolves to code: models, example sets, benchmarks, rewards and config sections by name, each an
importable ``"package.module:function"`` path.

The kit's own code never imports the code a name points to until the name is used, so a client such as the
CPU world (:mod:`reprokit.worlds`) is one set of entries here, and your own benchmark, model or reward plugs in
the same way: either register it (``register("benchmark", "my_bench", "mypkg.data:load")``) or write the path
itself wherever a name is accepted (``--eval.benchmarks '[mypkg.data:load]'``).

What each kind of entry is called with:

=================  ===============================================  ========================================
kind               a name is used as                                 the function
=================  ===============================================  ========================================
``model``          ``--model.name_or_path NAME``                     ``() -> str``: a local model folder
``examples``       ``--data.examples PREFIX:REST``                   ``(rest) -> list[Example]``
``benchmark``      ``--eval.benchmarks [NAME]``                      ``(name, limit) -> list[Example]``
``reward``         ``--rollout.reward NAME``                            ``(completions, answers, **fields)``
``traces``         ``--data.file PREFIX:REST`` (distill)             ``(rest, path) -> path`` of a JSONL
``section``        ``--NAME.field`` in every recipe                  a dataclass; the parsed value is kept
                                                                     for the entries to read (:func:`settings`)
=================  ===============================================  ========================================
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ENTRIES", "KINDS", "configure", "import_object", "lookup", "names", "register", "resolve", "settings"]

KINDS = ("model", "examples", "benchmark", "reward", "traces", "section")

ENTRIES: dict[str, dict[str, str]] = {
    "model": {"world": "reprokit.worlds.names:base_model", "gemma-3-270m": "reprokit.gguf:gemma_3_270m"},
    "examples": {"world": "reprokit.worlds.names:examples", "word_problems": "reprokit.domains.word_problems:examples"},
    "benchmark": {
        "world_test": "reprokit.worlds.names:benchmark",
        "world_hard": "reprokit.worlds.names:benchmark",
        "word_problems": "reprokit.domains.word_problems:benchmark",
    },
    "reward": {  # the built-in ones: reprokit.rewards.REWARDS
        "world": "reprokit.worlds.task:reward",
        "world_mode": "reprokit.worlds.names:mode_reward",
        "word_problems": "reprokit.domains.word_problems:reward",
    },
    "traces": {"world": "reprokit.worlds.names:teacher_traces"},
    "section": {"world": "reprokit.worlds.config:WorldConfig", "world_base": "reprokit.worlds.config:BaseConfig"},
}
"""kind -> name -> ``"module:attribute"``. Edit through :func:`register`."""


_SETTINGS: dict[str, Any] = {}


def register(kind: str, name: str, target: str) -> None:
    """Make ``name`` resolve to ``target`` (``"package.module:attribute"``) for entries of ``kind``."""
    _check_kind(kind)
    if ":" not in target:
        raise ValueError(f"register({kind!r}, {name!r}, {target!r}): the target must be 'package.module:attribute'")
    ENTRIES[kind][name] = target


def names(kind: str) -> list[str]:
    """The registered names of ``kind``, sorted."""
    _check_kind(kind)
    return sorted(ENTRIES[kind])


def lookup(kind: str, name: str) -> str | None:
    """The target of a registered name, or None."""
    _check_kind(kind)
    return ENTRIES[kind].get(name)


def resolve(kind: str, name: str, what: str | None = None):
    """The object a registered name or a ``"package.module:attribute"`` path stands for.

    Raises ValueError naming ``what`` (the option the name came from), the name and the registered names.
    """
    _check_kind(kind)
    what = what or kind
    target = ENTRIES[kind].get(name)
    if target is None and ":" not in name:
        known = ", ".join(repr(n) for n in names(kind)) or "none"
        raise ValueError(f"unknown {what} {name!r}: use a registered name ({known}) or an import path 'package.module:function'")
    return import_object(target or name, what=what)


def configure(section: str, value: Any) -> None:
    """Keep the parsed value of a registered config section (the command line does this for every recipe)."""
    _SETTINGS[section] = value


def settings(section: str, default: Any = None) -> Any:
    """The parsed value of a registered config section, or ``default`` when no recipe has set it."""
    return _SETTINGS.get(section, default)


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


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"registry kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
