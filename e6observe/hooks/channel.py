"""Channel hook (sync API): time every RPC the connector makes, by method, strategy and code.

``Connection._create_client`` builds the channel and the ``QueryEngineServiceStub``; the
connector calls it again on every re-authentication and every flip, and always reaches its RPCs
through ``connection._client.<method>(request, metadata=..., ...)``. The hook wraps
``_create_client`` so that, once it has run, each unary multi-callable on the new stub is
replaced by a small timing closure:

* the strategy is read from the ``metadata`` keyword the connector passes (no connector call);
* the call is timed with ``time.perf_counter()`` and appended to the pending list of a histogram
  child cached per strategy value for the OK code (the common case costs a dict lookup and one
  list append; the child folds its pending values into buckets every ``FOLD_AT`` values);
* on a ``grpc.RpcError`` the error is observed under its code, a ``status: 456`` mismatch is
  reported with ``recorder.mismatch(strategy, method)``, and the very same exception object is
  re-raised (the connector catches the private ``grpc._channel._InactiveRpcError``).

This is deliberately not a ``grpc.intercept_channel`` interceptor: the generic interceptor
machinery alone costs several percent per query. ``.future`` (the 3.0.1+ v2 result prefetch)
is timed by a done-callback; ``.with_call`` passes through untimed (the connector never uses it).

Stubs built before ``instrument()`` (connections already open) are wrapped by
:func:`wrap_connection`, which the cursor hook calls lazily at the next ``execute`` and which
:func:`e6observe.instrument_connection` exposes. ``uninstall()`` puts the original
multi-callables back on every stub still alive.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Optional

import grpc

from .._safe import record_internal_error
from ..recorder import FOLD_AT, Histogram, Recorder, norm_code, norm_method, norm_strategy
from . import MISMATCH_TEXT, HookContext, Patches

#: What a suspended cluster answers (``UNAVAILABLE``); the connector's auto-resume acts on it.
SUSPENDED_TEXT = "status: 503"

#: Attribute set on an instrumented stub: the installation's token.
MARK = "_e6observe_token"
_COMPONENT = "hook.channel"
#: Distinct raw strategy values whose histogram child is cached per method; beyond this (only a
#: hostile server could cause it) values are normalised on every call instead.
_CACHE_LIMIT = 8

_ctx: Optional[HookContext] = None
_patches = Patches()
_perf = time.perf_counter
_fold_at = FOLD_AT
_RpcError = grpc.RpcError
_stubs: weakref.WeakSet[Any] = weakref.WeakSet()


def _never() -> bool:
    return False


#: True inside OpenTelemetry's ``suppress_instrumentation()`` (set by :func:`install`): the
#: call's duration is not recorded (a 456 is still reported: it moves the strategy state).
_suppressed: Callable[[], bool] = _never
#: The OpenTelemetry context getter (a C call; falsy when empty): ``_ctx_now() and
#: _suppressed()`` calls no Python function in the common case.
_ctx_now: Callable[[], Any] = _never


def _strategy_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``strategy`` header value of a call, or None. Never raises."""
    md = kwargs.get("metadata") if kwargs else None
    if md is None and len(args) > 1:
        md = args[1]  # (request, timeout, metadata, ...) passed positionally
    if md:
        try:
            for k, v in md:
                if k == "strategy":
                    return v
        except Exception:
            return None
    return None


class _Timer:
    """Per (stub method) state shared by the call and future wrappers."""

    __slots__ = ("rec", "method", "ok")

    def __init__(self, rec: Recorder, method: str) -> None:
        self.rec = rec
        self.method = method
        #: raw strategy header value -> the OK child for it.
        self.ok: dict[Any, Histogram] = {}

    def ok_child(self, s: Any) -> Histogram:
        h = self.rec.rpc_histogram(self.method, norm_strategy(s), "OK")
        if len(self.ok) < _CACHE_LIMIT and (s is None or isinstance(s, str)):
            self.ok[s] = h
        return h

    def observe_ok(self, s: Any, seconds: float) -> None:
        """An OK call (what the fast path inlines). Contained."""
        try:
            self.ok[s].observe(seconds)
        except Exception:
            self.ok_slow(s, seconds)

    def ok_slow(self, s: Any, seconds: float) -> None:
        """An OK call whose child is not cached yet (first call per header value). Contained."""
        try:
            self.ok_child(s).observe(seconds)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    def failed(self, code: Any, details: Any, seconds: float, s: Any) -> None:
        try:
            rec = self.rec
            strategy = norm_strategy(s)
            cname = norm_code(code)
            if cname == "UNKNOWN" and isinstance(details, str) and MISMATCH_TEXT in details:
                rec.mismatch(strategy, self.method)
            elif cname == "UNAVAILABLE" and isinstance(details, str) and SUSPENDED_TEXT in details:
                rec.cluster_status_seen("suspended", self.method, engine=True)
            if _suppressed():
                return
            rec.rpc_histogram(self.method, strategy, cname).observe(seconds)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    def failed_exc(self, exc: BaseException, seconds: float, s: Any) -> None:
        try:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details()  # type: ignore[attr-defined]
        except Exception:
            code, details = None, None
        self.failed(code, details, seconds, s)


def _timed_call(mc: Any, timer: _Timer) -> Callable[..., Any]:
    # The closures below capture only ``mc`` and ``timer`` (two cells): a wrapper is built for
    # every method of every connection's stub, so what each one holds is kept small. The clock,
    # the error class and the fold threshold are module globals (as fast to load in 3.11+).
    # Only the wrapper this multi-callable needs is built (one closure per stub method).
    wrapper: Callable[..., Any]
    if _documented_signature(mc):
        def timed(request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                  wait_for_ready: Any = None, compression: Any = None) -> Any:
            # The hot path, ~6 times per query: grpc's documented signature, so no argument
            # repacking, and no Python call but the clock, the wrapped call and one list append
            # (``try`` costs nothing in 3.11+).
            s = None
            if metadata:
                try:
                    for k, v in metadata:
                        if k == "strategy":
                            s = v
                            break
                except Exception:
                    s = None
            t0 = _perf()
            try:
                response = mc(request, timeout, metadata, credentials, wait_for_ready, compression)
            except _RpcError as exc:
                timer.failed_exc(exc, _perf() - t0, s)
                raise
            dt = _perf() - t0
            if _ctx_now() and _suppressed():
                return response
            try:
                h = timer.ok[s]
                p = h.pending
                p.append(dt)
                if len(p) >= _fold_at:
                    h.fold()
            except Exception:
                timer.ok_slow(s, dt)
            return response

        wrapper = timed
    else:
        def timed_any(request: Any, *args: Any, **kwargs: Any) -> Any:
            # Any call shape (a multi-callable whose signature is not grpc's documented one).
            s = _strategy_from(args, kwargs)
            t0 = _perf()
            try:
                response = mc(request, *args, **kwargs)
            except _RpcError as exc:
                timer.failed_exc(exc, _perf() - t0, s)
                raise
            if not (_ctx_now() and _suppressed()):
                timer.observe_ok(s, _perf() - t0)
            return response

        wrapper = timed_any

    def timed_future(request: Any, *args: Any, **kwargs: Any) -> Any:
        if _ctx_now() and _suppressed():
            return mc.future(request, *args, **kwargs)
        s = _strategy_from(args, kwargs)
        t0 = _perf()
        fut = mc.future(request, *args, **kwargs)
        try:
            def done(f: Any) -> None:
                dt = _perf() - t0
                try:
                    code = f.code()
                    if getattr(code, "name", None) == "OK":
                        timer.observe_ok(s, dt)
                    else:
                        timer.failed(code, f.details(), dt, s)
                except Exception as exc:
                    record_internal_error(_COMPONENT, exc)

            fut.add_done_callback(done)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return fut

    wrapper.future = timed_future  # type: ignore[attr-defined]
    wrapper.with_call = mc.with_call  # type: ignore[attr-defined]
    wrapper.__wrapped__ = mc  # type: ignore[attr-defined]
    wrapper.__name__ = timer.method
    return wrapper


#: grpc.UnaryUnaryMultiCallable.__call__'s documented parameters, in order.
_CALL_PARAMS = ("request", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
_signature_ok: dict[type, bool] = {}


def _documented_signature(mc: Any) -> bool:
    """True if ``mc(...)`` takes exactly grpc's documented parameters (then the hook can pass
    them on positionally), judged once per multi-callable class."""
    cls = type(mc)
    ok = _signature_ok.get(cls)
    if ok is None:
        try:
            import inspect

            params = list(inspect.signature(cls.__call__).parameters.values())[1:]
            ok = (tuple(p.name for p in params) == _CALL_PARAMS
                  and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
                  and all(p.default is None for p in params[1:]))
        except (TypeError, ValueError):
            ok = False
        _signature_ok[cls] = ok
    return ok


def wrap_stub(stub: Any, ctx: HookContext) -> bool:
    """Replace the unary multi-callables of one stub by timing wrappers (idempotent)."""
    if stub is None or getattr(stub, MARK, None) is ctx.token:
        return False
    attrs = vars(stub)
    for name, mc in list(attrs.items()):
        if isinstance(mc, grpc.UnaryUnaryMultiCallable):
            method = norm_method(name)
            timer = ctx.timers.get(method)
            if timer is None:  # one per method, shared by every connection's stub
                timer = ctx.timers.setdefault(method, _Timer(ctx.recorder, method))
            attrs[name] = _timed_call(mc, timer)
    attrs[MARK] = ctx.token
    _stubs.add(stub)
    if not ctx.live:
        # uninstall() ran while we were wrapping (it sets ``live`` before it unwraps what is in
        # _stubs, and we added to _stubs before looking): it may have missed this stub.
        unwrap_stub(stub)
        return False
    return True


def unwrap_stub(stub: Any) -> None:
    """Put the original multi-callables back on ``stub``."""
    attrs = vars(stub)
    for name, value in list(attrs.items()):
        original = getattr(value, "__wrapped__", None)
        if original is not None and callable(getattr(value, "future", None)):
            attrs[name] = original
    attrs.pop(MARK, None)


def wrap_connection(conn: Any) -> bool:
    """Instrument the current stub of an already-open sync connection. True if it changed."""
    ctx = _ctx
    if ctx is None or not ctx.live:
        return False
    try:
        ctx.track(conn)
        return wrap_stub(getattr(conn, "_client", None), ctx)
    except Exception as exc:
        record_internal_error(_COMPONENT, exc)
        return False


def _make_create_client(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    def _create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig(self, *args, **kwargs)
        if ctx.live:
            try:
                wrap_stub(self.__dict__.get("_client"), ctx)
                ctx.track(self)
                rec = ctx.recorder
                if getattr(rec, "server", None) is None:
                    # server.address/server.port for the OpenTelemetry sink (first connection).
                    rec.server = (str(self._host), int(self._port))
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        return result

    _create_client.__wrapped__ = orig  # type: ignore[attr-defined]
    return _create_client


def install(recorder: Recorder, options: object = None, tracer: object = None,
            ctx: Optional[HookContext] = None) -> bool:
    """Wrap ``Connection._create_client`` so every new stub is timed."""
    global _ctx, _suppressed, _ctx_now
    if _ctx is not None:
        return True
    from e6data_python_connector import e6data_grpc as g

    ctx = ctx or HookContext(recorder, options, tracer)
    orig = g.Connection.__dict__.get("_create_client")
    if orig is None:
        return False
    _patches.replace(g.Connection, "_create_client", _make_create_client(orig, ctx))
    _ctx = ctx
    _suppressed = ctx.suppressed
    _ctx_now = ctx.context_now
    return True


def uninstall() -> None:
    """Restore ``_create_client`` and the original multi-callables of every live stub."""
    global _ctx
    if _ctx is None:
        return
    _ctx.live = False
    _ctx = None
    _patches.restore()
    for stub in list(_stubs):
        try:
            unwrap_stub(stub)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
    _stubs.clear()
