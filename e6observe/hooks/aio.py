"""Async API hooks (connector 3.0.x ``e6data_python_connector.aio``, Python 3.11+).

The async connector keeps blue/green state **per connection**: ``AsyncConnection._strategy``
(starts as ``blue``, a guess), ``_pending_strategy`` and ``_routes`` (query id -> route with the
colour it was prepared under). ``_apply_pending_strategy`` flips when no route is open, and the
RPC retry and auto-resume paths assign ``_strategy`` directly - so the hook is a class-level data
descriptor on both attributes that stores into the instance ``__dict__`` (as before) and reports
every change. Equal values are re-assigned often; only changes count.

**Process-level view.** Prometheus has one ``e6data_strategy_active``; the async API has one
colour per connection. e6observe keeps a single process-level colour for the async API:

* it is *detected* from the first RPC that succeeds on any async connection (the colour in its
  ``strategy`` header) - the constructor's ``blue`` is a guess, not something learned;
* a connection moving to a colour other than the process-level one is **one switch** from the
  process-level colour to the new one (cause ``announced`` when that connection was applying
  its pending colour, ``mismatch`` when it toggled after a 456 or resumed), and the process-level
  colour becomes the new one;
* connections that follow to the colour the process already holds are not counted again.

So ``e6data_strategy_active`` names the colour most recently adopted by any async connection,
and one deployment counts as one switch per process whatever the pool size - the same meaning
the sync API's process-wide cache gives. (A process using both the sync and the async API feeds
both views into the same recorder; each view counts its own switches.)

RPCs: ``AsyncConnection._initialize`` builds the ``grpc.aio`` channel and stub; the hook wraps
it and, once it has run, replaces the stub's unary multi-callables by wrappers that add a done
callback to the call they return (the same call object - nothing is awaited or wrapped in
between). The callback reads the finished call's status and observes the duration; a 456 is a
mismatch. Queries: ``AsyncCursor.execute`` / ``_clear`` (clear and close) / ``_next_batch`` /
``cancel``, with the same semantics as the sync cursor hook; the pinned colour is the query's
route. A 456 toggle-and-retry inside ``_rpc`` is reported as ``retry(1, "mismatch")``.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

from .._colours import COLOURS
from .._otelctx import attach_span, detach
from .._safe import record_internal_error
from ..recorder import Recorder, norm_code, norm_method, norm_strategy
from ..tracing import db_namespace
from . import HookContext, Patches, is_mismatch
from .channel import MARK, _strategy_from, _Timer
from .cluster import QUERY_SPAN, RESUMED
from .cursor import ATTR, QueryState, end_failed, finish, mark_fetched

_COMPONENT = "hook.aio"
_MISSING = object()

_ctx: Optional[HookContext] = None
_interp: Optional[_AioInterpreter] = None
_patches = Patches()
_stubs: weakref.WeakSet[Any] = weakref.WeakSet()


def available() -> bool:
    """True when the connector has the async API and this Python can run it."""
    if sys.version_info < (3, 11):
        return False
    try:
        import e6data_python_connector.async_connection  # noqa: F401
        import e6data_python_connector.async_cursor  # noqa: F401
    except Exception:
        return False
    return True


class _AioInterpreter:
    """The process-level colour of the async API, from per-connection writes."""

    __slots__ = ("rec", "known", "_lock")

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.known: Optional[str] = None
        self._lock = threading.Lock()

    def confirmed(self, strategy: Any) -> None:
        """An RPC succeeded under ``strategy``: the first such is the detection."""
        if strategy not in COLOURS:
            return
        with self._lock:
            if self.known is not None:
                return
            self.known = strategy
        self.rec.detected(strategy)

    def on_strategy(self, conn: Any, old: Any, new: Any) -> None:
        if old is _MISSING or new not in COLOURS:
            return  # the constructor's initial guess, or nothing usable
        exc = sys.exc_info()[1]
        toggled = exc is not None and is_mismatch(exc)
        if toggled:
            # _rpc toggles the colour inside its except block and replays the call once.
            self.rec.retry(1, "mismatch")
        d = conn.__dict__
        with self._lock:
            ref = self.known
            if ref is None or ref == new:
                return
            self.known = new
            # A connection can keep a stale pending colour (responses of an announcement that
            # it already applied), so the 456 toggle is recognised first.
            cause = "announced" if (not toggled and d.get("_pending_strategy") == new) else "mismatch"
        routes = d.get("_routes")
        pinned = 0
        if isinstance(routes, dict):
            pinned = sum(1 for r in list(routes.values()) if getattr(r, "strategy", None) == ref)
        self.rec.applied(ref, new, cause, pinned_queries=pinned)

    def on_pending(self, conn: Any, old: Any, new: Any) -> None:
        if new not in COLOURS or new == self.known or new == conn.__dict__.get("_strategy"):
            return
        self.rec.announced(new)


class _Watched:
    """Class-level data descriptor: instance storage as before, changes reported."""

    __slots__ = ("name", "report")

    def __init__(self, name: str, report: Callable[[Any, Any, Any], None]) -> None:
        self.name = name
        self.report = report

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        old = d.get(self.name, _MISSING)
        d[self.name] = value
        if old is not value and old != value:
            try:
                self.report(obj, old, value)
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)

    def __delete__(self, obj: Any) -> None:
        try:
            del obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


# --- RPC timing -----------------------------------------------------------------------------
def _never() -> bool:
    return False


#: True inside OpenTelemetry's ``suppress_instrumentation()`` (set by :func:`install`).
_suppressed: Callable[[], bool] = _never
#: The OpenTelemetry context getter (a C call, falsy when empty), set with ``_suppressed``.
_ctx_now: Callable[[], Any] = _never


def _timed_aio_call(mc: Any, timer: _Timer, interp: _AioInterpreter) -> Callable[..., Any]:
    from grpc import _common

    perf = time.perf_counter
    ok = timer.ok
    codes = _common.CYGRPC_STATUS_CODE_TO_STATUS_CODE

    def timed(request: Any, *args: Any, **kwargs: Any) -> Any:
        if _ctx_now() and _suppressed():  # inside suppress_instrumentation(): not measured
            return mc(request, *args, **kwargs)
        s = _strategy_from(args, kwargs)
        t0 = perf()
        call = mc(request, *args, **kwargs)
        try:
            def done(c: Any) -> None:
                dt = perf() - t0
                try:
                    cy = c._cython_call
                    if cy.is_locally_cancelled():
                        timer.failed("CANCELLED", None, dt, s)
                        return
                    status = cy._status
                    code = codes.get(status.code())
                    if code is not None and code.name == "OK":
                        h = ok.get(s)
                        if h is None:
                            h = timer.ok_child(s)
                        h.observe(dt)
                        if interp.known is None:
                            interp.confirmed(s)
                    else:
                        timer.failed(code, status.details(), dt, s)
                except Exception as exc:
                    record_internal_error(_COMPONENT, exc)

            call.add_done_callback(done)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return call

    timed.__wrapped__ = mc  # type: ignore[attr-defined]
    timed.__name__ = timer.method
    return timed


def wrap_stub(stub: Any, ctx: HookContext, interp: _AioInterpreter) -> bool:
    """Replace the unary multi-callables of one ``grpc.aio`` stub (idempotent)."""
    import grpc.aio

    if stub is None or getattr(stub, MARK, None) is ctx.token:
        return False
    attrs = vars(stub)
    for name, mc in list(attrs.items()):
        if isinstance(mc, grpc.aio.UnaryUnaryMultiCallable):
            attrs[name] = _timed_aio_call(mc, _Timer(ctx.recorder, norm_method(name)), interp)
    attrs[MARK] = ctx.token
    _stubs.add(stub)
    if not ctx.live:
        # uninstall() ran while we were wrapping (it clears ``live`` before it unwraps what is
        # in _stubs, and we added to _stubs before looking): it may have missed this stub.
        _unwrap_stub(stub)
        return False
    return True


def _unwrap_stub(stub: Any) -> None:
    attrs = vars(stub)
    for name, value in list(attrs.items()):
        original = getattr(value, "__wrapped__", None)
        if original is not None and getattr(value, "__name__", None) == norm_method(name):
            attrs[name] = original
    attrs.pop(MARK, None)


def wrap_connection(conn: Any) -> bool:
    """Instrument the stub of an already-open ``AsyncConnection``. True if it changed."""
    ctx, interp = _ctx, _interp
    if ctx is None or interp is None or not ctx.live:
        return False
    try:
        ctx.track(conn)
        return wrap_stub(conn.__dict__.get("_client"), ctx, interp)
    except Exception as exc:
        record_internal_error(_COMPONENT, exc)
        return False


def _make_initialize(orig: Callable[..., Any], ctx: HookContext,
                     interp: _AioInterpreter) -> Callable[..., Any]:
    async def _initialize(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await orig(self, *args, **kwargs)
        if ctx.live:
            try:
                wrap_stub(self.__dict__.get("_client"), ctx, interp)
                ctx.track(self)
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        return result

    _initialize.__wrapped__ = orig  # type: ignore[attr-defined]
    return _initialize


# --- queries --------------------------------------------------------------------------------
def _route_strategy(cursor: Any) -> Optional[str]:
    route = cursor.__dict__.get("_route")
    s = getattr(route, "strategy", None)
    return s if isinstance(s, str) else None


def _outcome(exc: BaseException) -> str:
    return "switch_interrupted" if is_mismatch(exc) else "error"


def _make_execute(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    perf = time.perf_counter
    rec = ctx.recorder

    async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live or (ctx.context_now() and ctx.suppressed()):
            return await orig(self, *args, **kwargs)
        span = None
        span_token = None
        conn = None
        try:
            d = self.__dict__
            prev = d.pop(ATTR, None)
            if prev is not None:
                finish(ctx, prev, "ok", end=prev.fetch_end)
            conn = d.get("_connection")
            client = conn.__dict__.get("_client") if conn is not None else None
            if client is not None and getattr(client, MARK, None) is not ctx.token:
                wrap_connection(conn)
            tracer = ctx.current_tracer()
            if tracer is not None:
                query = args[0] if args else kwargs.get("operation")
                config = conn.__dict__.get("_config", {})
                span = tracer.start(query, config.get("host"), config.get("port"),
                                    db_namespace(config.get("catalog"), config.get("database")))
                span_token = attach_span(span)  # this task's context: its RPCs are children
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        resumed0 = RESUMED.get()
        qs_token = QUERY_SPAN.set(span) if span is not None else None
        t0 = perf()
        try:
            result = await orig(self, *args, **kwargs)
        except BaseException as exc:
            if span_token is not None:
                detach(span_token)
            try:
                if qs_token is not None:
                    QUERY_SPAN.reset(qs_token)
                admitted = self.__dict__.get("_route") is not None
                s = _route_strategy(self) if admitted else (
                    conn.__dict__.get("_strategy") if conn is not None else None)
                strategy = norm_strategy(s)
                outcome = "switch_interrupted" if admitted and is_mismatch(exc) else "error"
                rec.query_started(strategy)
                finish(ctx, QueryState(t0, strategy, span, None), outcome, exc)
            except Exception as e:
                record_internal_error(_COMPONENT, e)
            raise
        if span_token is not None:
            detach(span_token)
        try:
            if qs_token is not None:
                QUERY_SPAN.reset(qs_token)
            strategy = norm_strategy(_route_strategy(self))
            rec.query_started(strategy)
            route = self.__dict__.get("_route")
            self.__dict__[ATTR] = QueryState(t0, strategy, span, getattr(route, "query_id", None),
                                             RESUMED.get() is not resumed0)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return result

    execute.__wrapped__ = orig  # type: ignore[attr-defined]
    return execute


def _make_next_batch(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    async def _next_batch(self: Any, *args: Any, **kwargs: Any) -> Any:
        q = self.__dict__.get(ATTR)
        token = attach_span(q.span) if q is not None and q.span is not None else None
        try:
            rows = await orig(self, *args, **kwargs)
        except BaseException as exc:
            if token is not None:
                detach(token)
            end_failed(ctx, self, exc, _outcome)
            raise
        if token is not None:
            detach(token)
        if rows is None:
            mark_fetched(ctx, self)
        return rows

    _next_batch.__wrapped__ = orig  # type: ignore[attr-defined]
    return _next_batch


def _make_clear(orig: Callable[..., Any], ctx: HookContext, outcome_ok: str) -> Callable[..., Any]:
    async def _clear(self: Any, *args: Any, **kwargs: Any) -> Any:
        q = self.__dict__.get(ATTR) if ctx.live else None
        token = attach_span(q.span) if q is not None and q.span is not None else None
        try:
            result = await orig(self, *args, **kwargs)
        except BaseException as exc:
            if token is not None:
                detach(token)
            if q is not None and self.__dict__.get(ATTR) is q:
                del self.__dict__[ATTR]
                finish(ctx, q, _outcome(exc), exc)
            raise
        if token is not None:
            detach(token)
        if q is not None and self.__dict__.get(ATTR) is q:
            del self.__dict__[ATTR]
            finish(ctx, q, outcome_ok)
        return result

    _clear.__wrapped__ = orig  # type: ignore[attr-defined]
    return _clear


#: The connector module whose import installs the hooks when instrument() ran first.
ASYNC_MODULE = "e6data_python_connector.async_connection"
_watch: Any = None  # the pending import watch (see install)
_late_lock = threading.Lock()


def install(recorder: Recorder, options: object = None, tracer: object = None,
            ctx: Optional[HookContext] = None) -> bool:
    """Install the async hooks: now if the application has imported the connector's async API,
    else when it does (a process that never uses it never loads those modules). False
    (nothing done) when the async API is unavailable."""
    global _watch, _suppressed, _ctx_now
    if _ctx is not None or _watch is not None:
        return True
    if sys.version_info < (3, 11):
        return False
    ctx = ctx or HookContext(recorder, options, tracer)
    _suppressed = ctx.suppressed
    _ctx_now = ctx.context_now
    if ASYNC_MODULE in sys.modules:
        return _install_now(recorder, ctx)
    try:
        import importlib.util

        if importlib.util.find_spec(ASYNC_MODULE) is None:  # connector without the async API
            return False
    except (ImportError, ValueError):
        return False
    from . import when_imported

    def install_late() -> None:
        global _watch
        with _late_lock:
            if _watch is None or not ctx.live:  # uninstalled meanwhile
                return
            _watch = None
            try:
                _install_now(recorder, ctx)
            except Exception as exc:
                record_internal_error("hook.install.aio", exc)

    # Not under the lock: if another thread imported the module meanwhile, when_imported runs
    # install_late at once, and install_late takes the lock.
    with _late_lock:
        _watch = _Waiting()
    watch = when_imported(ASYNC_MODULE, install_late)
    with _late_lock:
        if isinstance(_watch, _Waiting):
            _watch = watch
        elif watch is not None:  # uninstalled meanwhile
            watch.cancel()
    return True


class _Waiting:
    """Stands for the watch while it is being set up."""

    def cancel(self) -> None:
        return None


def _install_now(recorder: Recorder, ctx: HookContext) -> bool:
    global _ctx, _interp
    if _ctx is not None:
        return True
    if not available():
        return False
    from e6data_python_connector.async_connection import AsyncConnection
    from e6data_python_connector.async_cursor import AsyncCursor

    interp = _AioInterpreter(recorder)
    p = _patches
    for name in ("_strategy", "_pending_strategy"):
        if name in AsyncConnection.__dict__:  # a future version made it a class attribute
            return False
    p.replace(AsyncConnection, "_strategy", _Watched("_strategy", interp.on_strategy))
    p.replace(AsyncConnection, "_pending_strategy", _Watched("_pending_strategy", interp.on_pending))
    p.replace(AsyncConnection, "_initialize",
              _make_initialize(AsyncConnection.__dict__["_initialize"], ctx, interp))
    p.replace(AsyncCursor, "execute", _make_execute(AsyncCursor.__dict__["execute"], ctx))
    p.replace(AsyncCursor, "_clear", _make_clear(AsyncCursor.__dict__["_clear"], ctx, "ok"))
    p.replace(AsyncCursor, "_next_batch", _make_next_batch(AsyncCursor.__dict__["_next_batch"], ctx))
    if "cancel" in AsyncCursor.__dict__:
        p.replace(AsyncCursor, "cancel", _make_clear(AsyncCursor.__dict__["cancel"], ctx, "error"))
    _ctx, _interp = ctx, interp
    return True


def uninstall() -> None:
    """Stop waiting for the async API; remove the descriptors and wrappers; unwrap every live
    async stub."""
    global _ctx, _interp, _watch
    with _late_lock:  # no late install from now on
        if _watch is not None:
            _watch.cancel()
            _watch = None
    if _ctx is None:
        return
    _ctx.live = False
    _ctx = _interp = None
    _patches.restore()
    for stub in list(_stubs):
        try:
            _unwrap_stub(stub)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
    _stubs.clear()


def process_strategy() -> Optional[str]:
    """The async API's process-level colour (None before the first successful RPC)."""
    return _interp.known if _interp is not None else None


__all__ = ["install", "uninstall", "wrap_connection", "available", "process_strategy",
           "norm_code"]
