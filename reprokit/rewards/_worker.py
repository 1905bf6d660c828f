"""Grader processes: one template process that imports sympy once, and the workers it forks.

This file runs as a script, never imported as part of the package (see ``_pool.py``), so that a
worker starts without importing ``reprokit`` (whose top level may pull in torch) and without the
package directory on ``sys.path`` (where ``math.py`` would shadow the standard library).

Protocol, template side: the parent sends ``S`` with one socket attached (SCM_RIGHTS); the
template forks a worker that serves that socket and answers with the worker's pid. ``K<pid>``
kills and reaps that worker and answers ``ok``. End of file on the control socket: kill every
worker and exit, so nothing outlives a parent that died.

Protocol, worker side: one JSON list of arguments per line in, one JSON object per line out:
``{"r": result}`` or ``{"e": "ExceptionType"}``.
"""

import json
import logging
import os
import signal
import socket
import sys
from functools import lru_cache

# Address-space cap per worker: `10^{10^{10}}` style answers make sympy build integers of
# billions of digits; MemoryError (answered as an error) is better than swapping until the kill.
MEMORY_LIMIT_BYTES = 4 << 30

_PARSERS = None

# One of each common answer form (MATH500 / OlympiadBench labels), each against a wrong answer
# of another form and against an equal one.
_WARM_UP = [
    ("\\dfrac{3}{4}", "0.75"),
    ("-\\frac{\\sqrt{3}}{2}", "2\\sqrt{2}+1"),
    ("x = 3", "3"),
    ("y = -2x + 5", "y=5-2x"),
    ("(1, 2]", "[1, 2]"),
    ("(-\\infty, 3) \\cup (5, \\infty)", "x > 5"),
    ("\\{1, 2, 3\\}", "1, 2"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}"),
    ("90^\\circ", "45"),
    ("50\\%", "0.5"),
    ("10 \\text{ cm}^2", "\\text{(B)}"),
    ("3 \\le x < 7", "x \\geq 3"),
    ("\\sqrt[3]{2048}", "12.8"),
    ("\\frac{a+b}{2}", "a^2 - 4ab + b^2"),
    ("2\\sin^2 x \\cos x", "\\log_2 8"),
    ("1 - 12i", "4210_{5}"),
]


def _parsers():
    global _PARSERS
    if _PARSERS is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        # Boxed first: every string is handed over wrapped in \boxed{...}.
        config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        _PARSERS = (parse, verify, config)
    return _PARSERS


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    parse, _, config = _parsers()
    # parsing_timeout=None: math-verify's own timeout uses signal.alarm; the parent enforces ours.
    return tuple(parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None))


def _clearly_different(gold, pred) -> bool:
    """True when two plain expressions differ numerically, so sympy's simplify can be skipped.

    Most wrong answers are wrong numbers, and math-verify spends most of its time proving that
    with ``simplify``. Only plain expressions qualify (no relations, sets, matrices, percentages,
    bare symbols, undefined functions: math-verify has its own rules there). Constants are
    compared once; expressions in variables at two rational points, and must differ at both.
    The threshold, 1e-6 times max(1, |gold|), is above math-verify's float rounding (6 places),
    so nothing it would accept is rejected here.
    """
    from sympy import Expr, MatrixExpr, Rational, Symbol, UnevaluatedExpr
    from sympy.core.function import AppliedUndef

    for expr in (gold, pred):
        if not isinstance(expr, Expr) or isinstance(expr, (Symbol, MatrixExpr)):
            return False
        if expr.has(UnevaluatedExpr) or expr.atoms(AppliedUndef):
            return False
    symbols = sorted(gold.free_symbols | pred.free_symbols, key=str)
    points = [{}] if not symbols else [
        {s: Rational(7 + 3 * i, 11 + k) for i, s in enumerate(symbols)} for k in (0, 6)
    ]
    try:
        for point in points:
            gold_value = complex(gold.evalf(30, subs=point))
            diff = complex((gold - pred).evalf(30, subs=point))
            if not all(map(_finite, (gold_value.real, gold_value.imag, diff.real, diff.imag))):
                return False
            if abs(diff) <= 1e-6 * max(1.0, abs(gold_value)):
                return False
    except Exception:  # noqa: BLE001 - not a number at this point: let math-verify decide
        return False
    return True


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _unwrap_assignment(gold, pred) -> tuple:
    """``x = 3`` against ``3`` or ``x = 3`` against ``x = 4``: the right-hand sides, as math-verify
    compares them (it unwraps a predicted equation when the gold is none, and an assignment
    gold when the prediction is no equation)."""
    from sympy import Eq, Symbol

    gold_eq, pred_eq = isinstance(gold, Eq), isinstance(pred, Eq)
    if gold_eq and pred_eq:
        if isinstance(gold.lhs, Symbol) and gold.lhs == pred.lhs:
            return gold.rhs, pred.rhs
        return None, None
    if pred_eq:
        return gold, pred.rhs
    if gold_eq and isinstance(gold.lhs, Symbol):
        return gold.rhs, pred
    return gold, pred


def _quickly_rejected(gold, pred) -> bool:
    from sympy import Interval

    gold, pred = _unwrap_assignment(gold, pred)
    if gold is None:
        return False
    if isinstance(gold, Interval) and isinstance(pred, Interval):
        # Bracket type matters: (1,2] is not [1,2].
        if (gold.left_open, gold.right_open) != (pred.left_open, pred.right_open):
            return True
        return _clearly_different(gold.start, pred.start) or _clearly_different(gold.end, pred.end)
    return _clearly_different(gold, pred)


def grade(pred: str, gold: str) -> bool:
    """math-verify equivalence of two already-extracted, normalised answers."""
    _, verify, _ = _parsers()
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    # parse() gives [sympy object, its latex string] or just [string] when sympy fails; equal
    # strings parse to equal objects, so a clear numeric difference settles the comparison.
    if not isinstance(gold_parsed[0], str) and not isinstance(pred_parsed[0], str):
        if _quickly_rejected(gold_parsed[0], pred_parsed[0]):
            return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _load(target: str):
    if not target:
        return grade
    module_name, _, attr = target.partition(":")
    import importlib

    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _serve(sock: socket.socket, fn) -> None:
    with sock, sock.makefile("rb") as lines:
        for line in lines:
            try:
                out = {"r": fn(*json.loads(line))}
                payload = json.dumps(out).encode("ascii") + b"\n"
            except Exception as exc:  # noqa: BLE001 - any failure of one answer is that answer's problem
                # Only the type: str() of a sympy object inside an exception can itself hang.
                payload = json.dumps({"e": type(exc).__name__}).encode("ascii") + b"\n"
            sock.sendall(payload)


def _reap(children: set) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _kill(pid: int, children: set) -> None:
    if pid not in children:
        return
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    children.discard(pid)


def main(argv: list) -> None:
    ctrl_fd, target, extra_paths = int(argv[0]), argv[1], json.loads(argv[2])
    sys.path[:0] = extra_paths
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    ctrl = socket.socket(fileno=ctrl_fd)

    fn = _load(target)
    if fn is grade:
        # Warm antlr's prediction cache, the extraction regexes and sympy's caches once, before
        # any fork: every worker inherits them, and its first answers parse 30-50% faster.
        for pred, gold in _WARM_UP:
            grade(pred, gold)
            _parse.cache_clear()
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, hard))
    except (ImportError, ValueError, OSError):
        pass
    ctrl.sendall(b"ready")

    children: set = set()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctrl, 64, 1)
        except OSError:
            break
        if not msg:
            break
        _reap(children)
        if msg[:1] == b"S" and fds:
            pid = os.fork()
            if pid == 0:
                ctrl.close()
                try:
                    _serve(socket.socket(fileno=fds[0]), fn)
                finally:
                    os._exit(0)
            os.close(fds[0])
            children.add(pid)
            ctrl.sendall(str(pid).encode("ascii"))
        elif msg[:1] == b"K":
            _kill(int(msg[1:]), children)
            ctrl.sendall(b"ok")
        else:
            for fd in fds:
                os.close(fd)
            ctrl.sendall(b"?")
    for pid in list(children):
        _kill(pid, children)


if __name__ == "__main__":
    main(sys.argv[2:])
