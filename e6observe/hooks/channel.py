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
from typing import Any, Callable

import grpc

from .._safe import record_internal_error
from ..recorder import FOLD_AT
from . import Hook, HookContext
from .stubs import MARK, Timer, mark_wrapper, plain_call, strategy_from, strategy_in, unwrap_all, wrap_stub

_COMPONENT = "hook.channel"
_perf = time.perf_counter
_fold_at = FOLD_AT
_RpcError = grpc.RpcError


def _never() -> bool:
    return False


#: Hot-path copies of the installed context's suppression check (True inside OpenTelemetry's
#: ``suppress_instrumentation()``: the call's duration is not recorded; a 456 is still reported)
#: and of its context getter (a C call; falsy when empty): ``_ctx_now() and _suppressed()`` calls
#: no Python function in the common case. Set by :class:`ChannelHook`'s ``apply``.
_suppressed: Callable[[], bool] = _never
_ctx_now: Callable[[], Any] = _never


def _timed_call(mc: Any, timer: Timer) -> Callable[..., Any]:
    # The closures below capture only ``mc`` and ``timer`` (two cells): a wrapper is built for
    # every method of every connection's stub, so what each one holds is kept small. The clock,
    # the error class and the fold threshold are module globals (as fast to load in 3.11+).
    # Only the wrapper this multi-callable needs is built (one closure per stub method).
    wrapper: Callable[..., Any]
    if _documented_signature(mc):

        def timed(
            request: Any,
            timeout: Any = None,
            metadata: Any = None,
            credentials: Any = None,
            wait_for_ready: Any = None,
            compression: Any = None,
        ) -> Any:
            # The hot path, ~6 times per query: grpc's documented signature, so no argument
            # repacking, and no Python call but the clock, the wrapped call and one list append
            # (``try`` costs nothing in 3.11+).
            s = None
            if metadata:
                try:
                    # The connector appends the strategy pair last, or last but one when an
                    # OAuth bearer follows it: two checks instead of a scan in the common case.
                    k, s = metadata[-1]
                    if k != "strategy":
                        k, s = metadata[-2]
                        if k != "strategy":
                            s = strategy_in(metadata)
                except Exception:
                    s = None
            t0 = _perf()
            try:
                # mc(...) itself, with the special-method lookup written out: a call through
                # the type's slot enters a second interpreter loop from C (~560 instructions
                # more per RPC, callgrind), a Python-level call of the same function does not.
                # Looked up at each call, so a later patch of the class is honoured as by mc().
                response = type(mc).__call__(
                    mc, request, timeout, metadata, credentials, wait_for_ready, compression
                )
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
            s = strategy_from(args, kwargs)
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
        s = strategy_from(args, kwargs)
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
    return mark_wrapper(wrapper, mc, timer.method)


#: grpc.UnaryUnaryMultiCallable.__call__'s documented parameters, in order.
_CALL_PARAMS = ("request", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
_signature_ok: dict[type, bool] = {}


def _documented_signature(mc: Any) -> bool:
    """True if ``mc(...)`` is a plain Python ``__call__`` taking exactly grpc's documented
    parameters (then the hook can pass them on positionally, to ``type(mc).__call__``), judged
    once per multi-callable class."""
    cls = type(mc)
    ok = _signature_ok.get(cls)
    if ok is None:
        try:
            import inspect

            if not plain_call(mc):
                raise TypeError("not a plain function")
            params = list(inspect.signature(cls.__call__).parameters.values())[1:]
            ok = (
                tuple(p.name for p in params) == _CALL_PARAMS
                and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
                and all(p.default is None for p in params[1:])
            )
        except (TypeError, ValueError):
            ok = False
        _signature_ok[cls] = ok
    return ok


class ChannelHook(Hook):
    """Wraps ``Connection._create_client`` so every new stub is timed; remembers the stubs it
    wrapped (weakly) so that uninstall unwraps them."""

    name = "channel"

    def __init__(self) -> None:
        super().__init__()
        self.stubs: weakref.WeakSet[Any] = weakref.WeakSet()

    def apply(self, ctx: HookContext) -> bool:
        from e6data_python_connector import e6data_grpc as g

        orig = g.Connection.__dict__.get("_create_client")
        if orig is None:
            return False
        self.patches.replace(g.Connection, "_create_client", _make_create_client(orig, ctx))
        ctx.use_suppression(globals())  # now, and again when the OpenTelemetry API is imported
        return True

    def removed(self, ctx: HookContext) -> None:
        unwrap_all(self.stubs, _COMPONENT)

    def wrap_stub(self, stub: Any, ctx: HookContext) -> bool:
        """Replace the unary multi-callables of one stub by timing wrappers (idempotent)."""
        return wrap_stub(stub, ctx, grpc.UnaryUnaryMultiCallable, _timed_call, self.stubs)

    def wrap_connection(self, conn: Any) -> bool:
        """Instrument the current stub of an already-open sync connection. True if it changed."""
        ctx = self.ctx
        if ctx is None or not ctx.live:
            return False
        try:
            ctx.track(conn)
            return self.wrap_stub(getattr(conn, "_client", None), ctx)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
            return False


HOOK = ChannelHook()
wrap_connection = HOOK.wrap_connection


def _make_create_client(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    def _create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig(self, *args, **kwargs)
        if ctx.live:
            try:
                HOOK.wrap_stub(self.__dict__.get("_client"), ctx)
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


__all__ = ["HOOK", "ChannelHook", "MARK", "wrap_connection"]
