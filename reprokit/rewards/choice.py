"""Two non-math rewards, written as a user would write their own: a multiple-choice letter and a number
with a tolerance.

Both follow the reward signature ``(completions, answers, **row_fields) -> list[float]``: one completion
and one label per rollout, plus the dataset row's other fields as keyword lists aligned with the
completions (a field a row lacks arrives as None). They are registered as ``"choice"`` and
``"numeric"`` in :data:`reprokit.rewards.REWARDS`; ``docs/adapting.md`` walks through writing such a
function in your own module and naming it ``my_module:my_function`` instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from reprokit.rewards.math import extract_boxed

__all__ = [
    "CHOICE_LETTERS",
    "DEFAULT_ABS_TOL",
    "DEFAULT_REL_TOL",
    "choice_reward",
    "extract_choice",
    "extract_number",
    "numeric_reward",
    "parse_number",
]

CHOICE_LETTERS = "ABCDE"
DEFAULT_REL_TOL = 1e-2
"""Relative tolerance of :func:`numeric_reward` when the row has no ``rel_tol`` field: within 1%."""
DEFAULT_ABS_TOL = 1e-6
"""Absolute tolerance when the row has no ``abs_tol`` field; decides answers near 0, where 1% is nothing."""

# ------------------------------------------------------------------ multiple choice

# A letter that is a word of its own: "(C)", "C.", "C)" and "answer: c" count; the C of "Cat" does not.
_LETTER = re.compile(rf"(?<![A-Za-z0-9])([{CHOICE_LETTERS}])(?![A-Za-z0-9])", re.IGNORECASE)
_STATED = re.compile(
    rf"answer\s*(?:is|:)?\s*(?:option\s*)?[(\[]?\s*([{CHOICE_LETTERS}])(?![A-Za-z0-9])", re.IGNORECASE
)
_BOX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def extract_choice(text: str) -> str | None:
    """The chosen letter (upper case) of a response, or None.

    In order of trust: the last ``\\boxed{}`` holding a single letter (``\\boxed{C}``, ``\\boxed{(c)}``,
    ``\\boxed{\\text{C}}``); else the last "answer is C" / "Answer: (C)"; else the last upper-case letter
    A-E standing alone; else the last lower-case one (lower case comes last because "a" is also an
    English word).
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = _BOX_WRAPPERS.sub(r"\1", boxed).strip().strip("()[]. ").strip()
        if len(inner) == 1 and inner.upper() in CHOICE_LETTERS:
            return inner.upper()
    stated = _STATED.findall(text)
    if stated:
        return stated[-1].upper()
    letters = _LETTER.findall(text)
    upper = [x for x in letters if x.isupper()]
    if upper:
        return upper[-1]
    return letters[-1].upper() if letters else None


def _gold_letter(answer: str, row: int) -> str:
    letter = str(answer).strip().strip("()[]. ").strip().upper()
    if len(letter) != 1 or letter not in CHOICE_LETTERS:
        raise ValueError(
            f"choice_reward: answer {answer!r} of completion {row} is not a letter {'/'.join(CHOICE_LETTERS)}; "
            "set the answer field of your data to the correct option's letter (e.g. 'B')"
        )
    return letter


def choice_reward(completions: Sequence[str], answers: Sequence[str], **fields) -> list[float]:
    """1.0 when the response's chosen letter (:func:`extract_choice`) is the label's, else 0.0.

    Case-insensitive on both sides; a label may be written ``B``, ``b`` or ``(B)``. Extra row fields
    are ignored.
    """
    _check_lengths("choice_reward", completions, answers)
    rewards = []
    for row, (completion, answer) in enumerate(zip(completions, answers)):
        gold = _gold_letter(answer, row)
        rewards.append(float(extract_choice(completion) == gold))
    return rewards


# ------------------------------------------------------------------ numbers with a tolerance

_NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+(?:[eE][-+]?\d+)?")
_FRAC = re.compile(r"^\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}$")


def parse_number(text: str) -> float | None:
    """A number written as ``12.7``, ``-3``, ``1,234.5``, ``2.5e-3``, ``3/4``, ``\\frac{3}{4}`` or ``45%``
    (0.45); None when ``text`` is not one number."""
    s = str(text).strip().replace("−", "-").replace("$", "").replace("\\!", "").replace("\\,", "").strip()
    s = re.sub(r"\\(?:text|mathrm)\s*\{[^{}]*\}$", "", s).strip()  # a trailing unit: 12.7\text{ mph}
    percent = s.endswith("%") or s.endswith("\\%")
    s = s.removesuffix("\\%").removesuffix("%").strip()
    frac = _FRAC.match(s)
    if frac:
        num, den = parse_number(frac.group(1)), parse_number(frac.group(2))
        value = None if num is None or not den else num / den
    elif s.count("/") == 1:
        num, den = (parse_number(part) for part in s.split("/"))
        value = None if num is None or not den else num / den
    elif _NUMBER.fullmatch(s):
        value = float(s.replace(",", ""))
    else:
        value = None
    if value is None or not math.isfinite(value):
        return None
    return value / 100 if percent else value


def extract_number(text: str) -> float | None:
    """The response's final number: the last ``\\boxed{}`` if it holds a number, else the last number in the text."""
    boxed = extract_boxed(text)
    if boxed is not None:
        value = parse_number(boxed)
        if value is not None:
            return value
    found = _NUMBER.findall(text.replace("−", "-"))
    return parse_number(found[-1]) if found else None


def numeric_reward(
    completions: Sequence[str],
    answers: Sequence[str],
    *,
    rel_tol: Sequence[float | None] | float | None = None,
    abs_tol: Sequence[float | None] | float | None = None,
    **fields,
) -> list[float]:
    """1.0 when the response's final number (:func:`extract_number`) is within tolerance of the label.

    ``math.isclose(pred, gold, rel_tol, abs_tol)``: the tolerances come from the row's ``rel_tol`` and
    ``abs_tol`` fields when the data has them (one value per completion, as the trainer passes row
    fields; a single number applies to all), else :data:`DEFAULT_REL_TOL` (1%) and
    :data:`DEFAULT_ABS_TOL`. A label that is not a number is an error naming it.
    """
    _check_lengths("numeric_reward", completions, answers)
    rel = _per_row(rel_tol, len(completions), DEFAULT_REL_TOL, "rel_tol")
    abs_ = _per_row(abs_tol, len(completions), DEFAULT_ABS_TOL, "abs_tol")
    rewards = []
    for row, (completion, answer) in enumerate(zip(completions, answers)):
        gold = parse_number(answer)
        if gold is None:
            raise ValueError(
                f"numeric_reward: answer {answer!r} of completion {row} is not a number; write labels such as "
                "'12.7', '-3', '3/4' or '45%', or use another reward for non-numeric answers"
            )
        pred = extract_number(completion)
        rewards.append(float(pred is not None and math.isclose(pred, gold, rel_tol=rel[row], abs_tol=abs_[row])))
    return rewards


def _per_row(value, n: int, default: float, name: str) -> list[float]:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * n
    if len(values) != n:
        raise ValueError(f"numeric_reward: {name} has {len(values)} values for {n} completions; give one per completion")
    out = []
    for i, v in enumerate(values):
        if v is None or v == "":
            out.append(default)
            continue
        try:
            tol = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"numeric_reward: {name}={v!r} of completion {i} is not a number (e.g. 0.01)") from None
        if tol < 0 or not math.isfinite(tol):
            raise ValueError(f"numeric_reward: {name}={v!r} of completion {i} must be a finite number >= 0")
        out.append(tol)
    return out


def _check_lengths(name: str, completions: Sequence[str], answers: Sequence[str]) -> None:
    if len(completions) != len(answers):
        raise ValueError(f"{name}: {len(completions)} completions but {len(answers)} answers; give one answer each")
