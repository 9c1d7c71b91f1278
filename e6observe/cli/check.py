"""``e6observe check``: is this cluster ready for this connector? READY / NOT READY.

The connector's migration guide asks every team to hand-write a validation script before and
after an upgrade: basic connectivity, ``SELECT 1``, strategy detection returning blue or green,
several connections at once, connection and query time under limits. This command is that script,
run with the real connector: each step is shown as it runs with its measured figure, a failure
names its reason, ``--json`` gives a machine-readable result, and the exit code gates a pipeline
(0 ready, 1 not ready, 2 usage error).

Every step runs on a worker thread with a deadline (``--timeout``): the connector's calls take no
deadline of their own, and a stopped or hung cluster must give NOT READY quickly, not a hang.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

from .._colours import COLOURS
from . import _argtypes as A
from ._connopts import (
    ConnectionOptions,
    DeadlineExceeded,
    UsageError,
    add_connection_arguments,
    call_with_deadline,
    describe_error,
    first_scalar,
    options_from_args,
)

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_USAGE = 2

#: Defaults from the migration guide's performance validation (connection < 5 s, query < 1 s).
DEFAULT_MAX_CONNECT_S = 5.0
DEFAULT_MAX_QUERY_S = 1.0
DEFAULT_CONNECTIONS = 5
DEFAULT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
CHECK_QUERY = "SELECT 1"


@dataclass
class StepResult:
    """The outcome of one step: ``status`` is ``pass``, ``fail`` or ``skip``."""

    name: str
    title: str
    status: str = "skip"
    summary: str = ""
    seconds: Optional[float] = None
    value: Any = None
    limit_seconds: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "ok": self.ok,
            "summary": self.summary,
        }
        if self.seconds is not None:
            d["seconds"] = round(self.seconds, 6)
        if self.value is not None:
            d["value"] = self.value
        if self.limit_seconds is not None:
            d["limit_seconds"] = self.limit_seconds
        return d


@dataclass
class CheckResult:
    """All steps, and READY when every one passed."""

    target: str
    connector_version: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def failed_step(self) -> Optional[StepResult]:
        return next((s for s in self.steps if s.status == "fail"), None)

    def to_dict(self) -> dict[str, Any]:
        failed = self.failed_step
        return {
            "ready": self.ready,
            "verdict": "READY" if self.ready else "NOT READY",
            "target": self.target,
            "connector_version": self.connector_version,
            "failed_step": failed.name if failed else None,
            "reason": failed.summary if failed else None,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True)
class Limits:
    """Thresholds of a check."""

    max_connect_s: float = DEFAULT_MAX_CONNECT_S
    max_query_s: float = DEFAULT_MAX_QUERY_S
    connections: int = DEFAULT_CONNECTIONS
    timeout_s: float = DEFAULT_TIMEOUT_S


def connector_version() -> str:
    """The installed connector's version, or ``unknown``."""
    from .._version import connector_version as read

    return read() or "unknown"


class _NoSession(Exception):
    """Authentication ended without a session id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no session"


class _Session:
    """Connections opened by a check, so they can all be closed at the end, boundedly."""

    def __init__(self, opts: ConnectionOptions) -> None:
        self.opts = opts
        self.opened: list[Any] = []
        self.closed = False
        self._lock = threading.Lock()

    def connect(self) -> tuple[Any, float]:
        """A new authenticated connection and the seconds it took (construct + authenticate)."""
        from e6data_python_connector import e6data_grpc

        t0 = time.perf_counter()
        conn = e6data_grpc.Connection(**self.opts.connection_kwargs())
        with self._lock:
            late = self.closed
            if not late:
                self.opened.append(conn)
        if late:  # a step abandoned at its deadline got here after the check ended
            conn.close()
            raise RuntimeError("check already finished")
        session_id = conn.get_session_id
        took = time.perf_counter() - t0
        if not session_id:
            # Connector 2.x swallows a refused login inside get_session_id and returns None.
            raise _NoSession(
                "authentication failed: the cluster gave no session (login "
                "refused or cluster unreachable; this connector version does not "
                "pass on the reason)"
            )
        return conn, took

    @staticmethod
    def select_one(conn: Any) -> tuple[Any, float]:
        """Run ``SELECT 1`` (execute, fetch, clear); the value and the seconds it took."""
        t0 = time.perf_counter()
        cur = conn.cursor()
        cur.execute(CHECK_QUERY)
        rows = cur.fetchall()
        # Clear explicitly: an uncleared query id stays in the connector's query map and would
        # hold up a graceful blue/green flip of this process.
        cur.clear()
        return first_scalar(rows), time.perf_counter() - t0

    def close_all(self, timeout: float = 2.0) -> None:
        """Close every connection opened; bounded, errors ignored (closing cancels hung RPCs)."""
        with self._lock:
            conns, self.opened = self.opened, []
            self.closed = True

        def _close() -> None:
            for c in conns:
                try:
                    c.close()
                except Exception:
                    pass

        try:
            call_with_deadline(_close, timeout, "e6observe-check-close")
        except Exception:
            pass


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class Checker:
    """Runs the steps in order; ``on_start(step)`` / ``on_done(step)`` report progress."""

    def __init__(
        self,
        opts: ConnectionOptions,
        limits: Limits,
        on_start: Optional[Callable[[StepResult], None]] = None,
        on_done: Optional[Callable[[StepResult], None]] = None,
    ) -> None:
        self.opts = opts
        self.limits = limits
        self.on_start = on_start or (lambda s: None)
        self.on_done = on_done or (lambda s: None)
        self.session = _Session(opts)
        self.connect_times: list[float] = []
        self.query_times: list[float] = []

    def _step(
        self, name: str, title: str, body: Callable[[StepResult], None], needs: tuple[StepResult, ...] = ()
    ) -> StepResult:
        step = StepResult(name, title)
        blocked = [n for n in needs if not n.ok]
        self.on_start(step)
        if blocked:
            step.status = "skip"
            step.summary = "skipped: needs " + ", ".join(b.name for b in blocked)
        else:
            # The body fills a scratch copy: a body abandoned at its deadline may still finish
            # later, and must not turn a reported failure into a pass behind our back.
            scratch = StepResult(name, title)
            try:
                call_with_deadline(lambda: body(scratch), self.limits.timeout_s, f"e6observe-check-{name}")
                step.status, step.summary, step.seconds = (scratch.status, scratch.summary, scratch.seconds)
                step.value, step.limit_seconds = scratch.value, scratch.limit_seconds
            except DeadlineExceeded as exc:
                step.status = "fail"
                step.summary = f"no answer: {exc}"
            except _NoSession as exc:
                step.status = "fail"
                step.summary = str(exc)
            except Exception as exc:
                step.status = "fail"
                step.summary = describe_error(exc, self.opts.credentials)
        self.on_done(step)
        return step

    # -- the steps --------------------------------------------------------------------------
    def _connect(self, step: StepResult) -> None:
        self._conn, took = self.session.connect()
        self.connect_times.append(took)
        step.seconds = took
        step.status = "pass"
        step.summary = f"authenticated in {_ms(took)}"

    def _query(self, step: StepResult) -> None:
        value, took = self.session.select_one(self._conn)
        self.query_times.append(took)
        step.seconds = took
        step.value = value if isinstance(value, (int, float, str)) or value is None else repr(value)
        if value == 1 and not isinstance(value, bool):
            step.status = "pass"
            step.summary = f"{CHECK_QUERY} returned 1 in {_ms(took)}"
        else:
            step.status = "fail"
            step.summary = f"{CHECK_QUERY} returned {value!r}, expected 1"

    def _strategy(self, step: StepResult) -> None:
        from e6data_python_connector import e6data_grpc

        # Cache A, the strategy this process's connector routes queries to.
        strategy = e6data_grpc._get_active_strategy()
        step.value = strategy if isinstance(strategy, str) and len(strategy) <= 16 else repr(strategy)[:20]
        if isinstance(strategy, str) and strategy.lower() in COLOURS:
            step.status = "pass"
            step.summary = f"active strategy: {strategy.lower()}"
        else:
            step.status = "fail"
            step.summary = f"connector's active strategy is {step.value!r}, expected blue or green"

    def _connections(self, step: StepResult) -> None:
        n = self.limits.connections
        results: list[Optional[BaseException]] = [None] * n
        times: list[tuple[float, float]] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            try:
                conn, ct = self.session.connect()
                value, qt = self.session.select_one(conn)
                if value != 1:
                    raise RuntimeError(f"{CHECK_QUERY} returned {value!r}")
                with lock:
                    times.append((ct, qt))
            except BaseException as exc:
                results[i] = exc

        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=one, args=(i,), name=f"e6observe-check-conn-{i}", daemon=True)
            for i in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:  # the step's own deadline bounds this
            t.join()
        took = time.perf_counter() - t0
        for ct, qt in times:
            self.connect_times.append(ct)
            self.query_times.append(qt)
        ok = sum(1 for r in results if r is None)
        step.seconds = took
        step.value = ok
        errors = [r for r in results if r is not None]
        if not errors:
            step.status = "pass"
            step.summary = f"{ok}/{n} connections authenticated and queried at once in {_ms(took)}"
        else:
            step.status = "fail"
            step.summary = f"{ok}/{n} connections succeeded; first error: " + describe_error(
                errors[0], self.opts.credentials
            )

    def _limit(self, step: StepResult, what: str, figures: list[float], limit: float) -> None:
        worst = max(figures)
        step.seconds = worst
        step.limit_seconds = limit
        step.status = "pass" if worst < limit else "fail"
        rel = "<" if worst < limit else ">="
        step.summary = f"slowest {what} {_ms(worst)} {rel} limit {_ms(limit)} ({len(figures)} measured)"

    def run(self) -> CheckResult:
        """Run every step (dependent steps are skipped after a failure) and close up."""
        result = CheckResult(self.opts.target, connector_version())
        add = result.steps.append
        try:
            connect = self._step("connect", "basic connectivity (authenticate)", self._connect)
            add(connect)
            query = self._step("query", f"{CHECK_QUERY} returns 1", self._query, (connect,))
            add(query)
            add(self._step("strategy", "strategy detection (blue or green)", self._strategy, (connect,)))
            conns = self._step(
                "connections", f"{self.limits.connections} connections at once", self._connections, (connect,)
            )
            add(conns)
            add(
                self._step(
                    "connect_time",
                    "connection time under limit",
                    lambda s: self._limit(s, "connection", self.connect_times, self.limits.max_connect_s),
                    (connect,),
                )
            )
            add(
                self._step(
                    "query_time",
                    "query time under limit",
                    lambda s: self._limit(s, "query", self.query_times, self.limits.max_query_s),
                    (query,),
                )
            )
        finally:
            self.session.close_all()
        return result


# -- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``e6observe check``."""
    add_connection_arguments(parser)
    g = parser.add_argument_group("limits")
    g.add_argument(
        "--connections",
        type=A.integer(1, MAX_CONNECTIONS),
        default=DEFAULT_CONNECTIONS,
        help=f"connections to open at once (default: {DEFAULT_CONNECTIONS})",
    )
    g.add_argument(
        "--max-connect-seconds",
        type=A.positive,
        default=DEFAULT_MAX_CONNECT_S,
        help=f"slowest acceptable connection (default: {DEFAULT_MAX_CONNECT_S:g})",
    )
    g.add_argument(
        "--max-query-seconds",
        type=A.positive,
        default=DEFAULT_MAX_QUERY_S,
        help=f"slowest acceptable {CHECK_QUERY} (default: {DEFAULT_MAX_QUERY_S:g})",
    )
    g.add_argument(
        "--timeout",
        type=A.positive,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of each step in seconds (default: {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the step-by-step report"
    )


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


class _Printer:
    """The human report: a step's title when it starts, its mark and figure when it ends."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        fancy = _can_encode(out, "✓✗–")
        self.marks = (
            {"pass": "✓", "fail": "✗", "skip": "–"}
            if fancy
            else {"pass": "OK", "fail": "FAIL", "skip": "SKIP"}
        )

    def start(self, step: StepResult) -> None:
        self.out.write(f"  {step.title:<40} ")
        self.out.flush()

    def done(self, step: StepResult) -> None:
        self.out.write(f"{self.marks[step.status]} {step.summary}\n")
        self.out.flush()


def run(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Run the check; returns 0 READY, 1 NOT READY, 2 usage error."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        opts = options_from_args(args)
    except UsageError as exc:
        err.write(f"e6observe check: error: {exc}\n")
        return EXIT_USAGE
    limits = Limits(args.max_connect_seconds, args.max_query_seconds, args.connections, args.timeout)
    if args.json:
        result = Checker(opts, limits).run()
        out.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        printer = _Printer(out)
        out.write(f"e6observe check: {opts.target} (connector {connector_version()})\n")
        out.flush()
        result = Checker(opts, limits, printer.start, printer.done).run()
        failed = result.failed_step
        if result.ready:
            out.write("READY\n")
        else:
            reason = f": {failed.name} failed ({failed.summary})" if failed else ""
            out.write(f"NOT READY{reason}\n")
        out.flush()
    return EXIT_READY if result.ready else EXIT_NOT_READY
