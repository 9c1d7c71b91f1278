"""The blue/green e6data cluster simulator: a real gRPC server built on the connector's stubs.

One :class:`Simulator` is one cluster with two deployment colours, ``blue`` and ``green``. It
serves ``QueryEngineService`` (and ``ClusterService`` for auto-resume) on a loopback port and
reproduces the cluster side of a blue/green switch as the connector expects it:

* ``announce(to)`` - the switch is announced: every response message that has a
  ``new_strategy`` field carries ``to``; requests naming either colour are still served;
* ``complete()`` - ``to`` becomes active; a request whose ``strategy`` header names the retired
  colour fails with ``StatusCode.UNKNOWN`` and details exactly ``status: 456``;
* ``flip()`` - both; ``flip(announce=False)`` is an abrupt switch nobody was told about.

A request without a ``strategy`` header is always served (connectors before 2.2.6 send none).
Sessions survive a switch; they are lost on :meth:`Simulator.restart`, after which the engine
answers ``INTERNAL`` ``Access denied: unknown session`` (the connector re-authenticates on that).

Every RPC runs the same gate, in this order: count it (by method and by ``strategy`` header),
sleep the configured latency, fail it if a fault is queued for its method, fail it with 503 if
the cluster is suspended, fail it with 456 if its header names a retired colour, then serve it.

See docs/simulator.md for the queries it answers and the counters it keeps.
"""

from __future__ import annotations

import collections
import itertools
import secrets
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import grpc
from e6data_python_connector.cluster_server import cluster_pb2, cluster_pb2_grpc
from e6data_python_connector.server import e6x_engine_pb2 as pb
from e6data_python_connector.server import e6x_engine_pb2_grpc as pb_grpc

from .._colours import COLOURS
from .._colours import other as _other
from .results import FAIL_RESULT, SAMPLE_COLUMNS, QueryError, Result, ResultCache, plan

#: The exact status text of a strategy mismatch (the connector compares it literally).
MISMATCH_DETAILS = "status: 456"
SUSPENDED_DETAILS = "status: 503, cluster is suspended"
#: Bounds on server-side state: clients that never clear queries must not grow it forever.
MAX_QUERIES = 20_000
MAX_SESSIONS = 20_000
#: Bound on distinct keys in the per-user counters; later users are counted under "other".
MAX_LABELS = 256
MAX_LABEL_CHARS = 128
#: Methods of QueryEngineService, for validating fault/latency targets.
ENGINE_METHODS = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["QueryEngineService"].methods)
CLUSTER_METHODS = ("cluster.status", "cluster.resume", "cluster.suspend")
#: Longest drain wait complete() accepts, in seconds.
MAX_DRAIN_WAIT_S = 300.0
#: Longest simulated resume, and the longest a ClusterService ``status`` call is held while the
#: cluster resumes, in seconds.
MAX_RESUME_S = 300.0
MAX_STATUS_HOLD_S = 30.0


def _check_bindable(host: str, port: int) -> None:
    """Raise OSError if ``host:port`` cannot be bound.

    gRPC reports a taken port by logging from its C core (to stderr) before Python sees the
    failure; probing with a plain socket first keeps the error to one clear line.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        try:
            sock.bind(addr)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


@dataclass
class _Session:
    user: str
    created: float


@dataclass
class _Query:
    session_id: str
    user: str
    strategy: str  # the colour it was prepared under
    result: Result
    next_batch: int = 0
    executed: bool = False


@dataclass
class _Fault:
    code: grpc.StatusCode
    details: str
    remaining: int


@dataclass
class _Counters:
    switches: int = 0
    announcements: int = 0
    sessions: int = 0
    refused_logins: int = 0
    queries: int = 0
    faults_injected: int = 0
    restarts: int = 0
    resumes: int = 0
    rpcs: Dict[str, int] = field(default_factory=dict)
    rpcs_by_strategy: Dict[str, int] = field(default_factory=dict)
    mismatches: Dict[str, int] = field(default_factory=dict)
    mismatches_by_user: Dict[str, int] = field(default_factory=dict)
    mismatches_by_strategy: Dict[str, int] = field(default_factory=dict)


def _bump(d: Dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


def _bump_bounded(d: Dict[str, int], key: str) -> None:
    key = key[:MAX_LABEL_CHARS]  # user names come from clients: bound their size as well
    if key not in d and len(d) >= MAX_LABELS:
        key = "other"
    d[key] = d.get(key, 0) + 1


class _Abort(Exception):
    """Raised inside a handler to end the RPC with a status (turned into context.abort)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Simulator:
    """A blue/green e6data cluster on a loopback gRPC port. Thread-safe; see the module docstring.

    Args:
        port: TCP port; 0 picks a free one (read it back from :attr:`port` after :meth:`start`).
        host: interface to bind, 127.0.0.1 by default.
        latency_ms: added to every RPC before it is served.
        users: None accepts any non-empty user name and password; a dict ``{user: password}``
            accepts only those.
        access_tokens: OAuth bearer tokens accepted, ``{token: user}`` (the connector's
            ``access_token=``). A request carrying ``authorization: Bearer <token>`` is served
            under that user's session (created on first use, again after a restart) whatever its
            ``sessionId``; an unknown token fails ``UNAUTHENTICATED``. None: every bearer fails.
        batch_rows: rows per result batch (the 1000-row sample table spans several batches).
        active: the colour that starts active.
        max_workers: server thread pool size (each in-flight RPC holds one thread).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        latency_ms: float = 0.0,
        users: Optional[Dict[str, str]] = None,
        batch_rows: int = 256,
        active: str = "blue",
        max_workers: int = 64,
        access_tokens: Optional[Dict[str, str]] = None,
    ) -> None:
        if active not in COLOURS:
            raise ValueError(f"active must be one of {COLOURS}")
        if not (0 <= int(port) <= 65535):
            raise ValueError("port must be within 0..65535")
        self.host = host
        self.port = int(port)
        self._requested_port = int(port)
        self._users = dict(users) if users is not None else None
        self._tokens = dict(access_tokens) if access_tokens else {}
        self._token_sessions: Dict[str, str] = {}  # token -> its session id
        self._results = ResultCache(batch_rows)
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._active = active
        self._pending: Optional[str] = None
        self._override: Optional[str] = None
        self._refuse = False
        self._suspended = False
        self._resume_s = 0.0
        self._resume_fails = False
        self._resuming_until: Optional[float] = None
        self._latency_s = self._validate_ms(latency_ms)
        self._method_latency_s: Dict[str, float] = {}
        self._faults: Dict[str, Deque[_Fault]] = {}
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._queries: collections.OrderedDict[str, _Query] = collections.OrderedDict()
        self._qids = itertools.count(1)
        self._c = _Counters()
        self._server: Optional[grpc.Server] = None
        self._executor: Optional[futures.ThreadPoolExecutor] = None
        self._stopping = threading.Event()
        self._sched_thread: Optional[threading.Thread] = None
        self._sched_stop = threading.Event()
        self._lifecycle = threading.RLock()

    # ------------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> Simulator:
        """Bind and serve. Raises ``OSError`` when the port cannot be bound. Idempotent."""
        with self._lifecycle:
            if self._server is not None:
                return self
            self._stopping.clear()
            if self._requested_port:
                _check_bindable(self.host, self._requested_port)
            executor = futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="e6observe-sim"
            )
            # SO_REUSEPORT (grpc's default) would let a second server share a taken port.
            server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
            pb_grpc.add_QueryEngineServiceServicer_to_server(_Engine(self), server)
            cluster_pb2_grpc.add_ClusterServiceServicer_to_server(_Cluster(self), server)
            host = f"[{self.host}]" if ":" in self.host else self.host
            try:
                bound = server.add_insecure_port(f"{host}:{self._requested_port}")
            except RuntimeError as exc:  # grpc raises on a taken port
                bound = 0
                err: Optional[BaseException] = exc
            else:
                err = None
            if not bound:
                server.stop(None)
                executor.shutdown(wait=False)
                raise OSError(
                    f"cannot listen on {self.host}:{self._requested_port} "
                    "(port in use or address not available)"
                ) from err
            server.start()
            self.port = bound
            # A restart must come back on the same port, even when 0 was asked for first.
            self._requested_port = bound
            self._server, self._executor = server, executor
            return self

    def stop(self, grace: float = 0.2) -> None:
        """Stop serving (in-flight RPCs get ``grace`` seconds) and any flip schedule.
        Idempotent and quick."""
        self.stop_schedule()
        self._stop_server(grace)

    def _stop_server(self, grace: float) -> None:
        with self._lifecycle:
            server, executor = self._server, self._executor
            self._server = self._executor = None
            if server is None:
                return
            self._stopping.set()  # wakes sleep(x) queries and drain waits
            with self._lock:
                self._drained.notify_all()
            server.stop(grace).wait(grace + 2.0)
            if executor is not None:
                executor.shutdown(wait=False)

    def restart(self) -> None:
        """Stop and start again on the same port; sessions and open queries are lost (a flip
        schedule keeps running)."""
        with self._lifecycle:
            self._stop_server(0.0)
            with self._lock:
                self._sessions.clear()
                self._queries.clear()
                self._c.restarts += 1
            # The kernel may need a moment to release the port after the listener closes.
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    self.start()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @property
    def running(self) -> bool:
        """True while serving."""
        return self._server is not None

    @property
    def address(self) -> str:
        """``host:port`` of the listener."""
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------
    # blue/green

    @property
    def active(self) -> str:
        """The colour currently served without 456."""
        return self._active

    @property
    def pending(self) -> Optional[str]:
        """The announced colour, or None when no switch is announced."""
        return self._pending

    def announce(self, to: Optional[str] = None) -> str:
        """Announce a switch to ``to`` (default: the other colour); returns it.

        From now on every response carries ``new_strategy=to``; the active colour is still
        served, and so is ``to``.
        """
        with self._lock:
            target = _other(self._active) if to is None else to
            if target not in COLOURS or target == self._active:
                raise ValueError(f"cannot announce {target!r}: active is {self._active!r}")
            self._pending = target
            self._c.announcements += 1
            return target

    def complete(self, drain_wait: float = 0.0) -> int:
        """Make the announced (or, if none, the other) colour active.

        With ``drain_wait > 0`` first wait up to that many seconds (capped at 300) until no
        query prepared under the old colour is still open. Returns the number of such queries
        still open at the switch (their next RPC fails with 456).
        """
        wait = min(max(0.0, float(drain_wait)), MAX_DRAIN_WAIT_S)
        deadline = time.monotonic() + wait
        with self._lock:
            old = self._active
            while wait > 0 and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self._open_on(old) == 0:
                    break
                self._drained.wait(min(left, 0.5))
            if self._active != old:  # a concurrent complete() already switched
                return 0
            self._active = self._pending or _other(old)
            self._pending = None
            self._c.switches += 1
            return self._open_on(old)

    def flip(self, announce: bool = True, drain_wait: float = 0.0) -> str:
        """Announce and complete a switch (``announce=False``: abrupt); returns the new colour."""
        if announce:
            self.announce()
        self.complete(drain_wait=drain_wait)
        return self._active

    def flip_every(
        self, seconds: float, announce_for: Optional[float] = None, drain_wait: float = 0.0
    ) -> None:
        """Flip in the background every ``seconds``: announce, wait ``announce_for`` (default
        half the period), complete. Replaces a running schedule."""
        period = float(seconds)
        if not period > 0:
            raise ValueError("seconds must be > 0")
        lead = period / 2 if announce_for is None else min(max(0.0, float(announce_for)), period)
        self.stop_schedule()
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period - lead):
                try:
                    self.announce()
                except ValueError:
                    pass
                if stop.wait(lead):
                    return
                self.complete(drain_wait=drain_wait)

        t = threading.Thread(target=loop, name="e6observe-sim-schedule", daemon=True)
        self._sched_stop, self._sched_thread = stop, t
        t.start()

    def stop_schedule(self) -> None:
        """Stop a :meth:`flip_every` schedule (an announced switch stays announced)."""
        self._sched_stop.set()
        t = self._sched_thread
        self._sched_thread = None
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)

    def set_new_strategy_value(self, raw: Optional[str]) -> None:
        """While a switch is announced, send ``raw`` as ``new_strategy`` instead of the colour
        (hostile-data tests: ``"purple"``, ``""``, 10 kB...). None restores the normal value."""
        with self._lock:
            self._override = raw

    # ------------------------------------------------------------------------------------------
    # faults, latency, sessions

    @staticmethod
    def _validate_ms(ms: float) -> float:
        v = float(ms)
        if not (v >= 0.0) or v > 600_000:
            raise ValueError("latency must be within 0..600000 ms")
        return v / 1000.0

    @staticmethod
    def _validate_method(method: str) -> str:
        if method not in ENGINE_METHODS and method not in CLUSTER_METHODS:
            raise ValueError(f"unknown method {method!r}; one of {ENGINE_METHODS + CLUSTER_METHODS}")
        return method

    def set_latency(self, ms: float, method: Optional[str] = None) -> None:
        """Add ``ms`` to every RPC (``method=None``) or to one method (replacing its value)."""
        s = self._validate_ms(ms)
        with self._lock:
            if method is None:
                self._latency_s = s
            else:
                self._method_latency_s[self._validate_method(method)] = s

    def inject_fault(
        self,
        method: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        details: str = "injected",
        count: int = 1,
    ) -> None:
        """Fail the next ``count`` calls of ``method`` (e.g. ``"executeStatement"``) with
        ``code``/``details``. Faults queue up in the order given."""
        if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
            raise ValueError("code must be a non-OK grpc.StatusCode")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.setdefault(self._validate_method(method), collections.deque()).append(
                _Fault(code, str(details), int(count))
            )

    def clear_faults(self) -> None:
        """Drop all queued faults."""
        with self._lock:
            self._faults.clear()

    def refuse_sessions(self, flag: bool = True) -> None:
        """While set, ``authenticate`` fails with ``INTERNAL`` ``Access denied: login refused``."""
        with self._lock:
            self._refuse = bool(flag)

    def suspend(self) -> None:
        """Suspend the cluster: engine RPCs fail ``UNAVAILABLE`` ``status: 503, cluster is
        suspended`` until ``ClusterService.resume`` (the connector's auto-resume) or
        :meth:`resume`."""
        with self._lock:
            self._suspended = True

    def resume(self) -> None:
        """Resume a suspended cluster."""
        with self._lock:
            self._suspended = False
            self._resuming_until = None

    def set_resume(self, seconds: float = 0.0, fails: bool = False) -> None:
        """How ``ClusterService.resume`` behaves on a suspended cluster. ``seconds`` (0 to 300):
        the cluster answers ``resuming`` and goes on failing engine RPCs with 503 for that long,
        then is active; a ``status`` call made meanwhile is held until the cluster is active
        (at most 30 s, and no longer than the call's deadline), so that the connector, which
        polls every 5 s (1 s async), sees the simulated wait rather than its poll interval.
        ``fails``: the resume is refused: ``status`` answers ``failed`` and the cluster stays
        suspended."""
        v = float(seconds)
        if not (0.0 <= v <= MAX_RESUME_S):
            raise ValueError(f"resume seconds must be within 0..{MAX_RESUME_S:g}")
        with self._lock:
            self._resume_s = v
            self._resume_fails = bool(fails)

    def _resume_requested(self) -> str:
        """``ClusterService.resume``: the status it answers."""
        with self._lock:
            if not self._suspended:
                return "active"
            if self._resume_fails:
                return "failed"
            if self._resuming_until is None:
                self._c.resumes += 1
                if self._resume_s <= 0:
                    self._suspended = False
                    return "active"
                self._resuming_until = time.monotonic() + self._resume_s
            return "resuming"

    def _cluster_status(self, time_remaining: Optional[float]) -> str:
        """``ClusterService.status``; holds the call while the cluster resumes (see
        :meth:`set_resume`)."""
        with self._lock:
            until = self._resuming_until
            fails = self._resume_fails
        if until is not None:
            hold = min(until - time.monotonic(), MAX_STATUS_HOLD_S)
            if time_remaining is not None:
                hold = min(hold, max(0.0, time_remaining - 0.05))
            if hold > 0:
                self._stopping.wait(hold)
        with self._lock:
            self._finish_resume()
            if not self._suspended:
                return "active"
            if fails:
                return "failed"
            return "resuming" if self._resuming_until is not None else "suspended"

    def _finish_resume(self) -> None:  # caller holds the lock
        until = self._resuming_until
        if until is not None and time.monotonic() >= until:
            self._suspended = False
            self._resuming_until = None

    @property
    def suspended(self) -> bool:
        """True while suspended."""
        return self._suspended

    # ------------------------------------------------------------------------------------------
    # counters

    def counters(self) -> Dict[str, Any]:
        """A consistent snapshot of the counters (plain dicts and ints; safe to keep).

        ``switches`` completed switches; ``announcements``; ``mismatches`` 456s by method and
        ``mismatches_total``; ``mismatches_by_user`` and ``mismatches_by_strategy`` (the header
        that was refused); ``rpcs`` by method and ``rpcs_total``; ``rpcs_by_strategy`` by
        ``strategy`` header (``blue``, ``green``, ``none``, ``other``); ``sessions`` created,
        ``sessions_open``; ``queries`` prepared, ``open_queries``; ``refused_logins``;
        ``faults_injected`` (faults that fired); ``restarts``; ``active``; ``pending``.
        """
        with self._lock:
            c = self._c
            return {
                "active": self._active,
                "pending": self._pending,
                "switches": c.switches,
                "announcements": c.announcements,
                "mismatches": dict(c.mismatches),
                "mismatches_total": sum(c.mismatches.values()),
                "mismatches_by_user": dict(c.mismatches_by_user),
                "mismatches_by_strategy": dict(c.mismatches_by_strategy),
                "rpcs": dict(c.rpcs),
                "rpcs_total": sum(c.rpcs.values()),
                "rpcs_by_strategy": dict(c.rpcs_by_strategy),
                "sessions": c.sessions,
                "sessions_open": len(self._sessions),
                "queries": c.queries,
                "open_queries": len(self._queries),
                "refused_logins": c.refused_logins,
                "faults_injected": c.faults_injected,
                "restarts": c.restarts,
                "resumes": c.resumes,
                "suspended": self._suspended,
            }

    def open_queries(self, strategy: Optional[str] = None) -> int:
        """Open (not cleared) queries, optionally only those prepared under ``strategy``."""
        with self._lock:
            return len(self._queries) if strategy is None else self._open_on(strategy)

    def _open_on(self, colour: str) -> int:  # caller holds the lock
        return sum(1 for q in self._queries.values() if q.strategy == colour)

    # ------------------------------------------------------------------------------------------
    # the per-RPC gate (used by the servicers)

    def _gate(
        self,
        method: str,
        context: grpc.ServicerContext,
        user: Optional[str] = None,
        session_id: Optional[str] = None,
    ) -> str:
        """Count, delay, fault, 503 and 456 checks. Returns the colour the RPC is served under."""
        header: Optional[str] = None
        for key, value in context.invocation_metadata():
            if key == "strategy":
                header = value if isinstance(value, str) else None
                break
        label = header if header in COLOURS else ("none" if header is None else "other")
        with self._lock:
            _bump(self._c.rpcs, method)
            _bump(self._c.rpcs_by_strategy, label)
            delay = self._method_latency_s.get(method, self._latency_s)
        if delay > 0:
            self._stopping.wait(delay)
        with self._lock:
            q = self._faults.get(method)
            if q:
                fault = q[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    q.popleft()
                self._c.faults_injected += 1
                raise _Abort(fault.code, fault.details)
            if self._resuming_until is not None:
                self._finish_resume()
            if self._suspended and not method.startswith("cluster."):
                raise _Abort(grpc.StatusCode.UNAVAILABLE, SUSPENDED_DETAILS)
            if header is None:
                return self._active
            if header == self._active or header == self._pending:
                return header
            _bump(self._c.mismatches, method)
            _bump(self._c.mismatches_by_strategy, label)
            if user is None and session_id is not None:
                s = self._sessions.get(session_id)
                user = s.user if s is not None else None
            if user is None:
                user = self._tokens.get(self._bearer(context) or "")
            _bump_bounded(self._c.mismatches_by_user, user or "unknown")
        raise _Abort(grpc.StatusCode.UNKNOWN, MISMATCH_DETAILS)

    def _stamp(self, response: Any) -> Any:
        """Set ``new_strategy`` on a response while a switch is announced."""
        pending, override = self._pending, self._override
        if pending is not None:
            value = pending if override is None else override
            if value:
                response.new_strategy = value
        return response

    @staticmethod
    def _bearer(context: grpc.ServicerContext) -> Optional[str]:
        """The bearer token of a request ("" for a malformed ``authorization``), or None."""
        for key, value in context.invocation_metadata():
            if key == "authorization":
                scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
                return token if scheme.lower() == "bearer" else ""
        return None

    def _bearer_session(self, context: grpc.ServicerContext) -> Optional[str]:
        """The session of the request's bearer token; None without an ``authorization``
        header. Raises _Abort(UNAUTHENTICATED) for a token not in ``access_tokens``."""
        token = self._bearer(context)
        if token is None:
            return None
        with self._lock:
            user = self._tokens.get(token)
            if user is None:
                raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "invalid access token")
            sid = self._token_sessions.get(token)
            if sid is None or sid not in self._sessions:
                sid = "s-" + secrets.token_hex(8)
                self._sessions[sid] = _Session(user, time.time())
                if len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
                self._token_sessions[token] = sid
                self._c.sessions += 1
            return sid

    def _session(self, session_id: str) -> _Session:
        s = self._sessions.get(session_id)
        if s is None:
            raise _Abort(grpc.StatusCode.INTERNAL, "Access denied: unknown session")
        return s

    def _query(self, query_id: str) -> _Query:
        q = self._queries.get(query_id)
        if q is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, "query not found")
        return q

    # -- engine operations (called by _Engine with the gate passed) ----------------------------

    def _authenticate(self, user: str, password: str) -> str:
        with self._lock:
            if self._refuse:
                self._c.refused_logins += 1
                raise _Abort(grpc.StatusCode.INTERNAL, "Access denied: login refused")
            ok = (
                bool(user) and bool(password)
                if self._users is None
                else (user in self._users and self._users[user] == password)
            )
            if not ok:
                self._c.refused_logins += 1
                raise _Abort(grpc.StatusCode.INTERNAL, "Access denied: invalid credentials")
            sid = "s-" + secrets.token_hex(8)
            self._sessions[sid] = _Session(user, time.time())
            if len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            self._c.sessions += 1
            return sid

    def _prepare(self, session_id: str, sql: str, strategy: str) -> str:
        with self._lock:
            s = self._session(session_id)
        try:
            result = plan(sql, self._results)
        except QueryError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, exc.details) from None
        with self._lock:
            qid = f"q-{next(self._qids)}"
            self._queries[qid] = _Query(session_id, s.user, strategy, result)
            if len(self._queries) > MAX_QUERIES:
                self._queries.popitem(last=False)
            self._c.queries += 1
            return qid

    def _execute(self, session_id: str, query_id: str) -> None:
        with self._lock:
            self._session(session_id)
            q = self._query(query_id)
            q.executed = True
            result = q.result
        if result is FAIL_RESULT:
            raise _Abort(grpc.StatusCode.INTERNAL, "simulated query failure")
        if result.run_seconds > 0:
            self._stopping.wait(result.run_seconds)

    def _metadata(self, session_id: str, query_id: str) -> bytes:
        with self._lock:
            self._session(session_id)
            return self._query(query_id).result.metadata

    def _next_batches(self, session_id: str, query_id: str, n: int) -> Tuple[List[bytes], bool]:
        with self._lock:
            self._session(session_id)
            q = self._query(query_id)
            batches = q.result.batches
            out = list(batches[q.next_batch : q.next_batch + n])
            q.next_batch += len(out)
            return out, q.next_batch >= len(batches)

    def _close_query(self, session_id: str, query_id: str) -> None:
        with self._lock:
            if self._queries.pop(query_id, None) is not None:
                self._drained.notify_all()

    def _status(self, session_id: str, query_id: str) -> Tuple[bool, int]:
        with self._lock:
            self._session(session_id)
            q = self._query(query_id)
            return q.executed, q.result.row_count


_Handler = Callable[..., Any]


def _reply(cls: Any, **fields: Any) -> Any:
    """A response message with the fields the installed connector's stubs have: older releases
    (2.3.9 and before) lack some (``AuthenticateResponse.engineIP``, ``ClearResponse.sessionId``
    ...), and the simulator serves with whatever stubs the process has."""
    known = cls.DESCRIPTOR.fields_by_name
    return cls(**{k: v for k, v in fields.items() if k in known})


def _serve(method: str) -> Callable[[_Handler], _Handler]:
    """Decorator: run the gate for ``method``, turn _Abort into a status, stamp the response."""

    def deco(fn: _Handler) -> _Handler:
        def handler(self: _Engine, request: Any, context: grpc.ServicerContext) -> Any:
            sim = self.sim
            try:
                strategy = sim._gate(
                    method,
                    context,
                    user=getattr(request, "user", None) or None,
                    session_id=getattr(request, "sessionId", None),
                )
                sid = sim._bearer_session(context)
                if sid is not None and "sessionId" in request.DESCRIPTOR.fields_by_name:
                    request.sessionId = sid  # OAuth: the token is the credential, not the field
                return sim._stamp(fn(self, request, context, strategy))
            except _Abort as a:
                context.abort(a.code, a.details)

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return deco


class _Engine(pb_grpc.QueryEngineServiceServicer):  # type: ignore[misc]
    """QueryEngineService over a Simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    @_serve("authenticate")
    def authenticate(self, request: Any, context: Any, strategy: str) -> Any:
        sid = self.sim._bearer_session(context) or self.sim._authenticate(request.user, request.password)
        return _reply(pb.AuthenticateResponse, sessionId=sid, engineIP="127.0.0.1")

    @_serve("prepareStatement")
    def prepareStatement(self, request: Any, context: Any, strategy: str) -> Any:
        qid = self.sim._prepare(request.sessionId, request.queryString, strategy)
        return _reply(
            pb.PrepareStatementResponse, engineIP="127.0.0.1", queryId=qid, sessionId=request.sessionId
        )

    @_serve("prepareStatementV2")
    def prepareStatementV2(self, request: Any, context: Any, strategy: str) -> Any:
        qid = self.sim._prepare(request.sessionId, request.queryString, strategy)
        return _reply(
            pb.PrepareStatementResponse, engineIP="127.0.0.1", queryId=qid, sessionId=request.sessionId
        )

    @_serve("executeStatement")
    def executeStatement(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._execute(request.sessionId, request.queryId)
        return _reply(pb.ExecuteStatementResponse, sessionId=request.sessionId)

    @_serve("executeStatementV2")
    def executeStatementV2(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._execute(request.sessionId, request.queryId)
        return _reply(pb.ExecuteStatementResponse, sessionId=request.sessionId)

    @_serve("getResultMetadata")
    def getResultMetadata(self, request: Any, context: Any, strategy: str) -> Any:
        md = self.sim._metadata(request.sessionId, request.queryId)
        return _reply(pb.GetResultMetadataResponse, resultMetaData=md, sessionId=request.sessionId)

    @_serve("getNextResultBatch")
    def getNextResultBatch(self, request: Any, context: Any, strategy: str) -> Any:
        batches, _ = self.sim._next_batches(request.sessionId, request.queryId, 1)
        return _reply(
            pb.GetNextResultBatchResponse,
            resultBatch=batches[0] if batches else b"",
            sessionId=request.sessionId,
        )

    @_serve("getNextResultBatchV2")
    def getNextResultBatchV2(self, request: Any, context: Any, strategy: str) -> Any:
        batches, done = self.sim._next_batches(request.sessionId, request.queryId, 4)
        return _reply(
            pb.GetNextResultBatchV2Response,
            resultBatches=batches,
            endOfStream=done,
            sessionId=request.sessionId,
        )

    @_serve("clear")
    def clear(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._close_query(request.sessionId, request.queryId)
        return _reply(pb.ClearResponse, sessionId=request.sessionId)

    @_serve("clearOrCancelQuery")
    def clearOrCancelQuery(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._close_query(request.sessionId, request.queryId)
        return _reply(pb.ClearOrCancelQueryResponse, sessionId=request.sessionId)

    @_serve("cancelQuery")
    def cancelQuery(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._close_query(request.sessionId, request.queryId)
        return _reply(pb.CancelQueryResponse, sessionId=request.sessionId)

    @_serve("status")
    def status(self, request: Any, context: Any, strategy: str) -> Any:
        done, rows = self.sim._status(request.sessionId, request.queryId)
        return _reply(pb.StatusResponse, status=done, rowCount=rows, sessionId=request.sessionId)

    @_serve("explain")
    def explain(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._status(request.sessionId, request.queryId)
        return _reply(pb.ExplainResponse, explain="simulated plan", sessionId=request.sessionId)

    @_serve("explainAnalyze")
    def explainAnalyze(self, request: Any, context: Any, strategy: str) -> Any:
        self.sim._status(request.sessionId, request.queryId)
        return _reply(pb.ExplainAnalyzeResponse, explainAnalyze="{}", sessionId=request.sessionId)

    @_serve("getSchemaNames")
    def getSchemaNames(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.GetSchemaNamesResponse, schemas=["default"], sessionId=request.sessionId)

    @_serve("getSchemaNamesV2")
    def getSchemaNamesV2(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.GetSchemaNamesResponse, schemas=["default"], sessionId=request.sessionId)

    @_serve("getTables")
    def getTables(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.GetTablesResponse, tables=["sample"], sessionId=request.sessionId)

    @_serve("getTablesV2")
    def getTablesV2(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.GetTablesResponse, tables=["sample"], sessionId=request.sessionId)

    @_serve("getColumns")
    def getColumns(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.GetColumnsResponse, fieldInfo=_columns(request.table), sessionId=request.sessionId)

    @_serve("getColumnsV2")
    def getColumnsV2(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.GetColumnsResponse, fieldInfo=_columns(request.table), sessionId=request.sessionId)

    @_serve("getCataloges")
    def getCataloges(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(
            pb.GetCatalogesResponse, catalogResponses=[pb.CatalogResponse(name="sim", isDefault=True)]
        )

    @_serve("dryRun")
    def dryRun(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.DryRunResponse, dryrunValue="{}")

    @_serve("healthCheck")
    def healthCheck(self, request: Any, context: Any, strategy: str) -> Any:
        return _reply(pb.HealthCheckResponse)


def _columns(table: str) -> List[Any]:
    if table.lower() != "sample":
        return []
    return [pb.GFieldInfo(fieldName=c.name, fieldType=c.type) for c in SAMPLE_COLUMNS]


class _Cluster(cluster_pb2_grpc.ClusterServiceServicer):  # type: ignore[misc]
    """ClusterService (the connector's auto-resume): status, resume, suspend."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def _run(self, method: str, context: Any) -> None:
        try:
            self.sim._gate(method, context)
        except _Abort as a:
            context.abort(a.code, a.details)

    def status(self, request: Any, context: Any) -> Any:
        self._run("cluster.status", context)
        return cluster_pb2.ClusterStatusResponse(status=self.sim._cluster_status(context.time_remaining()))

    def resume(self, request: Any, context: Any) -> Any:
        self._run("cluster.resume", context)
        return cluster_pb2.ResumeResponse(status=self.sim._resume_requested())

    def suspend(self, request: Any, context: Any) -> Any:
        self._run("cluster.suspend", context)
        self.sim.suspend()
        return cluster_pb2.SuspendResponse(status="suspended")
