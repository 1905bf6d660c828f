"""Math answer grading and the reward registry.

The grader runs sympy in worker processes under a hard deadline; these tests check answers,
deadlines (from the main thread, other threads, forked children), and that processes go away.
"""

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from reprokit.rewards import REWARDS, extract_boxed, get_reward, is_equivalent, math_reward
from reprokit.rewards import math as rmath
from reprokit.rewards._pool import FAILED, TIMED_OUT, GraderPool
from reprokit.data import Prompt

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent

# --------------------------------------------------------------------------- equivalence

EQ = True
NE = False

CASES = [
    # fractions: \frac, \dfrac, \tfrac, \frac12 shorthand, slash
    pytest.param(r"\frac{1}{2}", "0.5", EQ, id="frac-vs-decimal"),
    pytest.param(r"\dfrac{1}{2}", r"\frac12", EQ, id="dfrac-vs-frac12"),
    pytest.param(r"\tfrac{3}{4}", "0.75", EQ, id="tfrac-vs-decimal"),
    pytest.param(r"\frac12", "1/2", EQ, id="frac12-vs-slash"),
    pytest.param(r"\frac{4}{3}", r"\frac{8}{6}", EQ, id="unreduced-fraction"),
    pytest.param(r"\frac43", r"\frac{4}{3}", EQ, id="frac43-shorthand"),
    pytest.param(r"\frac{4}{3}", r"\frac{3}{4}", NE, id="inverted-fraction"),
    pytest.param(r"1\frac{1}{3}", r"\frac{4}{3}", EQ, id="mixed-number"),
    # decimals vs fractions: math-verify rounds floats to 6 places
    pytest.param("0.3333333", r"\frac{1}{3}", EQ, id="decimal-7-places-vs-third"),
    pytest.param("0.333", r"\frac{1}{3}", NE, id="decimal-3-places-vs-third"),
    pytest.param("12.8", r"\frac{64}{5}", EQ, id="decimal-vs-fraction"),
    pytest.param("12.80", "12.8", EQ, id="trailing-zero"),
    pytest.param("0.5", ".5", EQ, id="leading-dot"),
    pytest.param("2.0", "2", EQ, id="float-vs-int"),
    # the pi1 label: dataset label 12.8, true answer cbrt(2048) = 12.699...
    pytest.param("12.7", "12.8", NE, id="pi1-12.7-vs-label-12.8"),
    pytest.param("12.8", "12.8", EQ, id="pi1-label"),
    # cbrt(2048) = 12.6992...: 12.7 is its rounding, not its value. Floats are compared after
    # rounding to 6 places (not to the precision the label happens to have), so a model that
    # writes the exact root is NOT credited against the rounded label "12.7". Training on the
    # label 12.7 therefore rewards the decimal answer only, as in the paper's ablation.
    pytest.param(r"\sqrt[3]{2048}", "12.7", NE, id="pi1-cbrt-vs-rounded-12.7"),
    pytest.param(r"\sqrt[3]{2048}", "12.8", NE, id="pi1-cbrt-vs-label-12.8"),
    pytest.param(r"8\sqrt[3]{4}", r"\sqrt[3]{2048}", EQ, id="pi1-cbrt-simplified"),
    pytest.param("12.699208", r"\sqrt[3]{2048}", EQ, id="pi1-cbrt-6-places"),
    # equations: "x = 3" vs "3"
    pytest.param("x = 3", "3", EQ, id="assignment-vs-value"),
    pytest.param("3", "x=3", EQ, id="value-vs-assignment-gold"),
    pytest.param("x = 4", "3", NE, id="wrong-assignment"),
    pytest.param("y = 2x + 1", "y=1+2x", EQ, id="line-equation"),
    pytest.param("y = 2x + 1", "y = 2x - 1", NE, id="line-equation-wrong"),
    # degrees
    pytest.param(r"90^\circ", "90", EQ, id="degrees-vs-number"),
    pytest.param(r"90^{\circ}", "90", EQ, id="degrees-braced"),
    pytest.param("30", r"30^\circ", EQ, id="number-vs-degree-gold"),
    pytest.param("45°", "45", EQ, id="unicode-degree"),
    pytest.param(r"60^\circ", "30", NE, id="wrong-degrees"),
    # units in \text
    pytest.param(r"10\text{ cm}", "10", EQ, id="text-unit"),
    pytest.param(r"10 \text{ meters}", "10", EQ, id="text-unit-spaced"),
    pytest.param(r"12.8 \text{ mph}", "12.8", EQ, id="text-unit-mph"),
    pytest.param(r"5\text{ dollars}", "6", NE, id="text-unit-wrong"),
    pytest.param(r"\text{(B)}", "B", EQ, id="text-choice"),
    # percentages
    pytest.param(r"50\%", "50", EQ, id="percent-vs-number"),
    pytest.param(r"50\%", "0.5", EQ, id="percent-vs-fraction"),
    pytest.param("50", r"50\%", EQ, id="number-vs-percent-gold"),
    pytest.param(r"40\%", "50", NE, id="percent-wrong"),
    # thousands separators
    pytest.param("1,000", "1000", EQ, id="comma-thousands"),
    pytest.param("1{,}000", "1000", EQ, id="braced-comma-thousands"),
    pytest.param(r"1\,000", "1000", EQ, id="thin-space-thousands"),
    pytest.param("1,000,000", "1000000", EQ, id="comma-millions"),
    pytest.param("1,000", "1001", NE, id="comma-thousands-wrong"),
    # roots and pi
    pytest.param(r"2\sqrt{2}", r"\sqrt{8}", EQ, id="sqrt-simplified"),
    pytest.param(r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt2}{2}", EQ, id="rationalised-root"),
    pytest.param(r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", EQ, id="root-slash"),
    pytest.param(r"\sqrt{3}", "1.732", NE, id="root-vs-3-places"),
    pytest.param(r"\sqrt{3}", r"\sqrt{2}", NE, id="different-roots"),
    pytest.param(r"2\pi", r"2 \pi", EQ, id="pi-spacing"),
    pytest.param(r"\frac{\pi}{2}", r"\pi/2", EQ, id="pi-fraction"),
    pytest.param("π/2", r"\frac{\pi}{2}", EQ, id="unicode-pi"),
    pytest.param(r"\pi", "3.14", NE, id="pi-vs-3.14"),
    pytest.param(r"4\pi", r"2\pi", NE, id="pi-wrong"),
    # intervals and unions: the bracket type matters
    pytest.param("(1,2]", "(1, 2]", EQ, id="interval-same"),
    pytest.param("(1,2]", "[1,2]", NE, id="interval-left-open-vs-closed"),
    pytest.param("[1,2)", "(1,2)", NE, id="interval-left-closed-vs-open"),
    pytest.param(r"[\frac12, 3]", "[0.5, 3]", EQ, id="interval-fraction-endpoint"),
    pytest.param(r"(-\infty, 3) \cup (5, \infty)", r"(-\infty,3)\cup(5,\infty)", EQ, id="union-same"),
    pytest.param(r"(5, \infty) \cup (-\infty, 3)", r"(-\infty,3)\cup(5,\infty)", EQ, id="union-reordered"),
    pytest.param(r"(-\infty, 3] \cup (5, \infty)", r"(-\infty,3)\cup(5,\infty)", NE, id="union-bracket-differs"),
    pytest.param(r"(-\infty, 4) \cup (5, \infty)", r"(-\infty,3)\cup(5,\infty)", NE, id="union-endpoint-differs"),
    # sets and tuples
    pytest.param(r"\{1, 2, 3\}", r"\{3, 2, 1\}", EQ, id="set-order-free"),
    pytest.param(r"\{1, 2\}", r"\{1, 2, 3\}", NE, id="set-missing-element"),
    pytest.param("2, 1", "1, 2", EQ, id="answer-list-order-free"),
    pytest.param("1, 3", "1, 2", NE, id="answer-list-wrong"),
    pytest.param(r"(3, \frac{\pi}{2})", r"(3, \frac{\pi}{2})", EQ, id="tuple-same"),
    pytest.param(r"\left( 3, \pi/2 \right)", r"(3, \frac{\pi}{2})", EQ, id="tuple-left-right"),
    pytest.param(r"(3, \frac{\pi}{3})", r"(3, \frac{\pi}{2})", NE, id="tuple-wrong-entry"),
    pytest.param("(2, 1, 0)", "(1, 2, 0)", NE, id="tuple-order-matters"),
    # matrices and vectors
    pytest.param(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", EQ, id="vector-same"),
    pytest.param(
        r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}",
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        EQ,
        id="bmatrix-vs-pmatrix",
    ),
    pytest.param(
        r"\begin{pmatrix}0.5\\2\end{pmatrix}", r"\begin{pmatrix}\frac12\\2\end{pmatrix}", EQ, id="vector-decimal-entry"
    ),
    pytest.param(r"\begin{pmatrix}1\\3\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", NE, id="vector-wrong-entry"),
    pytest.param(
        r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}",
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        NE,
        id="matrix-transposed",
    ),
    # negative numbers
    pytest.param("-5", "-5", EQ, id="negative-same"),
    pytest.param("-5", "5", NE, id="negative-vs-positive"),
    pytest.param("−5", "-5", EQ, id="unicode-minus"),
    pytest.param(r"-\frac{2023}{2024}", r"-\frac{2023}{2024}", EQ, id="pi1209-label"),
    pytest.param(r"\frac{-2023}{2024}", r"-\frac{2023}{2024}", EQ, id="pi1209-sign-inside"),
    pytest.param(r"\frac{2023}{2024}", r"-\frac{2023}{2024}", NE, id="pi1209-sign-missing"),
    pytest.param("-0.5", r"-\frac{1}{2}", EQ, id="negative-decimal-vs-fraction"),
    # inequalities
    pytest.param("x > 3", "3 < x", EQ, id="inequality-flipped"),
    pytest.param(r"x \geq 3", r"3 \le x", EQ, id="inequality-geq-flipped"),
    pytest.param("x > 3", r"x \ge 3", NE, id="inequality-strictness"),
    pytest.param("x < 3", "x > 3", NE, id="inequality-direction"),
    pytest.param("x ≥ 3", r"x \geq 3", EQ, id="unicode-geq"),
    # AIME integers with leading zeros
    pytest.param("033", "33", EQ, id="aime-leading-zero-pred"),
    pytest.param("33", "033", EQ, id="aime-leading-zero-gold"),
    pytest.param("033", "34", NE, id="aime-wrong"),
    pytest.param("0", "000", EQ, id="aime-zero"),
    # labels from the training sets
    pytest.param("24", "24", EQ, id="pi2-label"),
    pytest.param(r"\dfrac{4}{3}", r"\frac{4}{3}", EQ, id="pi13-label-dfrac"),
    pytest.param("1.3333333", r"\frac{4}{3}", EQ, id="pi13-label-decimal"),
    pytest.param("1.33", r"\frac{4}{3}", NE, id="pi13-label-rounded"),
    # wrappers and symbolic expressions
    pytest.param("$12.8$", "12.8", EQ, id="dollar-wrapped"),
    pytest.param("12.8.", "12.8", EQ, id="trailing-period"),
    pytest.param("１２", "12", EQ, id="full-width-digits"),
    pytest.param("x^2 + 2x + 1", "(x+1)^2", EQ, id="polynomial-expanded"),
    pytest.param("x^2 + 2x + 1", "(x-1)^2", NE, id="polynomial-wrong"),
    pytest.param(r"\frac{a+b}{2}", r"\frac{b+a}{2}", EQ, id="commuted-expression"),
    pytest.param("", "12.8", NE, id="empty-pred"),
    pytest.param("12.8", "", NE, id="empty-gold"),
]


@pytest.fixture(scope="module", autouse=True)
def _warm_pool():
    # Start the worker pool once, so that timing assertions below measure grading, not start-up.
    assert is_equivalent(r"\sqrt{4}", "2")
    yield


@pytest.mark.parametrize("pred, gold, expected", CASES)
def test_is_equivalent(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


def test_enough_cases_in_every_category():
    assert len(CASES) >= 80
    assert sum(c.values[2] for c in CASES) >= 30 and sum(not c.values[2] for c in CASES) >= 30


def test_is_equivalent_rejects_non_strings():
    with pytest.raises(TypeError, match="two str"):
        is_equivalent(12.8, "12.8")
    with pytest.raises(ValueError, match="timeout"):
        is_equivalent("1", "1", timeout=0)


# ---------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}", id="nested-braces"),
        pytest.param(r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", id="deeply-nested"),
        pytest.param(r"first \boxed{1}, then \boxed{2}", "2", id="last-wins"),
        pytest.param(r"\fbox{7}", "7", id="fbox"),
        pytest.param(r"\boxed{1} and \fbox{3}", "3", id="fbox-last"),
        pytest.param(r"\boxed {5}", "5", id="space-before-brace"),
        pytest.param(r"\boxed{\{1, 2\}}", r"\{1, 2\}", id="escaped-braces"),
        pytest.param(r"\boxed{\boxed{5}}", "5", id="box-in-box"),
        pytest.param(r"\boxed{x", None, id="unclosed"),
        pytest.param(r"\boxed{1} and finally \boxed{2", None, id="last-unclosed"),
        pytest.param("The answer is 5.", None, id="no-box"),
        pytest.param("", None, id="empty"),
        pytest.param(r"\boxed{}", "", id="empty-box"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ------------------------------------------------------------------------------- reward


def test_math_reward_basic():
    completions = [
        r"Step by step ... so $V = \boxed{12.8}$ mph.",
        r"... \boxed{12.7}",
        "The answer is 12.8",  # no box
        r"... \boxed{\dfrac{64}{5}}",
        r"... \boxed{12.8",  # never closed
    ]
    assert math_reward(completions, ["12.8"] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_math_reward_several_boxes_judged_as_a_whole():
    completions = [r"The roots are \boxed{1} and \boxed{2}.", r"\boxed{1} and \boxed{3}", r"\boxed{3} \boxed{4}"]
    assert math_reward(completions, ["1, 2", "1, 2", "4"]) == [1.0, 0.0, 1.0]


def test_math_reward_accepts_row_fields_and_numeric_labels():
    rewards = math_reward([r"\boxed{033}", r"\boxed{x = 3}"], [33, "3"], question=["q1", "q2"], id=["a", "b"])
    assert rewards == [1.0, 1.0]
    assert math_reward([], []) == []


def test_math_reward_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"3 completions but 2 answers"):
        math_reward(["a", "b", "c"], ["1", "2"])


def test_math_reward_1024_completions_takes_seconds():
    # One paper step: 128 prompts x 8 rollouts, a mix of answer forms, right and wrong.
    golds = [r"\frac{4}{3}", "12.8", r"-\frac{2023}{2024}", "(1, 2]", r"2\sqrt{2}", "x = 5", r"\{1, 2\}", "024"]
    right = [r"\dfrac{8}{6}", r"12.80 \text{ mph}", r"\frac{-2023}{2024}", "(1,2]", r"\sqrt{8}", "5", r"\{2,1\}", "24"]
    wrong = ["1.33", "12.7", r"\frac{2023}{2024}", "[1, 2]", r"\sqrt{2}", "x = 6", r"\{1, 3\}", "25"]
    completions, answers, expected = [], [], []
    for i in range(1024):
        k = i % len(golds)
        answer = (right if i % 3 else wrong)[k] if i % 5 else f"{1000 + i}"
        completions.append(f"Reasoning number {i} ... so the answer is $\\boxed{{{answer}}}$.")
        answers.append(golds[k])
        expected.append(1.0 if i % 5 and i % 3 else 0.0)
    start = time.monotonic()
    rewards = math_reward(completions, answers)
    elapsed = time.monotonic() - start
    assert rewards == expected
    assert elapsed < 30.0, f"grading 1024 completions took {elapsed:.1f} s"


# ----------------------------------------------------------------- timeouts and processes

PATHOLOGICAL = [
    pytest.param("10^{10^{10^{10}}}", "1", id="power-tower"),
    pytest.param("1+" * 5000, "2", id="10000-chars"),
    pytest.param(r"\frac{1}{2", "0.5", id="unbalanced-braces"),
    pytest.param(r"\frac{1}{2}}}", "0.5", id="extra-closing-braces"),
    pytest.param(r"\sqrt{" * 200 + "2" + "}" * 200, "2", id="200-nested-sqrt"),
    pytest.param(r"\sqrt{" * 200, "2", id="200-unclosed-sqrt"),
    pytest.param(r"\sqrt{" * 60 + "2" + "}" * 60, "2", id="60-nested-sqrt"),
    pytest.param("\ud800\x00 }{", "1", id="lone-surrogate-and-nul"),
]


@pytest.mark.parametrize("pred, gold", PATHOLOGICAL)
def test_pathological_inputs_return_within_timeout(pred, gold):
    start = time.monotonic()
    result = is_equivalent(pred, gold, timeout=2.0)
    elapsed = time.monotonic() - start
    assert isinstance(result, bool)
    assert elapsed < 2.0 + 2.5, f"took {elapsed:.1f} s"


def test_full_width_digits_are_equal():
    assert is_equivalent("１２", "12", timeout=2.0)


def test_is_equivalent_from_another_thread():
    results = {}

    def grade():
        results["eq"] = is_equivalent(r"\sqrt{4}", "2")
        results["ne"] = is_equivalent("x = 4", "3")
        results["interval"] = is_equivalent("(1,2]", "[1,2]")

    threads = [threading.Thread(target=grade) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {"eq": True, "ne": False, "interval": False}


def test_hanging_task_is_killed_and_its_worker_replaced():
    pool = GraderPool(1, target="time:sleep")
    try:
        start = time.monotonic()
        assert pool.run([(60,)], timeout=0.5) == [TIMED_OUT]
        assert time.monotonic() - start < 0.5 + 15.0  # start-up included: an import, not 60 s
        start = time.monotonic()
        assert pool.run([(0,), (60,), (0,)], timeout=0.5) == [None, TIMED_OUT, None]
        assert time.monotonic() - start < 3.0
        assert pool.run([("not a number",)], timeout=5) == [FAILED]  # raises TypeError inside
    finally:
        pool.close()


def slow_grade(pred: str, gold: str) -> bool:
    """A grader that hangs on answers containing 'slow' (run inside pool workers)."""
    if "slow" in pred:
        time.sleep(60)
    return True


def test_math_reward_counts_timeouts_in_one_warning(monkeypatch):
    pool = GraderPool(2, target=f"{slow_grade.__module__}:slow_grade", extra_paths=[str(TESTS_DIR)])
    monkeypatch.setattr(rmath, "_POOL", pool)
    monkeypatch.setenv("REPROKIT_GRADER_TIMEOUT", "1")
    completions = [r"\boxed{slow}", r"\boxed{\sqrt{4}}", r"\boxed{slow}", r"\boxed{slow \cdot 2}", "no box"]
    try:
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rewards = math_reward(completions, ["1", "2", "1", "1", "1"])
        elapsed = time.monotonic() - start
    finally:
        pool.close()
    assert rewards == [0.0, 1.0, 0.0, 0.0, 0.0]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "timed out for 3 of 5 completions" in messages[0]
    assert elapsed < 1.0 + 15.0


def _reward_in_child(queue):
    queue.put(math_reward([r"\boxed{\sqrt{4}}", r"\boxed{x = 4}"], ["2", "3"]))


def test_pool_works_in_a_forked_daemonic_child_and_survives_it():
    # A DataLoader worker is a forked, daemonic process that inherits the parent's pool.
    assert is_equivalent("(1,2]", "(1, 2]")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_reward_in_child, args=(queue,), daemon=True)
    child.start()
    try:
        assert queue.get(timeout=120) == [1.0, 0.0]
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert is_equivalent(r"\sqrt{9}", "3")  # the parent's workers are untouched


def test_pool_processes_end_with_the_interpreter():
    code = (
        "from reprokit.rewards import is_equivalent\n"
        "from reprokit.rewards.math import _get_pool\n"
        "import json\n"
        "assert is_equivalent(r'\\sqrt{4}', '2')\n"
        "pool = _get_pool()\n"
        "print(json.dumps([pool._template.pid] + [w.pid for w in pool._workers]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(pids) >= 2
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    assert not alive, f"grader processes still running after exit: {alive}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def test_worker_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("REPROKIT_GRADER_WORKERS", "3")
    assert rmath._worker_count() == 3
    monkeypatch.setenv("REPROKIT_GRADER_WORKERS", "zero")
    with pytest.raises(ValueError, match="REPROKIT_GRADER_WORKERS"):
        rmath._worker_count()
    monkeypatch.delenv("REPROKIT_GRADER_WORKERS")
    assert 1 <= rmath._worker_count() <= 4


# --------------------------------------------------------------------------- registry


def constant_reward(completions, answers, **fields):
    return [0.5] * len(completions)


NOT_CALLABLE = 3


def test_get_reward_builtin_import_path_and_callable():
    assert get_reward("math") is math_reward
    assert REWARDS["math"] is math_reward
    reward = get_reward(f"{constant_reward.__module__}:constant_reward")
    assert reward is constant_reward
    assert reward(["a", "b"], ["1", "2"], question=["q", "q"]) == [0.5, 0.5]
    assert get_reward(constant_reward) is constant_reward


@pytest.mark.parametrize(
    "spec, message",
    [
        pytest.param("maths", r"unknown reward 'maths'.*'math'.*package\.module:function", id="unknown-name"),
        pytest.param("no_such_module_xyz:f", r"cannot import module 'no_such_module_xyz'.*'math'", id="bad-module"),
        pytest.param(f"{__name__}:missing_fn", r"has no attribute 'missing_fn'.*'math'", id="missing-attribute"),
        pytest.param(f"{__name__}:NOT_CALLABLE", r"NOT_CALLABLE is not callable", id="not-callable"),
        pytest.param(":f", r"malformed", id="empty-module"),
    ],
)
def test_get_reward_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        get_reward(spec)


def test_get_reward_rejects_other_types():
    with pytest.raises(TypeError, match="built-in names"):
        get_reward(42)


def test_registry_accepts_new_rewards(monkeypatch):
    monkeypatch.setitem(REWARDS, "constant", constant_reward)
    assert get_reward("constant") is constant_reward
    with pytest.raises(ValueError, match="'constant', 'math'"):
        get_reward("nope")


# ---------------------------------------------------------------------------------------------- random reward
def test_random_reward_is_an_independent_fair_coin_per_response():
    import torch

    from reprokit.rewards import random_reward, score

    same_text = ["\\boxed{3}"] * 4000
    draws = random_reward(same_text, ["3"] * 4000, generator=torch.Generator().manual_seed(0))
    assert set(draws) == {0.0, 1.0}, "copies of one text all got the same reward: the reward is a function of the text"
    # Bernoulli(1/2) over 4000 draws: the mean is within 0.03 of 1/2 (about 4 standard deviations).
    assert abs(sum(draws) / len(draws) - 0.5) < 0.03
    # Which response gets which reward depends on the generator alone, not on the texts.
    other_texts = [f"response {i}" for i in range(4000)]
    again = random_reward(other_texts, ["3"] * 4000, generator=torch.Generator().manual_seed(0))
    assert again == draws
    assert random_reward(same_text, ["3"] * 4000, generator=torch.Generator().manual_seed(1)) != draws
    # score() hands a generator only to a reward that declares one.
    seen = {}

    def plain(completions, answers, **fields):
        seen.update(fields)
        return [1.0] * len(completions)

    assert score(plain, ["a", "b"], ["x", "x"], {}, generator=torch.Generator()) == [1.0, 1.0]
    assert "generator" not in seen
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        score(lambda c, a, **f: [1.0], ["a", "b"], ["x", "x"], {})


def test_grpo_random_reward_draws_are_fixed_by_seed_and_batch_index_only():
    """A resumed run restores the batch index, so it grades each batch as the uninterrupted run did; the draws
    differ from batch to batch and do not follow the responses' texts."""
    import torch

    from reprokit.data import OneShotDataModule
    from reprokit.tiny import build_tiny_model, build_tiny_tokenizer
    from reprokit.training.grpo import GRPOConfig, GRPOModule

    tokenizer = build_tiny_tokenizer()
    data = OneShotDataModule(tokenizer, examples="pi1", batch_size=4, prompt=Prompt(template="none", cot_suffix=False))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    cfg = GRPOConfig.of(
        group_size=8, max_new_tokens=4, micro_batch_size=32, reward="random", kl_coef=0.0, log_completions_every=0
    )

    def rollouts(start: int, count: int) -> list[torch.Tensor]:
        module = GRPOModule(build_tiny_model(tokenizer, seed=0), tokenizer, cfg, seed=7)
        module._rollouts_without_trainer = start  # where a resumed run's batch index would stand
        return [module.sample(batch)[0].rewards for _ in range(count)]

    whole = rollouts(0, 3)
    resumed = rollouts(2, 1)
    assert torch.equal(resumed[0], whole[2])
    assert not torch.equal(whole[0], whole[1])
    assert 0.2 < float(torch.cat(whole).mean()) < 0.8
