"""Math answer grading: the RLVR reward of 1-shot RLVR and the pass@k studies.

The reward of 1-shot RLVR (Wang et al. 2025, arXiv 2504.20571): 1 if the last ``\\boxed{}`` of a
completion equals the label, by normalised string or by sympy equivalence, else 0; no format
reward.

Equivalence is math-verify's (sympy based: fractions, decimals, sets, intervals, matrices,
relations, units, percentages) after a little normalisation of our own (full-width digits,
unicode symbols, ``1\\,000``), with answers that need no sympy decided in this process: equal
strings, integers (``033`` is ``33``, AIME style), plain decimals and integer fractions.

Everything that needs sympy runs in a small persistent pool of worker processes (``_pool.py``)
under a hard deadline per answer, so that a pathological answer (``10^{10^{10^{10}}}``, 200 nested
roots) costs at most ``timeout`` seconds and never hangs a training step, from any thread or
process. ``REPROKIT_GRADER_WORKERS`` sets the pool size (default ``min(4, CPUs)``),
``REPROKIT_GRADER_TIMEOUT`` the per-answer limit of ``math_reward`` (default 5 s).
"""

from __future__ import annotations

import os
import re
import threading
import unicodedata
import warnings
from fractions import Fraction

from reprokit.rewards._pool import TIMED_OUT, GraderPool

__all__ = ["extract_boxed", "is_equivalent", "math_reward"]

# Answers longer than this after normalisation are judged by exact match only. Real final answers
# are short; very long boxes are degenerate generations (late 1-shot RLVR turns into gibberish),
# and parsing them would only burn a worker up to the timeout.
MAX_ANSWER_CHARS = 1000
DEFAULT_REWARD_TIMEOUT = 5.0

# ------------------------------------------------------------------ extraction

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the group that opened just before ``start``; -1 if unclosed."""
    depth = 1
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2  # \{ and \} are literal braces, not grouping
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _unwrap_box(content: str) -> str:
    """``\\boxed{\\boxed{5}}`` holds the answer 5."""
    while True:
        stripped = content.strip()
        match = _BOX_START.match(stripped)
        if match is None or _closing_brace(stripped, match.end()) != len(stripped) - 1:
            return content
        content = stripped[match.end() : -1]


def _boxed_contents(text: str) -> list[str] | None:
    """Contents of every top-level box in order; None when the last box is never closed."""
    contents: list[str] = []
    pos = 0
    while (match := _BOX_START.search(text, pos)) is not None:
        end = _closing_brace(text, match.end())
        if end < 0:
            return None
        contents.append(_unwrap_box(text[match.end() : end]))
        pos = end + 1
    return contents


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, nested braces kept.

    ``\\boxed {x}`` (space before the brace) counts; a box nested in the last one is part of its
    content, except that ``\\boxed{\\boxed{x}}`` gives ``x``. None when there is no box or the last
    one is never closed.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed expects a str, got {type(text).__name__}")
    contents = _boxed_contents(text)
    return contents[-1] if contents else None


# --------------------------------------------------------------- normalisation

# Applied before NFKC, which would turn "²" into a bare "2" and "½" into "1⁄2".
_SYMBOLS = str.maketrans(
    {
        "−": "-",
        "–": "-",
        "π": "\\pi ",
        "∞": "\\infty ",
        "≤": "\\le ",
        "≥": "\\ge ",
        "≠": "\\ne ",
        "°": "^\\circ",
        "√": "\\sqrt",
        "×": "\\times ",
        "·": "\\cdot ",
        "÷": "\\div ",
        "∪": "\\cup ",
        "∩": "\\cap ",
        "²": "^2",
        "³": "^3",
    }
)
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,;:! ]|\\thinspace|~)\s*(?=\d{3}(?!\d))")
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
_LATEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac(?:\{([+-]?\d+)\}\{([+-]?\d+)\}|(\d)(\d))")
_SLASH_FRACTION = re.compile(r"([+-]?\d+)/([+-]?\d+)")


def _normalize(answer: str) -> str:
    text = unicodedata.normalize("NFKC", answer.translate(_SYMBOLS)).replace("⁄", "/")
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) < len(left) + len(right) or not (text.startswith(left) and text.endswith(right)):
            continue
        inner = text[len(left) : len(text) - len(right)]
        if left not in inner:  # "$1$ and $2$" is two formulas, not one wrapped in dollars
            text = inner.strip()
    text = text.replace("\\displaystyle", "").replace("\\!", "")
    text = _LATEX_THOUSANDS.sub("", text)
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text


def _simple_number(text: str) -> tuple[Fraction, bool] | None:
    """(value, has a decimal point) for integers, decimals and integer fractions; else None."""
    if len(text) > 100:  # no int() digit limits, and no real answer is a 100-digit number
        return None
    if _DECIMAL.fullmatch(text) and any(c.isdigit() for c in text):
        return Fraction(text.replace(",", "")), "." in text
    match = _LATEX_FRACTION.fullmatch(text) or _SLASH_FRACTION.fullmatch(text)
    if match is None:
        return None
    if match.re is _LATEX_FRACTION:
        sign, num, den = match.group(1), match.group(2) or match.group(4), match.group(3) or match.group(5)
    else:
        sign, (num, den) = "", match.groups()
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return (-value if sign == "-" else value), False


def _quick_verdict(pred: str, gold: str) -> bool | None:
    """Decide without sympy where that is exact; None when sympy has to."""
    pred_compact, gold_compact = "".join(pred.split()), "".join(gold.split())
    if not pred_compact or not gold_compact:
        return False
    if pred_compact == gold_compact:
        return True
    if _INTEGER.fullmatch(pred_compact) and _INTEGER.fullmatch(gold_compact):
        # String-wise, so that no int() limit on digits applies: "033" == "33", "-0" == "0".
        def canonical(s: str) -> str:
            sign = "-" if s.startswith("-") else ""
            digits = s.lstrip("+-").lstrip("0") or "0"
            return "" if digits == "0" else sign + digits

        return canonical(pred_compact) == canonical(gold_compact)
    pred_number, gold_number = _simple_number(pred_compact), _simple_number(gold_compact)
    if pred_number is not None and gold_number is not None:
        (pred_value, pred_float), (gold_value, gold_float) = pred_number, gold_number
        if pred_value == gold_value:
            return True
        if not (pred_float or gold_float):
            return False  # exact rationals on both sides: sympy compares them exactly too
        # math-verify rounds floats to 6 places before comparing; more than 1e-6 apart no
        # rounding can make them equal ("12.7" vs "12.8"); closer than that sympy decides.
        if abs(pred_value - gold_value) > Fraction(1, 10**6):
            return False
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    return None


# -------------------------------------------------------------------- the pool

_POOL: GraderPool | None = None
_POOL_LOCK = threading.Lock()


def _worker_count() -> int:
    raw = os.environ.get("REPROKIT_GRADER_WORKERS")
    if raw is None or not raw.strip():
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 1
        return max(1, min(4, cpus))
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"REPROKIT_GRADER_WORKERS must be a positive integer, got {raw!r}; unset it for min(4, CPUs)")
    return count


def _reward_timeout() -> float:
    raw = os.environ.get("REPROKIT_GRADER_TIMEOUT")
    if raw is None or not raw.strip():
        return DEFAULT_REWARD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"REPROKIT_GRADER_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def _get_pool() -> GraderPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = GraderPool(_worker_count())
        return _POOL


def _new_lock_in_child() -> None:
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()  # a fork may have happened while another thread held it


os.register_at_fork(after_in_child=_new_lock_in_child)


def _grade_pairs(pairs: list[tuple[str, str]], timeout: float) -> list[bool | None]:
    """True / False per (pred, gold) pair, None where grading timed out."""
    verdicts: list[bool | None] = [False] * len(pairs)
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (pred, gold) in enumerate(pairs):
        pred_n, gold_n = _normalize(pred), _normalize(gold)
        quick = _quick_verdict(pred_n, gold_n)
        if quick is None:
            todo.setdefault((pred_n, gold_n), []).append(i)  # identical answers graded once
        else:
            verdicts[i] = quick
    if todo:
        keys = list(todo)
        results = _get_pool().run(keys, timeout)
        for key, result in zip(keys, results):
            verdict = None if result is TIMED_OUT else result is True
            for i in todo[key]:
                verdicts[i] = verdict
    return verdicts


# ----------------------------------------------------------------------- public


def is_equivalent(pred: str, gold: str, timeout: float = 5.0) -> bool:
    """Whether answer ``pred`` is mathematically equivalent to the label ``gold``.

    Both are bare answers (no ``\\boxed``): ``"\\frac{1}{2}"`` vs ``"0.5"``, ``"x = 3"`` vs ``"3"``,
    ``"(1,2]"`` vs ``"[1,2]"`` (not equal). The comparison is not symmetric in corner cases
    (``gold`` decides the form, as in math-verify). False after ``timeout`` seconds of sympy work;
    never raises for str inputs, safe from any thread or process.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(
            f"is_equivalent expects two str, got pred: {type(pred).__name__}, gold: {type(gold).__name__}"
        )
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return _grade_pairs([(pred, gold)], timeout)[0] is True


def math_reward(completions: list[str], answers: list[str], **fields) -> list[float]:
    """RLVR reward: 1.0 where a completion's final boxed answer is equivalent to its label, else 0.0.

    No box, or an unclosed last box, scores 0. A completion that boxes the parts of one answer
    separately (``\\boxed{1}`` and ``\\boxed{2}`` for the label ``"1, 2"``) is judged as a whole:
    the last box first, then all boxes joined with ``", "``. Grading runs in parallel in the pool;
    an answer that times out (``REPROKIT_GRADER_TIMEOUT``, default 5 s) scores 0, and one warning
    per call reports how many did. Extra keyword ``fields`` (the dataset row) are ignored.
    """
    del fields  # the reward interface passes row fields; the label is all this reward needs
    if len(completions) != len(answers):
        raise ValueError(
            f"math_reward got {len(completions)} completions but {len(answers)} answers; "
            "pass one answer per completion (repeat each label for every rollout of its prompt)"
        )
    timeout = _reward_timeout()
    labels: list[str] = []
    for row, (completion, answer) in enumerate(zip(completions, answers)):
        if not isinstance(completion, str):
            raise TypeError(f"math_reward: completion {row} is a {type(completion).__name__}, expected str")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # a numeric label read from JSON
        if not isinstance(answer, str):
            raise TypeError(f"math_reward: answer {row} is a {type(answer).__name__}, expected str")
        labels.append(answer)

    boxes = [_boxed_contents(completion) or [] for completion in completions]
    rewards = [0.0] * len(completions)
    timed_out = [False] * len(completions)

    rows = [row for row in range(len(completions)) if boxes[row]]
    first = _grade_pairs([(boxes[row][-1], labels[row]) for row in rows], timeout)
    retry = []
    for row, verdict in zip(rows, first):
        if verdict:
            rewards[row] = 1.0
        else:
            timed_out[row] = verdict is None
            if len(boxes[row]) > 1:
                retry.append(row)
    second = _grade_pairs([(", ".join(boxes[row]), labels[row]) for row in retry], timeout)
    for row, verdict in zip(retry, second):
        if verdict:
            rewards[row], timed_out[row] = 1.0, False
        elif verdict is None:
            timed_out[row] = True

    n_timed_out = sum(timed_out)
    if n_timed_out:
        warnings.warn(
            f"math_reward: grading timed out for {n_timed_out} of {len(completions)} completions "
            f"(limit {timeout:g} s each); they scored 0. Raise REPROKIT_GRADER_TIMEOUT if these "
            "are real answers.",
            RuntimeWarning,
            stacklevel=2,
        )
    return rewards
