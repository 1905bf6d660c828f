"""A small pool of grader processes with a hard deadline per task.

Why processes and not ``signal.alarm``: the alarm only works in the main thread of the main
interpreter, and a reward is often computed in a DataLoader worker, a callback thread or a DDP rank.
Here the sympy work runs in worker processes and the parent kills any worker that overruns its
deadline.

Why a template process: importing sympy and math-verify costs one to two seconds; a replacement for
a killed worker must not. ``_worker.py`` runs once as a template that has already imported and
warmed up everything, and forks each worker from it (a few milliseconds).

Why ``subprocess`` and not ``multiprocessing``: ``multiprocessing`` refuses to start children from
a daemonic process (a PyTorch DataLoader worker is one) and re-imports the parent's ``__main__``
under ``spawn`` / ``forkserver``. A plain child process started with ``subprocess`` has neither
problem. A pool inherited through ``fork`` (DataLoader workers, ``ddp_fork``) is forgotten in the
child, which then starts its own pool on first use.

Unix only (fork and descriptor passing over a Unix socket).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path

_WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
# The package root goes on the workers' path so that a ``target`` like ``tests.x:f`` or
# ``reprokit....:f`` can be imported; the empty entry (the current directory) is dropped so that
# no stray ``math.py`` there shadows the standard library.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = (
    "import runpy, sys; sys.path[:] = [p for p in sys.path if p]; "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


TIMED_OUT = _Sentinel("TIMED_OUT")
"""Result of a task whose worker overran the deadline and was killed."""
FAILED = _Sentinel("FAILED")
"""Result of a task whose function raised, or whose worker died."""


class GraderStartError(RuntimeError):
    """The template process could not start (math-verify missing, broken interpreter, ...)."""


class _Worker:
    __slots__ = ("sock", "pid", "buf", "task", "deadline")

    def __init__(self, sock: socket.socket, pid: int):
        self.sock = sock
        self.pid = pid
        self.buf = b""
        self.task: int | None = None
        self.deadline = 0.0


_POOLS: weakref.WeakSet = weakref.WeakSet()


class GraderPool:
    """``workers`` processes that run ``target(*task)`` for each task, each under a hard deadline.

    ``target`` is ``"module:function"`` importable in a fresh interpreter (with the package root
    and ``extra_paths`` on its path), or ``""`` for the math grader in ``_worker.py``. Workers
    start lazily, only as many as there are tasks.
    """

    def __init__(
        self,
        workers: int,
        target: str = "",
        extra_paths: Sequence[str] = (),
        startup_timeout: float = 120.0,
    ):
        if workers < 1:
            raise ValueError(f"GraderPool needs at least one worker, got workers={workers}")
        self.size = workers
        self.target = target
        self.paths = [_PACKAGE_ROOT, *map(str, extra_paths)]
        self.startup_timeout = startup_timeout
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._template: subprocess.Popen | None = None
        self._ctrl: socket.socket | None = None
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()

    # ---------------------------------------------------------------- public

    def run(self, tasks: Sequence[Sequence], timeout: float) -> list:
        """Run every task; each result is the returned value, ``TIMED_OUT`` or ``FAILED``.

        ``timeout`` bounds each task from the moment a worker receives it.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not tasks:
            return []
        payloads = [json.dumps(list(task)).encode("ascii") + b"\n" for task in tasks]
        with self._lock:
            if self._pid != os.getpid():  # pragma: no cover - reset by the fork hook already
                self._forget()
            try:
                return self._run(payloads, timeout)
            except BaseException:
                # Interrupted (Ctrl-C) or broken: busy workers hold stale tasks; drop them.
                for worker in [w for w in self._workers if w.task is not None]:
                    self._kill(worker)
                raise

    def close(self) -> None:
        """Stop the workers and the template process (idempotent)."""
        if self._pid != os.getpid():
            return
        for worker in self._workers:
            self._selector.unregister(worker.sock)
            worker.sock.close()  # the worker reads end of file and exits
        self._workers = []
        if self._ctrl is not None:
            self._ctrl.close()  # the template kills what is left and exits
            self._ctrl = None
        if self._template is not None:
            try:
                self._template.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._template.kill()
                self._template.wait()
            self._template = None

    @property
    def live_workers(self) -> int:
        return len(self._workers)

    # -------------------------------------------------------------- internals

    def _run(self, payloads: list[bytes], timeout: float) -> list:
        results: list = [None] * len(payloads)
        pending = deque(range(len(payloads)))
        remaining = len(payloads)
        while remaining:
            busy = sum(w.task is not None for w in self._workers)
            while len(self._workers) < min(self.size, busy + len(pending)):
                self._spawn()
            for worker in self._workers:
                if not pending:
                    break
                if worker.task is None:
                    index = pending.popleft()
                    worker.task = index
                    worker.deadline = time.monotonic() + timeout
                    try:
                        worker.sock.sendall(payloads[index])
                    except OSError:
                        pass  # it died; the read below sees end of file
            # ---- wait for the first result or the first deadline
            next_deadline = min(w.deadline for w in self._workers if w.task is not None)
            events = self._selector.select(max(0.0, next_deadline - time.monotonic()))
            for key, _ in events:
                worker: _Worker = key.data
                try:
                    chunk = worker.sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:  # the worker died (crash, memory limit, killed from outside)
                    if worker.task is not None:
                        results[worker.task] = FAILED
                        remaining -= 1
                        worker.task = None
                    self._kill(worker)
                    continue
                worker.buf += chunk
                while b"\n" in worker.buf and worker.task is not None:
                    line, worker.buf = worker.buf.split(b"\n", 1)
                    message = json.loads(line)
                    results[worker.task] = message["r"] if "r" in message else FAILED
                    remaining -= 1
                    worker.task = None
            now = time.monotonic()
            for worker in [w for w in self._workers if w.task is not None and now >= w.deadline]:
                results[worker.task] = TIMED_OUT
                remaining -= 1
                worker.task = None
                self._kill(worker)
        return results

    def _start_template(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._template = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BOOT,
                    str(_WORKER_SCRIPT),
                    str(child_end.fileno()),
                    self.target,
                    json.dumps(self.paths),
                ],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stray prints of a library must not land in ours
            )
        finally:
            child_end.close()
        parent_end.settimeout(self.startup_timeout)
        try:
            ready = parent_end.recv(16)
        except OSError:  # socket.timeout included
            ready = b""
        if ready != b"ready":
            parent_end.close()
            self._template.kill()
            code = self._template.wait()
            self._template = None
            raise GraderStartError(
                f"the grader process failed to start within {self.startup_timeout:.0f} s "
                f"(exit code {code}, target {self.target or 'math grader'!r}); its error is printed "
                "above. Check that math-verify is installed in this environment: "
                "pip install 'math-verify>=0.9'"
            )
        parent_end.settimeout(30.0)
        self._ctrl = parent_end

    def _request(self, message: bytes, fds: Sequence[int] = ()) -> bytes:
        for attempt in range(2):
            if self._ctrl is None or self._template is None or self._template.poll() is not None:
                self._stop_template()
                self._start_template()
            try:
                socket.send_fds(self._ctrl, [message], list(fds))
                reply = self._ctrl.recv(64)
                if reply:
                    return reply
            except OSError:
                pass
            self._stop_template()
            if attempt == 1:
                raise GraderStartError("the grader template process stopped answering")
        raise AssertionError("unreachable")

    def _stop_template(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self._template is not None:
            self._template.kill()
            self._template.wait()
            self._template = None

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = int(self._request(b"S", [theirs.fileno()]))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(ours, pid)
        self._selector.register(ours, selectors.EVENT_READ, worker)
        self._workers.append(worker)

    def _kill(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        self._selector.unregister(worker.sock)
        worker.sock.close()
        try:
            self._request(b"K%d" % worker.pid)
        except GraderStartError:
            pass  # the template is gone and took its workers with it

    def _forget(self) -> None:
        """In a forked child: drop the parent's processes without touching them."""
        for worker in self._workers:
            worker.sock.close()
        if self._ctrl is not None:
            self._ctrl.close()
        self._reset()


def _forget_all_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget()


def _close_all() -> None:
    for pool in list(_POOLS):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: best effort
            pass


os.register_at_fork(after_in_child=_forget_all_in_child)
atexit.register(_close_all)
